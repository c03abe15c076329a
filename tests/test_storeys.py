"""Every module of `project` stands in exactly one storey of pyproject.toml's import contracts.

The contracts list modules by name (import-linter's forbidden contracts), so a new module that no
list names would escape every rule: this test names it instead. The storeys, bottom to top: Pure;
Training, Entry and Serving (what a job's code bundle holds); the platforms; the Face.
"""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def contracts() -> dict[str, dict]:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in settings["contracts"]}


def storeys() -> dict[str, set[str]]:
    named = contracts()
    pure = named["Pure imports nothing of ours above it"]["source_modules"]
    middle = named["Training, Entry and Serving import no platform and no Face"]["source_modules"]
    platforms = named["The platforms import no Face"]
    return {
        "pure": set(pure),
        "middle": set(middle),
        "platforms": set(platforms["source_modules"]),
        "face": {m for m in platforms["forbidden_modules"] if m.startswith("project.")},
    }


def project_modules() -> set[str]:
    package = ROOT / "project"
    files = {f"project.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    folders = {f"project.{p.name}" for p in package.iterdir() if (p / "__init__.py").is_file()}
    return files | folders


def test_every_module_stands_in_exactly_one_storey():
    placed = storeys()
    for module in sorted(project_modules()):
        homes = [name for name, members in placed.items() if module in members]
        assert len(homes) == 1, f"{module} is in {homes or 'no storey'}: name it in one list of pyproject.toml"


def test_each_storey_forbids_every_storey_above_it():
    placed, named = storeys(), contracts()
    pure_forbids = set(named["Pure imports nothing of ours above it"]["forbidden_modules"])
    middle_forbids = set(named["Training, Entry and Serving import no platform and no Face"]["forbidden_modules"])
    assert placed["middle"] | placed["platforms"] | placed["face"] <= pure_forbids
    assert placed["platforms"] | placed["face"] <= middle_forbids
