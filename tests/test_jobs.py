"""Job planning, validation, cost and image commands: pure functions, plain asserts."""

import base64

import pytest

from project.aws import image, sdk
from project.aws import plan as jobs
from project.aws.staging import stage_source
from project.config import compose
from project.errors import UserError
from project.infra import Infra
from project.sagemaker_names import JOB_NAME

INFRA = Infra(
    data_bucket="data-b",
    artifacts_bucket="art-b",
    repository_url="123456789012.dkr.ecr.us-east-1.amazonaws.com/proj",
    role_arn="arn:aws:iam::123456789012:role/proj-sagemaker",
    region="us-east-1",
)


def plan(*overrides):
    cfg = compose(list(overrides))
    return jobs.plan_job(cfg, INFRA, "abc1234"), cfg


def test_design_card_job_plan():
    p, cfg = plan("trainer.gpus=4", "instance=ml.p3.8xlarge")
    jobs.validate_plan(p, cfg)
    assert (p.instance_type, p.instance_count, p.processes_per_node, p.world_size) == ("ml.p3.8xlarge", 1, 4, 4)
    assert p.per_device_batch * p.world_size == cfg.trainer.batch_size
    assert p.image_uri == f"{INFRA.repository_url}:abc1234"
    assert p.channels == {"train": "s3://data-b/datasets/mnist/train/"} and p.input_modes == {"train": "File"}
    assert p.checkpoint_uri.startswith("s3://art-b/checkpoints/lightning-") and p.config_hash in p.checkpoint_uri
    assert p.tags == {"project": "lightning-sagemaker", "git-sha": "abc1234", "config-hash": p.config_hash}
    assert p.cost.on_demand_usd == pytest.approx(14.688 * 2)
    assert "$29.38 on-demand" in p.summary()


def test_gpus_default_to_the_instance_and_nodes_multiply():
    p, _ = plan("instance=ml.g5.12xlarge", "instance.count=2")
    assert (p.gpus_per_node, p.world_size) == (4, 8)
    assert p.cost.on_demand_usd == pytest.approx(7.09 * 2 * 2)


def test_spot_cost_and_wait():
    p, cfg = plan("instance=ml.p3.2xlarge", "job.spot=true", "job.max_run_minutes=60")
    jobs.validate_plan(p, cfg)
    assert p.max_wait_seconds == 7200
    # MaxRuntime caps the billable time, spot or not; the wait for capacity is not billed.
    assert p.cost.on_demand_usd == pytest.approx(3.825 * 1)
    assert p.cost.spot_usd == pytest.approx(3.825 * 1 * 0.3)
    assert (
        "$3.825/h x 1 instance(s) x 1.00 h max = $3.83 on-demand at most; managed spot about $1.15 "
        "(saves ~$2.68, 70% typical; waits up to 2.00 h for capacity, unbilled)"
    ) in p.summary()


def test_spot_and_on_demand_price_the_same_billable_hours():
    spot, _ = plan("instance=ml.p3.2xlarge", "job.spot=true")
    on_demand, _ = plan("instance=ml.p3.2xlarge")
    assert spot.cost.max_hours == on_demand.cost.max_hours == 2.0  # job.max_run_minutes=120, not the 4 h MaxWait
    assert spot.cost.on_demand_usd == on_demand.cost.on_demand_usd == pytest.approx(3.825 * 2)
    assert spot.cost.spot_usd == on_demand.cost.spot_usd
    assert f"(spot would be about ${on_demand.cost.spot_usd:.2f})" in on_demand.summary()


def test_job_names_planned_in_the_same_second_differ_and_fit_sagemaker():
    from datetime import datetime

    cfg = compose([])
    now = datetime(2026, 3, 1, 12, 0, 0, 123456)
    names = {jobs.plan_job(cfg, INFRA, "abc1234", now=now).job_name for _ in range(20)}
    assert len(names) == 20
    assert all(JOB_NAME.match(n) and n.startswith("lightning-20260301-120000-123-") for n in names)
    longest = "b" * jobs.MAX_BASE_NAME_LENGTH
    p, cfg = plan(f"job.base_name={longest}")
    jobs.validate_plan(p, cfg)
    assert len(p.job_name) == 63 and p.job_name in p.summary()
    with pytest.raises(jobs.LaunchError, match=f"at most {jobs.MAX_BASE_NAME_LENGTH} characters"):
        p, cfg = plan(f"job.base_name={longest}b")
        jobs.validate_plan(p, cfg)


def test_status_table_shows_missing_values_as_a_dash():
    from project.aws import monitor

    rows = [
        monitor.StatusRow("starting", "InProgress", "1xml.m5.xlarge", None, None, None, {}),
        monitor.StatusRow("done", "Completed", "1xml.m5.xlarge", 61.4, 60, 0.0123, {"test_acc": 0.98}),
    ]
    lines = monitor.status_table(rows).splitlines()
    assert lines[1].split() == ["starting", "InProgress", "1xml.m5.xlarge", "-", "-", "-", "-", "-"]
    assert lines[2].split() == ["done", "Completed", "1xml.m5.xlarge", "61s", "60s", "$0.01", "0.9800", "-"]


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["trainer.gpus=8", "instance=ml.p3.8xlarge"], "trainer.gpus=8 but ml.p3.8xlarge has 4 GPU(s)"),
        (["instance=ml.p3.8xlarge", "trainer.batch_size=250"], "does not split evenly over world size 4"),
        (
            ["job.spot=true", "job.max_run_minutes=60", "job.max_wait_minutes=30"],
            "spot needs job.max_wait_minutes >= job.max_run_minutes (60)",
        ),
        (["job.max_wait_minutes=30"], "job.max_wait_minutes applies to spot only"),
        (["job.max_run_minutes=0"], "job.max_run_minutes must be between 1 and 40320"),
        (["job.max_run_minutes=50000"], "job.max_run_minutes must be between 1 and 40320"),
        (["job.keep_alive_minutes=120"], "job.keep_alive_minutes must be between 0 and 60"),
        (["job.spot=true", "job.keep_alive_minutes=5"], "warm pools"),
        (["job.base_name=bad_name"], "job.base_name='bad_name'"),
        (["instance.type=ml.x9.huge"], "unknown instance type 'ml.x9.huge'"),
        (["trainer.gpus=0", "instance=ml.g5.xlarge"], "pays for 1 idle GPU(s)"),
    ],
)
def test_invalid_launches_are_refused_with_one_line(overrides, message):
    with pytest.raises(UserError) as info:
        p, cfg = plan(*overrides)
        jobs.validate_plan(p, cfg)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_hyperparameter_limits():
    p, cfg = plan()
    from dataclasses import replace

    with pytest.raises(jobs.LaunchError, match="length limits"):
        jobs.validate_plan(replace(p, hyperparameters={"k": "v" * 2501}), cfg)
    with pytest.raises(jobs.LaunchError, match="SageMaker allows 100"):
        jobs.validate_plan(replace(p, hyperparameters={str(i): "v" for i in range(101)}), cfg)


def test_metric_regexes_match_the_lines_training_prints():
    import re

    from project.artifacts import format_metrics

    metrics = {"train_acc": 0.98, "train_loss": 0.05, "val_acc": 0.9916, "val_loss": 0.0291, "seconds": 3.2}
    line = format_metrics({"epoch": "2/3", **metrics})  # as reporting.MetricLines prints it
    found = {d["Name"]: re.search(d["Regex"], line) for d in sdk.METRIC_DEFINITIONS}
    assert float(found["epoch"].group(1)) == 2
    assert float(found["val_acc"].group(1)) == 0.9916
    assert float(found["train_loss"].group(1)) == 0.05
    assert found["test_acc"] is None


def test_staged_source_carries_the_resolved_config(tmp_path):
    from project.config import load_resolved

    p, cfg = plan("model=mlp", "trainer.max_epochs=5")
    source = stage_source(cfg, tmp_path / "src", p)
    assert (source / "project" / "train.py").is_file() and (source / "sm_entry.py").is_file()
    assert not list(source.rglob("__pycache__"))
    again = load_resolved(source / "config.yaml")
    assert again.model.name == "mlp" and again.trainer.max_epochs == 5


@pytest.mark.parametrize("gpus", [[], ["trainer.gpus=4"]])
def test_staged_config_holds_the_gpus_resolved_when_planning(gpus, tmp_path):
    """trainer.gpus=null would be resolved a second time in the container; the plan's number travels."""
    from project.config import config_hash, load_resolved

    p, cfg = plan("instance=ml.p3.8xlarge", *gpus)
    staged = load_resolved(stage_source(cfg, tmp_path / "src", p) / "config.yaml")
    assert staged.trainer.gpus == p.gpus_per_node == p.processes_per_node == 4
    assert jobs.entry_command(p).endswith("--launch 4")
    # The job's tags and checkpoint prefix name the identity the container computes from the staged file.
    assert config_hash(staged) == p.config_hash


def test_docker_commands():
    ref = image.ImageRef(INFRA.repository_url, "abc1234")
    assert image.build_command(ref, "base:1") == [
        "docker",
        "build",
        "--platform",
        "linux/amd64",
        "--build-arg",
        "BASE_IMAGE=base:1",
        "--tag",
        f"{INFRA.repository_url}:abc1234",
        "--file",
        "Dockerfile",
        ".",
    ]
    login, push = image.push_commands(ref)
    assert login == [
        "docker",
        "login",
        "--username",
        "AWS",
        "--password-stdin",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    ]
    assert push == ["docker", "push", f"{INFRA.repository_url}:abc1234"]


def test_image_tag_is_the_git_sha_and_refuses_a_dirty_tree(tmp_path, monkeypatch):
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*a):
        return subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    (repo / "f.txt").write_text("1")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    monkeypatch.setattr(image, "ROOT", repo)
    sha = git("rev-parse", "--short=7", "HEAD").strip()
    assert image.image_tag() == sha
    (repo / "f.txt").write_text("2")
    with pytest.raises(image.ImageError, match="uncommitted changes"):
        image.image_tag()
    assert image.image_tag(allow_dirty=True).startswith(f"{sha}-dirty-")


def test_ecr_password_decodes_the_token():
    class FakeEcr:  # the token's shape, as ECR returns it
        def get_authorization_token(self):
            return {"authorizationData": [{"authorizationToken": base64.b64encode(b"AWS:s3cret").decode()}]}

    assert image.ecr_password(FakeEcr()) == "s3cret"


def test_the_code_channel_carries_the_packages_the_targets_name_and_nothing_else(tmp_path):
    p, cfg = plan("model=mlp_regressor", "dataset=csv_regression")
    source = stage_source(cfg, tmp_path / "src", p)
    assert sorted(path.name for path in source.iterdir()) == ["config.yaml", "mymodels", "project", "sm_entry.py"]
    assert (source / "mymodels" / "csv_regression.py").is_file()
    assert p.metrics == ["train_loss", "val_loss", "val_mae", "test_loss", "test_mae", "epoch"]
    p, cfg = plan()
    assert sorted(path.name for path in stage_source(cfg, tmp_path / "d", p).iterdir()) == [
        "config.yaml",
        "project",
        "sm_entry.py",
    ]
    p, cfg = plan("job.include=[mymodels]")
    assert (stage_source(cfg, tmp_path / "i", p) / "mymodels" / "__init__.py").is_file()


def test_a_package_that_does_not_import_is_refused_before_launch(tmp_path):
    p, cfg = plan("job.include=[no_such_package_here]")
    with pytest.raises(jobs.LaunchError, match="package no_such_package_here .* is not importable here"):
        stage_source(cfg, tmp_path / "src", p)


def test_each_channel_is_one_input_channel_in_its_mode():
    p, _ = plan("+dataset.input_modes.train=FastFile")
    assert p.channels == {"train": "s3://data-b/datasets/mnist/train/"} and p.input_modes == {"train": "FastFile"}
    (channel,) = sdk.input_channels(p)
    assert (channel.channel_name, channel.input_mode) == ("train", "FastFile")
    assert channel.data_source.s3_data_source.s3_uri == "s3://data-b/datasets/mnist/train/"
