"""Every command transcript in the docs, regenerated from real runs of the code as it is.

    python -m tools.transcripts                  # all: local (~2 min of CPU), then the sandbox (~4 min)
    python -m tools.transcripts --only local     # one part: local, sweep or sandbox
    python -m tools.transcripts --list           # the transcripts and the commands each runs

Each transcript is a file docs/transcripts/<name>.txt, included by the pages
(`--8<-- "<name>.txt"` inside a code block): `$ <command>` then what it printed (stdout and
stderr, as a terminal shows them), and `(exit N)` when it failed. Nothing in them is typed by hand.

The commands run as a user types them, in a scratch copy of this checkout (its tracked and
untracked files, not the ignored ones: no runs/, data/ or .sandbox/), beside a link to ../shared
so that `../shared/data/mnist` means what it means here. The local part trains the default config
on MNIST (the public mirror where ../shared/data/mnist is missing) and copies the run's
learning_curves.png and confusion_matrix.png into docs/img/. The sweep part runs a small local
sweep and copies its objective.png into docs/img/sweep_objective.png. The sandbox part runs the docs'
Offline block (the sandbox on a free port, Terraform through tflocal, from a provider mirror
when this machine has one) and then the deploy commands against it; it needs terraform,
tflocal and Linux namespaces (root or user namespaces), as `invoke sandbox` does.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "transcripts"
IMG = ROOT / "docs" / "img"
MNIST = ROOT.parent / "shared" / "data" / "mnist"
STEP_TIMEOUT_S = 2400  # a whole default run on a busy 2-core machine
QUIET = ">/dev/null"  # set-up whose output no page shows
APPLY = "tflocal apply -auto-approve -var force_destroy=true"


@dataclass
class Step:
    """One command as the docs show it; `quiet` steps run (set-up) but are in no transcript."""

    command: str
    transcript: str | None = None
    expect: int = 0  # the exit code the docs show (a refusal is exit 2)
    keep: str | None = None  # a regex: only the lines that match are kept (long outputs)
    until: str | None = None  # a regex: the output up to the first line that matches, then a count of the rest
    env: dict[str, str] = field(default_factory=dict)


def local_steps(mnist: str) -> list[Step]:
    data = f" dataset.channels.train={mnist}" if mnist else ""
    return [
        Step("invoke local trainer.epochs=3", "local-typo", expect=2),
        Step("invoke local dataset.channels.train=/tmp/corrupt-mnist", "local-corrupt", expect=2),
        Step(f"invoke local{data}", "local-default"),
        Step("invoke predict runs/{run} examples/digits", "predict-digits"),
        Step("invoke runs", "runs"),
    ]


def sweep_steps(mnist: str) -> list[Step]:
    data = f" dataset.channels.train={mnist}" if mnist else ""
    tiny = "trainer.max_epochs=2 trainer.limit_train_batches=40 trainer.limit_val_batches=10"
    tiny += " trainer.limit_test_batches=10"
    return [Step(f"invoke local -m model.lr=0.001,0.003,0.01 {tiny}{data}", "sweep-local")]


def sandbox_steps(dataset: str) -> list[Step]:
    tiny = "trainer.max_epochs=1 trainer.limit_train_batches=60 trainer.limit_test_batches=10"
    return [
        Step("invoke sandbox --background", "sandbox-start"),
        Step(f"cd terraform && tflocal init -input=false {QUIET} && {APPLY} {QUIET}"),
        Step(f"invoke upload {dataset}", "sandbox-upload"),
        Step(
            f"invoke train {dataset} instance=ml.m5.xlarge {tiny} --yes",
            "sandbox-train",
        ),
        Step("invoke status", "sandbox-status"),
        Step("invoke status {job}", "sandbox-startup"),
        Step("invoke fetch", "sandbox-fetch"),
        Step(f"invoke train --dry-run {dataset} trainer.gpus=4 instance=ml.p3.8xlarge", "dry-run", until=r"^\{$"),
        Step(
            f"invoke train {dataset} instance=ml.m5.xlarge trainer.max_epochs=3 trainer.seed=7 --yes --no-wait",
            "sandbox-predict",
            keep=r"^(\$|  job |  instance |  start-up |   {13}\S|launched )",
        ),
        Step("sleep 30 && invoke stop {job}", "why-stopped"),
        Step("sleep 20 && invoke why {job}", "why-stopped"),
        Step("invoke deploy {run} --yes", "deploy"),
        Step("invoke predict --endpoint {run} examples/digits", "deploy"),
        Step("invoke endpoints", "deploy"),
        Step("invoke batch-predict {run} examples/digits", "deploy"),
        Step("invoke deploy {run} --yes", "deploy", expect=2),
        Step("invoke undeploy --all", "deploy"),
        Step("invoke undeploy {run}", "deploy"),
        Step("invoke sandbox --stop", "sandbox-stop"),
    ]


def scratch_copy(dest: Path) -> Path:
    """This checkout's tracked and untracked (not ignored) files under dest/repo, ../shared beside it."""
    repo = dest / "repo"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = ROOT / name
        if src.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / name)
    if (ROOT.parent / "shared").exists():
        (dest / "shared").symlink_to((ROOT.parent / "shared").resolve())
    return repo


def corrupt_copy(dest: Path) -> None:
    """/tmp/corrupt-mnist: MNIST with its t10k-images cut in half (the docs' damaged-file example)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    if not MNIST.is_dir():
        (dest / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 64)
        return
    for src in MNIST.glob("*.gz"):
        shutil.copy2(src, dest / src.name)
    images = dest / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[: images.stat().st_size // 2])


def shorten(lines: list[str], step: Step) -> list[str]:
    """The lines a page shows of a long output: those `keep` matches, or those before `until` and a count."""
    if step.keep:
        lines = [line for line in lines if re.search(step.keep, line)]
    if step.until:
        cut = next((i for i, line in enumerate(lines) if re.search(step.until, line)), len(lines))
        if cut < len(lines):
            lines = [*lines[:cut], f"[{len(lines) - cut} more lines: the request as JSON]"]
    return lines


def latest_run(cwd: Path) -> str:
    runs = [p for p in (cwd / "runs").glob("*/") if p.is_dir()] if (cwd / "runs").is_dir() else []
    return max(runs, key=lambda p: p.stat().st_mtime).name if runs else ""


def run_steps(steps: list[Step], cwd: Path, env: dict[str, str]) -> dict[str, list[str]]:
    """Run each step; `{run}` in a command is the newest folder under runs/, `{job}` the job the last
    `launched <job>` line named. The sleeps of the stop steps are waits, not shown."""
    transcripts: dict[str, list[str]] = {}
    job = ""
    for step in steps:
        command = step.command.replace("{run}", latest_run(cwd)).replace("{job}", job)
        start = time.monotonic()
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
            env={**env, **step.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=STEP_TIMEOUT_S,
        )
        print(f"{time.monotonic() - start:6.1f} s  exit {result.returncode}  {command}", flush=True)
        launched = re.findall(r"launched (\S+)", result.stdout)
        job = launched[-1] if launched else job
        if result.returncode != step.expect:
            raise SystemExit(
                f"error: `{command}` exited {result.returncode}, not {step.expect}:\n{result.stdout[-4000:]}"
            )
        if step.transcript is None:
            continue
        lines = [line.rstrip() for line in result.stdout.splitlines() if "\r" not in line]
        lines = shorten(lines, step)
        shown = ["$ " + re.sub(r"^sleep \d+ && ", "", command), *lines]
        if result.returncode:
            shown.append(f"(exit {result.returncode})")
        transcripts.setdefault(step.transcript, []).append("\n".join(shown))
    return transcripts


def write(transcripts: dict[str, list[str]], scratch: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, blocks in transcripts.items():
        text = "\n\n".join(blocks) + "\n"
        text = text.replace(str(scratch / "repo") + "/", "").replace(str(scratch / "repo"), ".")
        (OUT / f"{name}.txt").write_text(text)
        print(f"wrote docs/transcripts/{name}.txt")


def copy_plots(repo: Path) -> None:
    runs = sorted((p for p in (repo / "runs").iterdir() if (p / "output").is_dir()), key=lambda p: p.stat().st_mtime)
    IMG.mkdir(parents=True, exist_ok=True)
    for name in ("learning_curves.png", "confusion_matrix.png"):
        shutil.copy2(runs[0] / "output" / name, IMG / name)
        print(f"wrote docs/img/{name} (from {runs[0].name})")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_env(home: Path) -> dict[str, str]:
    unset = ("AWS_", "TF_CLI_CONFIG_FILE", "LIGHTNING_SAGEMAKER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    env.update(
        AWS_CONFIG_FILE=str(home / "no-aws-config"),  # nothing here can point at a real account
        AWS_SHARED_CREDENTIALS_FILE=str(home / "no-aws-credentials"),
        CHECKPOINT_DISABLE="1",
        COLUMNS="100",
    )
    return env


def sandbox_env(env: dict[str, str], repo: Path, port: int) -> dict[str, str]:
    sys.path.insert(0, str(ROOT))
    from tests.aws_fixtures import find_plugin_mirror  # the provider mirror the Terraform tests use

    env = {
        **env,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "S3_HOSTNAME": "127.0.0.1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "EDGE_PORT": str(port),
    }
    mirror = find_plugin_mirror()
    if mirror is not None:
        rc = repo / ".terraform-mirror.tfrc"
        rc.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n}}\n')
        env["TF_CLI_CONFIG_FILE"] = str(rc)
    return env


def copy_objective(repo: Path) -> None:
    (plot,) = (repo / "runs").glob("*/objective.png")
    shutil.copy2(plot, IMG / "sweep_objective.png")
    print(f"wrote docs/img/sweep_objective.png (from {plot.parent.name})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("local", "sweep", "sandbox"), action="append")
    parser.add_argument("--list", action="store_true", help="print the steps; run nothing")
    args = parser.parse_args(argv)
    parts = args.only or ["local", "sweep", "sandbox"]
    mnist = "../shared/data/mnist" if MNIST.is_dir() else ""
    dataset = f"dataset.channels.train={mnist}" if mnist else ""
    plan = {"local": local_steps(mnist), "sweep": sweep_steps(mnist), "sandbox": sandbox_steps(dataset)}
    if args.list:
        for part in parts:
            for step in plan[part]:
                print(f"{part:8} {step.transcript or '(set-up)':16} {step.command}")
        return 0
    with tempfile.TemporaryDirectory(prefix="transcripts-") as tmp:
        scratch = Path(tmp)
        repo = scratch_copy(scratch)
        env = base_env(scratch)
        transcripts: dict[str, list[str]] = {}
        if "local" in parts:
            corrupt_copy(Path("/tmp/corrupt-mnist"))
            transcripts.update(run_steps(plan["local"], repo, env))
            copy_plots(repo)
        if "sweep" in parts:
            transcripts.update(run_steps(plan["sweep"], repo, env))
            copy_objective(repo)
        if "sandbox" in parts:
            port = 4566 if port_free(4566) else free_port()  # the docs' port where it is free
            sandbox = sandbox_env(env, repo, port)
            try:
                background = "invoke sandbox --background"
                for s in plan["sandbox"]:
                    if s.command == background and port != 4566:
                        s.command = f"{background} --port {port}"
                plan_steps = plan["sandbox"]
                transcripts.update(run_steps(plan_steps, repo, sandbox))
            finally:
                if (repo / ".sandbox" / "sandbox.pid").exists():
                    subprocess.run(["python3", "-m", "invoke", "sandbox", "--stop"], cwd=repo, env=sandbox, timeout=120)
        write(transcripts, scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
