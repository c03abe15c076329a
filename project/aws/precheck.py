"""The checks of a job that import torch and the user's classes, run beside the launch.

check_modules is what `invoke train` (and a sweep, for every job) checks before anything is paid
for: the classes the config's `_target_`s name and their arguments, whether the network takes
the data's samples, and on GPUs whether a batch fits their memory. It imports torch, Lightning
and the user's code (~4 s), and the launch imports the SageMaker SDK (~3 s): `invoke train` runs
it in a second process (Precheck) started before it talks to AWS, so the two run on two cores,
and reads its verdict before it shows the job or launches it. That process checks the job's
resolved config, the one the job itself will load. A sweep checks in-process: torch is imported
once for all its jobs.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import load_resolved, to_yaml
from ..errors import USER_ERROR_EXIT, UserError
from .fit import check_memory, estimate_memory


class JobCheckError(UserError, RuntimeError):
    """What the second process found wrong with the job, as its one line said it."""


def check_modules(cfg: Any, gpus_per_node: int, per_device_batch: int, echo: Callable[[str], None]) -> None:
    """The classes and their arguments; then the network on one sample of the data's shape (meta
    device): a mismatch is one line, and on GPUs the memory estimate comes from the same pass."""
    from .. import modules  # torch and the user's classes: only when a job is checked

    modules.check(cfg)
    if gpus_per_node:
        check_memory(estimate_memory(cfg, per_device_batch), cfg.instance, gpus_per_node, echo)
    else:
        modules.sample_pass(cfg)


class Precheck:
    """check_modules for `cfg` in a second process, from now until result(); a context manager
    that ends the process (and its files) however the launch ends."""

    def __init__(self, cfg: Any, gpus_per_node: int, per_device_batch: int):
        from ..local import pythonpath_with_project

        self._folder = tempfile.TemporaryDirectory(prefix="precheck-")
        config = Path(self._folder.name) / "config.yaml"
        config.write_text(to_yaml(cfg))
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(config), str(gpus_per_node), str(per_device_batch)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=pythonpath_with_project(),
        )

    def result(self, echo: Callable[[str], None]) -> None:
        """Wait for the verdict: its lines go to `echo`; what it found wrong is raised, as one line."""
        out, err = self._process.communicate()
        for line in out.splitlines():
            echo(line)
        if self._process.returncode == USER_ERROR_EXIT:
            said = err.strip().splitlines()[-1] if err.strip() else "the job's checks failed"
            raise JobCheckError(said.removeprefix("error: "))
        if self._process.returncode != 0:
            raise RuntimeError(f"checking the job's classes failed (exit {self._process.returncode}):\n{err[-3000:]}")

    def __enter__(self) -> Precheck:
        return self

    def __exit__(self, *_: object) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._folder.cleanup()


def main(argv: list[str]) -> int:
    """`python -m project.aws.precheck <resolved config> <gpus per node> <per-device batch>`."""
    config, gpus_per_node, per_device_batch = argv
    try:
        check_modules(load_resolved(Path(config)), int(gpus_per_node), int(per_device_batch), echo=print)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
