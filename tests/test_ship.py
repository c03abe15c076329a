"""`invoke ship`'s pure parts: choosing the sweep's best job, the stage record, the checks before AWS.

The chain itself (a sweep's best job registered, canaried, rolled back by an alarm, interrupted and
resumed, promoted) runs on the sandbox in tests/test_sweep_sagemaker.py, on that module's sweep.
"""

from __future__ import annotations

import math

import pytest

from project.aws.rollout_requests import Rollout, bake_cost_line
from project.core.sweep_jobs import JobResult
from project.face.ship import STAGES, Record, ShipError, best_job, read_record, record_path, summary, write_record
from tests.cli import invoke, one_error_line


def _job(num: int, status: str = "Completed", **metrics: float) -> JobResult:
    return JobResult(num, [f"model.lr=0.0{num}"], status, f"job-{num}", dict(metrics))


def test_the_best_completed_job_by_the_objective_and_one_line_when_there_is_none():
    jobs = [_job(0, val_acc=0.8), _job(1, val_acc=0.9, val_loss=0.3), _job(2, "Failed"), _job(3, val_acc=math.nan)]
    assert best_job(jobs, "val_acc", "maximize", "s").name == "job-1"
    assert best_job([*jobs, _job(4, "Skipped", val_acc=0.95)], "val_acc", "maximize", "s").name == "job-4"
    assert best_job([_job(0, val_loss=0.5), _job(1, val_loss=0.2)], "val_loss", "minimize", "s").name == "job-1"
    with pytest.raises(ShipError, match=r"^sweep s has no completed job \(its 2 job\(s\): Failed, Stopped\)"):
        best_job([_job(0, "Failed"), _job(1, "Stopped")], "val_acc", "maximize", "s")
    with pytest.raises(ShipError, match=r"sweep.objective=val_f1: no completed job of sweep s reported it \(they "):
        best_job(jobs, "val_f1", "maximize", "s")


def test_the_record_says_which_stages_are_done_and_survives_a_round_trip(tmp_path):
    path = record_path(tmp_path / "runs", "251207-101010-abcd", "prod")
    assert path == tmp_path / "runs" / "251207-101010-abcd" / "ship-prod.json"
    assert read_record(path) is None
    record = Record("251207-101010-abcd", "prod", "job-1", "val_acc", 0.9, 3)
    assert not any(record.done(stage) for stage in STAGES)
    record.stage, record.version = "deploying", "group/2"
    assert [record.done(stage) for stage in STAGES] == [True, True, False, False]
    write_record(path, record)
    assert read_record(path) == record
    path.write_text("{not json")
    with pytest.raises(ShipError, match="is not a record of `invoke ship`: remove it"):
        read_record(path)


def test_the_rollout_costs_the_new_fleet_for_every_bake(composed):
    dc = composed("deploy.instance=ml.m5.large", "deploy.instance_count=2").deploy
    line = bake_cost_line(Rollout("CANARY", 10, 30), dc)  # two steps of 30 min: an hour of 2 x $0.115
    assert line.endswith("for up to 60 min of bakes: up to $0.230 more"), line


def test_bad_input_is_one_line_before_any_aws_call():
    for args, message in {
        ("ship", "251207-101010-abcd"): "give the endpoint to ship to: deploy.endpoint_name=<name>",
        ("ship", "s", "deploy.endpoint_name=ep", "--canary", "70"): "--canary 70: give a canary as a percent",
        ("ship", "s", "deploy.endpoint_name=ep", "deploy.instance=ml.x"): "unknown instance type deploy.instance=ml.x",
    }.items():
        assert message in one_error_line(invoke(*args)), args


def test_the_summary_says_each_stage_done_or_next_and_the_cost(composed):
    ctx = type("Ctx", (), {"cfg": composed("deploy.model_group=digits")})()
    record = Record("s", "prod", "job-1", "val_acc", 0.93, 4, stage="registered", version="digits/3")
    canary = summary(record, ctx, Rollout("CANARY", 10, 5))
    assert canary == [
        "ship sweep s to endpoint prod:",
        "  best of 4 completed job(s) by sweep.objective=val_acc (maximize): job-1, val_acc=0.93",
        "  done: register it in model group digits through the gate (deploy.gate.metric=test_acc, tolerance 0.01): "
        "digits/3",
        "  next: canary: 10% -> 100% of the traffic on the new fleet, each baking 5 min on endpoint prod; "
        "an alarm rolls it back",
        "  next: approve the version once the endpoint serves it",
        "cost: ml.m5.large x 1: $0.115/hour ($2.76/day) while it is up, used or not; marked expired after 8 h",
        "cost: the rollout runs the new fleet (ml.m5.large x 1) beside the old one for up to 10 min of bakes: "
        "up to $0.019 more",
    ]
    created = summary(record, ctx, None)
    assert created[3] == "  next: create endpoint prod serving it (there is none)" and len(created) == 6
