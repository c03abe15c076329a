"""trainer.init_from: a run started from an earlier run's weights, on real tiny CPU runs."""

import json
from pathlib import Path

import pytest

from project.core.config import compose
from project.core.errors import UserError
from project.core.identity import run_identity
from project.core.lineage import InitFromError, find_parent
from project.face import catalog
from project.training.train import run_composed
from tests.synthetic import tiny_overrides

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
        ("s3://b/model.tar.gz", "not supported yet"),
    ]:
        with pytest.raises(InitFromError, match=message):
            find_parent(spec, tmp_path)
