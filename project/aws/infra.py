"""The hand-off from Terraform to Python: `terraform output -json` in terraform/ as a typed Infra.

Every task that touches AWS calls load_infra(); nothing else knows a bucket name, repository URI
or role ARN. Users with existing resources set them in the config (aws.data_bucket, ...) instead.
Imports only the stdlib (and project.core.errors, project.core.names): tasks.py imports this and `invoke --list`
must stay instant.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from project.core.errors import UserError
from project.core.names import name_problem


@dataclass(frozen=True)
class Infra:
    """What a training job needs from the account; field names are the Terraform output names."""

    data_bucket: str
    artifacts_bucket: str
    repository_url: str
    role_arn: str
    region: str
    # terraform/ with enable_mlflow=true: the SageMaker managed MLflow tracking server a logger=mlflow
    # job logs to when logger.mlflow.tracking_uri is null. Optional: None without it.
    mlflow_tracking_server_arn: str | None = None
    # terraform/ with subnet_ids: the subnets and security group of jobs that read a file system
    # (fsx://, efs://). Optional: empty without them.
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()


OUTPUT_NAMES = tuple(f.name for f in fields(Infra) if f.default is MISSING)  # the outputs a job cannot go without
OPTIONAL_OUTPUTS = tuple(f.name for f in fields(Infra) if f.default is not MISSING)
INSTALL_URL = "https://developer.hashicorp.com/terraform/install"


class InfraError(UserError, RuntimeError):
    """Terraform outputs that cannot be read; str(error) is one line saying what to run."""


def _apply_command(terraform_dir: Path) -> str:
    return f"`terraform -chdir={terraform_dir} init && terraform -chdir={terraform_dir} apply`"


def _config_hint(names: tuple[str, ...] = OUTPUT_NAMES) -> str:
    return "set " + ", ".join(f"aws.{name}" for name in names) + " in the config"


def _first_error(stderr: str) -> str:
    """The `Error: ...` line of Terraform's diagnostics, else its first line."""
    lines = [line.strip("│╷╵ \t") for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    return next((line for line in lines if line.startswith("Error:")), lines[0] if lines else "no message")


def read_terraform_outputs(terraform_dir: Path) -> dict[str, object]:
    """{output name: value} from `terraform -chdir=<terraform_dir> output -json`."""
    terraform_dir = Path(terraform_dir)
    fix = f"run {_apply_command(terraform_dir)} (or {_config_hint()})"
    if not terraform_dir.is_dir():
        raise InfraError(f"no Terraform configuration at {terraform_dir}/: set aws.terraform_dir or {_config_hint()}")
    # What `terraform output -json` would print, read without starting Terraform (about a second).
    outputs = _local_state_outputs(terraform_dir) or _asked_outputs(terraform_dir, fix)
    # Each output is {"value": ..., "type": ..., "sensitive": ...}.
    return {name: item.get("value") if isinstance(item, dict) else item for name, item in outputs.items()}


def _asked_outputs(terraform_dir: Path, fix: str) -> dict[str, object]:
    """`terraform output -json`'s object, or one line saying what went wrong and `fix`."""
    executable = shutil.which("terraform")
    if executable is None:
        raise InfraError(f"terraform is not installed ({INSTALL_URL}): install it and {fix}")
    command = [executable, f"-chdir={terraform_dir}", "output", "-json", "-no-color"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InfraError(f"`terraform output` failed in {terraform_dir}/ ({_first_error(result.stderr)}): {fix}")
    try:
        outputs = json.loads(result.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise InfraError(f"`terraform output -json` in {terraform_dir}/ printed no valid JSON ({exc}): {fix}") from None
    if not isinstance(outputs, dict):
        raise InfraError(f"`terraform output -json` in {terraform_dir}/ printed no JSON object: {fix}")
    if not outputs:
        raise InfraError(f"Terraform has not been applied in {terraform_dir}/: {fix}")
    return outputs


def _local_state_outputs(terraform_dir: Path) -> dict[str, object] | None:
    """The outputs of a state Terraform keeps in terraform_dir/terraform.tfstate (the local backend's
    default path, default workspace, state format 4): the file `terraform output` itself reads. None
    wherever Terraform must be asked instead: a backend configured elsewhere (S3, another path), a
    workspace other than default, no state yet, or a format this code does not know."""
    dot = terraform_dir / ".terraform"
    environment = dot / "environment"
    if environment.is_file() and environment.read_text().strip() not in ("", "default"):
        return None
    backend = dot / "terraform.tfstate"  # written by `init` only for a backend block
    try:
        if backend.is_file():
            settings = json.loads(backend.read_text()).get("backend") or {}
            if settings.get("type") not in (None, "local") or (settings.get("config") or {}).get("path"):
                return None
        state = json.loads((terraform_dir / "terraform.tfstate").read_text())
    except (OSError, ValueError, AttributeError):
        return None
    outputs = state.get("outputs") if isinstance(state, dict) and state.get("version") == 4 else None
    return outputs if isinstance(outputs, dict) else None


def load_infra(terraform_dir: Path, overrides: Mapping[str, str | None] | None = None) -> Infra:
    """Infra from the Terraform outputs, each field replaced by a non-empty override of the same name.

    Terraform is not run at all when the overrides give every field.
    """
    given = {name: value for name, value in (overrides or {}).items() if name in OUTPUT_NAMES and value}
    missing = [name for name in OUTPUT_NAMES if name not in given]
    if not missing:
        required: dict[str, Any] = {name: str(given[name]) for name in OUTPUT_NAMES}
        return Infra(**required)
    outputs = read_terraform_outputs(Path(terraform_dir))
    values = dict(given)
    for name in missing:
        value = outputs.get(name)
        if not isinstance(value, str) or not value:
            raise InfraError(
                f"Terraform output `{name}` is missing in {terraform_dir}/ (configuration newer than the state?): "
                f"run {_apply_command(Path(terraform_dir))} (or {_config_hint((name,))})"
            )
        values[name] = value
        rule = name_problem(name, value)
        if rule:
            raise InfraError(
                f"Terraform output `{name}`={value!r} in {terraform_dir}/: {rule}; fix the Terraform configuration "
                f"or {_config_hint((name,))}"
            )
    found: dict[str, Any] = {name: str(values[name]) for name in OUTPUT_NAMES}
    for name in OPTIONAL_OUTPUTS:
        value = outputs.get(name)
        if isinstance(value, str):
            found[name] = value
        elif isinstance(value, list):  # subnets, security_groups
            found[name] = tuple(str(item) for item in value)
    return Infra(**found)
