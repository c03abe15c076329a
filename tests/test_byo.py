"""Your own model and data: any LightningModule and DataModule, through the real CLI.

A package outside project/ (written by tests.byo, importable with PYTHONPATH) and the worked
example in mymodels/ train with `invoke local`; bad `_target_`s, arguments and channel folders are
one line, exit 2, and leave no run folder. The MNIST family's configs build on synthetic IDX data.
"""

from __future__ import annotations

import json
import os
import random
import re
import uuid

import pytest

from project.aws.session import aws_clients
from project.core import config as C
from project.training import modules
from project.training.resolve import resolve
from tests import byo
from tests.cli import invoke, one_error_line


@pytest.fixture
def package(tmp_path):
    root = tmp_path / "user"
    name = byo.write_package(root)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return root, name, env


def test_own_module_and_two_channels_train_with_invoke_local(package, tmp_path):
    root, name, env = package
    result = invoke("local", *byo.overrides(root, tmp_path / "runs", run_name="own"), env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "epoch=1/2 " in result.stdout and "val_loss=" in result.stdout
    assert "warning" not in result.stderr  # every declared metric was logged
    run = tmp_path / "runs" / "own"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_loss"] < metrics["train_loss"] or metrics["test_loss"] < 1.0
    assert {p.name for p in (run / "model").iterdir()} >= {"model.pt", "model.ts", "config.yaml"}
    assert not (run / "output" / "confusion_matrix.png").exists()  # not a classifier
    assert list((run / "checkpoints").glob("*.ckpt"))
    line = one_error_line(invoke("predict", str(run), str(root / "data" / "train" / "points.csv"), env=env))
    assert line.startswith(f"error: {run / 'model'} holds no image classifier's contract"), line  # predict: classifiers


def test_declared_metric_never_logged_is_one_warning(package, tmp_path):
    root, _, env = package
    extra = {"model.metrics": "[train_loss,val_loss,val_r2]", "trainer.max_epochs": 1, "run_name": "warn"}
    result = invoke("local", *byo.overrides(root, tmp_path / "runs", **extra), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: model.metrics")]
    assert len(warnings) == 1 and "val_r2" in warnings[0] and "val_loss" not in warnings[0].split(",")[0]


def test_a_module_that_cannot_be_exported_still_succeeds_with_its_weights(package, tmp_path):
    root, name, env = package
    extra = {"model._target_": f"{name}.Unexportable", "trainer.max_epochs": 1, "run_name": "weights"}
    result = invoke("local", *byo.overrides(root, tmp_path / "runs", **extra), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: no model.ts")]
    assert len(warnings) == 1 and "can be neither scripted nor traced (script: " in warnings[0], result.stderr
    assert "; trace: " in warnings[0] and warnings[0].endswith("model.pt holds its weights")
    model = tmp_path / "runs" / "weights" / "model"
    assert {p.name for p in model.iterdir()} >= {"model.pt", "config.yaml"} and not (model / "model.ts").exists()
    assert json.loads((tmp_path / "runs" / "weights" / "metrics.json").read_text())["test_loss"] > 0


def test_the_readme_skeleton_and_its_two_yaml_files_train_as_written(tmp_path):
    """The docs' "Your own model and data" page: its python block and both YAML files, copied as they
    are (only the package renamed, so the test writes nothing into the repository), train with invoke local."""
    import torch

    page = (C.CONF_DIR.parent / "docs" / "guides" / "own-model.md").read_text()
    blocks = re.findall(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", page, re.S)
    assert [path for path, _ in blocks] == ["mymodels/mine.py", "conf/model/mine.yaml", "conf/dataset/mine.yaml"]
    package = f"readme_{uuid.uuid4().hex[:8]}"
    for path, body in blocks:
        dest = tmp_path / path.replace("mymodels/", f"{package}/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(body.replace("mymodels.mine", f"{package}.mine"))
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "data" / "mine").mkdir(parents=True)
    x = torch.randn(128, 8, generator=torch.Generator().manual_seed(0))
    torch.save((x, x.sum(1, keepdim=True)), tmp_path / "data" / "mine" / "data.pt")  # "whatever your files are"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = invoke(
        "local",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "model=mine",
        "dataset=mine",
        f"dataset.channels.train={tmp_path / 'data' / 'mine'}",  # the YAML's data/mine, from where invoke runs
        f"paths.runs_dir={tmp_path / 'runs'}",
        "run_name=mine",
        "trainer.max_epochs=1",
        "trainer.batch_size=32",
        "trainer.gpus=0",
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "val_loss=" in result.stdout and "warning" not in result.stderr  # its metrics: all three logged
    assert (tmp_path / "runs" / "mine" / "model" / "model.ts").is_file()


def test_worked_example_trains_locally(tmp_path):
    folder = tmp_path / "csv"
    folder.mkdir()
    rng = random.Random(1)
    rows = ["a,b,c,y"]
    for _ in range(200):
        a, b, c = (rng.uniform(-1, 1) for _ in range(3))
        rows.append(f"{a},{b},{c},{2 * a - b + 0.5 * c}")
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    result = invoke(
        "local",
        "model=mlp_regressor",
        "dataset=csv_regression",
        f"dataset.channels.train={folder}",
        f"paths.runs_dir={tmp_path / 'runs'}",
        "run_name=csv",
        "trainer.max_epochs=2",
        "trainer.batch_size=32",
        "trainer.gpus=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "runs" / "csv" / "metrics.json").read_text())
    assert {"train_loss", "val_loss", "val_mae", "test_loss", "test_mae"} <= set(metrics)
    assert "test_mae=" in result.stdout


@pytest.mark.parametrize(
    "extra,expected",
    [
        (
            {"model._target_": "no_such_package.models.Net"},
            "error: model._target_=no_such_package.models.Net: cannot import module no_such_package.models "
            "(ModuleNotFoundError: No module named 'no_such_package')",
        ),
        ({"model._target_": "{pkg}.NotAModule"}, "error: model._target_={pkg}.NotAModule is not a LightningModule"),
        ({"dataset._target_": "{pkg}.Linear"}, "error: dataset._target_={pkg}.Linear is not a LightningDataModule"),
        ({"+model.dropout": 0.5}, "error: model: {pkg}.Linear takes no argument dropout; it accepts: features, lr"),
        (
            {"+dataset.shuffle": "true"},
            "error: dataset: {pkg}.PointsData takes no argument shuffle; it accepts: train_dir, validation_dir, "
            "batch_size",
        ),
        (
            {"dataset.channels.validation": "{root}/nowhere"},
            "error: dataset.channels.validation={root}/nowhere does not exist",
        ),
        ({"dataset.channels.validation": "{root}/empty"}, "error: dataset.channels.validation={root}/empty is empty"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(package, tmp_path, extra, expected):
    root, name, env = package
    (root / "empty").mkdir()
    extra = {k: str(v).format(pkg=name, root=root) for k, v in extra.items()}
    result = invoke("local", *byo.overrides(root, tmp_path / "runs", run_name="bad", **extra), env=env)
    line = one_error_line(result)
    assert line.startswith(expected.format(pkg=name, root=root)), line
    assert not (tmp_path / "runs" / "bad").exists()


def test_an_s3_channel_is_mirrored_for_a_local_run(moto_endpoint, package, tmp_path):
    """A channel at an s3:// prefix (no dataset.files) is copied into paths.data_dir/<name>/<channel>/
    by `invoke local`, over real HTTP to moto; an empty prefix is one line and no run folder."""
    root, _, env = package
    s3 = aws_clients("us-east-1", moto_endpoint).s3
    bucket = f"byo-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    local = root / "data" / "validation" / "points.csv"
    s3.upload_file(str(local), bucket, "byo/validation/points.csv")
    channel = {"dataset.channels.validation": f"s3://{bucket}/byo/validation", "trainer.max_epochs": 1}
    result = invoke("local", *byo.overrides(root, tmp_path / "runs", run_name="s3", **channel), env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "downloaded 1 of 1 file(s) (" in result.stdout and "val_loss=" in result.stdout
    assert (tmp_path / "cache" / "byo" / "validation" / "points.csv").read_bytes() == local.read_bytes()
    empty = {**channel, "dataset.channels.validation": f"s3://{bucket}/byo/nothing"}
    line = one_error_line(invoke("local", *byo.overrides(root, tmp_path / "runs", run_name="none", **empty), env=env))
    assert (
        line
        == f"error: s3://{bucket}/byo/nothing holds no objects: upload the data there (invoke upload) or fix the path"
    )
    assert not (tmp_path / "runs" / "none").exists()


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "kmnist"])
def test_mnist_family_builds_on_synthetic_idx(composed, dataset, tiny_data, tmp_path):
    folder, files = tiny_data
    cfg = composed(
        f"dataset.channels.train={folder}",
        *(f"dataset.files.{stem}={sha}" for stem, sha in files.items()),
        dataset=dataset,
        **{"paths.data_dir": tmp_path, "dataset.val_size": 50},
    )
    assert cfg.dataset.name == dataset and cfg.dataset._target_ == "project.training.data.IdxDataModule"
    assert set(cfg.dataset.files) == set(files)
    module, datamodule = modules.build(cfg, resolve(cfg))
    datamodule.setup("fit")
    assert len(datamodule.splits["val"]) == 50 and C.is_classifier(cfg)


def test_a_model_that_does_not_fit_the_dataset_is_one_line(tmp_path):
    """The default classifier (cnn) needs dataset.num_classes, which the CSV regression data lacks."""
    line = one_error_line(invoke("local", "dataset=csv_regression", f"paths.runs_dir={tmp_path / 'runs'}"))
    assert line.startswith("error: ") and (
        "model.num_classes: Interpolation key 'dataset.num_classes' not found: "
        "this model config does not fit the others" in line
    ), line
    assert "model=mlp_regressor dataset=csv_regression" in line
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "override,expected",
    [
        ("model.net._target_=no_such_package.Net", "model.net._target_=no_such_package.Net: cannot import"),
        ("model.net._target_=torch.optim.SGD", r"model.net._target_=torch.optim.sgd.SGD is not a torch.nn.Module"),
        (
            "+model.net.depth=3",
            "model.net: project.training.models.SmallCNN takes no argument depth; it accepts: in_channels",
        ),
    ],
)
def test_a_classifiers_network_is_checked_as_the_other_targets_are(composed, override, expected):
    with pytest.raises(modules.ModuleError, match=expected):
        modules.check(composed(override))
    modules.check(composed())  # the default network passes
