"""The docs say what the code does: generated pages current, transcripts real, every command runnable.

- docs/reference/ is what `python -m tools.gen_docs` writes from the code (its --check mode);
- every transcript a page includes exists and is a transcript (`$ command`, then output), and
  every transcript file is included somewhere;
- every `invoke ...` line of README.md and docs/ (in code blocks, transcripts and inline code)
  names a real task, parses as invoke parses it, and its overrides compose with
  project.core.config.compose (a sweep's first combination; Hydra's own `hydra.*` keys are the
  sweeper's, left out).

`mkdocs build --strict` (links, anchors, the nav) runs in .ci/run.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tools import gen_docs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TRANSCRIPTS = DOCS / "transcripts"
INCLUDE = re.compile(r'^--8<-- "([\w.-]+\.txt)"$', re.M)
PAGES = sorted([ROOT / "README.md", *DOCS.rglob("*.md")])


def test_the_reference_pages_are_current():
    result = subprocess.run(
        [sys.executable, "-m", "tools.gen_docs", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_mode_names_a_stale_or_missing_page(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gen_docs, "REFERENCE", tmp_path)
    assert gen_docs.main([]) == 0 and gen_docs.main(["--check"]) == 0  # written, then current
    (tmp_path / "config.md").write_text((tmp_path / "config.md").read_text().replace("`trainer`", "`trainr`"))
    (tmp_path / "terraform.md").unlink()
    capsys.readouterr()
    assert gen_docs.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert "docs/reference/config.md" in out and "docs/reference/terraform.md" in out and "tasks.md" not in out


def test_the_config_page_has_every_key_of_the_schema_and_its_conf_value():
    page = (DOCS / "reference" / "config.md").read_text()
    from project.core.config import schema

    for cls in (schema.TrainerConfig, schema.JobConfig, schema.DeployConfig, schema.AwsConfig):
        for field in cls.__dataclass_fields__:
            assert f"| `{field}` |" in page, (cls.__name__, field)
    assert "| `max_epochs` | `int` | `3` |" in page  # conf/trainer/default.yaml's value, the schema's type


def included_transcripts() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for page in PAGES:
        for name in INCLUDE.findall(page.read_text()):
            found.setdefault(name, []).append(page)
    return found


def test_every_included_transcript_is_a_real_one_and_every_transcript_is_shown():
    included = included_transcripts()
    assert included, "no page includes a transcript"
    for name, pages in included.items():
        path = TRANSCRIPTS / name
        assert path.is_file(), f"{pages[0].relative_to(ROOT)} includes {name}: run python -m tools.transcripts"
        text = path.read_text()
        assert text.startswith("$ invoke ") and len(text.splitlines()) >= 2, f"{name} is not a transcript"
    shown = set(included)
    assert {p.name for p in TRANSCRIPTS.glob("*.txt")} <= shown, "a transcript no page includes"
    for image in ("learning_curves.png", "confusion_matrix.png"):
        data = (DOCS / "img" / image).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000, f"docs/img/{image} is not a run's plot"


# -- every invoke line -------------------------------------------------------------------------

CODE_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`(invoke [^`]+)`(?!`)")


def invoke_lines(text: str) -> list[tuple[str, bool]]:
    """The invoke commands of a page, each with whether it is inline code: in code blocks (a `$ `
    prompt, `&&` chains and comments allowed) and in inline code (where `invoke stop` alone
    names a task: its required arguments may be left out)."""
    lines: list[tuple[str, bool]] = []
    spans = [(line, False) for block in CODE_BLOCK.findall(text) for line in block.splitlines()]
    spans += [(span, True) for span in INLINE.findall(CODE_BLOCK.sub("", text))]
    for line, inline in spans:
        for part in re.split(r" && | ; ", line.strip().removeprefix("$ ")):
            part = part.strip().removeprefix("(").strip()
            if part.startswith("invoke "):
                lines.append((part, inline))
    return lines


def all_invoke_lines() -> list[tuple[str, bool, str]]:
    pages = [*PAGES, *sorted(TRANSCRIPTS.glob("*.txt"))]
    found = {(line, inline, str(p.relative_to(ROOT))) for p in pages for line, inline in invoke_lines(p.read_text())}
    if not found:
        pytest.fail("no invoke line found in the docs")
    return sorted({(line, inline): (line, inline, where) for line, inline, where in found}.values())


def tokens(line: str) -> list[str]:
    """The words after `invoke`, as a shell passes them: no trailing comment, `$DATASET` unset (the
    sandbox page's), and a `<job>`-style placeholder stands for a name (`runs/<run>`: runs/example)."""
    line = re.sub(r"\s+#.*$", "", line)
    words = [re.sub(r"<[\w .-]+>", "example", w) for w in shlex.split(line)[1:]]
    return [w for w in words if not w.startswith("$") or w.startswith("$(")]


def first_combination(overrides: list[str]) -> list[str]:
    """A sweep's first job: each swept value's first element; Hydra's own keys left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if key.startswith(("hydra.", "hydra/")):
            continue
        if override.is_sweep_override():
            if override.is_discrete_sweep():
                value = next(iter(override.sweep_string_iterator()))
            else:  # interval(a,b): its lower end
                value = str(override.value().start)  # type: ignore[union-attr]
            out.append(f"{key}={value}")
        else:
            out.append(str(override.input_line))
    return out


@pytest.fixture
def page_conf(tmp_path) -> str:
    """The own-model page's two YAML files, as a conf/ folder Hydra searches (model=mine dataset=mine)."""
    page = (DOCS / "guides" / "own-model.md").read_text()
    for path, body in re.findall(r"```yaml\n# (conf/\S+)\n(.*?)```", page, re.S):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(body)
    return f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


def test_every_invoke_line_names_a_task_and_its_overrides_compose(page_conf, monkeypatch, tmp_path):
    from invoke.parser import Parser

    import tasks
    from project.core.config import compose

    monkeypatch.setenv("LIGHTNING_SAGEMAKER_CACHE", str(tmp_path / "cache"))
    lines = all_invoke_lines()
    assert len(lines) > 40
    failures = []
    for line, inline, where in lines:
        try:
            argv = tokens(line)
            if not argv or argv[0].startswith("-"):  # invoke's own options: --list, --help
                continue
            parsed = {c.name: c.as_kwargs for c in Parser(contexts=tasks.ns.to_contexts()).parse_argv(argv)}
        except Exception as exc:  # noqa: BLE001 (invoke's ParseError and friends: the line is what fails)
            if not (inline and "did not receive required positional arguments" in str(exc)):
                failures.append(f"{where}: `{line}`: {exc}")
            continue
        for name, kwargs in parsed.items():
            if not name or not kwargs.get("overrides"):
                continue
            overrides = first_combination(list(kwargs["overrides"]))
            if name == "traffic":  # its bare tokens are weights too
                from project.aws.variant_requests import split_weights

                overrides = split_weights(overrides)[1]
            if any("=mine" in o for o in overrides):
                overrides.append(page_conf)
            try:
                compose(overrides, model=name != "upload")
            except Exception as exc:  # noqa: BLE001 (ConfigError, or Hydra's own for a bad line)
                failures.append(f"{where}: `{line}`: {exc}")
    assert not failures, "\n".join(failures)


def test_the_line_check_catches_a_typo_and_an_unknown_task():
    from invoke.exceptions import ParseError
    from invoke.parser import Parser

    import tasks
    from project.core.config import ConfigError, compose

    with pytest.raises(ParseError):
        Parser(contexts=tasks.ns.to_contexts()).parse_argv(tokens("invoke lokal trainer.max_epochs=1"))
    with pytest.raises(ConfigError):
        compose(first_combination(["trainer.epochs=1,2"]))
    page = "run `invoke local a=1` then\n```bash\n$ invoke train b=2 && invoke fetch  # c\n```\n"
    assert invoke_lines(page) == [("invoke train b=2", False), ("invoke fetch  # c", False), ("invoke local a=1", True)]


def test_the_readme_links_lead_somewhere():
    """README.md is read on the forge, outside the site's strict build: its relative links are checked here."""
    readme = (ROOT / "README.md").read_text()
    links = [link for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme) if "://" not in link]
    assert len(links) > 10
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, f"README.md links to what does not exist: {missing}"
    assert len(readme.splitlines()) < 200
