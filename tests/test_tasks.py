"""The invoke CLI as a user types it: bare overrides, cheap import, clean errors."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from invoke.parser import Parser

from tests.cli import invoke, one_error_line, refusal

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "pytorch_lightning", "lightning", "sagemaker", "hydra", "boto3", "matplotlib", "mlflow", "wandb")


def test_importing_tasks_is_cheap():
    code = f"import sys, tasks; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_list_and_help_explain_themselves():
    listing = invoke("--list")
    assert listing.returncode == 0
    for name in ("local", "predict"):
        assert f"  {name} " in listing.stdout
    helptext = invoke("local", "--help").stdout
    assert "Train on this machine" in helptext and "key=value" in helptext


def parse(*argv):
    import tasks

    parser = Parser(contexts=tasks.ns.to_contexts())
    return {ctx.name: ctx.as_kwargs for ctx in parser.parse_argv(list(argv))}


def test_bare_overrides_are_collected_in_order():
    parsed = parse("local", "trainer.max_epochs=1", "+trainer.extra=x", "dataset.channels.train=../d", "model=mlp")
    assert parsed["local"]["overrides"] == [
        "trainer.max_epochs=1",
        "+trainer.extra=x",
        "dataset.channels.train=../d",
        "model=mlp",
    ]


def test_flags_and_tasks_still_parse_around_overrides():
    parsed = parse("local", "a.b=1", "--overrides", "c=2", "d=3", "predict", "runs/x", "img.png")
    assert parsed["local"]["overrides"] == ["a.b=1", "c=2", "d=3"]
    assert parsed["predict"] == {
        "run_dir": "runs/x",
        "images": "img.png",
        "raw": False,
        "endpoint": False,
        "variant": None,
        "overrides": [],
    }
    assert parse("local")["local"]["overrides"] == []


def test_serving_tasks_take_a_bare_run_job_or_endpoint_name():
    deploy = parse("deploy", "seed42", "--serverless", "deploy.instance=ml.c5.large")["deploy"]
    assert (deploy["job"], deploy["serverless"], deploy["overrides"]) == (
        "seed42",
        True,
        ["deploy.instance=ml.c5.large"],
    )
    batch = parse("batch-predict", "seed42", "photos/", "aws.region=eu-west-1")["batch-predict"]
    assert (batch["job"], batch["inputs"], batch["overrides"]) == ("seed42", "photos/", ["aws.region=eu-west-1"])
    assert parse("batch-predict", "s3://bucket/photos/")["batch-predict"]["job"] is None
    assert parse("undeploy", "seed42")["undeploy"]["name"] == "seed42"
    assert parse("undeploy", "--all")["undeploy"] == {"name": None, "all_": True, "expired": False, "overrides": []}
    remote = parse("predict", "--endpoint", "seed42", "photos/")["predict"]
    assert (remote["run_dir"], remote["images"], remote["endpoint"]) == ("seed42", "photos/", True)
    # A/B variants (tests/test_variants.py runs them)
    added = parse("deploy", "seed43", "deploy.endpoint_name=digits", "--traffic", "10")["deploy"]
    assert (added["job"], added["traffic"], added["overrides"]) == ("seed43", "10", ["deploy.endpoint_name=digits"])
    shifted = parse("traffic", "digits", "seed43=100", "--retire", "seed42", "aws.region=eu-west-1")["traffic"]
    assert shifted == {"endpoint": "digits", "retire": ["seed42"], "overrides": ["seed43=100", "aws.region=eu-west-1"]}
    pinned = parse("predict", "--endpoint", "digits", "--variant", "seed43", "photos/")["predict"]
    assert (pinned["run_dir"], pinned["variant"], pinned["images"]) == ("digits", "seed43", "photos/")
    scored = parse("compare", "--endpoint", "digits", "labelled/")["compare"]
    assert (scored["a"], scored["b"], scored["endpoint"]) == ("digits", "labelled/", True)


def test_every_run_or_job_task_takes_a_name_or_a_path_positionally(tmp_path):
    """`invoke deploy runs/<run>/` as tab completion writes it: a path, where a name works too."""
    run = tmp_path / "runs" / "seed42"
    (run / "model").mkdir(parents=True)
    photos = tmp_path / "photos"
    photos.mkdir()
    for spec in ("seed42", "runs/seed42/", f"{run}/", str(run)):
        for task in ("deploy", "fetch", "logs", "status", "why"):
            assert parse(task, spec, "aws.region=eu-west-1")[task]["job"] == spec, (task, spec)
        assert parse("stop", spec)["stop"]["job"] == spec
        batch = parse("batch-predict", spec, str(photos), "aws.region=eu-west-1")["batch-predict"]
        assert (batch["job"], batch["inputs"], batch["overrides"]) == (spec, str(photos), ["aws.region=eu-west-1"])
        assert parse("predict", spec, "img.png")["predict"]["run_dir"] == spec
        assert parse("compare", spec, "other")["compare"] == {
            "a": spec,
            "b": "other",
            "endpoint": False,
            "overrides": [],
        }
    assert parse("deploy", "--job", "runs/seed42/")["deploy"]["job"] == "runs/seed42/"  # the old spelling
    # No run named: an inputs folder that is not a run, or an s3:// prefix, is batch-predict's inputs.
    assert parse("batch-predict", str(photos))["batch-predict"] == {"job": None, "inputs": str(photos), "overrides": []}
    assert parse("batch-predict", "s3://bucket/photos/")["batch-predict"]["job"] is None


def test_compare_of_a_missing_or_unfinished_run_says_so(tmp_path):
    runs = tmp_path / "runs"
    (runs / "half" / "checkpoints").mkdir(parents=True)  # interrupted: a checkpoint, no metrics.json
    at = f"paths.runs_dir={runs}"
    assert refusal("compare", "half", "other", at) == (
        f"error: {runs / 'half'} has no metrics.json: its training did not finish "
        "(`invoke runs` lists the finished runs)"
    )
    assert refusal("compare", "runs/nope/", "half", at) == (
        "error: no run runs/nope/: no such folder (`invoke runs` lists the runs)"
    )
    # A bare name may be a SageMaker job: asked there, and where that cannot be, the line says both.
    missing = refusal("compare", "nope", "half", at, "aws.terraform_dir=no-such-terraform")
    assert missing.startswith(f"error: no run nope in {runs}, and none fetched from SageMaker: "), missing


def test_bad_override_exits_nonzero_with_one_line():
    result = invoke("local", "trainer.epochs=3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: bad config override: unknown key 'trainer.epochs'; valid keys there: batch_size, "
        "channels_last, checkpoint_every_n_steps, compile, data_on_device, deterministic, flush_denormal, fsdp, "
        "gpus, init_from, init_strict, job_stall_timeout_minutes, job_startup_timeout_minutes, limit_test_batches, "
        "limit_train_batches, limit_val_batches, log_every_n_steps, max_epochs, num_workers, precision, profile, "
        "profile_steps, resume, seed, stall_timeout_minutes, startup_timeout_minutes, strategy"
    ]
    assert "Traceback" not in result.stdout + result.stderr


def test_invoke_local_trains_with_bare_overrides(tiny_run, tmp_path):
    result = invoke("local", *tiny_run(run_name="cli"))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "runs" / "cli" / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["test_acc"] > 0.5
    assert "run_dir=" in result.stdout

    png = tmp_path / "digit.png"
    from PIL import Image

    from tests.synthetic import make_images

    images, labels = make_images(1, seed=5)
    Image.fromarray(images[0]).save(png)
    predicted = invoke("predict", str(tmp_path / "runs" / "cli"), str(png))
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(f"{png}: ")


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ("predict", "runs/does-not-exist", "x.png"),
            "error: no exported model at runs/does-not-exist/model/model.ts: "
            "train with `invoke local` or fetch a job with `invoke fetch`",
        ),
        (("predict", "tests", "no-such.png"), None),
    ],
)
def test_predict_errors_are_clean(args, message, tmp_path):
    if message is None:  # a real run directory, a missing image
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / "model.ts").write_bytes(b"")
        (tmp_path / "model" / "README.md").write_text("the classifier's contract")  # artifacts.CONTRACT_FILE
        args = ("predict", str(tmp_path), "no-such.png")
        message = "error: image not found: no-such.png"
    result = invoke(*args)
    assert result.returncode == 2
    assert result.stderr.strip() == message


def test_upload_of_missing_data_is_one_line_and_exit_code_2(tmp_path):
    """DataError is a UserError: no traceback, and nothing is asked of AWS before the files are found."""
    infra = [
        "aws.data_bucket=never-called-data",
        "aws.artifacts_bucket=never-called-artifacts",
        "aws.repository_url=123456789012.dkr.ecr.us-east-1.amazonaws.com/never-called",
        "aws.role_arn=arn:aws:iam::123456789012:role/never-called",
        "aws.region=us-east-1",
    ]
    result = invoke("upload", f"dataset.channels.train={tmp_path}", *infra)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: dataset.channels.train {tmp_path} has no train-images-idx3-ubyte.gz or train-images-idx3-ubyte: "
        "copy the file there or fix dataset.channels.train"
    ]


MISSING_SDKS = """\
import sys


class Missing:  # a Python where requirements.txt's AWS packages were never installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("boto3", "botocore", "sagemaker", "moto"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Missing())
"""


MISSING_MOTO = MISSING_SDKS.replace('("boto3", "botocore", "sagemaker", "moto")', '("moto",)')


def test_the_sandbox_without_moto_says_what_to_install(tmp_path):
    """moto is a dev tool (requirements-dev.txt), not in requirements.txt: a user's install lacks it."""
    (tmp_path / "sitecustomize.py").write_text(MISSING_MOTO)
    with socket.socket() as probe:  # a free port: were the check to pass, the sandbox would not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = invoke("sandbox", "--port", str(port), env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert one_error_line(result) == (
        "error: invoke sandbox needs moto[server] (missing here: moto), a dev tool that requirements.txt "
        "leaves out: pip install -r requirements-dev.txt"
    )
    assert result.returncode == 2


@pytest.mark.parametrize("task", [["train", "--dry-run"], ["status"], ["fetch"]])
def test_an_aws_task_in_a_training_only_install_is_one_line(task, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(MISSING_SDKS)
    result = invoke(*task, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    line = one_error_line(result)
    assert "which this Python lacks (a training-only install?): pip install -r requirements.txt" in line, line
