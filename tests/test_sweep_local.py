"""`invoke local -m`: Hydra's sweeper through our local launcher, and the sweep's results table."""

from __future__ import annotations

import csv
import json
import os

import pytest
import yaml

from project.core import startup
from project.core.sweep_jobs import JobResult
from project.face.sweep import FinalMetrics
from project.face.sweep_results import ranked, swept_values
from tests.cli import invoke, one_error_line, refusal
from tests.imagetrees import write_tree


@pytest.mark.slow
def test_a_local_sweep_over_a_dataset_without_files_resolves_its_data_once_per_job(tmp_path):
    """dataset=imagefolder lists no `files`: each job's folder is resolved by the sweep, once, and
    handed to the job's training process, which resolves nothing itself (its trace says so)."""
    tree = write_tree(tmp_path / "tree", per_class=12)  # 36 images: 32 to train on, 4 to validate
    trace = tmp_path / "trace.jsonl"
    overrides = [
        "dataset=imagefolder",
        f"dataset.channels.train={tree}",
        "dataset.num_classes=3",
        f"paths.runs_dir={tmp_path / 'runs'}",
        "trainer.max_epochs=1",
        "trainer.batch_size=8",
        "trainer.gpus=0",
        "trainer.limit_train_batches=2",
        "model.lr=0.01,0.05",
    ]
    result = invoke("local", "-m", *overrides, env={**os.environ, startup.TRACE_ENV: str(trace)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    assert all((sweep_dir / str(n) / "metrics.json").is_file() for n in (0, 1))
    resolved = [json.loads(line) for line in trace.read_text().splitlines()]
    resolved = [r for r in resolved if r["phase"] == "data_verified"]
    assert len({r["pid"] for r in resolved}) == 2 and not any(r["resolved_here"] for r in resolved)


@pytest.mark.slow
def test_local_sweep_runs_each_job_in_its_own_folder_and_ranks_them(tiny_run, tmp_path):
    result = invoke("local", "-m", *tiny_run(**{"trainer.max_epochs": 1}), "model.lr=0.01,0.05")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    for n, lr in ((0, 0.01), (1, 0.05)):
        run = sweep_dir / str(n)
        for path in ("metrics.json", "model/model.ts", "model/config.yaml", "output/learning_curves.png"):
            assert (run / path).is_file(), (n, path)
        assert f"lr: {lr}" in (run / "model" / "config.yaml").read_text()
        assert f"run_dir={run}" in result.stdout
    rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
    assert {r["overrides"] for r in rows} == {"model.lr=0.01", "model.lr=0.05"}  # only the swept key
    accuracies = [float(r["val_acc"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)  # best first (sweep.direction=maximize)
    for r in rows:
        metrics = json.loads((sweep_dir / r["job"] / "metrics.json").read_text())
        assert float(r["val_acc"]) == pytest.approx(metrics["val_acc"], rel=1e-3) and r["status"] == "Completed"
    assert (sweep_dir / "results.md").read_text().startswith("| job | overrides | status | val_acc |")
    assert (sweep_dir / "objective.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "2 job(s), best first" in result.stdout

    # The catalog: both runs, newest first, with what differs from the defaults; a metric filter.
    runs_dir = f"paths.runs_dir={tmp_path / 'runs'}"
    listing = invoke("runs", runs_dir, "--sweep", sweep_dir.name)
    assert listing.returncode == 0, listing.stderr
    lines = [line for line in listing.stdout.splitlines() if line.startswith(sweep_dir.name)]
    assert [line.split()[0] for line in lines] == [f"{sweep_dir.name}/1", f"{sweep_dir.name}/0"]  # newest first
    assert "model.lr=0.05" in lines[0] and "local" in lines[0] and "Completed" in lines[0]
    (lo, hi) = sorted(float(r["val_acc"]) for r in rows)
    threshold = (lo + hi) / 2 if hi > lo else lo - 1e-3  # between the two: only the better one passes
    chosen = invoke("runs", runs_dir, "--metric", f"val_acc>{threshold}")
    passing = [f"{sweep_dir.name}/{r['job']}" for r in rows if float(r["val_acc"]) > threshold]
    assert [line.split()[0] for line in chosen.stdout.splitlines() if " local " in line] == passing
    assert refusal("runs", runs_dir, "--since", "yesterday").startswith("error: --since 'yesterday'")

    compared = invoke("compare", str(sweep_dir / "0"), str(sweep_dir / "1"))
    assert compared.returncode == 0, compared.stderr
    assert "model.lr: 0.01 | 0.05" in compared.stdout and "val_acc: " in compared.stdout
    png = sweep_dir / "compare-0-vs-1.png"
    assert f"learning curves: {png}" in compared.stdout and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model.lr=0.01"], "error: -m (multirun) needs at least one swept key"),
        (
            ["model.lrr=0.01,0.2"],
            "error: bad config override: unknown key 'model.lrr'; to give the class a new argument, write +model.lrr=",
        ),
        (
            ["model.lr=0.01,0.2", "trainer.max_epochs=range(0,2)"],
            "error: sweep job 0 (trainer.max_epochs=0 model.lr=0.01): trainer.max_epochs must be >= 1, got 0; "
            "nothing was launched",
        ),
        (["model.lr=0.01,0.2", "sweep.direction=up"], "sweep.direction must be one of maximize, minimize"),
        (
            ["hydra/sweeper=optuna", "model.lr=interval(0.01,0.1)", "hydra.sweeper.direction=minimize"],
            "error: hydra.sweeper.direction=minimize: write sweep.direction=minimize instead",
        ),
    ],
)
def test_bad_sweeps_are_one_line_and_run_nothing(tiny_run, tmp_path, extra, message):
    line = one_error_line(invoke("local", "-m", *tiny_run(), *extra))
    assert line.startswith(message) or message in line, line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_results_rank_best_first_and_name_the_swept_keys():
    results = [
        JobResult(0, ["model.lr=0.1", "trainer.batch_size=64"], "Completed", "a", {"val_loss": 0.5}),
        JobResult(1, ["model.lr=0.3", "trainer.batch_size=64"], "Failed", "b", {}, reason="boom"),
        JobResult(2, ["model.lr=0.3", "trainer.batch_size=64"], "Completed", "c", {"val_loss": 0.2}),
    ]
    assert [r.num for r in ranked(results, "val_loss", "minimize")] == [2, 0, 1]
    assert [r.num for r in ranked(results, "val_loss", "maximize")] == [0, 2, 1]
    assert swept_values(results) == {"model.lr": ["0.1", "0.3", "0.3"]}
    metrics = FinalMetrics({"val_acc": 0.9, "test_acc": 0.8}, "val_acc")
    assert float(metrics) == 0.9 and metrics["test_acc"] == 0.8  # the sweeper's objective and the whole record
    with pytest.raises(ValueError, match="no 'val_loss'"):
        float(FinalMetrics({"val_acc": 0.9}, "val_loss"))


def test_a_sweep_id_after_its_flag_is_the_flags_value_not_a_job_name():
    from invoke.parser import Parser

    import tasks

    parser = Parser(contexts=tasks.ns.to_contexts())
    parsed = {c.name: c.as_kwargs for c in parser.parse_argv(["fetch", "--sweep", "261203-064821-b3c1", "a.b=1"])}
    assert parsed["fetch"]["sweep"] == "261203-064821-b3c1" and parsed["fetch"]["job"] is None
    parsed = {c.name: c.as_kwargs for c in parser.parse_argv(["train", "-m", "model.lr=1,2", "--yes"])}
    assert parsed["train"]["multirun"] and parsed["train"]["overrides"] == ["model.lr=1,2"]


@pytest.mark.slow
def test_an_optuna_sweep_runs_through_our_launcher_and_learns_from_the_jobs_metrics(tiny_run, tmp_path):
    """The objective and its direction are sweep.objective and sweep.direction: Optuna minimizes val_loss."""
    optuna = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=3"]
    optuna += ["sweep.objective=val_loss", "sweep.direction=minimize"]
    fixed = [o for o in tiny_run(**{"trainer.max_epochs": 1}) if not o.startswith("model.lr=")]
    result = invoke("local", "-m", *fixed, *optuna, "model.lr=interval(0.01,0.1)")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    runs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0", "1", "2"]
    val_loss = {p.name: json.loads((p / "metrics.json").read_text())["val_loss"] for p in runs}
    rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
    lrs = {row["job"]: float(row["overrides"].removeprefix("model.lr=")) for row in rows}
    assert all(0.01 <= lr <= 0.1 for lr in lrs.values()) and len(set(lrs.values())) == 3  # Optuna's own draws
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(val_loss.values()))  # the objective came from the jobs
    winner = min(val_loss, key=lambda name: val_loss[name])
    assert best["best_params"]["model.lr"] == pytest.approx(lrs[winner])
    assert rows[0]["job"] == winner  # the table ranks as Optuna does
