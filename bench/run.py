"""Run the benchmarks and write bench/results.md and bench/results.json.

    python -m bench.run                      # everything, 5 measured repetitions each (~10 min)
    python -m bench.run --quick              # 2 repetitions: a smoke run, into results-quick.* (ignored)
    python -m bench.run --only cli           # one benchmark, the others' results kept

Every figure is a ratio of two things measured side by side, alternately, in the same run; see
bench/common.py for the rule and bench/README.md for what each benchmark measures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from .common import Skip, machine

BENCHMARKS = (
    "lightning_overhead",
    "data_pipeline",
    "cli",
    "transfers",
    "imagefolder",
    "sweep",
    "serving",
    "async_serving",
    "time_to_first_step",
    "time_to_accuracy",
    "gpu",
)
HERE = Path(__file__).resolve().parent
FULL_REPS = 5  # measured repetitions, after one dropped warm-up round
QUICK_REPS = 2


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3f} {unit}" if value >= 0.1 else f"{value * 1000:.1f} ms"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"{m['date']}; {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM; Python {m['python']}, "
        f"torch {m['torch']} ({m['torch_threads']} threads), Lightning {m['lightning']}; "
        f"{results['reps']} measured repetitions per figure{' (--quick)' if results['quick'] else ''}.",
        "",
        "A and B are medians; the ratio is the median of per-repetition A/B ratios (A and B run "
        "alternately, first round dropped). Met: ratio <= target.",
        "",
        "| benchmark | A | B | ratio A/B | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for name, result in results["benchmarks"].items():
        if "skipped" in result or "error" in result:
            reason = result.get("skipped") or f"error: {result['error'].splitlines()[-1]}"
            lines.append(f"| {name} | - | - | - | - | {reason} |")
            continue
        for r in result["rows"]:
            target = "-" if r["target"] is None else f"<= {r['target']:g}x"
            if "target_extra_seconds" in r:  # a target on A - B, not on the ratio
                target = f"A - B <= {r['target_extra_seconds']:g} s (A - B: {r['extra_seconds']:.2f} s)"
            met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
            lines.append(
                f"| {r['benchmark']} | {r['a_label']}: {_fmt(r['a'], r['unit'])} "
                f"| {r['b_label']}: {_fmt(r['b'], r['unit'])} "
                f"| {r['ratio']:.3f}x | {target} | {met} |"
            )
        for key, value in result.items():
            if key not in ("rows", "seconds"):
                notes.append(f"- {name}.{key}: {value}")
    return "\n".join(lines + ["", "## Details", "", *notes, ""])


def output_files(quick: bool) -> tuple[Path, Path]:
    """results.json and results.md; a --quick run's go beside them (git-ignored), so a smoke run
    never replaces the recorded figures."""
    stem = "results-quick" if quick else "results"
    return HERE / f"{stem}.json", HERE / f"{stem}.md"


def kept_results(reps: int, quick: bool) -> dict:
    """The benchmarks of the results file, in BENCHMARKS order, when it was written with the same
    repetitions; else none. Each says when it ran."""
    try:
        previous = json.loads(output_files(quick)[0].read_text())
    except (OSError, ValueError):
        return {}
    if previous.get("reps") != reps or previous.get("quick") != quick:
        return {}
    measured = previous["machine"]["date"]
    kept = {name: {"measured": measured, **previous["benchmarks"][name]} for name in previous["benchmarks"]}
    return {name: kept[name] for name in BENCHMARKS if name in kept}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REPS} repetitions instead of {FULL_REPS}")
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="run just this benchmark (repeatable)")
    args = parser.parse_args(argv)
    reps = QUICK_REPS if args.quick else FULL_REPS
    results: dict = {"machine": machine(), "reps": reps, "quick": args.quick, "benchmarks": {}}
    if args.only:
        results["benchmarks"] = kept_results(reps, args.quick)
    for name in args.only or BENCHMARKS:
        print(f"\n=== {name} ({reps} reps + 1 warm-up) ===", flush=True)
        started = time.perf_counter()
        try:
            result = importlib.import_module(f"bench.{name}").run(reps)
        except Skip as reason:
            print(f"skipped: {reason}", flush=True)
            result = {"skipped": str(reason)}
        except Exception:  # noqa: BLE001 - one broken benchmark is recorded; the others still run
            traceback.print_exc()
            result = {"error": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - started, 1)
        result["measured"] = results["machine"]["date"]
        results["benchmarks"][name] = result
        results["benchmarks"] = {n: results["benchmarks"][n] for n in BENCHMARKS if n in results["benchmarks"]}
        for r in result.get("rows", []):
            print(
                f"{r['benchmark']}: {r['a_label']} {r['a']:.4f} s / {r['b_label']} {r['b']:.4f} s = {r['ratio']:.3f}x",
                flush=True,
            )
        # After each benchmark: a long run stopped part-way keeps what it measured.
        json_file, md_file = output_files(args.quick)
        json_file.write_text(json.dumps(results, indent=2) + "\n")
        md_file.write_text(markdown(results))
    print("\n" + markdown(results))
    return 1 if any("error" in r for r in results["benchmarks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
