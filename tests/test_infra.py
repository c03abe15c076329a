"""load_infra: Terraform outputs become one typed Infra, and every failure says what to run.

Real terraform applies tiny outputs-only configurations here (no provider, no AWS, a second
each); a stand-in `terraform` script is used only for outputs real Terraform never prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from project.aws.infra import OUTPUT_NAMES, Infra, InfraError, load_infra, read_terraform_outputs
from project.core.errors import UserError
from tests.aws_fixtures import cli_env, run_terraform
from tests.requires import requires

VALUES = {
    "data_bucket": "proj-data-123456789012-us-east-1",
    "artifacts_bucket": "proj-artifacts-123456789012-us-east-1",
    "repository_url": "123456789012.dkr.ecr.us-east-1.amazonaws.com/proj",
    "role_arn": "arn:aws:iam::123456789012:role/proj-sagemaker-us-east-1",
    "region": "us-east-1",
}


def applied_outputs(folder: Path, values: dict[str, str], apply: bool = True) -> Path:
    """A Terraform configuration of only these outputs, applied (state written) unless apply=False."""
    folder.mkdir(parents=True, exist_ok=True)
    blocks = (f"output {json.dumps(name)} {{\n  value = {json.dumps(value)}\n}}\n" for name, value in values.items())
    (folder / "outputs.tf").write_text("\n".join(blocks))
    if apply:
        run_terraform(folder, cli_env(folder), "apply", "-auto-approve", "-input=false", "-no-color")
    return folder


def message(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text, "an InfraError is one line"
    return text


@pytest.fixture
def path_without_terraform(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    return folder


@pytest.fixture
def fake_terraform(path_without_terraform):
    """Put a `terraform` on PATH that prints stdout/stderr and exits with code."""

    def install(stdout: str = "", stderr: str = "", code: int = 0) -> None:
        script = path_without_terraform / "terraform"
        script.write_text(
            f"#!{sys.executable}\nimport sys\n"
            f"sys.stdout.write({stdout!r}); sys.stderr.write({stderr!r}); sys.exit({code})\n"
        )
        script.chmod(0o755)

    return install


def test_infra_error_is_a_user_error():
    # tasks print UserErrors as one line and exit 2; RuntimeError is the documented base.
    assert issubclass(InfraError, UserError) and issubclass(InfraError, RuntimeError)


def test_overrides_for_every_field_do_not_run_terraform(path_without_terraform, tmp_path):
    assert load_infra(tmp_path / "no-such-dir", VALUES) == Infra(**VALUES)


def test_missing_terraform_says_how_to_install(path_without_terraform, tmp_path):
    with pytest.raises(InfraError) as error:
        load_infra(tmp_path, {**VALUES, "role_arn": None})
    text = message(error)
    assert "terraform is not installed" in text and "developer.hashicorp.com/terraform/install" in text
    assert "aws.role_arn" in text


def test_missing_configuration_dir_is_named(tmp_path):
    with pytest.raises(InfraError) as error:
        read_terraform_outputs(tmp_path / "nowhere")
    assert "no Terraform configuration at" in message(error) and "aws.terraform_dir" in message(error)


@requires(terraform=True)
def test_never_applied_says_which_command_fixes_it(tmp_path):
    folder = applied_outputs(tmp_path / "terraform", VALUES, apply=False)
    with pytest.raises(InfraError) as error:
        load_infra(folder)
    text = message(error)
    assert f"Terraform has not been applied in {folder}/" in text
    assert f"terraform -chdir={folder} init && terraform -chdir={folder} apply" in text


@requires(terraform=True)
def test_missing_output_is_named_with_the_fix(tmp_path):
    folder = applied_outputs(tmp_path / "terraform", {k: v for k, v in VALUES.items() if k != "role_arn"})
    with pytest.raises(InfraError) as error:
        load_infra(folder)
    text = message(error)
    assert "Terraform output `role_arn` is missing" in text
    assert f"terraform -chdir={folder} apply" in text and "aws.role_arn" in text
    # ... and an override for exactly that output is enough.
    assert load_infra(folder, {"role_arn": VALUES["role_arn"]}) == Infra(**VALUES)


@requires(terraform=True)
def test_outputs_become_infra_and_non_empty_overrides_win(tmp_path):
    folder = applied_outputs(tmp_path / "terraform", {**VALUES, "unrelated": "ignored"})
    assert read_terraform_outputs(folder)["unrelated"] == "ignored"
    assert load_infra(folder) == Infra(**VALUES)
    overridden = load_infra(folder, {"data_bucket": "existing", "artifacts_bucket": "", "region": None})
    assert overridden == Infra(**{**VALUES, "data_bucket": "existing"})


@requires(terraform=True)
def test_a_local_state_is_read_as_terraform_output_reads_it(tmp_path, monkeypatch):
    folder = applied_outputs(tmp_path / "terraform", {**VALUES, "listed": ["a", "b"]})
    command = ["terraform", f"-chdir={folder}", "output", "-json"]
    printed = json.loads(subprocess.run(command, env=cli_env(folder), capture_output=True, check=True).stdout)
    monkeypatch.setenv("PATH", str(tmp_path / "no-terraform-here"))  # from here on, Terraform cannot run
    assert read_terraform_outputs(folder) == {name: item["value"] for name, item in printed.items()}
    # Where the state is not that file, Terraform is asked (and here it says it is missing).
    dot = folder / ".terraform"
    dot.mkdir(exist_ok=True)
    for path, text in (
        (dot / "environment", "staging"),  # another workspace: terraform.tfstate.d/staging/
        (dot / "terraform.tfstate", json.dumps({"version": 3, "backend": {"type": "s3", "config": {}}})),
    ):
        path.write_text(text)
        with pytest.raises(InfraError, match="terraform is not installed"):
            read_terraform_outputs(folder)
        path.unlink()
    assert load_infra(folder) == Infra(**VALUES)


def test_non_json_output_is_reported(fake_terraform, tmp_path):
    fake_terraform(stdout="Warning: this is not JSON\n")
    with pytest.raises(InfraError) as error:
        read_terraform_outputs(tmp_path)
    assert "printed no valid JSON" in message(error)


def test_terraform_failure_shows_its_error_line(fake_terraform, tmp_path):
    stderr = '\n\u2577\n\u2502 Error: Backend initialization required, please run "terraform init"\n\u2502\n\u2575\n'
    fake_terraform(stderr=stderr, code=1)
    with pytest.raises(InfraError) as error:
        read_terraform_outputs(tmp_path)
    text = message(error)
    assert "Error: Backend initialization required" in text and f"terraform -chdir={tmp_path} init" in text


def test_non_string_output_counts_as_missing(fake_terraform, tmp_path):
    outputs = {name: {"value": value, "type": "string"} for name, value in VALUES.items()}
    outputs["region"] = {"value": ["us-east-1"], "type": ["list", "string"]}
    fake_terraform(stdout=json.dumps(outputs))
    with pytest.raises(InfraError) as error:
        load_infra(tmp_path)
    assert "`region` is missing" in message(error)


def test_malformed_output_is_named_with_the_rule(fake_terraform, tmp_path):
    outputs = {name: {"value": value, "type": "string"} for name, value in VALUES.items()}
    outputs["repository_url"]["value"] = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    fake_terraform(stdout=json.dumps(outputs))
    with pytest.raises(InfraError) as error:
        load_infra(tmp_path)
    text = message(error)
    assert "Terraform output `repository_url`='123456789012.dkr.ecr.us-east-1.amazonaws.com'" in text
    assert "expected <account>.dkr.ecr.<region>.amazonaws.com/<repository>" in text and "aws.repository_url" in text


def test_output_names_are_the_infra_fields():
    assert OUTPUT_NAMES == ("data_bucket", "artifacts_bucket", "repository_url", "role_arn", "region")


def test_import_stays_cheap():
    # tasks.py imports project.aws.infra; `invoke --list` must not pay for the AWS SDKs or torch.
    heavy = ("boto3", "botocore", "torch", "sagemaker", "hydra")
    code = f"import sys, project.aws.infra; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
