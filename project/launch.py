"""The container's launcher: become torchrun, so that SIGTERM reaches the training processes.

A SageMaker job's entry point is the SDK's driver, `/bin/bash sm_train.sh`, and it is PID 1 of
the container. StopTrainingJob and a spot reclaim send SIGTERM to PID 1 alone; bash as PID 1
ignores it, and the SDK's own torchrun driver (a Python process below bash that starts torchrun
as a child) would never see it either: the job would be SIGKILLed two minutes later with no
checkpoint. So the job's command is `exec python3 sm_entry.py --launch N`: `exec` makes this
Python PID 1, and `launch()` replaces it in turn (execv, same PID) with torchrun. torchrun
handles SIGTERM by forwarding it to every worker and waiting for them; each worker saves a
checkpoint and exits (project/checkpoints.py).

The torchrun command is the SDK torchrun driver's (sagemaker/train/container_drivers/
distributed_drivers/torchrun_driver.py): one node per host, `--nproc_per_node` processes per
node, and for several hosts the master address, port and node rank from SM_HOSTS. No torch
import here: this runs before anything else in the container.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from .runtime import network_env, sagemaker_env


def torchrun_argv(
    environ: Mapping[str, str], nproc_per_node: int, script: str, script_args: Sequence[str] = ()
) -> list[str]:
    """`python -m torch.distributed.run ...` for this host of the job (SM_HOSTS, SM_CURRENT_HOST)."""
    sm = sagemaker_env(environ)
    hosts = sm.hosts if sm is not None else ["algo-1"]
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={len(hosts)}",
        f"--nproc_per_node={nproc_per_node}",
    ]
    if sm is not None and len(hosts) > 1:
        argv += [f"--master_addr={sm.master}", f"--master_port={sm.master_port}", f"--node_rank={sm.node_rank}"]
    return argv + [script, *script_args]


def launch(nproc_per_node: int, script: str) -> None:
    """Replace this process (PID 1 in the container) with torchrun running `script`."""
    network_env(os.environ, os.environ.get("SM_NETWORK_INTERFACE_NAME"), os.environ.get("SM_CURRENT_INSTANCE_TYPE"))
    argv = torchrun_argv(os.environ, nproc_per_node, script)
    print("launching: " + " ".join(argv), flush=True)
    os.execv(argv[0], argv)
