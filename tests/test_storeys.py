"""The storeys are folders, and pyproject.toml's layers contract names every one of them.

import-linter checks that nothing imports a storey above it (`lint-imports`, run by .ci/run); this
test checks what it cannot: that no module escapes the rule by living outside a storey folder, that
the contract names every folder, and that a job's code bundle holds exactly the storeys below the
platforms.
"""

import ast
import tomllib
from pathlib import Path

from project.aws.staging import STAGED

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "project"


def layers() -> list[list[str]]:
    """The layers contract's storeys, top to bottom, each a list of its folders (`a | b`)."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in settings["contracts"] if c["type"] == "layers"]
    return [[name.strip() for name in layer.split("|")] for layer in contract["layers"]]


def storey_folders() -> set[str]:
    return {f"project.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}


def test_every_module_lives_in_a_storey_folder():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"{loose} sit in project/ itself, outside every storey: move them into the storey they belong to"


def test_the_layers_contract_names_every_storey_folder_once():
    named = [folder for layer in layers() for folder in layer if folder.startswith("project.")]
    assert len(named) == len(set(named))
    assert set(named) == storey_folders(), "name each folder of project/ in one layer of pyproject.toml"


def test_a_jobs_bundle_holds_the_storeys_below_the_platforms():
    storeys = layers()
    platforms = storeys.index(["project.aws", "project.sandbox"])
    below = {folder.removeprefix("project.") for layer in storeys[platforms + 1 :] for folder in layer}
    assert set(STAGED) == below


def test_a_module_over_300_lines_says_why_at_its_top():
    """A reader takes a module in at once: past 300 lines its docstring gives the reason (#27 §6)."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > 300 and "over 300 lines because" not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not unexplained, (
        f"{unexplained} are over 300 lines: split them at a seam, or write 'This module is over 300 lines"
        " because ...' in the module docstring"
    )
