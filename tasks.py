"""Tasks: train locally or on SageMaker, move data and artifacts. `invoke --list` shows them.

Tasks that take Hydra overrides accept them as bare tokens: `invoke local trainer.max_epochs=1`.
Heavy imports (torch, Lightning, the SageMaker SDK) happen inside the tasks that need them.
"""

import shlex
import sys

from invoke import Collection, Exit, task

from project.cli import OVERRIDES_HELP, accept_bare_overrides

accept_bare_overrides()


def _compose(overrides):
    from project.config import ConfigError, compose

    try:
        return compose(overrides or [])
    except ConfigError as exc:
        raise Exit(f"error: {exc}", code=2) from None


@task(iterable=["overrides"], help={"overrides": OVERRIDES_HELP})
def local(c, overrides=None):
    """Train on this machine (CPU or its GPUs) with Hydra overrides; artifacts go to runs/<run>/."""
    _compose(overrides)  # fail fast, with one clear line, before starting Python again
    command = [sys.executable, "-m", "project.train", *(overrides or [])]
    result = c.run(shlex.join(command), pty=sys.stdout.isatty(), warn=True)
    if not result.ok:
        raise Exit(f"error: training failed (exit code {result.exited}); see the log above", code=result.exited or 1)


@task(help={"run_dir": "A run directory (runs/<run-name>)", "images": "PNG file(s): a path, a folder or a,b,c"})
def predict(c, run_dir, images):
    """Classify images with a run's exported model (model/model.ts) and print the digits."""
    from project.predict import PredictError, expand_images, find_model
    from project.predict import predict as classify

    try:
        find_model(run_dir)
        for path, label, confidence in classify(run_dir, expand_images(images)):
            print(f"{path}: {label} (p={confidence:.3f})")
    except PredictError as exc:
        raise Exit(f"error: {exc}", code=2) from None


ns = Collection(local, predict)
ns.configure({"run": {"echo": False}})
