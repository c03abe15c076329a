"""Real failing training runs, as a SageMaker container has them, for the triage tests.

`container_run` runs what one instance of a job runs, minus the namespaces and PID 1 (those are the
sandbox's, tests/test_sagemaker_e2e.py): our launcher's torchrun command (project.training.launch.torchrun_argv)
over the staged sm_entry.py and the resolved config, with the SM_* variables of a container
pointing into a tmp /opt/ml tree; its output (stdout and stderr together) as CloudWatch has it,
and the FailureReason SageMaker makes of it (project.sandbox.results.failure_reason, from the
`output/failure` file the run wrote).

`memory_limit` puts the run in a memory cgroup of its own (v2 or v1), so that the kernel's OOM
killer ends it with SIGKILL as it does on an instance whose memory is exhausted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from project.core.config import compose, to_yaml
from project.core.sagemaker_names import DATA_CHANNEL
from project.sandbox.results import failure_reason
from project.training.launch import torchrun_argv

ROOT = Path(__file__).resolve().parent.parent
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class FailedRun:
    returncode: int
    lines: list[str]  # the container's output, one CloudWatch event per line
    failure_reason: str  # FailureReason as SageMaker reports it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def resolved(overrides: list[str]) -> str:
    """The config.yaml a job carries (compose is not thread-safe: compose first, then run in parallel)."""
    return to_yaml(compose(overrides))


def container_run(
    tree: Path,
    config_yaml: str,
    channel: Path,
    env: dict[str, str] | None = None,
    cgroup: Path | None = None,
    hosts: tuple[str, ...] = ("algo-1",),
    torchrun_options: tuple[str, ...] = (),
) -> FailedRun:
    """Run host `hosts[0]` of a job (one worker) on `channel` as the data channel."""
    for folder in ("model", "output/data", "checkpoints", "code"):
        (tree / folder).mkdir(parents=True, exist_ok=True)
    (tree / "code" / "config.yaml").write_text(config_yaml)
    # as staging puts it: at the top of the code channel
    entry = shutil.copy(ROOT / "project" / "training" / "sm_entry.py", tree / "code" / "sm_entry.py")
    environ = {
        **os.environ,
        "SM_MODEL_DIR": str(tree / "model"),
        "SM_OUTPUT_DIR": str(tree / "output"),
        "SM_OUTPUT_DATA_DIR": str(tree / "output/data"),
        "SM_CHECKPOINT_DIR": str(tree / "checkpoints"),
        f"SM_CHANNEL_{DATA_CHANNEL.upper()}": str(channel),
        "SM_HOSTS": json.dumps(list(hosts)),
        "SM_CURRENT_HOST": hosts[0],
        "SM_MASTER_ADDR": "127.0.0.1",  # the first host is this machine
        "SM_MASTER_PORT": str(free_port()),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), (env or {}).get("PYTHONPATH", "")])),
        "OMP_NUM_THREADS": "1",
    }
    environ.update({k: v for k, v in (env or {}).items() if k != "PYTHONPATH"})
    argv = torchrun_argv(environ, 1, str(entry))
    argv[-1:-1] = torchrun_options  # before the script
    procs = str(cgroup / "cgroup.procs") if cgroup else None

    def enter_cgroup() -> None:  # in the child, before exec: the run and all it starts are limited
        if procs:
            Path(procs).write_text(str(os.getpid()))

    result = subprocess.run(
        argv,
        cwd=tree,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        preexec_fn=enter_cgroup if procs else None,  # noqa: PLW1509 (a write and nothing else)
    )
    lines = [line for line in result.stdout.splitlines() if line]  # CloudWatch holds no empty events
    return FailedRun(result.returncode, lines, failure_reason(tree, result.returncode))


def _memory_parent() -> tuple[Path, str] | None:
    """Where this process may create a memory cgroup, and the name of its limit file."""
    own = Path("/proc/self/cgroup").read_text().splitlines()
    if (CGROUP / "cgroup.controllers").is_file():  # v2, unified at /sys/fs/cgroup
        path = next((line.split(":", 2)[2] for line in own if line.startswith("0::")), "/")
        parent = CGROUP / path.lstrip("/")
        controllers = (parent / "cgroup.subtree_control").read_text().split() if parent != CGROUP else ["memory"]
        return (parent, "memory.max") if "memory" in controllers else None
    line = next((line for line in own if line.split(":")[1] == "memory"), None)
    if line is not None and (CGROUP / "memory").is_dir():  # v1
        return CGROUP / "memory" / line.split(":", 2)[2].lstrip("/"), "memory.limit_in_bytes"
    return None


@contextlib.contextmanager
def memory_limit(limit_bytes: int) -> Iterator[Path | None]:
    """A fresh memory cgroup limited to `limit_bytes` (no swap), or None where none can be made."""
    found = _memory_parent()
    if found is None:
        yield None
        return
    parent, limit_file = found
    group = parent / f"triage-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / limit_file).write_text(str(limit_bytes))
        for swap in ("memory.swap.max", "memory.memsw.limit_in_bytes"):
            with contextlib.suppress(OSError):  # absent without swap accounting
                (group / swap).write_text("0" if swap.endswith(".max") else str(limit_bytes))
    except OSError:
        with contextlib.suppress(OSError):
            group.rmdir()
        yield None
        return
    try:
        yield group
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()
