"""A job's start-up breakdown and the launch summary's prediction (project/aws/startup_times.py),
over DescribeTrainingJob responses shaped as SageMaker returns them and the `[startup]` lines a
job's log holds (project/core/startup.py prints them). The sandbox's real jobs are checked in
tests/test_sagemaker_e2e.py."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from project.aws import startup_times
from project.aws.startup_history import Seen, prediction
from project.aws.startup_times import Started, breakdown, job_breakdowns, predict, report
from project.core import startup

CREATED = datetime(2026, 11, 3, 10, 0, 0, 123000, tzinfo=UTC)
IMAGE = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.5.1-gpu-py311"


def at(seconds: float) -> datetime:
    return CREATED + timedelta(seconds=seconds)


def described(name: str = "lightning-20261103-100000-123-ab12", **extra) -> dict:
    """A completed g5 job as DescribeTrainingJob has it: 151 s Starting, 18 s Downloading, then Training."""
    return {
        "TrainingJobName": name,
        "TrainingJobStatus": "Completed",
        "SecondaryStatus": "Completed",
        "CreationTime": CREATED,
        "TrainingStartTime": at(151.333),
        "TrainingEndTime": at(500.0),
        "BillableTimeInSeconds": 349,
        "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        "AlgorithmSpecification": {"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        "SecondaryStatusTransitions": [
            {"Status": "Starting", "StartTime": CREATED, "EndTime": at(151.333),
             "StatusMessage": "Preparing the instances for training"},
            {"Status": "Downloading", "StartTime": at(151.333), "EndTime": at(169.0),
             "StatusMessage": "Downloading input data"},
            {"Status": "Training", "StartTime": at(169.0), "EndTime": at(492.0),
             "StatusMessage": "Training image download completed. Training in progress."},
            {"Status": "Uploading", "StartTime": at(492.0), "EndTime": at(500.0),
             "StatusMessage": "Uploading generated training model"},
            {"Status": "Completed", "StartTime": at(500.0), "EndTime": at(500.0),
             "StatusMessage": "Training job completed"},
        ],
        **extra,
    }  # fmt: skip


# Seconds after CreationTime each phase was marked in the job's log (image download 51 s, pip 41.5 s).
MARKS = {
    "container_start": 220.2,
    "launcher_ready": 261.7,
    "imported": 269.9,
    "data_verified": 271.0,
    "built": 271.6,
    "data_loaded": 272.1,
    "train_start": 273.0,
    "first_step": 273.4,
}


def log(marks=MARKS, shift: float = 0.0) -> list[str]:
    """A host's log: sm_train.sh's set-up, our lines and the markers, as CloudWatch keeps them."""
    lines = ["Starting training script", "Requirement already satisfied: pyyaml==6.0.2"]
    for phase, seconds in marks.items():
        lines += [startup.marker_line(phase, at(seconds + shift).timestamp()), f"after {phase}"]
    return lines + ["epoch=1 test_acc=0.91"]


def test_a_marker_line_reads_back_and_no_other_line_does():
    line = startup.marker_line("first_step", 1793700000.25)
    assert line == "[startup] phase=first_step t=1793700000.250"
    assert startup.parse_marker(line + "\n") == ("first_step", 1793700000.25)
    for other in ("[startup] phase=first_step", "epoch=1 [startup] phase=x t=1", "phase=imported t=3"):
        assert startup.parse_marker(other) is None


def test_a_container_prints_each_logged_phase_once_on_its_hosts_first_process(monkeypatch, capsys):
    monkeypatch.delenv(startup.TRACE_ENV, raising=False)
    monkeypatch.delenv("SM_CURRENT_HOST", raising=False)
    startup.mark("imported")
    assert capsys.readouterr().out == ""  # a laptop's run prints nothing
    monkeypatch.setenv("SM_CURRENT_HOST", "algo-1")
    startup.mark("imported", at=12.5)
    startup.mark("process_start")  # traced, not logged
    assert capsys.readouterr().out == "[startup] phase=imported t=12.500\n"
    monkeypatch.setenv("LOCAL_RANK", "1")  # the host's other ranks stay quiet
    startup.mark("first_step")
    assert capsys.readouterr().out == ""


def test_the_billed_phases_add_up_to_first_step_minus_training_start_and_provisioning_is_not_billed():
    desc = described()
    (shown,) = job_breakdowns(desc, {"algo-1": log()})
    names = [phase.name for phase in shown.phases]
    assert names == [name for name, _ in startup_times.STAGES]
    assert [marker for _, marker in startup_times.STAGES[2:]] == list(
        startup.LOGGED_PHASES
    )  # the markers, in core.startup's order
    provisioning, download, image = shown.phases[:3]
    assert (provisioning.billed, provisioning.seconds) == (False, pytest.approx(151.333))
    assert download.billed and download.seconds == pytest.approx(169.0 - 151.333)
    assert image.seconds == pytest.approx(220.2 - 169.0)  # under `Training`, before the container's PID 1
    assert all(phase.billed for phase in shown.phases[1:])
    assert shown.billed_seconds == pytest.approx(273.4 - 151.333)  # what SageMaker billed before the first step
    assert shown.total_seconds == pytest.approx(273.4)
    text = report(desc["TrainingJobName"], [shown])
    assert text.splitlines()[0] == (
        f"start-up of {desc['TrainingJobName']}, host algo-1: 4 min 33 s from CreateTrainingJob to the first step, "
        "2 min 2 s of it billed"
    )
    assert re.search(r"^  provisioning \(Starting\) +151\.3 s  not billed$", text, re.M)
    assert re.search(r"^  set-up: sm_train\.sh, pip +41\.5 s$", text, re.M)
    assert re.search(r"\n  billed \(from TrainingStartTime\) +122\.1 s$", text)


def test_a_phase_the_log_never_marked_folds_into_the_next_and_the_sum_stays_exact():
    marks = {phase: seconds for phase, seconds in MARKS.items() if phase not in ("launcher_ready", "built")}
    shown = breakdown(described(), "algo-1", {p: at(s).timestamp() for p, s in marks.items()})
    names = [phase.name for phase in shown.phases]
    assert (
        "set-up: sm_train.sh, pip + interpreter, imports" in names and "model built + rendezvous, data set-up" in names
    )
    assert shown.billed_seconds == pytest.approx(273.4 - 151.333)


def test_an_instance_clock_behind_aws_makes_no_phase_negative():
    early = {**MARKS, "container_start": 160.0}  # before the `Training` transition AWS recorded at 169 s
    shown = breakdown(described(), "algo-1", {p: at(s).timestamp() for p, s in early.items()})
    assert min(phase.seconds for phase in shown.phases) == 0.0
    assert shown.billed_seconds == pytest.approx(273.4 - 151.333)


def test_a_job_that_failed_before_its_first_step_shows_where_it_got_to():
    desc = described(TrainingJobStatus="Failed")
    marks = {p: s for p, s in MARKS.items() if p in ("container_start", "launcher_ready")}
    (shown,) = job_breakdowns(desc, {"algo-1": log(marks)})
    assert not shown.reached_first_step and shown.phases[-1].name == "set-up: sm_train.sh, pip"
    assert "to where it got to (no first step)" in report(desc["TrainingJobName"], [shown])
    still_starting = {
        k: v for k, v in described().items() if k not in ("TrainingStartTime", "SecondaryStatusTransitions")
    }
    assert job_breakdowns(still_starting, {}) == []
    assert report("j", []) == "start-up of j: no TrainingStartTime and no log: it has not got past provisioning"


def test_several_hosts_show_the_slowest_and_each_hosts_time():
    hosts = {"algo-1": log(), "algo-2": log(shift=4.0)}  # algo-2 reached each phase 4 s later
    found = job_breakdowns(described(), hosts)
    text = report("j", found)
    assert startup_times.slowest(found).host == "algo-2" and text.startswith("start-up of j, host algo-2: 4 min 37 s")
    assert text.endswith("hosts to the first step: algo-1 4 min 33 s, algo-2 4 min 37 s (the slowest shown)")


def started(job: str, total: float, billed: float, *, warm=False, setup=41.5, skippable=220.0, **keys) -> Started:
    fields = {"instance_type": "ml.g5.xlarge", "image": IMAGE, **keys}
    return Started(job, fields["instance_type"], fields["image"], warm, billed, total, skippable, setup)


def test_the_prediction_is_the_median_of_the_same_instance_and_image_cold_and_warm():
    history = [
        started("a", 220.0, 120.0),
        started("b", 240.0, 130.0),
        started("c", 260.0, 125.0),
        started("d", 25.0, 24.0, warm=True, skippable=0.0),
        started("e", 90.0, 60.0, instance_type="ml.m5.xlarge"),  # another instance: not counted
        started("f", 90.0, 60.0, image=IMAGE.replace("2.5.1", "2.4.0")),  # another image: not counted
    ]
    lines = predict(history, "ml.g5.xlarge", IMAGE, "aws", keep_alive_seconds=0, warm_pool_available=False)
    assert lines[0] == (
        "~4 min 0 s cold (2 min 5 s billed), 25 s from a warm pool (24 s billed), from your last 4 jobs "
        "on ml.g5.xlarge with this image"
    )
    assert lines[1].startswith("a warm pool (job.keep_alive_minutes=N) would skip ~3 min 40 s of provisioning")
    assert lines[2].startswith("job.image=custom would skip ~42 s of billed pip set-up at every start")
    kept = predict(history, "ml.g5.xlarge", IMAGE, "custom", keep_alive_seconds=600, warm_pool_available=True)
    assert kept == (
        "~4 min 0 s cold (2 min 5 s billed), 25 s from a warm pool (24 s billed), from your last 4 jobs on "
        "ml.g5.xlarge with this image (a warm pool is Available: this job may reuse it)",
    )  # a pool already kept, a custom image: nothing to suggest
    quick = [replace(s, setup_seconds=3.0, warm_skippable_seconds=12.0) for s in history[:3]]
    assert len(predict(quick, "ml.g5.xlarge", IMAGE, "aws", 0, False)) == 1  # too little to save: no advice


def test_no_history_is_one_line_that_says_so():
    assert predict([started("e", 90.0, 60.0)], "ml.p4d.24xlarge", IMAGE, "aws", 0, False) == (
        "no earlier job on ml.p4d.24xlarge with this image to predict from (each job's is in `invoke status JOB`)",
    )


def test_a_seen_job_survives_the_cache_and_warm_comes_from_the_pool_it_reused():
    desc = described(WarmPoolStatus={"Status": "Reused", "ReusedByJob": "next-job"})
    (shown,) = job_breakdowns(desc, {"algo-1": log()})
    seen = Seen(
        desc["TrainingJobName"], "ml.g5.xlarge", IMAGE, Started.of(desc, shown, warm=False), "Reused", "next-job"
    )
    assert Seen.from_json(seen.to_json()) == seen and seen.final("Completed") and not seen.final("InProgress")
    assert not replace(seen, pool_status="Available").final("Completed")  # a live pool may still be reused
    assert seen.started.setup_seconds == pytest.approx(41.5)
    assert seen.started.warm_skippable_seconds == pytest.approx(151.333 + 220.2 - 169.0)  # not the data download


def test_credentials_that_may_not_list_jobs_get_one_line_and_the_launch_goes_on():
    from botocore.exceptions import ClientError

    class Refusing:  # the SageMaker client of a policy without sagemaker:ListTrainingJobs
        def list_training_jobs(self, **_):
            raise ClientError(
                {"Error": {"Code": "AccessDeniedException", "Message": "not allowed"}}, "ListTrainingJobs"
            )

    plan = SimpleNamespace(base_name="lightning", instance_type="ml.g5.xlarge", image=None, keep_alive_seconds=0)
    assert prediction(Refusing(), None, plan) == (
        "no prediction: ListTrainingJobs was refused (AccessDeniedException)",
    )
