"""`invoke deploy`, `predict --endpoint`, `endpoints`, `undeploy`, `batch-predict` through the real CLI.

AWS is the tests' moto server with the Terraform-made resources (tests/aws_fixtures.py); the
sandbox's SageMaker service (what `invoke sandbox` serves) plays hosting: each endpoint and
transform job is answered by the model it names, unpacked from its model.tar.gz and served by the
inference image's contract (project/sandbox/model_server.py). One tiny run is trained per module.
"""

from __future__ import annotations

import csv
import functools
import os
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from project.aws import deploy
from project.aws.deploy_image import inference_version, known_inference_versions
from project.aws.deploy_requests import (
    DeployError,
    Source,
    check_instance,
    endpoint_config_request,
    model_request,
    price_line,
    resource_tags,
    versioned_name,
)
from project.aws.session import aws_clients
from project.aws.workflow import setup
from project.core import config as C
from project.sandbox import service as emulator
from project.serving.predict import predict
from project.training.train import run_composed
from tests import cli
from tests.cli import refusal
from tests.synthetic import make_glyphs, tiny_overrides, write_dataset
from tests.test_interrupts import ctrl_c, start_invoke

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits"
invoke = functools.partial(cli.invoke, timeout=300)


@pytest.fixture(scope="module")
def world(aws_infra, infra_overrides, tmp_path_factory):
    """Clients, overrides naming the resources and a tiny trained run, with hosting played."""
    root = tmp_path_factory.mktemp("deploy")
    files = write_dataset(root / "data", n_train=600, n_test=100, make=make_glyphs)
    overrides = tiny_overrides(root / "data", files, root / "runs", **{"trainer.max_epochs": 1, "run_name": "tiny"})
    run_composed(C.compose(overrides))
    with emulator.sagemaker_service(workdir=root / "sandbox") as service:
        yield {
            "clients": aws_clients(aws_infra.region, os.environ["AWS_ENDPOINT_URL"]),
            "infra": aws_infra,
            "run_dir": root / "runs" / "tiny",
            "service": service,
            # The tiny run's model.ts is saved by this torch, newer than the newest inference image
            # the SDK knows: served on that one, with a warning (deploy.framework_version is null).
            "overrides": [*infra_overrides, f"paths.runs_dir={root / 'runs'}", "deploy.poll_seconds=0.5"],
        }


def resources(sm) -> set[str]:
    """Every model, endpoint config and endpoint in the stand-in."""
    models = {f"model {m['ModelName']}" for m in sm.list_models()["Models"]}
    configs = {f"config {c['EndpointConfigName']}" for c in sm.list_endpoint_configs()["EndpointConfigs"]}
    return models | configs | {f"endpoint {e['EndpointName']}" for e in sm.list_endpoints()["Endpoints"]}


def test_requests_are_built_from_the_config(composed):
    dc = composed("deploy.instance=ml.c5.large", "deploy.ttl_hours=2").deploy
    now = datetime(2026, 12, 3, 7, 0, 0, 123000, tzinfo=UTC)
    name = versioned_name("a_run.with dots" + "x" * 80, now)
    assert name.endswith("-20261203-070000-123") and len(name) <= 63 and re.match(r"^[A-Za-z0-9-]+$", name)
    source = Source("run", "abc123")
    tags = resource_tags(source, dc, serverless=False, now=now)
    assert tags == {
        "project": "lightning-sagemaker",
        "run": "run",
        "config-hash": "abc123",
        "expires-at": "2026-12-03T09:00:00Z",
    }
    assert "expires-at" not in resource_tags(source, dc, serverless=True, now=now)
    # A folder's name as a tag value: what SageMaker refuses in one (here `#`, `(`, `)`) sanitized
    # as the sweep tags are.
    odd = resource_tags(Source("my run #2 (old)", "abc123"), dc, serverless=True, now=now)
    assert odd["run"] == "my run _2 _old_"
    (variant,) = endpoint_config_request("c", "m", dc, False, tags)["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.c5.large", 1)
    (variant,) = endpoint_config_request("c", "m", dc, True, tags)["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    model = model_request("m", "img", "s3://b/k", "arn:role", tags)
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert "$0.102/hour" in price_line(dc, False) and "per million requests" in price_line(dc, True)
    with pytest.raises(DeployError, match="unknown instance type deploy.instance=ml.x"):
        check_instance("ml.x", dc)


def test_the_inference_image_is_chosen_by_the_pytorch_that_saved_the_model():
    known, what = ["1.13", "2.5", "2.6"], "run's model.ts"
    assert inference_version("2.5.1", None, known, what)[0] == "2.6"  # the newest, >= the export's
    assert inference_version("2.6.0+cu124", None, known, what)[0] == "2.6"
    assert inference_version(None, None, known, what) == (
        "2.6",
        "PyTorch 2.6, the newest image; run's model.ts does not record which PyTorch saved it",
    )
    for newer in ("2.13.0+cpu", "2.10.0"):  # compared as numbers: "2.10" is newer than "2.6"
        version, why = inference_version(newer, None, known, what)  # served on the newest, with a warning
        assert version == "2.6" and why.startswith(f"warning: run's model.ts was saved by PyTorch {newer}, newer than")
        assert "job.pytorch_version=2.6" in why
    version, why = inference_version("2.13.0+cpu", "2.6", known, what)  # chosen: served, with a warning
    assert version == "2.6" and why.startswith("warning: run's model.ts was saved by PyTorch 2.13.0+cpu")
    assert inference_version("2.5.1", "2.5", known, what) == ("2.5", "PyTorch 2.5 (deploy.framework_version)")
    with pytest.raises(DeployError, match="deploy.framework_version=2.8: .*no PyTorch inference image"):
        inference_version("2.5.1", "2.8", known, what)
    assert "2.6" in known_inference_versions()  # the pinned SDK's own table


@pytest.mark.slow
def test_deploy_predict_list_update_undeploy(world, tmp_path):
    sm, ovr = world["clients"].sagemaker, world["overrides"]
    before = resources(sm)

    deployed = invoke("deploy", f"{world['run_dir']}/", "--yes", *ovr)  # a path, as tab completion writes it
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    out = deployed.stdout
    assert "endpoint tiny: Creating" in out and "endpoint tiny: InService" in out  # progress as it went
    assert "ml.m5.large x 1: $0.115/hour" in out and "remove it: invoke undeploy tiny" in out
    model = sm.describe_model(
        ModelName=sm.describe_endpoint_config(
            EndpointConfigName=sm.describe_endpoint(EndpointName="tiny")["EndpointConfigName"]
        )["ProductionVariants"][0]["ModelName"]
    )
    assert (
        model["PrimaryContainer"]["ModelDataUrl"] == f"s3://{world['infra'].artifacts_bucket}/models/tiny/model.tar.gz"
    )
    assert model["PrimaryContainer"]["Image"].endswith("/pytorch-inference:2.6-cpu-py312")
    assert model["ExecutionRoleArn"] == world["infra"].role_arn
    assert f"warning: tiny's model.ts was saved by PyTorch {torch.__version__}, newer than every" in out

    listed = invoke("endpoints", *ovr)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("tiny ")]
    assert "InService" in row and "ml.m5.large x 1" in row and row.endswith("IDLE")

    remote = invoke("predict", "--endpoint", "tiny", str(DIGITS), *ovr)
    local = invoke("predict", str(world["run_dir"]), str(DIGITS))
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    assert remote.stdout == local.stdout and len(remote.stdout.splitlines()) == 3
    by_name = invoke("predict", "tiny", str(DIGITS), *ovr)  # the run's name under paths.runs_dir
    assert by_name.returncode == 0 and by_name.stdout == local.stdout, by_name.stderr
    bad = tmp_path / "scan.png"
    bad.write_bytes(b"not a png at all")  # the model's own reason, one line, exit 2
    assert refusal("predict", "--endpoint", "tiny", str(bad), *ovr) == (
        f"error: {bad}: endpoint tiny refused it: request body: not an image (expected a PNG or JPEG file)"
    )
    listed = invoke("endpoints", *ovr)
    assert "IDLE" not in [line for line in listed.stdout.splitlines() if line.startswith("tiny ")][0]

    exists = refusal("deploy", "tiny", "--yes", *ovr)
    assert "endpoint tiny exists (InService): pass --update" in exists

    updated = invoke("deploy", "tiny", "--update", "--yes", *ovr)
    assert updated.returncode == 0, updated.stdout[-3000:] + updated.stderr[-3000:]
    assert "endpoint tiny: Updating" in updated.stdout and "endpoint tiny: InService" in updated.stdout
    now = resources(sm) - before
    assert len([r for r in now if r.startswith("model ")]) == 1  # the old config and model are gone
    assert invoke("predict", "--endpoint", "tiny", str(DIGITS), *ovr).stdout == local.stdout

    gone = invoke("undeploy", "tiny", *ovr)
    assert gone.returncode == 0 and "tiny: endpoint, endpoint config and model deleted" in gone.stdout, gone.stderr
    assert resources(sm) == before and "tiny" not in world["service"].hosting.servers
    again = invoke("undeploy", "tiny", *ovr)
    assert again.returncode == 0 and "no such endpoint (nothing to remove)" in again.stdout
    missing = refusal("predict", "--endpoint", "tiny", str(DIGITS), *ovr)
    assert "no endpoint tiny" in missing or "not found" in missing


@pytest.mark.slow
def test_serverless_expired_and_undeploy_all(world):
    sm, ovr = world["clients"].sagemaker, world["overrides"]
    before = resources(sm)
    made = invoke("deploy", "tiny", "--serverless", "--yes", "deploy.endpoint_name=tiny-serverless", *ovr)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert "serverless, 2 GB: $0.000040 per second" in made.stdout
    odd = world["run_dir"].parent.parent / "odd" / "tiny#old"  # a folder name no tag value may hold
    shutil.copytree(world["run_dir"], odd, dirs_exist_ok=True)
    old = invoke("deploy", str(odd), "--yes", "deploy.endpoint_name=tiny-old", "deploy.ttl_hours=0", *ovr)
    assert old.returncode == 0, old.stdout[-3000:] + old.stderr[-3000:]
    arn = sm.describe_endpoint(EndpointName="tiny-old")["EndpointArn"]
    assert {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}["run"] == "tiny_old"
    listed = invoke("endpoints", *ovr).stdout
    assert "serverless 2 GB" in listed and "per request" in listed
    rows = {line.split()[0]: line for line in listed.splitlines()[1:] if line.startswith("tiny-")}
    assert "EXPIRED" in rows["tiny-old"] and "EXPIRED" not in rows["tiny-serverless"]  # serverless never expires
    expired = invoke("undeploy", "--expired", *ovr)
    assert expired.returncode == 0 and expired.stdout.splitlines() == [
        "tiny-old: endpoint, endpoint config and model deleted"
    ], expired.stdout + expired.stderr
    assert invoke("undeploy", "--expired", *ovr).stdout.strip() == "no endpoints to remove"
    removed = invoke("undeploy", "--all", *ovr)
    assert removed.returncode == 0 and "tiny-serverless: endpoint" in removed.stdout, removed.stderr
    assert resources(sm) == before


@pytest.mark.slow
def test_batch_predict_a_local_folder(world):
    sm, ovr = world["clients"].sagemaker, world["overrides"]
    before = resources(sm)
    result = invoke("batch-predict", f"{world['run_dir']}/", str(DIGITS), *ovr)  # the run by its folder
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"transform job tiny-\S+: Completed", result.stdout)
    assert "3 predictions" in result.stdout and "cost: " in result.stdout
    rows = list(csv.DictReader((world["run_dir"] / "predictions" / "predictions.csv").open()))
    expected = {p.path.name: p.label for p in predict(world["run_dir"], sorted(DIGITS.glob("*.png")))}
    assert {Path(r["input_key"]).name: int(r["class"]) for r in rows} == expected
    assert all(0 < float(r["probability"]) <= 1 for r in rows)
    assert resources(sm) == before  # the transform's model is removed once the job is over


@pytest.mark.slow
def test_batch_predict_arrays_for_a_model_that_is_not_a_classifier(world, tmp_path):
    """Any exported model: arrays in (.npy as application/x-npy), its raw outputs out, one file each."""
    import numpy as np
    from omegaconf import open_dict

    sm, ovr = world["clients"].sagemaker, world["overrides"]
    runs = tmp_path / "runs"
    shutil.copytree(world["run_dir"], runs / "raw")
    config = runs / "raw" / "model" / C.RESOLVED_CONFIG_NAME
    cfg = C.load_resolved(config)
    with open_dict(cfg.model):
        cfg.model["_target_"] = "mymodels.csv_regression.MLPRegressor"  # any LightningModule: not a classifier
    config.write_text(C.to_yaml(cfg))
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    samples = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    for i, sample in enumerate(samples):
        np.save(arrays / f"sample-{i}.npy", sample)
    before = resources(sm)

    result = invoke("batch-predict", "raw", str(arrays), *ovr, f"paths.runs_dir={runs}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "uploaded 3 arrays" in result.stdout and "3 answers (the model's raw outputs" in result.stdout
    (job,) = [j for j in sm.list_transform_jobs()["TransformJobSummaries"] if j["TransformJobName"].startswith("raw-")]
    described = sm.describe_transform_job(TransformJobName=job["TransformJobName"])
    assert described["TransformInput"]["ContentType"] == "application/x-npy"
    model = torch.jit.load(str(world["run_dir"] / "model" / "model.ts"))
    for i, sample in enumerate(samples):  # the exported model's own outputs on the same sample
        import json

        answer = json.loads((runs / "raw" / "predictions" / f"sample-{i}.npy.out").read_text())
        expected = model(torch.from_numpy(sample)[None]).tolist()
        assert np.allclose(answer["outputs"], expected, atol=1e-5)
    assert resources(sm) == before

    (arrays / "digit.png").write_bytes((DIGITS / "mnist-test-0-label7.png").read_bytes())
    line = refusal("batch-predict", "raw", str(arrays), *ovr, f"paths.runs_dir={runs}")
    assert "mixes application/x-image and application/x-npy: a transform job reads one kind" in line
    assert resources(sm) == before


@pytest.mark.slow
def test_bad_input_is_one_line_and_creates_nothing(world, tmp_path):
    sm, ovr = world["clients"].sagemaker, world["overrides"]
    before = resources(sm)
    (tmp_path / "runs" / "unfinished" / "model").mkdir(parents=True)
    sm.create_training_job(
        TrainingJobName="deploy-running",
        AlgorithmSpecification={"TrainingImage": "image:tag", "TrainingInputMode": "File"},
        RoleArn=world["infra"].role_arn,
        OutputDataConfig={"S3OutputPath": f"s3://{world['infra'].artifacts_bucket}/jobs/"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )
    image_cases = {  # after the world's overrides, which choose the image
        ("deploy", "tiny", "--yes", "deploy.framework_version=2.8"): "deploy.framework_version=2.8: the SageMaker",
        ("batch-predict", "tiny", str(DIGITS), "deploy.framework_version=2.8"): "deploy.framework_version=2.8: the",
    }
    for (*args, choice), message in image_cases.items():
        assert message in refusal(*args, *ovr, choice), args
    cases = {
        ("deploy", "no-such-run", "--yes"): "no run folder",
        ("deploy", "deploy-running", "--yes"): "deploy-running is InProgress, not Completed",
        ("deploy", "tiny", "--yes", "deploy.instance=ml.m5.huge"): "unknown instance type deploy.instance=ml.m5.huge",
        ("deploy", "--job", str(tmp_path / "runs" / "unfinished"), "--yes"): "has no exported model",
        ("deploy", "tiny"): "pass --yes",  # no terminal to confirm on
        # where inputs go (terraform/iam.tf: the launcher lists, the role reads batch/*/input/)
        (
            "batch-predict",
            "tiny",
            f"s3://{world['infra'].artifacts_bucket}/batch/tiny/empty/input/",
        ): "no objects under",
        ("batch-predict", "tiny", str(tmp_path)): "no images",
        ("undeploy",): "name the endpoint(s) to remove",
    }
    for args, message in cases.items():
        assert message in refusal(*args, *ovr), args
    assert resources(sm) == before

    # What `invoke predict` refuses, batch-predict refuses before it uploads or makes a transform job.
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(DIGITS / "mnist-test-0-label7.png", scans)
    (scans / "torn.png").write_bytes(b"not a png at all")
    local = refusal("predict", str(world["run_dir"]), str(scans))
    assert local == f"error: {scans / 'torn.png'}: not an image (expected a PNG or JPEG file)"
    jobs = sm.list_transform_jobs()["TransformJobSummaries"]
    s3 = world["clients"].s3
    staged = s3.list_objects_v2(Bucket=world["infra"].artifacts_bucket, Prefix="batch/").get("KeyCount", 0)
    line = refusal("batch-predict", "tiny", str(scans), *ovr)
    assert line == f"{local}: nothing uploaded, no transform job made"
    assert sm.list_transform_jobs()["TransformJobSummaries"] == jobs and resources(sm) == before
    assert s3.list_objects_v2(Bucket=world["infra"].artifacts_bucket, Prefix="batch/").get("KeyCount", 0) == staged


@pytest.mark.slow
def test_ctrl_c_while_waiting_says_what_goes_on(world):
    sm, ovr = world["clients"].sagemaker, world["overrides"]
    before = resources(sm)
    proc = start_invoke("deploy", "tiny", "--yes", *ovr, "deploy.endpoint_name=tiny-ctrl-c")
    assert proc.stdout is not None
    for line in proc.stdout:  # until the wait has begun
        if line.startswith("endpoint tiny-ctrl-c: Creating"):
            break
    code, _, err = ctrl_c(proc)
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines() == [
        "interrupted: endpoint tiny-ctrl-c goes on being created and bills once InService: "
        "`invoke undeploy tiny-ctrl-c` removes it"
    ]
    assert "endpoint tiny-ctrl-c" in resources(sm)  # left going, as it said
    assert invoke("undeploy", "tiny-ctrl-c", *ovr).returncode == 0
    assert resources(sm) == before

    proc = start_invoke("batch-predict", "tiny", str(DIGITS), *ovr)
    assert proc.stdout is not None
    for line in proc.stdout:
        if re.match(r"transform job tiny-\S+: InProgress", line):
            break
    code, _, err = ctrl_c(proc)
    job = line.split()[2].rstrip(":")
    assert code == 130 and err.strip().splitlines() == [
        f"interrupted: transform job {job} goes on until its inputs are done (billed meanwhile); its answers land in "
        f"s3://{world['infra'].artifacts_bucket}/batch/tiny/{job}/output/, not downloaded"
    ], err
    assert resources(sm) == before  # its model is removed all the same


@pytest.mark.slow
def test_deploy_asks_first_and_no_creates_nothing(world, monkeypatch):
    """In a terminal deploy shows the cost and asks; an answer other than y creates nothing."""
    sm = world["clients"].sagemaker
    before, asked, said = resources(sm), [], []
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    ctx = setup(world["overrides"])
    answer = deploy.deploy(ctx, "tiny", confirm=lambda q: asked.append(q) or "n", echo=said.append)
    assert answer is None and asked == ["Deploy? [y/N] "]
    assert any(line.startswith("cost: ml.m5.large x 1") for line in said) and said[-1] == "nothing created"
    assert resources(sm) == before


def finished_job(world, name: str, archive_members: dict[str, Path]) -> str:
    """A training job that Completed with a model.tar.gz of these members (archive name -> file)."""
    import io
    import tarfile

    from project.sandbox import record

    sm, infra = world["clients"].sagemaker, world["infra"]
    sm.create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={"TrainingImage": "image:tag", "TrainingInputMode": "File"},
        RoleArn=infra.role_arn,
        OutputDataConfig={"S3OutputPath": f"s3://{infra.artifacts_bucket}/jobs/"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
        Tags=[{"Key": "config-hash", "Value": "0123abcd4567"}],
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for arcname, path in archive_members.items():
            tar.add(path, arcname=arcname)
    key = f"jobs/{name}/output/model.tar.gz"
    world["clients"].s3.put_object(Bucket=infra.artifacts_bucket, Key=key, Body=buffer.getvalue())
    uri = f"s3://{infra.artifacts_bucket}/{key}"
    record.finish_job(sm, name, record.Outcome("Completed", model_uri=uri))
    return uri


@pytest.mark.slow
def test_a_completed_job_serves_its_own_archive(world):
    """A SageMaker job's model.tar.gz (model folder as training leaves it, code/ included) is deployed as it is."""
    sm, ovr = world["clients"].sagemaker, world["overrides"]
    model_dir = world["run_dir"] / "model"
    before = resources(sm)
    members = {p.relative_to(model_dir).as_posix(): p for p in sorted(model_dir.rglob("*")) if p.is_file()}
    uri = finished_job(world, "deploy-done", members)
    old = finished_job(world, "deploy-old", {"model.ts": model_dir / "model.ts"})

    refused = refusal("deploy", "deploy-old", "--yes", *ovr)
    assert f"training job deploy-old's {old} cannot be served: it holds no code/inference.py" in refused
    assert resources(sm) == before

    made = invoke("deploy", "deploy-done", "--yes", *ovr)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    assert "deploy deploy-done (config 0123abcd4567) as endpoint deploy-done" in made.stdout
    assert f"deploy-done's model.ts was saved by PyTorch {torch.__version__}" in made.stdout  # read in the archive
    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName="deploy-done")["EndpointConfigName"]
    )
    model = sm.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"]["ModelDataUrl"] == uri  # the job's own output, not re-packed
    remote = invoke("predict", "--endpoint", "deploy-done", str(DIGITS), *ovr)
    assert remote.stdout == invoke("predict", str(world["run_dir"]), str(DIGITS)).stdout, remote.stderr
    assert invoke("undeploy", "deploy-done", *ovr).returncode == 0
    assert resources(sm) == before
