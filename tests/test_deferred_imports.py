"""project.training.deferred_imports: torchmetrics' scipy.signal import leaves start-up, and nothing of
scipy.signal or torchmetrics' alias is lost. Each check runs in a fresh interpreter (this test
process imported torchmetrics long ago)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.requires import requires

ROOT = Path(__file__).resolve().parent.parent

pytestmark = requires(module="scipy")  # without it torchmetrics has no scipy.signal to import


def fresh(code: str, cwd: Path = ROOT) -> dict:
    """Run `code` in a new interpreter that sees the project; it prints one JSON object."""
    env_path = os.pathsep.join(dict.fromkeys([str(ROOT), str(cwd)]))  # the project, then the test's folder
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": env_path},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_lightning_imports_without_scipy_signal_and_the_real_module_comes_on_use():
    out = fresh(
        """
        import json, sys
        from project.training import deferred_imports
        deferred_imports.install()  # as the training entries do
        import pytorch_lightning, torchmetrics
        before = "scipy.signal" in sys.modules
        import scipy.signal
        real = scipy.signal
        print(json.dumps({
            "before": before,
            "file": getattr(real, "__file__", None),
            "butter": callable(real.butter),
            "alias": real.hamming is real.windows.hamming,
            "hooks_left": [
                type(f).__name__ for f in sys.meta_path if type(f).__module__ == "project.training.deferred_imports"
            ],
            "metric": float(torchmetrics.Accuracy(task="binary")(
                __import__("torch").tensor([0.9, 0.2]), __import__("torch").tensor([1, 0]))),
        }))
        """
    )
    assert out["before"] is False  # Lightning and torchmetrics imported, scipy.signal not
    assert out["file"] and out["file"].endswith("__init__.py") and out["butter"]  # the real package
    assert out["alias"]  # torchmetrics' alias for SRMRpy, on the real module
    assert out["hooks_left"] == []  # the hook is gone once it has nothing left to do
    assert out["metric"] == 1.0


def test_without_the_hook_torchmetrics_imports_scipy_signal():
    """The cost the hook removes exists: the same imports without `project` load scipy.signal."""
    out = fresh(
        """
        import json, sys
        import pytorch_lightning
        print(json.dumps({"loaded": "scipy.signal" in sys.modules}))
        """
    )
    assert out["loaded"] is True


@pytest.fixture()
def fake_host(tmp_path):
    """A package that plays torchmetrics' part: HOST points at it, its __init__ is the test's."""

    def write(body: str) -> Path:
        package = tmp_path / "fakehost"
        package.mkdir()
        (package / "__init__.py").write_text(textwrap.dedent(body))
        return tmp_path

    return write


HOOK_ON_FAKE_HOST = textwrap.dedent(
    """
    import json, sys
    from project.training import deferred_imports
    deferred_imports.HOST = "fakehost"
    deferred_imports.install(versions=None)  # a stand-in host, no distribution to ask
    """
)


def test_an_attribute_used_while_the_host_imports_loads_the_real_module(fake_host):
    where = fake_host(
        """
        import scipy.signal
        if not hasattr(scipy.signal, "hamming"):
            scipy.signal.hamming = scipy.signal.windows.hamming
        window = scipy.signal.get_window("hann", 4)  # more than the alias check: the real module
        """
    )
    out = fresh(
        HOOK_ON_FAKE_HOST
        + textwrap.dedent(
            """
        import fakehost, scipy.signal
        print(json.dumps({
            "window": [round(float(v), 3) for v in fakehost.window],
            "stand_in": type(sys.modules["scipy.signal"]).__name__,
            "same": sys.modules["scipy.signal"] is scipy.signal,
            "alias": scipy.signal.hamming is scipy.signal.windows.hamming,
            "hooks_left": [f for f in sys.meta_path if type(f).__module__ == "project.training.deferred_imports"] != [],
        }))
        """
        ),
        cwd=where,
    )
    assert out["window"] == [0.0, 0.5, 1.0, 0.5]  # periodic Hann: scipy computed it
    assert out["stand_in"] == "module" and out["same"] and out["alias"]
    assert out["hooks_left"] is False


def test_a_host_that_fails_to_import_leaves_no_stand_in_behind(fake_host):
    where = fake_host(
        """
        import scipy.signal
        raise RuntimeError("the host's own failure")
        """
    )
    out = fresh(
        HOOK_ON_FAKE_HOST
        + textwrap.dedent(
            """
        try:
            import fakehost
        except RuntimeError as exc:
            error = str(exc)
        stand_in_left = "scipy.signal" in sys.modules
        import scipy.signal
        print(json.dumps({"error": error, "stand_in_left": stand_in_left, "butter": callable(scipy.signal.butter)}))
        """
        ),
        cwd=where,
    )
    assert out == {"error": "the host's own failure", "stand_in_left": False, "butter": True}


def test_installing_after_torchmetrics_is_imported_does_nothing():
    out = fresh(
        """
        import json, sys
        import torchmetrics
        from project.training import deferred_imports
        deferred_imports.install()
        hooks = [f for f in sys.meta_path if type(f).__module__ == "project.training.deferred_imports"]
        print(json.dumps({"hooks": hooks != []}))
        """
    )
    assert out["hooks"] is False


def test_importing_the_project_patches_nothing():
    """Only the training entries install the hook (project/training/child.py, sm_entry.py): not `import project`,
    which the CLI, the sandbox, the model server and users' code do."""
    out = fresh(
        """
        import json, sys
        before = list(sys.meta_path)
        import project, project.core.config
        ours = [f for f in sys.meta_path if f not in before and type(f).__module__.startswith("project")]
        import project.training.train
        print(json.dumps({"patched": [type(f).__name__ for f in ours], "signal": "scipy.signal" in sys.modules}))
        """
    )
    assert out["patched"] == []
    assert out["signal"] is True  # torchmetrics, imported by project.training.train, imported scipy.signal itself


def test_a_torchmetrics_it_was_not_tested_with_is_left_alone():
    out = fresh(
        """
        import json, sys
        from project.training import deferred_imports
        deferred_imports.install(versions=("0.0.1",))
        print(json.dumps({"hooks": [type(f).__name__ for f in sys.meta_path
                                    if type(f).__module__ == "project.training.deferred_imports"]}))
        """
    )
    assert out["hooks"] == []
