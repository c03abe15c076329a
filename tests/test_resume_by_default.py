"""`invoke local` with the default run name, as a user types it: the same command resumes.

No `run_name=` here: a run is `<model>-<timestamp>`, and the config's identity (project/core/identity.py)
finds the run to resume. Each command is a real `invoke` subprocess; Ctrl-C is SIGINT to its
process group, as a terminal sends it (tests/test_interrupts.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from project.core.runtime import PROGRESS_ENV
from tests.cli import invoke, one_error_line
from tests.synthetic import tiny_overrides
from tests.test_interrupts import ctrl_c, start_invoke, wait_until

PROGRESS = re.compile(r"^epoch \d+/\d+ step \d+/\d+ \(\d+%\): ([\d,]+) samples/s, epoch ETA (.+)$", re.M)


def files_under(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def eta_seconds(text: str) -> float:
    """`42 s`, `1:10` or `55:17:47` (reporting._duration) in seconds."""
    if text.endswith(" s"):
        return float(text[:-2])
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


@pytest.mark.slow
def test_the_same_default_command_resumes_then_refuses_to_train_a_finished_run_again(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    # A periodic checkpoint every 2 of the 8 steps an epoch: Ctrl-C lands after one, mid-epoch.
    command = ["local", *tiny_overrides(*tiny_data, runs, **{"trainer.max_epochs": 4})]
    command.append("trainer.checkpoint_every_n_steps=2")
    os.environ[PROGRESS_ENV] = "0"  # a progress line at every step (the subprocesses inherit it)
    try:
        proc = start_invoke(*command)
        wait_until(lambda: any(runs.glob("*/checkpoints/*.ckpt")), proc)
        code, out, err = ctrl_c(proc)
        assert code == 130, (out[-2000:], err[-2000:])
        (run_dir,) = runs.iterdir()
        assert re.fullmatch(r"cnn-\d{8}-\d{6}", run_dir.name)  # the default name
        (line,) = [line for line in err.splitlines() if line.startswith("interrupted at step")]
        assert line.endswith("; checkpoint saved; run the same command to resume"), err[-2000:]
        step = int(line.split()[3].rstrip(";"))

        listed = invoke("runs", f"paths.runs_dir={runs}")
        assert listed.returncode == 0, listed.stderr
        rows = [row for row in listed.stdout.splitlines() if row.startswith("cnn-")]
        assert len(rows) == 1 and f"local  interrupted at step {step}  " in rows[0], listed.stdout
        assert "run the same `invoke local` command again" in listed.stdout

        resumed = invoke(*command)  # the same command
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert [p.name for p in runs.iterdir()] == [run_dir.name]  # in the interrupted run's folder
        assert re.search(
            rf"^resuming run {run_dir.name} from step {step} \(\w+-step={step:08d}\.ckpt\)$", resumed.stdout, re.M
        )
        # Rate and ETA over the steps this process trained: not 0 samples/s and an ETA of hours.
        after = resumed.stdout.split("resuming run", 1)[1]
        lines = PROGRESS.findall(after)
        assert lines, resumed.stdout[-3000:]
        for rate, eta in lines:
            assert int(rate.replace(",", "")) > 0 and eta_seconds(eta) < 120, (rate, eta)
        assert (run_dir / "metrics.json").is_file()
    finally:
        del os.environ[PROGRESS_ENV]

    before = files_under(runs)
    again = invoke(*command)
    assert one_error_line(again) == (
        f"error: this config already trained as run {run_dir.name} ({run_dir}, config "
        f"{_identity(run_dir)}, finished): to train it again pass a new trainer.seed=, or run_name=<new name>"
    )
    assert files_under(runs) == before  # nothing written

    listed = invoke("runs", f"paths.runs_dir={runs}")
    rows = [row for row in listed.stdout.splitlines() if row.startswith("cnn-")]
    assert len(rows) == 1 and "local  Completed  " in rows[0], listed.stdout  # once, not also as <run>/output


def _identity(run_dir: Path) -> str:
    import json

    return json.loads((run_dir / "metrics.json").read_text())["config_hash"]


def test_a_run_name_taken_by_another_config_is_refused_before_anything_is_written(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    first = invoke("local", *tiny_overrides(*tiny_data, runs, run_name="r1", **{"trainer.max_epochs": 1}))
    assert first.returncode == 0, first.stderr[-2000:]
    before = files_under(runs)
    other = invoke(
        "local", *tiny_overrides(*tiny_data, runs, run_name="r1", **{"trainer.max_epochs": 1}), "model.lr=0.02"
    )
    line = one_error_line(other)
    assert line.startswith(f"error: run_name=r1 is taken by another config's run in {runs / 'r1'} (config "), line
    assert line.endswith("pick a new run_name=, or leave it out"), line
    assert files_under(runs) == before


def test_progress_reads_a_checkpoint_folder_or_an_s3_listing_alike():
    from project.core.identity import Progress, progress

    keys = [
        "checkpoints/lightning-0123456789ab/0123456789ab-step=00000008.ckpt",
        "checkpoints/lightning-0123456789ab/0123456789ab-step=00000016.ckpt",
        "checkpoints/lightning-0123456789ab/0123456789ab-finished.json",
        "fedcba987654-step=00000003.ckpt",
        ".fedcba987654-step=00000005.ckpt.part",  # a save in progress is no checkpoint
        "notes.txt",
    ]
    assert progress(keys) == {
        "0123456789ab": Progress("0123456789ab", 16, True),
        "fedcba987654": Progress("fedcba987654", 3, False),
    }
    assert progress(keys)["fedcba987654"].status == "interrupted at step 3"
    # trainer.strategy=fsdp in S3: a folder's files, the hosts' shards; it counts once its index is there
    folder = "checkpoints/lightning-aaaaaaaaaaaa/"
    shards = ("__0_0.distcp", "__1_0.distcp", "meta.pt")
    keys = [f"{folder}aaaaaaaaaaaa-step={step:08d}.ckpt/{name}" for step in (5, 10) for name in shards]
    keys.append(f"{folder}aaaaaaaaaaaa-step=00000005.ckpt/.metadata")  # step 10's index not synced yet
    keys.append(f"{folder}.aaaaaaaaaaaa-step=00000015.ckpt.part/.metadata")  # a save in progress
    assert progress(keys) == {"aaaaaaaaaaaa": Progress("aaaaaaaaaaaa", 5, False)}


def test_damaged_data_is_named_even_where_the_configs_run_is_finished(tiny_data, tmp_path):
    """The run's identity holds what the data is (dataset.files), not where it is read from: the
    same config over a copy of the data is the same, finished run. A damaged copy is named first."""
    import shutil

    folder, files = tiny_data
    runs = tmp_path / "runs"
    first = invoke("local", *tiny_overrides(folder, files, runs, **{"trainer.max_epochs": 1}))
    assert first.returncode == 0, first.stderr[-2000:]
    damaged = shutil.copytree(folder, tmp_path / "damaged")
    victim = sorted(damaged.glob("train-images*"))[0]
    victim.write_bytes(victim.read_bytes()[:-100])
    before = files_under(runs)
    again = invoke("local", *tiny_overrides(damaged, files, runs, **{"trainer.max_epochs": 1}))
    line = one_error_line(again)
    assert victim.name in line and "already trained" not in line, line
    assert files_under(runs) == before
    intact = invoke(
        "local", *tiny_overrides(shutil.copytree(folder, tmp_path / "copy"), files, runs, **{"trainer.max_epochs": 1})
    )
    assert "already trained" in one_error_line(intact)
