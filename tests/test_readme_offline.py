"""The docs' "Offline, in the sandbox" block (docs/guides/sandbox.md, which README.md links as the
third way to run) runs as written, as a bash script in a fresh clone of this repository.

The clone is of the committed HEAD (`git clone <this checkout>`): commit before running this.
The test sets only the variables the page documents: TF_PLUGIN_MIRROR (the provider mirror the
Terraform tests use, when this machine has one: the block itself writes the CLI configuration
that points Terraform at it) and DATASET, a tiny synthetic dataset; and no shared AWS config or
Terraform CLI configuration of this machine. The block serves the sandbox on 4566, LocalStack's
port, as a user would.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from project.sandbox import DEFAULT_PORT
from tests.aws_fixtures import find_plugin_mirror
from tests.requires import requires
from tests.synthetic import write_dataset

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow
SCRIPT_TIMEOUT_S = 900


OFFLINE_PAGE = Path("docs") / "guides" / "sandbox.md"


def offline_block(page: str) -> str:
    """The first ```bash block of the sandbox page."""
    match = re.search(r"```bash\n(.*?)```", page, re.S)
    assert match, f"{OFFLINE_PAGE} has no bash block"
    return match.group(1)


def dataset_overrides(folder: Path) -> str:
    files = write_dataset(folder, n_train=600, n_test=200)
    return " ".join(
        [f"dataset.channels.train={folder}", "dataset.val_size=100"]
        + [f"dataset.files.{k}={v}" for k, v in files.items()]
    )


def script_env(tmp_path: Path) -> dict[str, str]:
    unset = ("AWS_", "TF_CLI_CONFIG_FILE", "TF_PLUGIN_MIRROR")  # the block sets these itself, or does without
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    mirror = find_plugin_mirror()
    if mirror is not None:
        env["TF_PLUGIN_MIRROR"] = str(mirror)
    env.update(
        CHECKPOINT_DISABLE="1",  # Terraform asks no update server
        DATASET=dataset_overrides(tmp_path / "tiny"),
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),  # nothing can point at a real account
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
    )
    return env


# The block serves the sandbox on its default port, as a user's shell would.
@requires(terraform=True, commands=("tflocal", "git"), container=True, free_port=DEFAULT_PORT)
def test_the_offline_block_runs_as_written_in_a_fresh_clone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    script = clone / "offline.sh"
    script.write_text("set -euo pipefail\n" + offline_block((clone / OFFLINE_PAGE).read_text()))
    env = script_env(tmp_path)
    try:
        result = subprocess.run(
            ["bash", str(script)], cwd=clone, env=env, capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S
        )
    finally:
        if (clone / ".sandbox" / "sandbox.pid").exists():  # the block failed before its last line
            subprocess.run(["python3", "-m", "invoke", "sandbox", "--stop"], cwd=clone, env=env, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out[-5000:] + result.stderr[-5000:]
    if "TF_PLUGIN_MIRROR" in env:  # the provider came from the mirror, by the block's own configuration
        assert (clone / ".terraform-mirror.tfrc").read_text().count(env["TF_PLUGIN_MIRROR"]) == 1
    assert "sandbox: AWS at http://127.0.0.1:4566" in out and "SageMaker jobs run on this machine" in out
    job = re.search(r"launched (\S+)", out).group(1)
    assert re.search(r"test_acc=0\.\d+", out) and f"{job}: Completed" in out  # logs streamed, the job ran
    assert (clone / "runs" / job / "model" / "model.ts").is_file()  # fetched, same layout as invoke local
    # One answer per sample digit; a model trained on the tiny synthetic data may well be unsure.
    predicted = re.findall(r"mnist-test-\d-label\d\.png: (?:unsure: )?(\d) \(p=", out)
    assert len(predicted) == 3, out[-3000:]
    assert out.strip().splitlines()[-1].startswith("sandbox: stopped (pid ")  # the last line stopped it
