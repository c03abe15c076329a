"""Our launchers as Hydra sees them: found by Hydra's plugin scan, and honouring its job contract
when Hydra's own sweep runner drives them (hydra.test_utils, as Hydra's plugins are tested).

Hydra's LauncherTestSuite and IntegrationTestSuite are not run: every case there launches Hydra's
demo app (`hydra.test_utils.a_module` on `configs/compose.yaml`, {foo: 10, bar: 100}) and checks
the value its task function returns. Ours never call a task function (hydra_plugins/...launchers:
a job is this project's training run, composed and validated against conf/'s schema first), so a
demo app is refused before it could run, by design. What the suites check that applies to us (a
JobReturn per job, in order, with its overrides, its config, its own working dir, a return value
and a status; one job per element of the sweep) is checked below on our own app, through the same
runner fixture (`hydra_sweep_runner`) the suites use.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.launcher import Launcher

from hydra_plugins.lightning_sagemaker.launchers import LocalLauncher, SageMakerLauncher
from project.core import config

ROOT = Path(__file__).resolve().parent.parent


def test_hydra_discovers_both_launchers():
    found = [plugin.__name__ for plugin in Plugins.instance().discover(Launcher)]
    assert LocalLauncher.__name__ in found and SageMakerLauncher.__name__ in found


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_the_local_launcher_returns_one_job_return_per_job_as_hydras_runner_expects(
    hydra_sweep_runner, tiny_run, tmp_path
):
    overrides = tiny_run(**{"trainer.max_epochs": 1})
    config.register_schema()  # conf/config.yaml's defaults name it, as `invoke local -m` registers it
    sweep = hydra_sweep_runner(
        calling_file=str(ROOT / "tasks.py"),
        calling_module=None,
        task_function=None,
        config_path="conf",
        config_name="config",
        overrides=[
            "hydra/launcher=local",
            "hydra.launcher.sweep_id=contract",
            "hydra.sweep.subdir=${hydra.job.num}",
            *overrides,
            "trainer.seed=1,2",
        ],
        temp_dir=tmp_path / "sweep",
    )
    with sweep:
        assert sweep.returns is not None and len(sweep.returns) == 1  # one batch
        batch = sweep.returns[0]
        assert [ret.overrides[-1] for ret in batch] == ["trainer.seed=1", "trainer.seed=2"]
        assert [ret.cfg.trainer.seed for ret in batch] == [1, 2]
        assert [ret.hydra_cfg.hydra.job.num for ret in batch] == [0, 1]
        assert len({ret.working_dir for ret in batch}) == 2
        for ret in batch:
            assert ret.status == JobStatus.COMPLETED, ret.return_value
            assert 0.0 <= float(ret.return_value) <= 1.0  # the sweep's objective, as a sweeper ranks it
