"""trainer.profile: torch.profiler over a window of steps, on real tiny CPU runs; every run's step clock."""

import json
import re

import pytest

from project.core.config import ConfigError
from project.training.train import run_composed


def test_a_profiled_run_writes_a_trace_tensorboard_reads_and_a_table_that_adds_up(composed, tiny_run, tmp_path, capsys):
    cfg = composed(*tiny_run(run_name="prof", **{"trainer.profile": "true", "trainer.profile_steps": "[2,7]"}))
    run_composed(cfg)
    out = capsys.readouterr().out
    profile_dir = tmp_path / "runs" / "prof" / "output" / "tensorboard" / "plugins" / "profile" / "prof"
    (trace,) = profile_dir.glob("*.pt.trace.json")  # the layout TensorBoard's profiler plugin reads
    events = json.loads(trace.read_text())["traceEvents"]
    steps = sorted({e["name"] for e in events if str(e.get("name", "")).startswith("ProfilerStep#")})
    assert len(steps) == 5  # steps 2..6, no more: the window only
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [int(r[0]) for r in rows] == [2, 3, 4, 5, 6]
    phases = sum(float(r[1]) + float(r[2]) + float(r[3]) for r in rows)
    measured = sum(float(r[5]) for r in rows)  # the profiler's own ProfilerStep ranges
    assert abs(phases - measured) <= 0.1 * measured, (phases, measured)
    assert "top operators by self CPU time" in out and "aten::" in out


def test_every_epoch_line_says_step_time_and_data_wait(composed, tiny_run, capsys):
    run_composed(composed(*tiny_run(run_name="clock", **{"trainer.max_epochs": 1})))
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("epoch=")]
    step = float(re.search(r"\bstep_time_ms=([\d.]+)", line).group(1))
    wait = float(re.search(r"\bdata_wait_ms=([\d.]+)", line).group(1))
    assert 0 < wait < step


@pytest.mark.parametrize(
    "steps, message",
    [
        ("[5]", r"trainer.profile_steps=\[5\]: give two optimizer steps"),
        ("[7,3]", r"0 <= start < end"),
        ("[3,3]", r"0 <= start < end"),
        ("[-1,3]", r"0 <= start < end"),
    ],
)
def test_a_bad_profile_window_is_one_line(composed, steps, message):
    with pytest.raises(ConfigError, match=message):
        composed(f"trainer.profile_steps={steps}")


def test_a_window_past_the_runs_last_step_is_refused_before_anything_is_written(composed, tiny_run, tmp_path):
    with pytest.raises(ConfigError, match=r"ends past the run's last step \(6: limit_train_batches=3 x max_epochs=2\)"):
        composed(*tiny_run(**{"trainer.profile": "true", "trainer.limit_train_batches": 3}))
    from project.core.errors import UserError

    cfg = composed(*tiny_run(run_name="late", **{"trainer.profile": "true", "trainer.profile_steps": "[10,30]"}))
    with pytest.raises(UserError, match=r"ends past the run's last step \(16: 8 steps x 2 epochs\)"):
        run_composed(cfg)
    assert not (tmp_path / "runs" / "late").exists()
