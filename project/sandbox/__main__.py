"""The background sandbox process: `python -m project.sandbox --port N [--no-jobs]` (invoke sandbox --background)."""

from __future__ import annotations

import argparse
import sys

from project.sandbox import DEFAULT_HOST, DEFAULT_PORT
from project.sandbox.daemon import BACKGROUND_STOP_HINT, Settings, serve
from project.sandbox.optml import SandboxError


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m project.sandbox", description=__doc__)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--no-jobs", action="store_true", help="record SageMaker jobs, run none")
    return parser.parse_args()


def main() -> int:
    arguments = _arguments()
    try:
        settings = Settings(port=arguments.port, run_jobs=not arguments.no_jobs, host=arguments.host)
        serve(settings, stop_hint=BACKGROUND_STOP_HINT)
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
