"""`invoke train -m`: a Hydra sweep through hydra/launcher=sagemaker, each job run by the sandbox.

The same world as tests/test_sagemaker_e2e.py (moto over HTTP, the Terraform outputs, a pushed
image tag); the emulator runs each created job. Jobs are tiny: 1 epoch on a few hundred images.
"""

from __future__ import annotations

import csv
import functools
import json
import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from project.config import compose
from project.sandbox import quotas as sandbox_quotas
from project.sandbox import service as emulator
from tests import cli
from tests.cli import one_error_line
from tests.test_sagemaker_e2e import data, job_overrides, world  # noqa: F401  (module fixtures)

pytestmark = pytest.mark.slow
invoke = functools.partial(cli.invoke, timeout=600)


def price_per_hour(cfg) -> float:
    return float(cfg.instance.price_per_hour)


def sweep_overrides(world, data, name: str, **swept) -> list[str]:  # noqa: F811
    return job_overrides(world, data, name, **{"trainer.max_epochs": 1, **swept})


def sweep_dir(world, result) -> Path:  # noqa: F811
    sweep_id = re.search(r"SageMaker sweep (\S+):", result.stdout).group(1)
    return world["root"] / "runs" / sweep_id


def described(world, base: str) -> list[dict]:  # noqa: F811
    sm = world["clients"].sagemaker
    names = [
        j["TrainingJobName"]
        for j in sm.list_training_jobs(NameContains=f"{base}-", MaxResults=100)["TrainingJobSummaries"]
    ]
    return [sm.describe_training_job(TrainingJobName=n) for n in names]


def most_at_once(jobs: list[dict]) -> int:
    """From the service's record: the most jobs that were between creation and end at one moment."""
    events = sorted(
        [(j["CreationTime"], 1) for j in jobs] + [(j["TrainingEndTime"] + timedelta(microseconds=1), -1) for j in jobs]
    )
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_grid_sweep_runs_two_at_a_time_from_one_code_bundle_and_a_rerun_skips_them(world, data, tmp_path):  # noqa: F811
    name = f"sw-{uuid.uuid4().hex[:6]}"
    assert invoke("upload", *sweep_overrides(world, data, name)).returncode == 0
    overrides = sweep_overrides(world, data, name, **{"model.lr": "0.01,0.05", "trainer.batch_size": "32,64"})
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs"):
        result = invoke("train", "-m", *overrides, "hydra.launcher.max_parallel=2", "--yes", "--poll", "1")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    out = result.stdout
    assert "4 job(s), 4 to launch, at most 2 at a time" in out and "worst case in all: $" in out
    assert out.index("worst case") < out.index("launched")  # one summary before any launch

    jobs = described(world, name)
    assert len(jobs) == 4 and all(j["TrainingJobStatus"] == "Completed" for j in jobs)
    assert most_at_once(jobs) == 2  # the launcher queued the other two
    sm = world["clients"].sagemaker
    tags = [{t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=j["TrainingJobArn"])["Tags"]} for j in jobs]
    assert len({t["config-hash"] for t in tags}) == 4  # four distinct configs
    sweep_id = tags[0]["sweep-id"]
    assert {t["sweep-id"] for t in tags} == {sweep_id} and {t["sweep-job"] for t in tags} == {"0", "1", "2", "3"}
    assert {j["TrainingJobName"] for j in jobs} == {f"{name}-{sweep_id}-{n}" for n in range(4)}
    code = {
        c["DataSource"]["S3DataSource"]["S3Uri"]
        for j in jobs
        for c in j["InputDataConfig"]
        if c["ChannelName"] == "code"
    }
    assert len(code) == 1  # one code bundle for the whole sweep ...
    (code_uri,) = code
    bucket, prefix = code_uri[len("s3://") :].split("/", 1)
    versions = world["clients"].s3.list_object_versions(Bucket=bucket, Prefix=prefix)["Versions"]
    assert versions and len(versions) == len({v["Key"] for v in versions})  # ... uploaded once
    configs = {
        c["DataSource"]["S3DataSource"]["S3Uri"]
        for j in jobs
        for c in j["InputDataConfig"]
        if c["ChannelName"] == "config"
    }
    assert len(configs) == 4  # each job its own config

    folder = sweep_dir(world, result)
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert len(rows) == 4 and all(r["status"] == "Completed" for r in rows)
    values = [float(r["val_acc"]) for r in rows]
    assert values == sorted(values, reverse=True)
    final = {j["TrainingJobName"]: {m["MetricName"]: m["Value"] for m in j["FinalMetricDataList"]} for j in jobs}
    assert all(float(r["val_acc"]) == pytest.approx(final[r["run"]]["val_acc"], abs=1e-3) for r in rows)
    assert (folder / "objective.png").read_bytes()[:4] == b"\x89PNG" and (folder / "results.md").is_file()

    fetched = invoke(
        "fetch", "--sweep", sweep_id, *world["infra_overrides"], f"paths.runs_dir={world['root'] / 'runs'}"
    )
    assert fetched.returncode == 0, fetched.stderr[-2000:]
    assert f"fetched 4 of 4 job(s) of sweep {sweep_id}" in fetched.stdout
    for r in rows:
        metrics = json.loads((folder / r["job"] / "metrics.json").read_text())
        assert metrics["val_acc"] == pytest.approx(float(r["val_acc"]), abs=1e-3)
        assert (folder / r["job"] / "model" / "model.ts").is_file()

    listing = invoke("runs", "--sweep", sweep_id, *world["infra_overrides"], f"paths.runs_dir={tmp_path}")
    assert listing.returncode == 0, listing.stderr[-2000:]
    listed = [line.split() for line in listing.stdout.splitlines() if line.startswith(name)]
    assert len(listed) == 4 and all(line[1:3] == ["sagemaker", "Completed"] for line in listed)
    assert {line[5] for line in listed} == {t["config-hash"] for t in tags}  # config hash from the tags

    rerun = invoke("train", "-m", *overrides, "hydra.launcher.max_parallel=2", "--yes", "--poll", "1")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    assert "0 to launch, 4 already completed (skipped)" in rerun.stdout
    assert len(described(world, name)) == 4  # nothing launched again


def test_a_failing_job_fails_alone_and_the_sweep_goes_on(world, data, tmp_path):  # noqa: F811
    name = f"swf-{uuid.uuid4().hex[:6]}"
    assert invoke("upload", *sweep_overrides(world, data, name)).returncode == 0
    overrides = sweep_overrides(world, data, name, **{"model.net._target_": "project.models.SmallCNN,no.such.Net"})
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs"):
        result = invoke("train", "-m", *overrides, "--yes", "--poll", "1")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"error: sweep job 1 \(\S+\) Failed: AlgorithmError", result.stderr), result.stderr[-2000:]
    jobs = {j["TrainingJobName"].rsplit("-", 1)[1]: j["TrainingJobStatus"] for j in described(world, name)}
    assert jobs == {"0": "Completed", "1": "Failed"}
    rows = {r["job"]: r for r in csv.DictReader((sweep_dir(world, result) / "results.csv").open())}
    assert rows["0"]["status"] == "Completed" and rows["1"]["status"].startswith("Failed: AlgorithmError")
    assert list(rows) == ["0", "1"]  # the completed job ranks first


def test_bad_sweeps_launch_nothing(world, data):  # noqa: F811
    sm = world["clients"].sagemaker
    before = len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"])
    name = f"swe-{uuid.uuid4().hex[:6]}"
    cases = [
        ({"model.lr": "0.01"}, "error: -m (multirun) needs at least one swept key"),
        ({"model.lrr": "0.01,0.02"}, "unknown key 'model.lrr'"),
        (
            {"trainer.gpus": "4,8", "instance": "ml.p3.8xlarge"},
            "error: sweep job 1 (trainer.gpus=8): trainer.gpus=8 but ml.p3.8xlarge has 4 GPU(s)",
        ),
    ]
    for extra, message in cases:
        line = one_error_line(invoke("train", "-m", *sweep_overrides(world, data, name, **extra), "--yes"))
        assert message in line, (extra, line)
    # Each job fits the budget; the two together do not.
    uploaded = invoke("upload", *sweep_overrides(world, data, name))
    assert uploaded.returncode == 0, uploaded.stderr
    two = {"model.lr": "0.01,0.02", "instance": "ml.m5.xlarge", "job.max_run_minutes": "60"}
    one_job = compose([f"{k}={v.split(',')[0]}" for k, v in two.items()])
    worst = price_per_hour(one_job) * 1.0
    budget = round(worst * 1.5, 2)
    line = one_error_line(
        invoke("train", "-m", *sweep_overrides(world, data, name, **two, **{"job.max_cost_usd": str(budget)}), "--yes")
    )
    assert f"this sweep of 2 jobs can cost up to ${2 * worst:.2f}, over job.max_cost_usd=${budget:.2f}" in line, line
    # The instance type's quota must fit one job before anything is launched.
    with sandbox_quotas.set_quota("ml.m5.xlarge for training job usage", 0):
        line = one_error_line(invoke("train", "-m", *sweep_overrides(world, data, name, **two), "--yes"))
    assert "quota 'ml.m5.xlarge for training job usage' is 0" in line, line
    assert len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]) == before
