"""Every bad value is one line, before anything is written: `invoke local <override>` as a user
types it (the default run name), on tiny data. The exit is 2, stderr holds one `error:` line naming
the key, there is no traceback, and no run folder is left under paths.runs_dir (nor outside it)."""

from __future__ import annotations

import shutil
import subprocess
import typing
from pathlib import Path

import pytest

from project.core import config as C
from tests.cli import invoke, invoke_here, one_error_line
from tests.requires import requires

# The start line a training run prints (project.training.reporting.StartLine): a check that fails in the
# invoke process never gets that far.
STARTED = "run cnn-"


def run_folders(runs: Path) -> list[Path]:
    return sorted(runs.iterdir()) if runs.exists() else []


def refused(tiny_run, runs: Path, *case: str, here: bool = False) -> str:
    """`invoke local <tiny data> <case>`: the one error line, after checking nothing was left.
    here: a refusal of the invoke process itself, run in this one (tests/cli.py's invoke_here)."""
    result = (invoke_here if here else invoke)("local", *tiny_run(), *case)
    line = one_error_line(result)
    assert run_folders(runs) == [], run_folders(runs)
    return line + "\n" + result.stdout


# Caught in the invoke process, at compose time or by its check of paths.runs_dir: training never starts.
@pytest.mark.parametrize(
    "case,key",
    [
        ("model.lr=-1", "model.lr must be > 0"),
        ("trainer.precision=64x", "trainer.precision=64x is not a Lightning precision (did you mean 64-true?)"),
        ("trainer.num_workers=-1", "trainer.num_workers must be >= 0, got -1"),
        ("+trainer.foo=1", "unknown key 'trainer.foo'"),
        ("run_name=../../escape", "run_name='../../escape' is not a plain folder name"),
        ("run_name=a/b", "run_name='a/b' is not a plain folder name"),
        ("paths.runs_dir=/proc/runs", "paths.runs_dir=/proc/runs: cannot write under /proc (no folder can be made"),
    ],
)
def test_a_bad_value_the_config_can_know_is_one_line_before_training_starts(tiny_run, tmp_path, case, key):
    runs = tmp_path / "runs"
    said = refused(tiny_run, runs, case, here=True)
    assert key in said
    assert STARTED not in said
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path / "escape").exists()


def mount_tmpfs(folder: Path, options: str) -> None:
    """A real small filesystem; the tests asking for one say `requires(root=True)`."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    assert done.returncode == 0, f"mount -t tmpfs refused although root with CAP_SYS_ADMIN: {done.stderr.strip()}"


@pytest.fixture
def mounts(tmp_path):
    made: list[Path] = []

    def mount(name: str, options: str) -> Path:
        folder = tmp_path / name
        mount_tmpfs(folder, options)
        made.append(folder)
        return folder

    yield mount
    for folder in made:
        subprocess.run(["umount", str(folder)], check=True)


@requires(root=True)
def test_a_read_only_runs_dir_is_one_line_before_training_starts(tiny_run, mounts):
    # Root passes every permission bit, so chmod proves nothing here: a read-only mount does.
    read_only = mounts("ro", "size=1m,ro")
    said = refused(tiny_run, read_only / "runs", f"paths.runs_dir={read_only / 'runs'}")
    assert f"paths.runs_dir={read_only / 'runs'}: cannot write under {read_only} (Read-only file system)" in said
    assert STARTED not in said


@requires(root=True)
def test_a_nearly_full_disk_is_refused_before_the_first_step(tiny_run, mounts):
    # 256 KiB free: the code before this check trained a whole epoch, wrote a checkpoint and failed
    # writing the exported model, leaving a half-written run folder.
    disk = mounts("full", "size=8m")
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - (256 << 10)))
    said = refused(tiny_run, disk / "runs", f"paths.runs_dir={disk / 'runs'}")
    line = said.splitlines()[0]
    assert "MiB free, but this run needs about" in line and "paths.runs_dir=" in line, line
    assert "checkpoints of the weights and an Adam-style optimizer's state" in line
    assert "epoch=" not in said  # not a step was trained


# Known only once the network is built or the data read: caught in the training process before
# its first step; the run folder it began is removed (it holds no checkpoint).
@pytest.mark.parametrize(
    "case,key",
    [
        ("model.net.width=0", "model.net=project.training.models.SmallCNN has an empty layer"),
        ("dataset.image_shape=[3,28,28]", "dataset.image_shape=[3,28,28] but the train images are [1,28,28]"),
        ("trainer.batch_size=100000", "trainer.batch_size=100000 is larger than the training set (500 samples"),
    ],
)
def test_a_bad_value_only_the_network_or_data_reveals_is_one_line_before_the_first_step(tiny_run, tmp_path, case, key):
    said = refused(tiny_run, tmp_path / "runs", case)
    assert key in said
    assert case.split("=")[0] in said.splitlines()[0]
    assert "epoch=" not in said


def test_the_precision_names_are_lightnings():
    from lightning_fabric.connector import _PRECISION_INPUT

    def names(hint) -> set[str]:
        args = typing.get_args(hint)
        return set().union(*(names(a) for a in args)) if args and typing.get_origin(hint) is not None else {str(hint)}

    assert set(C.PRECISIONS) == names(_PRECISION_INPUT)
