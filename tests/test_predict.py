"""`invoke predict` on photos and scans of digits, with a really trained default model.

With the real MNIST copy (../shared/data/mnist) the default CNN trains for one epoch and reads
test-set digits rendered as photos; without it, the same on seven-segment synthetic digits.
"""

from __future__ import annotations

import gzip
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from project.core import config as C
from project.serving.archive import CONTRACT_FILE, TORCHSCRIPT_FILE
from project.serving.predict import MIN_CONFIDENCE, Prediction, predict
from project.serving.preprocess import mnist_pixels
from project.training.train import run_composed
from tests.cli import invoke
from tests.once import made_once
from tests.photos import blank_paper, colour_gradient, digit_photo, random_noise
from tests.synthetic import make_glyphs, write_dataset

ROOT = Path(__file__).resolve().parent.parent
REAL_MNIST = ROOT.parent / "shared" / "data" / "mnist"
# One xdist worker runs this module: the model is trained once (tests/once.py) and no other worker
# sits idle on the lock while it trains.
pytestmark = pytest.mark.xdist_group("predict-model")
N_PHOTOS = 200
LINE = re.compile(
    r"^(?P<path>.+): (?:(?P<label>\d) \(p=[01]\.\d{3}\), next \d \(p=[01]\.\d{3}\)"
    r"|unsure: (?P<guess>\d) \(p=[01]\.\d{3}\) or \d \(p=[01]\.\d{3}\)"
    r"|no digit found \((?P<problem>[^)]+)\))$"
)


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run folder, test images, test labels) of the default model, trained once for the session."""
    return made_once(tmp_path_factory, "predict", train_digits)


def train_digits(base: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    overrides = [f"paths.runs_dir={base / 'runs'}", f"paths.data_dir={base / 'cache'}", "trainer.gpus=0"]
    if REAL_MNIST.is_dir():
        overrides += [f"dataset.channels.train={REAL_MNIST}", "trainer.max_epochs=1", "trainer.limit_val_batches=5"]
        images = read_idx(REAL_MNIST / "t10k-images-idx3-ubyte.gz")
        labels = read_idx(REAL_MNIST / "t10k-labels-idx1-ubyte.gz")
    else:
        files = write_dataset(base / "glyphs", n_train=3000, n_test=300, make=make_glyphs)
        overrides += [f"dataset.channels.train={base / 'glyphs'}", "dataset.val_size=300", "trainer.max_epochs=3"]
        overrides += ["trainer.batch_size=64", *(f"dataset.files.{stem}={sha}" for stem, sha in files.items())]
        images, labels = make_glyphs(300, seed=1)  # write_dataset's test split
    metrics = run_composed(C.compose([*overrides, "run_name=digits"]))
    assert metrics["test_acc"] >= 0.98, metrics  # the bar below is about the photos, not the model
    return base / "runs" / "digits", images, labels


def photos_of_test_digits(trained, folder: Path, n: int, seed: int = 0) -> tuple[list[Path], np.ndarray]:
    _, images, labels = trained
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), size=n, replace=False)
    folder.mkdir(exist_ok=True)
    paths = []
    for k, i in enumerate(chosen):
        paths.append(folder / f"photo{k:03d}.{'jpg' if k % 2 else 'png'}")
        digit_photo(images[i], rng).save(paths[-1], quality=90)
    return paths, labels[chosen]


def test_photos_of_digits_on_paper_are_read(trained, tmp_path):
    """Dark ink on off-white paper, uneven light, JPEG noise, a 200x150 canvas, the digit off-centre."""
    paths, truth = photos_of_test_digits(trained, tmp_path, N_PHOTOS)
    results = predict(trained[0], paths)
    guesses = np.array([-1 if r.label is None else r.label for r in results])
    accuracy = (guesses == truth).mean()
    confidently_wrong = np.mean([not r.unsure and r.label != t for r, t in zip(results, truth, strict=True)])
    unsure = np.mean([r.unsure for r in results])
    assert accuracy >= 0.95, (accuracy, unsure)
    assert confidently_wrong <= 0.02 and unsure <= 0.15, (confidently_wrong, unsure)


def test_clean_scans_in_mnist_format_are_read_too(trained, tmp_path):
    """A 28x28 light-on-dark digit (MNIST's own PNGs) survives the photo preprocessing, or --raw skips it."""
    run_dir, images, labels = trained
    paths = []
    for i in range(100):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(images[i]).save(paths[-1])
    for raw in (False, True):
        guesses = np.array([r.label for r in predict(run_dir, paths, raw=raw)])
        assert (guesses == labels[:100]).mean() >= 0.95, raw


def test_images_without_a_digit_are_flagged_not_answered(trained, tmp_path):
    rng = np.random.default_rng(3)
    images = {
        "white.png": Image.new("L", (200, 150), 255),
        "black.png": Image.new("RGB", (64, 64), "black"),
        "paper.jpg": blank_paper(rng),
        "gradient.png": colour_gradient(),
        "noise.png": random_noise(rng),
    }
    for name, image in images.items():
        image.save(tmp_path / name)
    results = predict(trained[0], [tmp_path / name for name in images])
    assert [str(r).split(": ", 1)[1] for r in results] == [
        "no digit found (flat image)",
        "no digit found (flat image)",
        "no digit found (flat image)",
        "no digit found (flat image)",
        "no digit found (nothing stands out from the background)",
    ]


def test_a_line_across_the_image_is_not_a_digit(trained, tmp_path):
    """The edge of the sheet, or a shadow across it, would otherwise read as a confident 1."""
    grey = np.full((150, 200), 215, np.uint8)
    grey[:, 120:] = 90  # the table beyond the paper's edge
    Image.fromarray(grey).save(tmp_path / "edge.png")
    (result,) = predict(trained[0], [tmp_path / "edge.png"])
    assert result.label is None and "across the whole image" in str(result)


def test_thin_pen_strokes_are_thickened_like_mnist(trained, tmp_path):
    """A ballpoint 7 two pixels wide on a 110-pixel digit: scaled down as it is, it reads as a 1."""
    from PIL import ImageDraw

    image = Image.new("RGB", (200, 150), (238, 232, 215))
    ImageDraw.Draw(image).line([(60, 25), (135, 25), (90, 135)], fill=(30, 30, 60), width=2)
    image.save(tmp_path / "pen7.jpg", quality=85)
    (result,) = predict(trained[0], [tmp_path / "pen7.jpg"])
    assert result.label == 7, result


def test_unsure_answers_name_both_candidates():
    assert str(Prediction(Path("a.png"), ((4, 0.41), (9, 0.38)))) == "a.png: unsure: 4 (p=0.410) or 9 (p=0.380)"
    assert str(Prediction(Path("a.png"), ((7, 0.981), (1, 0.012)))) == "a.png: 7 (p=0.981), next 1 (p=0.012)"
    assert Prediction(Path("a.png"), ((7, MIN_CONFIDENCE), (1, 0.1))).unsure is False
    assert str(Prediction(Path("b.png"), (), "flat image")) == "b.png: no digit found (flat image)"


def test_invoke_predict_reads_a_folder_of_png_and_jpeg(trained, tmp_path):
    folder = tmp_path / "photos"
    paths, truth = photos_of_test_digits(trained, folder, 8, seed=1)
    Image.new("RGB", (120, 90), (240, 236, 225)).save(folder / "blank.jpg")
    (folder / "notes.txt").write_text("not an image: a folder's other files are skipped\n")
    result = invoke("predict", str(trained[0]), str(folder))
    assert result.returncode == 0, result.stderr
    lines = [LINE.match(line) for line in result.stdout.splitlines()]
    assert all(lines), result.stdout
    assert [m["path"] for m in lines] == [str(p) for p in sorted([*paths, folder / "blank.jpg"])]
    by_path = {m["path"]: m for m in lines}
    assert by_path[str(folder / "blank.jpg")]["problem"] == "flat image"
    read = [by_path[str(p)]["label"] or by_path[str(p)]["guess"] for p in paths]
    assert sum(guess == str(t) for guess, t in zip(read, truth, strict=True)) >= 7, result.stdout


def test_an_image_too_small_for_a_digit_is_one_verdict_line_without_warnings(trained, tmp_path):
    """A 1x1 PNG (a tracking pixel saved by mistake) once printed numpy's RuntimeWarnings."""
    Image.new("L", (1, 1), 0).save(tmp_path / "pixel.png")
    Image.new("RGB", (40, 3), "white").save(tmp_path / "strip.png")
    result = invoke("predict", str(trained[0]), f"{tmp_path / 'pixel.png'},{tmp_path / 'strip.png'}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{tmp_path / 'pixel.png'}: no digit found (1x1 pixels: too small to hold a digit)",
        f"{tmp_path / 'strip.png'}: no digit found (40x3 pixels: too small to hold a digit)",
    ]
    assert "Warning" not in result.stderr, result.stderr


def test_small_images_are_read_without_numpy_warnings():
    """The paper's level per block of a tiny image: a block that is all ink has no median to take."""
    grey = np.full((8, 8), 230.0)
    grey[3:5, 3:5] = 20  # a dot whose dilation fills whole 1-pixel blocks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mnist_pixels(grey) == (None, "flat image")


def test_invoke_predict_of_a_non_image_is_one_error_line(trained, tmp_path):
    fake = tmp_path / "digit.png"
    fake.write_text("this is text, not a PNG\n")
    result = invoke("predict", str(trained[0]), str(fake))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {fake}: not an image (expected a PNG or JPEG file)"]
    assert result.stdout == ""


def test_the_model_folder_states_its_contract_and_its_example_runs(trained, monkeypatch):
    model_dir = trained[0] / "model"
    contract = (model_dir / CONTRACT_FILE).read_text()
    assert "`torch.float32`" in contract and "`N x 1 x 28 x 28`" in contract and "`N x 10`" in contract
    assert "0-255, a light digit on a dark background" in contract and "project/serving/predict.py" in contract
    (example,) = re.findall(r"```python\n(.*?)```", contract, flags=re.S)
    assert "torch.jit.load" in example and TORCHSCRIPT_FILE in example
    monkeypatch.chdir(model_dir)
    scope = {"pixels": torch.from_numpy(trained[1][:5].astype(np.float32))[:, None]}
    exec(example, scope)
    assert scope["probs"].shape == (5, 10)
    assert torch.allclose(scope["probs"].sum(1), torch.ones(5), atol=1e-5)
    assert (scope["probs"].argmax(1).numpy() == trained[2][:5]).mean() >= 0.8
