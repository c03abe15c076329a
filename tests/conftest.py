import os
import signal
from pathlib import Path

import pytest

from tests.requires import MARKER, unmet
from tests.synthetic import tiny_overrides, write_dataset

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.aws_fixtures"] if (ROOT / "tests" / "aws_fixtures.py").exists() else []
# The tests on the Terraform-applied moto world are about half of the suite's time. They run in two
# groups of about equal time (their modules' durations in CI, 2026-12-07), each on one xdist worker,
# so each worker applies Terraform (a minute) once and neither waits on the other; every other test
# goes wherever a worker is free. A module not listed joins the second group.
TERRAFORM_FIXTURES = {"aws_infra", "terraform_applied"}
TERRAFORM_GROUPS = ("terraform-applied-a", "terraform-applied-b")
FIRST_HALF = {
    "test_sweep_sagemaker",
    "test_deploy",
    "test_iam",
    "test_terraform",
    "test_registry",
    "test_rollout",
    "test_async",
}


def pytest_configure(config):
    config.addinivalue_line("markers", f"{MARKER}(**needs): skipped unless the machine has them (tests/requires.py)")
    # The tests send Ctrl-C, SIGHUP and SIGQUIT to the processes they start. A signal ignored here
    # (pytest started in the background of a script, or under nohup) would be ignored by every one
    # of them too (an ignored signal stays ignored across exec): give each its default back.
    for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGHUP, signal.SIG_DFL)):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, handler)
    if hasattr(signal, "SIGQUIT") and signal.getsignal(signal.SIGQUIT) == signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def terraform_group(item) -> str | None:
    if not TERRAFORM_FIXTURES & set(item.fixturenames):
        return None
    return TERRAFORM_GROUPS[0] if item.module.__name__.rsplit(".", 1)[-1] in FIRST_HALF else TERRAFORM_GROUPS[1]


@pytest.hookimpl(tryfirst=True)  # after pytest-randomly's shuffle, before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = terraform_group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    # Groups first, the Terraform halves leading (xdist hands out work units in this order: one half
    # to each worker at the start), then the rest; a stable sort keeps the shuffled order within each.
    items.sort(key=_start_order)


def _start_order(item) -> int:
    groups = [mark.args[0] for mark in item.iter_markers("xdist_group") if mark.args]
    if not groups:
        return 3
    return TERRAFORM_GROUPS.index(groups[0]) if groups[0] in TERRAFORM_GROUPS else 2


def pytest_runtest_setup(item):
    for mark in item.iter_markers(MARKER):
        reason = unmet(**mark.kwargs)
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def _compose_cache(tmp_path_factory):
    """Composed configs are cached in a folder of this test session, never in the user's home
    (subprocesses inherit the variable)."""
    os.environ["LIGHTNING_SAGEMAKER_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _no_real_aws(monkeypatch, tmp_path_factory):
    """No test reaches a real AWS account or depends on which session fixture ran before it on its
    worker: fake credentials, no profile, no config files, no instance-metadata probe. The moto
    fixtures set the same; a test about missing credentials removes them itself."""
    empty = tmp_path_factory.getbasetemp() / "no-aws-config"
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Tasks and relative config paths (terraform/, runs/) resolve from the repository root."""
    monkeypatch.chdir(ROOT)


def override(key: str, value: object) -> str:
    """key=value as Hydra reads it: None is null, booleans are lower case, sequences are lists."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if isinstance(value, list | tuple):
        return f"{key}=[{','.join(map(str, value))}]"
    return f"{key}={value}"


@pytest.fixture
def composed():
    """conf/ composed and validated as a task composes it: `composed()` is the user's defaults,
    `composed("trainer.seed=3", instance="ml.p3.2xlarge")` the same with overrides (strings as
    typed on the command line, or key=value; dotted keys as `**{"trainer.seed": 3}`).
    `conf_dir=` composes another config folder."""
    from project.core.config import compose

    def make(*overrides: str, conf_dir: Path | None = None, **settings: object) -> object:
        return compose([*overrides, *(override(k, v) for k, v in settings.items())], conf_dir=conf_dir)

    return make


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """(folder, stem -> sha256) of a tiny synthetic IDX dataset, gzipped like the real one."""
    folder = tmp_path_factory.mktemp("tiny-idx")
    return folder, write_dataset(folder)


@pytest.fixture
def tiny_run(tiny_data, tmp_path):
    """Overrides for a seconds-long real training run on the tiny dataset, writing under tmp_path."""
    folder, files = tiny_data

    def make(**extra):
        return tiny_overrides(folder, files, tmp_path / "runs", **extra)

    return make
