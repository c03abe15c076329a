"""A SageMaker job's entry point, copied to the top of the code channel as sm_entry.py.

project.aws.staging puts it beside the project package and the resolved config.yaml. The job
runs `exec python3 sm_entry.py --launch`: this process is the container's PID 1 and becomes
torchrun with one process per GPU of the staged config's trainer.gpus (project/training/launch.py says
why), or, for one process on one host, trains itself. torchrun runs this file again in each worker, which trains from
config.yaml. `python3 sm_entry.py` trains in this process.

Imports stay inside main(): the launcher (PID 1) loads only torchrun, the workers the training code.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def config_path() -> Path:
    """The job's resolved config: a sweep job's comes in its own channel; a single job's travels with the code."""
    from project.core.sagemaker_names import CONFIG_CHANNEL

    channel = os.environ.get(f"SM_CHANNEL_{CONFIG_CHANNEL.upper()}")
    return Path(channel) / "config.yaml" if channel else HERE / "config.yaml"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--launch"]:
        from project.training.launch import launch, staged_limits, staged_processes_per_node

        processes, limits = staged_processes_per_node(config_path()), staged_limits(config_path())
        launch(processes, str(Path(__file__).resolve()), lambda: main([]), limits)  # exits with the outcome
    from project.training import deferred_imports

    deferred_imports.install()  # before Lightning imports torchmetrics (project/training/deferred_imports.py)
    from project.training.train import main as train

    return train(["--config", str(config_path())])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
