"""The floor under every `invoke <task>`: the project's tasks.py loaded (its imports, bare-override
parsing and GC settings) and one task that returns at once. bench/transfers.py times
`invoke --search-root bench/floor noop` beside `invoke upload`, so the table shows how much of a
re-run is start-up that no task can avoid."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tasks.py

from invoke import task  # noqa: E402

import tasks as project_tasks  # noqa: E402,F401  (loaded for its start-up cost, as `invoke upload` loads it)


@task
def noop(c):
    """Do nothing."""
