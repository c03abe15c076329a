"""Experiment tracking (conf/logger/, project/training/tracking.py): a tiny run logs to a real MLflow
server on loopback (real HTTP), a bad tracking URI or a missing package is one line before anything
is written, and the logger chosen is not part of the run's identity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from project.core.errors import UserError
from project.core.identity import run_identity
from tests.failing_runs import free_port
from tests.mlflow_server import mlflow_server as server_on_loopback
from tests.requires import requires
from tests.sigv4_proxy import ARN_HEADER, sigv4_proxy
from tests.synthetic import tiny_overrides

pytestmark = requires(module="mlflow")


@pytest.fixture(autouse=True)
def _wandb_home(tmp_path, monkeypatch):
    """W&B's staging, cache and settings folders (by default under ~/.local/share, ~/.cache and
    ~/.config) in the test's own folder: nothing of a test run is left in the home directory."""
    for name in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with server_on_loopback(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def test_a_run_logs_its_config_per_epoch_metrics_and_artifacts_to_an_mlflow_server(composed, tiny_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    from project.training.train import run_composed

    cfg = composed(
        *tiny_run(run_name="tracked", **{"trainer.max_epochs": 1, "trainer.log_every_n_steps": 2}),
        "logger=[tensorboard,mlflow]",
        f"logger.mlflow.tracking_uri={mlflow_server}",
        "logger.mlflow.experiment_name=tracked",
    )
    metrics = run_composed(cfg, "tracked")
    run_dir = Path(cfg.paths.runs_dir) / "tracked"
    written = json.loads((run_dir / "metrics.json").read_text())
    client = MlflowClient(mlflow_server)
    run = client.get_run(written["mlflow_run_id"])
    assert metrics["mlflow_run_id"] == run.info.run_id and run.info.status == "FINISHED"
    assert (
        run.data.params["config/trainer/max_epochs"] == "1" and run.data.params["config/model/name"] == cfg.model.name
    )
    assert run.data.tags["config-hash"] == run_identity(cfg) == written["config_hash"]
    assert len(client.get_metric_history(run.info.run_id, "val_acc")) == 1  # one epoch, one point
    assert len(client.get_metric_history(run.info.run_id, "train_loss_step")) > 1  # per step, too
    assert run.data.metrics["final/test_acc"] == pytest.approx(written["test_acc"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "model.ts",
        "learning_curves.png",
        "confusion_matrix.png",
    }
    # TensorBoard and the CSV the plots read are still there
    assert (run_dir / "output" / "metrics.csv").is_file() and (run_dir / "output" / "tensorboard").is_dir()
    # invoke runs --mlflow lists the MLflow run beside the local one, with the same config hash
    from project.face.catalog import list_runs

    shown: list[str] = []
    where = [f"paths.runs_dir={cfg.paths.runs_dir}", "logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_server}"]
    listed = list_runs(where, None, None, None, echo=shown.append, mlflow=True)
    # The server is this module's: the other tests' runs (signed, halves) are listed too, by their names.
    assert {(e.where, e.name, e.config_hash) for e in listed if e.name == "tracked"} == {
        ("local", "tracked", written["config_hash"]),
        ("mlflow", "tracked", written["config_hash"]),
    }
    assert any(line.startswith("tracked") and " mlflow " in line for line in shown[-1].splitlines())


@pytest.mark.slow
def test_an_interrupted_run_resumed_by_the_same_command_goes_on_logging_to_its_mlflow_run(
    tiny_data, tmp_path, mlflow_server
):
    """Ctrl-C mid-run, then `invoke local` again: one MLflow run, finished, with the metrics of both halves."""
    from mlflow.tracking import MlflowClient

    from project.core.identity import tracker_runs_name
    from tests.test_interrupts import checkpoints, ctrl_c, run_invoke, start_invoke, wait_until

    epochs = 2  # 16 steps: Ctrl-C lands a few steps in, at the first checkpoint (step 2), well before the end
    every = {"trainer.max_epochs": epochs, "trainer.checkpoint_every_n_steps": 2, "trainer.log_every_n_steps": 1}
    overrides = [
        *tiny_overrides(*tiny_data, tmp_path / "runs", run_name="halves", **every),
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={mlflow_server}",
        "logger.mlflow.experiment_name=halves",
    ]
    run_dir = tmp_path / "runs" / "halves"
    proc = start_invoke("local", *overrides)
    wait_until(lambda: bool(checkpoints(run_dir)), proc)  # training is under way
    code, out, err = ctrl_c(proc)
    assert code == 130, (out[-2000:], err[-2000:])
    (kept,) = run_dir.glob(f"checkpoints/{tracker_runs_name('*')}")
    first = json.loads(kept.read_text())["mlflow_run_id"]
    step = int(next(line for line in err.splitlines() if line.startswith("interrupted at step")).split()[3].rstrip(";"))

    resumed = run_invoke("local", *overrides)  # the same command
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming run halves from step {step} " in resumed.stdout
    written = json.loads((run_dir / "metrics.json").read_text())
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name("halves").experiment_id])
    assert run.info.run_id == written["mlflow_run_id"] == first and run.info.status == "FINISHED"
    train_steps = {m.step for m in client.get_metric_history(first, "train_loss_step")}
    assert min(train_steps) < step <= max(train_steps) == written["global_steps"] - 1  # both halves, every step
    assert len({m.step for m in client.get_metric_history(first, "val_acc")}) == epochs
    assert run.data.metrics["final/global_steps"] == written["global_steps"]
    assert {a.path for a in client.list_artifacts(first)} >= {"model.ts", "learning_curves.png"}


@requires(module="wandb")
def test_a_wandb_run_offline_logs_its_config_per_epoch_metrics_and_artifacts_without_an_account(
    composed, tiny_run, monkeypatch
):
    """logger=[tensorboard,wandb], no WANDB_API_KEY: the default mode=offline writes the run under
    output/wandb/, read back here from its .wandb file."""
    from project.training.train import run_composed
    from tests import wandb_records

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    overrides = tiny_run(run_name="weights", **{"trainer.max_epochs": 2, "trainer.log_every_n_steps": 2})
    cfg = composed(*overrides, "logger=[tensorboard,wandb]")
    metrics = run_composed(cfg, "weights")
    run_dir = Path(cfg.paths.runs_dir) / "weights"
    written = json.loads((run_dir / "metrics.json").read_text())
    path = wandb_records.run_file(run_dir)
    assert path.name == f"run-{written['wandb_run_id']}.wandb" and metrics["wandb_run_id"] == written["wandb_run_id"]
    found = wandb_records.records(path)
    params = wandb_records.config(found)["config"]
    assert params["trainer"]["max_epochs"] == 2 and params["model"]["name"] == cfg.model.name
    assert len(wandb_records.history(found, "val_acc")) == 2  # per epoch
    assert len(wandb_records.history(found, "train_loss_step")) > 2  # and per step
    assert wandb_records.summary(found)["final/test_acc"] == pytest.approx(written["test_acc"])
    assert wandb_records.artifacts(found) == {
        "weights-model": ("model", {"model.ts", "learning_curves.png", "confusion_matrix.png"})
    }
    assert (run_dir / "output" / "tensorboard").is_dir() and (run_dir / "output" / "metrics.csv").is_file()


@requires(module="wandb")
def test_a_resumed_run_keeps_its_wandb_run_id(composed, tmp_path):
    """The id kept beside the checkpoints is the one the resumption's W&B run takes (resume="allow")."""
    from types import SimpleNamespace

    import wandb
    from pytorch_lightning.loggers import WandbLogger

    from project.training import tracking

    cfg, out, kept = composed("logger=wandb"), tmp_path / "output", tmp_path / "checkpoints"
    built = tracking.build(cfg, out, "r", {"config-hash": "abc"}, in_container=False)
    (first,) = [lg for lg in built if isinstance(lg, WandbLogger)]
    tracking.remember(SimpleNamespace(loggers=[first]), kept, "abc")
    run_id = first.experiment.id
    first.experiment.finish()
    assert tracking.earlier_runs(kept, "abc") == {"wandb_run_id": run_id} and tracking.earlier_runs(kept, "def") == {}
    built = tracking.build(cfg, out, "r", {"config-hash": "abc"}, False, tracking.earlier_runs(kept, "abc"))
    (again,) = [lg for lg in built if isinstance(lg, WandbLogger)]
    assert again.experiment.id == run_id
    again.experiment.finish()
    wandb.teardown()  # W&B's service process: not left running after the test
    assert list((out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


def test_logger_wandb_without_wandb_installed_is_one_line_before_anything_is_written(composed, tmp_path, monkeypatch):
    import sys

    from project.training import tracking

    monkeypatch.setitem(sys.modules, "wandb", None)  # as where it is not installed: find_spec says None
    with pytest.raises(UserError) as info:
        tracking.check(composed("logger=[tensorboard,wandb]"), tmp_path / "out", in_container=False)
    assert str(info.value) == (
        "logger=wandb needs the wandb package, which is not installed here: pip install -r requirements-tracking.txt"
    )
    assert not (tmp_path / "out").exists()


def test_a_run_logs_to_a_sagemaker_managed_tracking_server_by_its_arn_with_sigv4_signed_requests(
    composed, tiny_run, mlflow_server, monkeypatch, tmp_path
):
    """logger.mlflow.tracking_uri=<ARN>: the sagemaker-mlflow plugin turns it into the server's URL and signs
    every request with SigV4. Its own setting SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT points it at a loopback
    front door (tests/sigv4_proxy.py) that checks each signature and passes the request to a real server."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from project.training.train import run_composed

    arn = "arn:aws:sagemaker:eu-west-1:123456789012:mlflow-tracking-server/signed"
    # The managed server keeps artifacts in S3 (the plugin's presigned URLs); here, a folder the run writes to.
    MlflowClient(mlflow_server).create_experiment("signed", artifact_location=(tmp_path / "artifacts").as_uri())
    try:
        with sigv4_proxy(mlflow_server, arn, "testing", "testing") as (door, passed):
            monkeypatch.setenv("SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT", door)
            cfg = composed(
                *tiny_run(run_name="signed"),
                "logger=mlflow",
                f"logger.mlflow.tracking_uri={arn}",
                "logger.mlflow.experiment_name=signed",
            )
            metrics = run_composed(cfg, "signed")
    finally:
        mlflow.set_tracking_uri(None)  # the plugin reads the process-wide URI: no ARN left for the next test
    run = MlflowClient(mlflow_server).get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["final/test_acc"] == pytest.approx(metrics["test_acc"])
    assert "/api/2.0/mlflow/runs/log-batch" in passed  # the metrics went through the signed door
    assert {a.path for a in MlflowClient(mlflow_server).list_artifacts(run.info.run_id)} >= {"model.ts"}
    # The door refuses what the plugin would not send: no signature, or one made with another secret.
    with sigv4_proxy(mlflow_server, arn, "testing", "testing") as (door, passed):
        assert _status(door, {ARN_HEADER: arn}) == 403
        assert _status(door, {ARN_HEADER: arn, **_signed(door, arn, "another-secret")}) == 403
        assert _status(door, {ARN_HEADER: arn, **_signed(door, arn, "testing")}) == 200 and passed


def _signed(url: str, arn: str, secret: str) -> dict[str, str]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    SigV4Auth(Credentials("testing", secret), "sagemaker-mlflow", arn.split(":")[3]).add_auth(request)
    return dict(request.headers)


def _status(url: str, headers: dict[str, str]) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_an_mlflow_uri_no_server_answers_is_one_line_and_no_run_folder(composed, tiny_run):
    from project.training.train import run_composed

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = composed(*tiny_run(run_name="unheard"), "logger=mlflow", f"logger.mlflow.tracking_uri={uri}")
    with pytest.raises(UserError) as info:
        run_composed(cfg, "unheard")
    message = str(info.value)
    assert (
        message.startswith(f"logger.mlflow.tracking_uri={uri}: no MLflow server answers there") and "\n" not in message
    )
    assert not (Path(cfg.paths.runs_dir) / "unheard").exists()


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("arn:aws:sagemaker:us-east-1:123:mlflow-tracking-server/x", "is not a SageMaker MLflow tracking server's ARN"),
        ("ftp://host/x", "give a folder, an MLflow server's http(s):// URL"),
        ("file:///tmp/mlruns", "give a folder, an MLflow server's http(s):// URL"),
    ],
)
def test_a_malformed_tracking_uri_is_one_line(composed, uri, says, tmp_path):
    from project.training import tracking

    with pytest.raises(UserError) as info:
        tracking.check(composed("logger=mlflow", f"logger.mlflow.tracking_uri={uri}"), tmp_path, in_container=False)
    assert str(info.value).startswith(f"logger.mlflow.tracking_uri={uri}") and says in str(info.value)


def test_a_tracker_not_installed_is_one_line_saying_what_to_install():
    from project.training import tracking

    with pytest.raises(UserError) as info:
        tracking.need("no_such_tracker_module", "logger=mlflow", tracking.MLFLOW_INSTALL)
    assert str(info.value) == (
        "logger=mlflow needs the no_such_tracker_module package, which is not installed here: "
        "pip install -r requirements-tracking.txt"
    )


def test_a_local_tracking_folder_is_where_the_run_starts_or_in_a_jobs_output(tmp_path, monkeypatch):
    from project.training.tracking import artifact_location, tracking_uri

    monkeypatch.chdir(tmp_path)
    assert tracking_uri(None, tmp_path / "out", in_container=False) == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert tracking_uri("runs/t", tmp_path / "out", in_container=True) == f"sqlite:///{tmp_path}/out/runs/t/mlflow.db"
    assert artifact_location(None, tmp_path, in_container=False) == (tmp_path / "mlruns" / "artifacts").as_uri()
    assert tracking_uri("http://h:5000", tmp_path, in_container=True) == "http://h:5000"
    assert artifact_location("http://h:5000", tmp_path, in_container=True) is None


def test_a_resumption_whose_mlflow_run_is_gone_starts_a_new_one(composed, mlflow_server, tmp_path):
    """A spot job's mlruns/ (in its output) does not survive the instance: the id kept is not reused."""
    from project.training import tracking

    cfg = composed("logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_server}")
    earlier = {tracking.RUN_ID_KEY: "0" * 32, tracking.MLFLOW_URI_KEY: mlflow_server}
    (logger,) = tracking.build(cfg, tmp_path / "out", "gone", {}, in_container=False, earlier=earlier)[1:]
    assert logger.run_id != "0" * 32 and logger.experiment.get_run(logger.run_id).info.run_name == "gone"


def test_the_loggers_chosen_are_not_part_of_the_run_identity(composed):
    base = run_identity(composed())
    assert run_identity(composed("logger=[tensorboard,mlflow,wandb]")) == base == run_identity(composed("logger=none"))


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("logger=tensorboardx", "unknown logger 'tensorboardx' \\(did you mean tensorboard\\?\\)"),
        ("logger.wandb.mode=cloud", "logger.wandb.mode must be one of offline, online, disabled, got 'cloud'"),
    ],
)
def test_a_wrong_logger_is_refused_at_compose(composed, override, line):
    from project.core.config import ConfigError

    overrides = ["logger=wandb", override] if override.startswith("logger.wandb") else [override]
    with pytest.raises(ConfigError, match=line):
        composed(*overrides)


def test_a_job_with_logger_mlflow_installs_the_client_tags_its_commit_and_logs_to_terraforms_server(composed, tmp_path):
    """logger.mlflow.tracking_uri=null: the tracking server Terraform outputs; the job installs mlflow-skinny
    and sagemaker-mlflow on either image and carries the commit for the run's git-sha tag."""
    import dataclasses

    from omegaconf import OmegaConf

    from project.aws import image
    from project.aws.plan import plan_job
    from project.aws.staging import stage_source
    from project.core.sagemaker_names import GIT_SHA_ENV
    from tests.test_jobs import CUSTOM, INFRA

    arn = "arn:aws:sagemaker:us-east-1:123456789012:mlflow-tracking-server/lightning"
    infra = dataclasses.replace(INFRA, mlflow_tracking_server_arn=arn)
    plain = plan_job(composed(), infra, CUSTOM, revision="9f8e7d6")
    assert plain.requirements_file() is None and GIT_SHA_ENV not in plain.environment
    cfg = composed("logger=[tensorboard,mlflow]")
    tracked = plan_job(cfg, infra, CUSTOM, revision="9f8e7d6")
    assert tracked.environment[GIT_SHA_ENV] == "9f8e7d6" and tracked.config_hash == plain.config_hash
    assert tracked.requirements_file() == "mlflow-skinny==3.17.2\nsagemaker-mlflow==0.5.0\n"
    assert f"MLflow: {arn}" in tracked.summary()
    source = stage_source(cfg, tmp_path / "src", tracked)
    assert (source / image.JOB_REQUIREMENTS).read_text() == tracked.requirements_file()
    assert OmegaConf.load(source / "config.yaml").logger.mlflow.tracking_uri == arn
    with pytest.raises(UserError, match="^logger.mlflow.tracking_uri=arn:aws:sagemaker:x is not a SageMaker MLflow"):
        plan_job(composed("logger=mlflow", "logger.mlflow.tracking_uri=arn:aws:sagemaker:x"), INFRA, CUSTOM)
    server = plan_job(composed("logger=mlflow", "logger.mlflow.tracking_uri=http://mlflow:5000"), INFRA, CUSTOM)
    assert server.requirements_file() == "mlflow-skinny==3.17.2\n"  # no SageMaker plugin for a plain server
    # logger=wandb: wandb, at requirements-tracking.txt's pin, only in the jobs that use it
    weights = plan_job(composed("logger=[tensorboard,wandb]"), INFRA, CUSTOM)
    assert weights.requirements_file() == "wandb==0.31.0\n" and "MLflow" not in weights.summary()
    both = plan_job(composed("logger=[mlflow,wandb]", "logger.mlflow.tracking_uri=http://mlflow:5000"), INFRA, CUSTOM)
    assert both.requirements_file() == "mlflow-skinny==3.17.2\nwandb==0.31.0\n"


def test_a_run_config_saved_before_the_logger_group_loads_with_its_default(composed, tmp_path):
    """deploy and --config read a run's model/config.yaml: one saved before `logger` existed ran with TensorBoard."""
    from omegaconf import OmegaConf

    from project.core.config import load_resolved, to_yaml

    old = OmegaConf.to_container(composed(), resolve=True)
    old.pop("logger")
    (tmp_path / "old.yaml").write_text(OmegaConf.to_yaml(old))
    assert OmegaConf.to_container(load_resolved(tmp_path / "old.yaml").logger) == {
        "tensorboard": {"name": "tensorboard"}
    }
    (tmp_path / "none.yaml").write_text(to_yaml(composed("logger=none")))
    assert OmegaConf.to_container(load_resolved(tmp_path / "none.yaml").logger) == {}
