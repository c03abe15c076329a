import os
from pathlib import Path

import pytest

from tests.synthetic import tiny_overrides, write_dataset

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.aws_fixtures"] if (ROOT / "tests" / "aws_fixtures.py").exists() else []


@pytest.fixture(scope="session", autouse=True)
def _compose_cache(tmp_path_factory):
    """Composed configs are cached in a folder of this test session, never in the user's home
    (subprocesses inherit the variable)."""
    os.environ["LIGHTNING_SAGEMAKER_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Tasks and relative config paths (terraform/, runs/) resolve from the repository root."""
    monkeypatch.chdir(ROOT)


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
