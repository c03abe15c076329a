"""`invoke train -m`: a Hydra sweep through hydra/launcher=sagemaker, each job run by the sandbox.

The same world as tests/test_sagemaker_e2e.py (moto over HTTP, the Terraform outputs, a pushed
image tag); the emulator runs each created job. Jobs are tiny: 1 epoch on a few hundred images.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from project.aws.sweep import SweepSession
from project.core.config import compose
from project.core.sweep_jobs import Job
from project.sandbox import quotas as sandbox_quotas
from project.sandbox import service as emulator
from project.training.train import run_composed
from tests import cli
from tests.cli import one_error_line, refusal
from tests.synthetic import tiny_overrides
from tests.test_sagemaker_e2e import data, job_overrides, long_data, wait_for_periodic_checkpoint, world  # noqa: F401

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


@pytest.fixture(scope="module")
def grid(world, data, tmp_path_factory):  # noqa: F811
    """A 4-job grid sweep, run once for the module: the grid test checks it, the ship test ships its best job.
    Every job starts from one earlier local run (trainer.init_from)."""
    name = f"sw-{uuid.uuid4().hex[:6]}"
    assert invoke("upload", *sweep_overrides(world, data, name)).returncode == 0
    parent = run_composed(compose(tiny_overrides(*data, world["root"] / "runs", run_name=f"{name}-a")))
    swept = {"model.lr": "0.01,0.05", "trainer.batch_size": "32,64"}
    overrides = sweep_overrides(world, data, name, **swept, **{"trainer.init_from": f"{name}-a"})
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path_factory.mktemp("grid") / "jobs"):
        result = invoke("train", "-m", *overrides, "hydra.launcher.max_parallel=2", "--yes", "--poll", "1")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    return {"name": name, "parent": parent, "overrides": overrides, "result": result}


def test_grid_sweep_runs_two_at_a_time_from_one_code_bundle_and_a_rerun_skips_them(world, grid, tmp_path):  # noqa: F811
    """Every job starts from one earlier local run (trainer.init_from): its weights uploaded once, each
    job's model channel and parent tags as a single `invoke train` gives them."""
    name, parent, overrides, result = grid["name"], grid["parent"], grid["overrides"], grid["result"]
    out = result.stdout
    assert "4 job(s), 4 to launch, at most 2 at a time" in out
    assert "budget: for the 4 job(s) to launch, worst case $" in out
    assert out.index("worst case") < out.index("launched")  # one summary before any launch
    assert "  start-up no earlier job on ml.m5.xlarge with this image to predict from" in out, out[:3000]

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
    models = {
        (c["DataSource"]["S3DataSource"]["S3Uri"], c["InputMode"])
        for j in jobs
        for c in j["InputDataConfig"]
        if c["ChannelName"] == "model"
    }
    (model_uri, mode), bucket = models.pop(), world["infra"].artifacts_bucket
    assert not models and mode == "File" and model_uri.startswith(f"s3://{bucket}/models/{name}-a/init-from-")
    assert f"start from {name}-a ({parent['config_hash']}): {model_uri}" in out
    assert out.count(f"-> {model_uri}") == 1  # uploaded once, before the launches
    assert all(t["parent-run"] == f"{name}-a" and t["parent-config-hash"] == parent["config_hash"] for t in tags)

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
        assert metrics["parent"] == {"run": f"{name}-a", "config_hash": parent["config_hash"], "weights": model_uri}
        assert (folder / r["job"] / "model" / "model.ts").is_file()

    listing = invoke("runs", "--sweep", sweep_id, *world["infra_overrides"], f"paths.runs_dir={tmp_path}")
    assert listing.returncode == 0, listing.stderr[-2000:]
    listed = [line.split() for line in listing.stdout.splitlines() if line.startswith(name)]
    assert len(listed) == 4 and all(line[1:3] == ["sagemaker", "Completed"] for line in listed)
    assert {line[5] for line in listed} == {t["config-hash"] for t in tags}  # config hash from the tags

    # Completed jobs are not launched again, so they cost nothing: a budget of a cent passes.
    budget = "job.max_cost_usd=0.01"
    rerun = invoke("train", "-m", *overrides, budget, "hydra.launcher.max_parallel=2", "--yes", "--poll", "1")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-2000:]
    assert "0 to launch, 4 already completed (skipped)" in rerun.stdout
    # The four jobs' start-ups are the history now: the summary predicts from them.
    assert re.search(
        r"^  start-up ~\d.* cold \(.* billed\), from your last 4 jobs on ml\.m5\.xlarge", rerun.stdout, re.M
    ), rerun.stdout[:3000]
    assert len(described(world, name)) == 4  # nothing launched again


def test_a_failing_job_fails_alone_and_the_sweep_goes_on(world, data, tmp_path):  # noqa: F811
    """Job 1 reads a prefix whose files are corrupt (it passes every check before launch: the data is there)."""
    name = f"swf-{uuid.uuid4().hex[:6]}"
    assert invoke("upload", *sweep_overrides(world, data, name)).returncode == 0
    s3, bucket = world["clients"].s3, world["infra"].data_bucket
    for stem in data[1]:
        s3.put_object(Bucket=bucket, Key=f"datasets/{name}-bad/train/{stem}.gz", Body=b"not a gzip file")
    overrides = sweep_overrides(world, data, name, **{"dataset.s3_prefix": f"datasets/{name},datasets/{name}-bad"})
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs"):
        result = invoke("train", "-m", *overrides, "--yes", "--poll", "1")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"error: sweep job 1 \(\S+\) Failed: AlgorithmError", result.stderr), result.stderr[-2000:]
    jobs = {j["TrainingJobName"].rsplit("-", 1)[1]: j["TrainingJobStatus"] for j in described(world, name)}
    assert jobs == {"0": "Completed", "1": "Failed"}
    rows = {r["job"]: r for r in csv.DictReader((sweep_dir(world, result) / "results.csv").open())}
    assert rows["0"]["status"] == "Completed" and rows["1"]["status"].startswith("Failed: AlgorithmError")
    assert list(rows) == ["0", "1"]  # the completed job ranks first


def test_bad_sweeps_launch_nothing(composed, world, data):  # noqa: F811
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
        (  # the job would fail on it: refused before the first job is paid for, as `invoke train` does
            {"model.net._target_": "project.training.models.SmallCNN,no.such.Net"},
            "error: sweep job 1 (model.net._target_=no.such.Net): model.net._target_=no.such.Net: cannot import module",
        ),
    ]
    for extra, message in cases:
        line = refusal("train", "-m", *sweep_overrides(world, data, name, **extra), "--yes")
        assert message in line, (extra, line)
    # A file-system channel: the VPC's way to it is checked as `invoke train` checks it, one line a problem.
    network = {
        "model.lr": "0.01,0.02",
        "dataset.channels.train": "fsx://fs-0123456789abcdef0/fsx/data",
        "aws.subnets": "[subnet-0a1b2c3d]",
        "aws.security_groups": "[sg-0a1b2c3d]",
    }
    refused = invoke("train", "-m", *sweep_overrides(world, data, name, **network), "--yes")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "error: subnet subnet-0a1b2c3d does not exist in this region" in refused.stderr, refused.stderr
    # Each job fits the budget; the two together do not.
    uploaded = invoke("upload", *sweep_overrides(world, data, name))
    assert uploaded.returncode == 0, uploaded.stderr
    two = {"model.lr": "0.01,0.02", "instance": "ml.m5.xlarge", "job.max_run_minutes": "60"}
    one_job = composed(**{k: v.split(",")[0] for k, v in two.items()})
    worst = price_per_hour(one_job) * 1.0
    budget = round(worst * 1.5, 2)
    line = refusal(
        "train", "-m", *sweep_overrides(world, data, name, **two, **{"job.max_cost_usd": str(budget)}), "--yes"
    )
    assert f"this sweep of 2 jobs can cost up to ${2 * worst:.2f}, over job.max_cost_usd=${budget:.2f}" in line, line
    # The instance type's quota must fit one job before anything is launched.
    with sandbox_quotas.set_quota("ml.m5.xlarge for training job usage", 0):
        line = refusal("train", "-m", *sweep_overrides(world, data, name, **two), "--yes")
    assert "quota 'ml.m5.xlarge for training job usage' is 0" in line, line
    assert len(sm.list_training_jobs(MaxResults=100)["TrainingJobSummaries"]) == before


class Terminal:
    """`invoke` as a user runs it in a terminal: stdin is a pty (so it may ask), Ctrl-C reaches its process group."""

    def __init__(self, *args: str) -> None:
        master, slave = pty.openpty()
        self.master, self.out = master, b""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", *args],
            cwd=cli.ROOT,
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a shell's foreground job
        )
        os.close(slave)
        os.set_blocking(self.proc.stdout.fileno(), False)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.text)):
            assert time.monotonic() < deadline and self.proc.poll() is None, (pattern, self.text[-4000:])
            time.sleep(0.05)
        return found

    @property
    def text(self) -> str:
        try:
            self.out += self.proc.stdout.read() or b""
        except BlockingIOError:
            pass
        return self.out.decode(errors="replace")

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        os.set_blocking(self.proc.stdout.fileno(), True)
        self.out += self.proc.stdout.read()
        os.close(self.master)
        return code


def test_ctrl_c_stops_the_running_jobs_and_the_same_command_resumes_them(world, tmp_path):  # noqa: F811
    """Ctrl-C mid-sweep: asked, the running job stops and checkpoints; the re-run resumes it, then the rest."""
    name = f"swc-{uuid.uuid4().hex[:6]}"
    overrides = sweep_overrides(
        world,
        long_data(tmp_path / "long"),
        name,
        **{
            "model.lr": "0.01,0.02",
            "trainer.batch_size": 16,
            "trainer.max_epochs": 4,  # 63 steps an epoch: room to interrupt it mid-way
            "trainer.checkpoint_every_n_steps": 10,
            "+job.environment.OMP_NUM_THREADS": 1,
        },
    )
    assert invoke("upload", *[o for o in overrides if not o.startswith("model.lr=")]).returncode == 0
    command = ("train", "-m", *overrides, "hydra.launcher.max_parallel=1", "--yes", "--poll", "1")
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs") as service:
        term = Terminal(*command)
        job = term.wait_for(r"\[job 0\] launched ([\w-]+)").group(1)
        wait_for_periodic_checkpoint(service, tmp_path / "jobs", job)
        term.ctrl_c()
        term.wait_for(r"Stop the running jobs \(each checkpoints on SIGTERM\)\? \[y/N\] ")
        term.type("y")
        assert term.finish() == 130, term.text[-3000:]
        out = term.text
        assert "interrupted: 1 job(s) running, 1 not launched" in out, out[-3000:]
        assert f"stop requested for {job}" in out and "to resume, run the same command again" in out
        assert "Traceback" not in out
        stopped = service.result(job)
        assert stopped.status == "Stopped", stopped.stdout[-3000:]
        step = int(re.search(r"sigterm_checkpoint_step=(\d+)", stopped.stdout).group(1))
        assert len(described(world, name)) == 1  # job 1 was never launched

        rerun = invoke(*command)
        assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-3000:]
        assert "2 job(s), 2 to launch" in rerun.stdout
        assert f"resumes from the checkpoints of {job}" in rerun.stdout  # said before the launch
        resumed = service.result(re.search(r"\[job 0\] launched ([\w-]+)", rerun.stdout).group(1))
    resumed.check()
    assert re.search(rf"resuming run \S+ from step {step} \(\w+-step={step:08d}\.ckpt\)", resumed.stdout), (
        resumed.stdout[-3000:]
    )
    metrics = json.loads((resumed.tree / "output" / "data" / "metrics.json").read_text())
    assert metrics["global_steps"] == 4 * 63 and metrics["resumed_from"].endswith(f"step={step:08d}.ckpt")
    rows = list(csv.DictReader((sweep_dir(world, rerun) / "results.csv").open()))
    assert sorted(r["status"] for r in rows) == ["Completed", "Completed"]


def test_jobs_that_name_different_packages_share_one_bundle_holding_them_all(
    composed,
    world,  # noqa: F811
    data,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """A sweep over nets from two user packages uploads one bundle with both; a later batch that needs a
    third package (as Optuna's next trials may) gets a bundle of its own, and the first is not re-uploaded."""
    for package in ("nets_a", "nets_b", "nets_c"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("from project.training.models import SmallCNN as Net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"swp-{uuid.uuid4().hex[:6]}"
    assert invoke("upload", *sweep_overrides(world, data, name)).returncode == 0

    def job(num: int, package: str) -> Job:
        cfg = composed(*sweep_overrides(world, data, name), f"model.net._target_={package}.Net")
        return Job(num, [f"model.net._target_={package}.Net"], cfg, None)

    session = SweepSession("s1", tmp_path / "runs", job(0, "nets_a").cfg, yes=True, echo=lambda line: None)
    first = [job(0, "nets_a"), job(1, "nets_b")]
    session.upload_code([(j, session.plan(j)) for j in first])
    later = [job(2, "nets_c"), job(3, "nets_a")]
    session.upload_code([(j, session.plan(j)) for j in later])

    s3, bucket = world["clients"].s3, world["infra"].artifacts_bucket
    prefix = f"code/{name}-s1/"
    keys = [v["Key"] for v in s3.list_object_versions(Bucket=bucket, Prefix=prefix)["Versions"]]
    packages = {k.split("/")[3]: k.split("/")[2] for k in keys if k.endswith("/__init__.py") and "nets_" in k}
    assert packages == {"nets_a": "code", "nets_b": "code", "nets_c": "code-1"}, keys
    assert len(keys) == len(set(keys))  # nothing uploaded twice
    bundles = [session.bundle(j, session.plan(j)) for j in first + later]
    assert bundles == [f"s3://{bucket}/{prefix}code/"] * 2 + [f"s3://{bucket}/{prefix}code-1/", bundles[0]]


def test_an_optuna_sweep_on_sagemaker_learns_from_the_jobs_metrics_across_batches(world, data, tmp_path):  # noqa: F811
    """3 Optuna trials in batches of 2 then 1: one question, one code bundle; the objective is each job's val_acc."""
    name = f"swo-{uuid.uuid4().hex[:6]}"
    assert invoke("upload", *sweep_overrides(world, data, name)).returncode == 0
    fixed = [o for o in sweep_overrides(world, data, name) if not o.startswith("model.lr=")]
    optuna = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2"]
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs"):
        result = invoke("train", "-m", *fixed, *optuna, "model.lr=interval(0.01,0.1)", "--yes", "--poll", "1")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert result.stdout.count("SageMaker sweep ") == 2  # one summary per batch Optuna handed the launcher
    jobs = described(world, name)
    assert len(jobs) == 3 and all(j["TrainingJobStatus"] == "Completed" for j in jobs)
    code = {
        c["DataSource"]["S3DataSource"]["S3Uri"]
        for j in jobs
        for c in j["InputDataConfig"]
        if c["ChannelName"] == "code"
    }
    assert len(code) == 1  # the second batch ran from the first batch's bundle
    final = {j["TrainingJobName"]: {m["MetricName"]: m["Value"] for m in j["FinalMetricDataList"]} for j in jobs}
    folder = sweep_dir(world, result)
    rows = list(csv.DictReader((folder / "results.csv").open()))
    lrs = {r["run"]: float(r["overrides"].removeprefix("model.lr=")) for r in rows}
    assert len(rows) == 3 and all(0.01 <= lr <= 0.1 for lr in lrs.values()) and len(set(lrs.values())) == 3
    best = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    winner = max(final, key=lambda job: final[job]["val_acc"])
    assert best["best_value"] == pytest.approx(final[winner]["val_acc"], abs=1e-3)  # from the jobs' metrics
    assert best["best_params"]["model.lr"] == pytest.approx(lrs[winner])


def test_without_yes_the_sweep_asks_once_and_no_launches_nothing(world, data):  # noqa: F811
    name = f"swq-{uuid.uuid4().hex[:6]}"
    assert invoke("upload", *sweep_overrides(world, data, name)).returncode == 0
    term = Terminal("train", "-m", *sweep_overrides(world, data, name, **{"model.lr": "0.01,0.02"}))
    term.wait_for(r"for the 2 job\(s\) to launch, worst case \$[\d.]+; no budget.*\n.*Launch these 2 jobs\? \[y/N\] ")
    term.type("n")
    assert term.finish() == 2
    assert "error: not launched (answered no)" in term.text and term.text.count("Launch these") == 1
    assert described(world, name) == []


def _started(*args: str) -> subprocess.Popen:
    """`invoke <args>` in its own process group (Ctrl-C reaches all of it), lines as they are printed."""
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=cli.ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _until_baking(proc: subprocess.Popen) -> str:
    """Its stdout up to the canary's first bake (the test fails if the command ends first)."""
    said = []
    for line in proc.stdout:
        said.append(line)
        if "Baking, 10% of the traffic" in line:
            return "".join(said)
    _, err = proc.communicate(timeout=60)
    pytest.fail(f"no bake before the command ended ({proc.returncode}):\n{''.join(said)[-3000:]}\n{err[-3000:]}")


def test_ship_registers_the_best_job_canaries_it_rolls_back_on_an_alarm_and_resumes_after_ctrl_c(
    world,  # noqa: F811
    data,  # noqa: F811
    grid,
    tmp_path,
    monkeypatch,
):
    """`invoke ship` of the grid sweep to an endpoint serving its worst job: an alarm rolls the first canary
    back (the version Rejected, the old job serving); Ctrl-C mid-bake of the second leaves it recorded and
    the same command follows the canary to its end and approves the version. Shipped to a new name, the
    endpoint is created; a gate that refuses leaves nothing."""
    from project.aws.rollout_requests import alarm_names
    from project.face.ship import read_record, record_path
    from project.sandbox.bluegreen import TIME_SCALE_ENV
    from tests import aws_calls
    from tests.service_model import problems
    from tests.test_deploy import resources

    monkeypatch.setenv(TIME_SCALE_ENV, "0.005")  # a sandbox "minute" bakes 0.3 s
    sm, cloudwatch = world["clients"].sagemaker, world["clients"].client("cloudwatch")
    record_file = Path(os.environ[aws_calls.RECORD_ENV])
    offset = record_file.stat().st_size if record_file.exists() else 0
    sweep_id = re.search(r"SageMaker sweep (\S+):", grid["result"].stdout).group(1)
    endpoint, group = f"ship-{uuid.uuid4().hex[:6]}", f"ship-{uuid.uuid4().hex[:8]}"
    ovr = [
        *sweep_overrides(world, data, grid["name"]),
        f"deploy.endpoint_name={endpoint}",
        f"deploy.model_group={group}",
        "deploy.poll_seconds=0.2",
    ]
    final = {j["TrainingJobName"]: final_metrics(j)["val_acc"] for j in described(world, grid["name"])}
    ranked = sorted(final, key=lambda job: (-final[job], int(job.rsplit("-", 1)[1])))  # ties: the lower job number
    best, worst = ranked[0], ranked[-1]
    alarm = alarm_names("sagemaker-rollout-", endpoint)["5xx"]

    for args, message in {
        ("no-such-sweep",): "no training jobs of sweep 'no-such-sweep'",
        (sweep_id, "sweep.objective=val_f1"): f"sweep.objective=val_f1: no completed job of sweep {sweep_id} reported",
    }.items():
        assert message in refusal("ship", *args, *ovr, "--yes"), args
    assert _model_versions(sm, group) == []

    with emulator.sagemaker_service(workdir=tmp_path / "hosting"):
        old = invoke("deploy", worst, "--yes", *ovr)
        assert old.returncode == 0, old.stdout[-3000:] + old.stderr[-3000:]
        serving = resources(sm)

        # An alarm goes off while the canary bakes: rolled back, one line, the worst job serves again.
        proc = _started("ship", sweep_id, *ovr, "--canary", "10", "--bake", "60", "--yes")
        try:
            said = _until_baking(proc)
            cloudwatch.set_alarm_state(AlarmName=alarm, StateValue="ALARM", StateReason="the canary's 5XX answers")
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        line = one_error_line(subprocess.CompletedProcess(proc.args, proc.returncode, said + out, err))
        assert f"rolled back: alarm {alarm} (Invocation5XXErrors) went off while {best} baked" in line, line
        assert line.endswith(f"{group}/1 is Rejected and nothing is shipped (the same command tries anew)"), line
        summary = said[: said.index("evaluated ")]  # one summary, with the cost, before anything is done
        assert f"best of 4 completed job(s) by sweep.objective=val_acc (maximize): {best}" in summary
        assert "cost: ml.m5.large x 1: $0.115/hour" in summary
        assert "cost: the rollout runs the new fleet (ml.m5.large x 1) beside the old one for up to 120 min" in summary
        assert _model_versions(sm, group) == [(1, "Rejected")]
        assert _variants(sm, endpoint) == [worst] and resources(sm) == serving
        assert not record_path(world["root"] / "runs", sweep_id, endpoint).exists()

        # Ctrl-C while the next canary bakes: the stage is recorded; the same command follows it and promotes.
        command = (
            "ship",
            sweep_id,
            *ovr,
            "--canary",
            "10",
            "--bake",
            "10",
            "--yes",
        )  # 3 s a step: Ctrl-C lands mid-bake
        proc = _started(*command)
        try:
            said = _until_baking(proc)
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130 and "Traceback" not in out + err, (said + out)[-3000:] + err[-3000:]
        assert err.strip().splitlines() == [
            f"interrupted: endpoint {endpoint} goes on deploying {group}/2 ({best}); "
            "run the same command to follow it and promote it"
        ], err[-3000:]
        record = read_record(record_path(world["root"] / "runs", sweep_id, endpoint))
        assert (record.stage, record.version, record.job) == ("deploying", f"{group}/2", best)

        resumed = invoke(*command)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert "resuming from" in resumed.stdout and "evaluated " not in resumed.stdout  # not registered again
        assert f"shipped: {group}/2 ({best}, val_acc=" in resumed.stdout
        assert _model_versions(sm, group) == [(2, "Approved"), (1, "Rejected")]
        assert _variants(sm, endpoint) == [best]
        assert len(resources(sm)) == len(serving)  # the worst job's model and config gone, the best one's serve
        again = invoke(*command)
        assert again.returncode == 0 and f"sweep {sweep_id} is shipped to {endpoint} already" in again.stdout
        # Where no endpoint of that name serves, the ship creates it.
        created = invoke("ship", sweep_id, *ovr, f"deploy.endpoint_name={endpoint}-b", "--yes")
        assert created.returncode == 0, created.stdout[-3000:] + created.stderr[-3000:]
        assert f"next: create endpoint {endpoint}-b serving it (there is none)" in created.stdout
        assert "cost: the rollout" not in created.stdout and f"shipped: {group}/3 ({best}" in created.stdout
        assert _variants(sm, f"{endpoint}-b") == [best] and _model_versions(sm, group)[0] == (3, "Approved")
        assert invoke("undeploy", f"{endpoint}-b", *ovr).returncode == 0
        # A gate that refuses (a negative tolerance stands for a worse job): one line, nothing done.
        other = [*ovr, f"deploy.endpoint_name={endpoint}-c", "deploy.gate.tolerance=-1"]
        refused = one_error_line(invoke("ship", sweep_id, *other, "--yes"))
        assert f"error: gate: {best} is worse than the newest Approved version" in refused, refused
        assert len(_model_versions(sm, group)) == 3
        assert f"endpoint {endpoint}-c" not in resources(sm)
        assert not record_path(world["root"] / "runs", sweep_id, f"{endpoint}-c").exists()
        assert invoke("undeploy", endpoint, *ovr).returncode == 0

    calls = [c for c in aws_calls.read_calls(record_file, offset) if c.who == "invoke ship"]
    assert {"Search", "CreateModelPackage", "UpdateEndpoint", "UpdateModelPackage"} <= {c.operation for c in calls}
    distinct = {(c.service, c.operation, json.dumps(c.params, sort_keys=True)): c for c in calls}  # polls repeat
    invalid = [line for c in distinct.values() for line in problems(c.service, c.operation, c.params)]
    assert not invalid, invalid


def final_metrics(job: dict) -> dict:
    return {m["MetricName"]: m["Value"] for m in job["FinalMetricDataList"]}


def _model_versions(sm, group: str) -> list[tuple[int, str]]:
    try:
        listed = sm.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
    except sm.exceptions.ClientError:
        return []
    return sorted(((p["ModelPackageVersion"], p["ModelApprovalStatus"]) for p in listed), reverse=True)


def _variants(sm, endpoint: str) -> list[str]:
    desc = sm.describe_endpoint(EndpointName=endpoint)
    assert desc["EndpointStatus"] == "InService", desc
    config = sm.describe_endpoint_config(EndpointConfigName=desc["EndpointConfigName"])
    return [v["VariantName"] for v in config["ProductionVariants"]]
