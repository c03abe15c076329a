"""trainer.init_from: a run started from an earlier run's weights, on real tiny CPU runs.

On SageMaker the weights come through the job's `model` channel: tests/test_sagemaker_e2e.py."""

import json
import tarfile
from pathlib import Path

import pytest

from project.core.config import compose
from project.core.errors import UserError
from project.core.identity import run_identity
from project.core.lineage import InitFromError, channel_parent, find_parent
from project.core.sagemaker_names import PARENT_HASH_ENV, PARENT_RUN_ENV
from project.face import catalog
from project.training.train import run_composed
from tests.synthetic import make_glyphs, tiny_overrides, write_dataset

pytestmark = pytest.mark.xdist_group("init-from-parent")  # one worker: the module's runs are made once

# A's last validation against B's first, after two steps from A's weights at a rate too small to
# move them (the batch-norm statistics still follow the batches): within 2 of 100 validation
# images. From scratch those steps leave a network near chance (~0.1).
TOLERANCE = 0.02
STILL = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 2, "model.lr": 1e-6}


@pytest.fixture(scope="module")
def parent(tiny_data, tmp_path_factory):
    """Run A (tiny, 2 epochs), trained once for this module: its folder and its metrics."""
    folder, files = tiny_data
    runs = tmp_path_factory.mktemp("parent") / "runs"
    metrics = run_composed(compose(tiny_overrides(folder, files, runs, run_name="A")))
    return runs / "A", metrics


def child(tiny_data, tmp_path: Path, a: Path, **extra) -> list[str]:
    folder, files = tiny_data
    return tiny_overrides(folder, files, tmp_path / "runs", **{"trainer.init_from": str(a), **extra})


def test_a_run_from_an_earlier_model_starts_where_it_ended(parent, tiny_data, tmp_path):
    a, a_metrics = parent
    cfg = compose(child(tiny_data, tmp_path, a, run_name="B", **STILL))
    b_metrics = run_composed(cfg)
    assert abs(b_metrics["val_acc"] - a_metrics["val_acc"]) <= TOLERANCE, (a_metrics["val_acc"], b_metrics["val_acc"])
    saved = json.loads((tmp_path / "runs" / "B" / "metrics.json").read_text())
    assert saved["parent"]["run"] == "A" and saved["parent"]["config_hash"] == a_metrics["config_hash"]
    # a new identity: this config from scratch is another run, and so is A's
    scratch = compose(child(tiny_data, tmp_path, a, run_name="B", **STILL))
    scratch.trainer.init_from = None
    assert b_metrics["config_hash"] not in (a_metrics["config_hash"], run_identity(scratch))
    table = catalog.table(catalog.local_entries(tmp_path / "runs", catalog.defaults()))
    assert "parent" in table.splitlines()[0] and f"A ({a_metrics['config_hash']})" in table


def test_another_architecture_is_refused_in_one_line_before_anything_is_written(parent, tiny_data, tmp_path):
    a, _ = parent
    overrides = [o for o in child(tiny_data, tmp_path, a, run_name="M", model="mlp") if "model.net.width" not in o]
    cfg = compose(overrides)
    with pytest.raises(UserError, match=r"no layer of .*model.pt matches this model .*another architecture") as err:
        run_composed(cfg)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs" / "M").exists()


def test_a_new_head_is_refused_strictly_and_loads_the_rest_with_init_strict_false(parent, tiny_data, tmp_path, capsys):
    a, _ = parent
    head = {"model.net.num_classes": 12, "model.num_classes": 12, "trainer.max_epochs": 1}
    with pytest.raises(UserError, match=r"net\.head\.weight is \[10, 32\] there, \[12, 32\] here; .*init_strict=false"):
        run_composed(compose(child(tiny_data, tmp_path, a, run_name="H", **head)))
    assert not (tmp_path / "runs" / "H").exists()
    run_composed(compose(child(tiny_data, tmp_path, a, run_name="H", **head, **{"trainer.init_strict": "false"})))
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("init_from A:")]
    assert "net.head.weight is [10, 32] there, [12, 32] here; net.head.bias is [10] there, [12] here" in line
    loaded, total = (int(n) for n in line.split("loaded ")[1].split(" tensors")[0].split(" of "))
    assert loaded == total - 2


def test_what_init_from_names(parent, tmp_path):
    a, metrics = parent
    by_name = find_parent("A", a.parent)
    assert by_name.weights == a / "model" / "model.pt" and by_name.config_hash == metrics["config_hash"]
    assert find_parent(str(a / "model" / "model.pt"), tmp_path).config_hash == metrics["config_hash"]
    (ckpt, *_) = sorted((a / "checkpoints").glob("*.ckpt"))
    assert find_parent(str(ckpt), tmp_path).config_hash == metrics["config_hash"]
    for spec, message in [
        ("nothere", "no run folder"),
        (str(tmp_path / "x.ckpt"), "no such file"),
        ("s3://b/model.tar.gz", r"an S3 model is read by a SageMaker job \(`invoke train`\)"),
        ("https://b/model.pt", "give a run, a .ckpt, a model.pt or an s3:// URI"),
    ]:
        with pytest.raises(InitFromError, match=message):
            find_parent(spec, tmp_path)


def test_a_jobs_model_channel_holds_the_weights_and_its_environment_the_parent(parent, tmp_path):
    """What the container finds: a job's model.tar.gz (its model.pt inside) or one uploaded file."""
    a, metrics = parent
    channel = tmp_path / "model"
    channel.mkdir()
    with tarfile.open(channel / "model.tar.gz", "w:gz") as tar:
        for part in ("model.pt", "config.yaml"):
            tar.add(a / "model" / part, arcname=part)
    uri = "s3://art/jobs/A-1/output/model.tar.gz"
    env = {"SM_CHANNEL_MODEL": str(channel), PARENT_RUN_ENV: "A-1", PARENT_HASH_ENV: metrics["config_hash"]}
    found = channel_parent(uri, env)
    assert found.weights.read_bytes() == (a / "model" / "model.pt").read_bytes()
    assert found.record() == {"run": "A-1", "config_hash": metrics["config_hash"], "weights": uri}
    (channel / "model.tar.gz").unlink()
    (channel / "model.pt").write_bytes((a / "model" / "model.pt").read_bytes())
    assert channel_parent("s3://art/models/A/init-from-0a/model.pt", env).weights == channel / "model.pt"
    (channel / "other.pt").write_bytes(b"")
    with pytest.raises(InitFromError, match=r"holds model\.pt, other\.pt; expected one \.tar\.gz"):
        channel_parent(uri, env)


def test_a_fine_tune_on_another_dataset_with_another_number_of_classes(parent, tmp_path, capsys):
    """A's digits (10 classes) to a second dataset of 5 classes (dataset=fashion_mnist's config on
    synthetic glyph images: there is no Fashion-MNIST file here): every layer but the new head loads."""
    a, a_metrics = parent
    folder = tmp_path / "second"
    files = write_dataset(folder, n_train=400, n_test=100, seed=5, make=lambda n, s: _five_classes(n, s))
    overrides = tiny_overrides(
        folder,
        files,
        tmp_path / "runs",
        dataset="fashion_mnist",
        run_name="F",
        **{"dataset.num_classes": 5, "trainer.max_epochs": 1, "trainer.init_from": str(a)},
    )
    with pytest.raises(UserError, match=r"net\.head\.weight is \[10, 32\] there, \[5, 32\] here"):
        run_composed(compose(overrides))
    metrics = run_composed(compose([*overrides, "trainer.init_strict=false"]))
    (line,) = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("init_from A:")]
    loaded, total = (int(n) for n in line.split("loaded ")[1].split(" tensors")[0].split(" of "))
    assert loaded == total - 2 and "net.head.bias is [10] there, [5] here" in line
    assert metrics["parent"]["run"] == "A" and metrics["parent"]["config_hash"] == a_metrics["config_hash"]
    assert metrics["test_acc"] > 0.2  # five classes: 0.2 is chance


def _five_classes(n: int, seed: int):
    images, labels = make_glyphs(n, seed)
    return images, labels % 5
