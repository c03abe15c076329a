"""A SageMaker job's entry point, copied to the top of the code channel as sm_entry.py.

project.aws.staging puts it beside the project package and the resolved config.yaml. The job
runs `exec python3 sm_entry.py --launch N`: this process is the container's PID 1 and becomes
torchrun with N processes per node (project/launch.py says why), or, for one process on one
host, trains itself. torchrun runs this file again in each worker, which trains from
config.yaml. `python3 sm_entry.py` trains in this process.

Imports stay inside main(): the launcher (PID 1) loads only torchrun, the workers the training code.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    if argv[:1] == ["--launch"]:
        from project.launch import launch

        launch(int(argv[1]), str(Path(__file__).resolve()), train_here=lambda: main([]))  # exits with the outcome
    from project.sagemaker_names import CONFIG_CHANNEL
    from project.train import main as train

    # A sweep job's config comes in its own channel; a single job's travels with the code.
    channel = os.environ.get(f"SM_CHANNEL_{CONFIG_CHANNEL.upper()}")
    return train(["--config", str(Path(channel) / "config.yaml" if channel else HERE / "config.yaml")])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
