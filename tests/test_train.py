"""Real Lightning training on tiny synthetic IDX data: the full artifact layout, locally and
under a faked SageMaker container environment."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from project.core import config as C
from project.core.identity import run_identity
from project.serving.predict import predict
from project.training.train import run_composed
from tests.synthetic import make_images

ROOT = Path(__file__).resolve().parent.parent

MODEL_FILES = {"model.pt", "model.ts", "config.yaml"}
OUTPUT_FILES = {"metrics.csv", "learning_curves.png", "confusion_matrix.png", "metrics.json", "tensorboard"}


def assert_layout(run_dir: Path):
    assert {p.name for p in (run_dir / "model").iterdir()} >= MODEL_FILES
    assert {p.name for p in (run_dir / "output").iterdir()} >= OUTPUT_FILES
    assert list((run_dir / "checkpoints").glob("*.ckpt"))
    for png in ("learning_curves.png", "confusion_matrix.png"):
        assert (run_dir / "output" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_run_trains_and_writes_the_full_layout(composed, tiny_run, tmp_path, capsys):
    cfg = composed(*tiny_run(run_name="tiny"))
    metrics = run_composed(cfg)
    run_dir = tmp_path / "runs" / "tiny"
    assert_layout(run_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved == json.loads((run_dir / "output" / "metrics.json").read_text())
    assert saved["test_acc"] == pytest.approx(metrics["test_acc"])
    assert saved["test_acc"] > 0.5  # chance is 0.1: the model really learned
    assert {"test_loss", "val_acc", "val_loss", "train_loss", "epochs", "config_hash"} <= set(saved)
    assert saved["epochs"] == 2
    # The training loop's own clock: inside fit, and 2 epochs of the 500 training images.
    assert 0 < saved["train_loop_seconds"] < saved["fit_seconds"]
    assert saved["train_samples_per_second"] == pytest.approx(2 * 500 / saved["train_loop_seconds"], rel=0.01)
    out = capsys.readouterr().out
    assert "epoch=1/2 " in out and "val_acc=" in out and f"test_acc={saved['test_acc']:.6g}" in out
    # The resolved config rebuilds exactly this run.
    assert run_identity(C.load_resolved(run_dir / "model" / "config.yaml")) == saved["config_hash"]


def test_exported_model_predicts_pngs(composed, tiny_run, tmp_path):
    from PIL import Image

    run_composed(composed(*tiny_run(run_name="p", **{"trainer.max_epochs": 3})))
    images, labels = make_images(40, seed=99)
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    results = predict(tmp_path / "runs" / "p", paths, raw=True)  # patches, not digits: no MNIST preprocessing
    predicted = np.array([result.label for result in results])
    assert (predicted == labels).mean() > 0.5
    # Also the TorchScript file alone, without this code, on raw pixels.
    model = torch.jit.load(str(tmp_path / "runs" / "p" / "model" / "model.ts"))
    probs = model(torch.from_numpy(images[:4]).float()[:, None])
    assert torch.allclose(probs.sum(1), torch.ones(4), atol=1e-5)


def test_entry_point_under_a_faked_sagemaker_environment(composed, tiny_run, tmp_path):
    """The container path: SM_* variables, a data channel, /opt/ml-like dirs, the resolved config."""
    from tests.synthetic import write_dataset

    channel = tmp_path / "opt_ml" / "input" / "data" / "train"
    files = write_dataset(channel)
    cfg = composed(*tiny_run() + [f"dataset.files.{stem}={sha}" for stem, sha in files.items()])
    cfg.dataset.channels.train = "s3://not-used-in-the-container/mnist"
    config_file = tmp_path / "code" / "config.yaml"
    config_file.parent.mkdir()
    config_file.write_text(C.to_yaml(cfg))
    opt_ml = tmp_path / "opt_ml"
    env = {
        **os.environ,
        "SM_MODEL_DIR": str(opt_ml / "model"),
        "SM_OUTPUT_DATA_DIR": str(opt_ml / "output" / "data"),
        "SM_CHANNEL_TRAIN": str(channel),
        "SM_CHECKPOINT_DIR": str(opt_ml / "checkpoints"),
        "SM_NUM_GPUS": "0",
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        "TRAINING_JOB_NAME": "job-123",
    }
    result = subprocess.run(
        [sys.executable, "-m", "project.training.train", "--config", str(config_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert {p.name for p in (opt_ml / "model").iterdir()} >= MODEL_FILES
    metrics = json.loads((opt_ml / "output" / "data" / "metrics.json").read_text())
    assert metrics["run_name"] == "job-123"
    assert metrics["test_acc"] > 0.5
    assert list((opt_ml / "checkpoints").glob("*.ckpt"))
    assert "test_acc=" in result.stdout
    assert "Tip" not in result.stdout + result.stderr and "weights_sha256" not in result.stdout  # CloudWatch's view


def test_entry_point_bad_config_is_one_line_and_nonzero(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "project.training.train", "trainer.gpus=lots"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: bad config override: trainer.gpus: Value 'lots' of type 'str' could not be converted to Integer"
    ]


FLUSHED_AFTER_A_RUN = """
import sys
import numpy as np
import torch
from project.core import config as C
from project.training.train import run_composed

torch.set_num_threads(2)  # a main thread and a pool thread, each with half of a large kernel
subnormal = torch.from_numpy(np.full(1_000_000, 1e-39, dtype=np.float32))  # made before any flag
run_composed(C.compose(sys.argv[1:]))
print("flushed", float((subnormal * 1.0).eq(0).float().mean()))  # each thread: 0 if it flushes
"""


@pytest.mark.parametrize("flush, flushed", [("true", 1.0), ("false", 0.0)])
def test_a_training_process_flushes_subnormals_in_every_thread(tiny_run, flush, flushed):
    """In a fresh process, as `invoke local`'s child and a job's trainer are: trainer.flush_denormal
    reaches torch's pool threads too, which copy the flag when they start. Set late (as the model's
    setup used to, after the data and the sample pass had started the pool), only the main thread
    flushed: at 2 threads half of every kernel still ran on subnormals."""
    code = [sys.executable, "-c", FLUSHED_AFTER_A_RUN, *tiny_run(run_name=f"ftz-{flush}")]
    result = subprocess.run([*code, f"trainer.flush_denormal={flush}"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"flushed {flushed}"


def confusion_matrix(net, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The reference: a separate forward pass over the test set, counted with bincount."""
    with torch.no_grad():
        pred = torch.cat([net.eval()(images[i : i + 256]).argmax(1) for i in range(0, len(images), 256)])
    return torch.bincount(labels * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def test_test_pass_counts_the_confusion_matrix(tiny_data, tmp_path):
    """The matrix counted during trainer.test is the one a separate pass over the test set gives."""
    import pytorch_lightning as pl

    from project.training.data import IdxDataModule
    from project.training.models import LitClassifier, SmallCNN

    folder, files = tiny_data
    datamodule = IdxDataModule(str(folder), files, str(tmp_path / "cache"), batch_size=16, val_size=10)
    module = LitClassifier(SmallCNN(width=4))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
    test = datamodule.splits["test"]
    expected = confusion_matrix(module.net, test.images, test.labels, 10)
    assert torch.equal(module.test_confusion, expected)
    assert module.test_confusion.diag().sum().item() / len(test) == pytest.approx(results["test_acc"])


def test_the_gpu_preset_runs_on_cpu_with_bf16_and_channels_last(composed, tiny_run, tmp_path):
    """experiment=gpu_fast through the same code path (bf16 autocast and NHWC exist on CPU too);
    the tiny run's own overrides (batch, epochs) come after the preset and win."""
    cfg = composed("experiment=gpu_fast", *tiny_run(run_name="fast"))
    assert (cfg.trainer.precision, cfg.trainer.channels_last, cfg.model.lr) == ("bf16-mixed", True, 0.03)
    metrics = run_composed(cfg)
    run_dir = tmp_path / "runs" / "fast"
    assert_layout(run_dir)
    assert metrics["test_acc"] > 0.5
    # The export is the plain network: NCHW pixels in, probabilities out.
    model = torch.jit.load(str(run_dir / "model" / "model.ts"))
    images, _ = make_images(4, seed=5)
    assert torch.allclose(model(torch.from_numpy(images).float()[:, None]).sum(1), torch.ones(4), atol=1e-4)


def test_levers_leave_the_run_identity_and_the_state_dict_alone(composed):
    from project.training.models import LitClassifier, SmallCNN

    base = run_identity(composed())
    levers = ["trainer.channels_last=true", "trainer.compile=true", "trainer.data_on_device=false"]
    levers += ["trainer.log_every_n_steps=3"]  # how often it reports, not what it computes
    assert run_identity(composed(*levers)) == base  # a checkpoint resumes whichever way it runs
    plain, fast = LitClassifier(SmallCNN(width=4)), LitClassifier(SmallCNN(width=4), channels_last=True, compile=True)
    fast.load_state_dict(plain.state_dict())
    fast.setup("fit")
    assert fast.state_dict().keys() == plain.state_dict().keys()  # no torch.compile wrapper inside
    assert fast.net.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 1, 28, 28)
    plain.eval(), fast.eval()
    assert torch.allclose(fast(x), plain(x), atol=1e-5)  # compiled, NHWC: the same function


def test_the_dataset_stays_on_the_cpu_for_a_cpu_run(tiny_data, tmp_path):
    """data_on_device moves the splits only onto a CUDA root device (GPU runs: see bench/gpu.py)."""
    import pytorch_lightning as pl

    from project.training.data import IdxDataModule, TensorSplit

    folder, files = tiny_data
    datamodule = IdxDataModule(str(folder), files, str(tmp_path / "cache"), batch_size=16, val_size=10)
    datamodule.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    datamodule.setup("fit")
    assert datamodule._resident_device() is None
    assert datamodule.splits["train"].images.device.type == "cpu"
    split = TensorSplit(torch.arange(12.0).reshape(6, 2), torch.arange(6)).to(torch.device("cpu"))
    images, labels = split[np.array([4, 1])]
    assert labels.tolist() == [4, 1] and images[0].tolist() == [8.0, 9.0]
