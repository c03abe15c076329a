"""What a test needs of the machine, said in one place: `@requires(terraform=True)` on a test or
module (`pytestmark = requires(...)`), `skip_unless(...)` inside a fixture that finds out late.

Each condition is probed at most once per test process, and only when a test that needs it runs
(probing for a container runs a subprocess). A test whose needs are met runs; one whose needs are
not is skipped with the first unmet need and how to meet it. Nothing else in tests/ skips.

    terraform=True       the terraform CLI on PATH
    commands=("git",)    other commands on PATH
    dev_tool="checkov"   checkov or parliament: <NAME>_BIN, .venv-tools, or PATH (requirements-tools.txt)
    module="scipy"       an importable Python module
    root=True            root with CAP_SYS_ADMIN: may mount a tmpfs
    container=True       a SageMaker container can be emulated here (the sandbox's namespaces)
    memory_cgroup=True   a memory cgroup can be made here (the OOM tests)
    gpu=N                at least N CUDA devices
    free_port=P          nothing listens on 127.0.0.1:P (a README block serves on a fixed port)
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARKER = "requires"
TERRAFORM_HINT = (
    "terraform is not installed: install Terraform >= 1.6 "
    "(https://developer.hashicorp.com/terraform/install, e.g. `apt-get install terraform` "
    "from apt.releases.hashicorp.com, or `brew install hashicorp/tap/terraform`)"
)
TOOLS_INSTALL = "python -m venv .venv-tools && .venv-tools/bin/pip install -r requirements-tools.txt"
CAP_SYS_ADMIN = 21  # bit of CapEff in /proc/self/status


def requires(**conditions: object) -> pytest.MarkDecorator:
    """The mark saying what the test needs; conftest's hook skips the test where a need is unmet."""
    unknown = set(conditions) - set(_CHECKS)
    assert not unknown, f"requires() knows no {sorted(unknown)}: one of {sorted(_CHECKS)}"
    return getattr(pytest.mark, MARKER)(**conditions)


def unmet(**conditions: object) -> str | None:
    """The first unmet need, said with how to meet it; None when all are met."""
    for name, wanted in conditions.items():
        if wanted in (None, False, 0, ()):
            continue
        reason = _CHECKS[name](*(wanted if isinstance(wanted, tuple) else (wanted,)))
        if reason:
            return reason
    return None


def skip_unless(**conditions: object) -> None:
    """Skip the running test (or the fixture asking) unless every need is met."""
    reason = unmet(**conditions)
    if reason:
        pytest.skip(reason)


def find_dev_tool(name: str) -> str | None:
    """<NAME>_BIN, else the repository's .venv-tools, else name on PATH."""
    variable = f"{name.upper()}_BIN"
    configured = os.environ.get(variable)
    if configured:
        if shutil.which(configured) is None:
            pytest.fail(f"{variable}={configured} is not an executable")
        return configured
    venv = ROOT / ".venv-tools" / "bin" / name
    return str(venv) if venv.exists() else shutil.which(name)


@functools.cache
def _terraform(_: object) -> str | None:
    return None if shutil.which("terraform") else TERRAFORM_HINT


@functools.cache
def _commands(*names: str) -> str | None:
    missing = [name for name in names if shutil.which(name) is None]
    return f"{', '.join(missing)} is not installed" if missing else None


def _dev_tool(name: str) -> str | None:
    if find_dev_tool(name) is None:
        return f"{name} not found: run `{TOOLS_INSTALL}` (or set {name.upper()}_BIN)"
    return None


@functools.cache
def _module(name: str) -> str | None:
    return None if importlib.util.find_spec(name) else f"{name} is not installed"


@functools.cache
def _root(_: object) -> str | None:
    if shutil.which("mount") is None:
        return "no mount command: cannot make a read-only or nearly full filesystem"
    status = Path("/proc/self/status").read_text()
    effective = int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    if os.geteuid() != 0 or not effective >> CAP_SYS_ADMIN & 1:
        return "mounting a tmpfs needs root with CAP_SYS_ADMIN"
    return None


@functools.cache
def _container(_: object) -> str | None:
    from project.sandbox.container import container_problem

    problem = container_problem()
    return f"cannot emulate a SageMaker container here: {problem}" if problem else None


@functools.cache
def _memory_cgroup(_: object) -> str | None:
    from tests.failing_runs import memory_limit

    with memory_limit(64 * 2**20) as group:  # made and removed: parents can refuse children
        if group is None:
            return "no memory cgroup can be made here (needs root and cgroup v1 or v2 with the memory controller)"
    return None


@functools.cache
def _gpu(count: int) -> str | None:
    import torch  # only for the tests that ask

    found = torch.cuda.device_count()
    return None if found >= count else f"needs {count} CUDA device(s), found {found}"


def _free_port(port: int) -> str | None:
    with socket.socket() as probe:
        busy = probe.connect_ex(("127.0.0.1", port)) == 0
    return f"port {port} is in use" if busy else None


_CHECKS = {
    "terraform": _terraform,
    "commands": _commands,
    "dev_tool": _dev_tool,
    "module": _module,
    "root": _root,
    "container": _container,
    "memory_cgroup": _memory_cgroup,
    "gpu": _gpu,
    "free_port": _free_port,
}
