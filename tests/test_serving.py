"""The serving contract: model.tar.gz's code/inference.py, in-process and over HTTP as the image serves it.

A tiny run is trained once for the module; its model folder is packed as `invoke deploy` packs
it, unpacked, and its handler imported from code/ (as the inference image does). The same images
go through `invoke predict`'s code and through the handler: same answers.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from project.core import config as C
from project.sandbox.model_server import Handler, make_server
from project.serving import archive as serving
from project.serving.predict import predict
from project.training.artifacts import TORCHSCRIPT_FILE
from project.training.train import run_composed
from tests.photos import blank_paper, digit_photo
from tests.synthetic import make_glyphs, tiny_overrides, write_dataset

ROOT = Path(__file__).resolve().parent.parent
DIGITS = sorted((ROOT / "examples" / "digits").glob("*.png"))
pytestmark = pytest.mark.xdist_group("serving-run")  # one worker: the module's run is trained once


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("serving")
    files = write_dataset(base / "data", n_train=600, n_test=100, make=make_glyphs)
    overrides = tiny_overrides(base / "data", files, base / "runs", **{"trainer.max_epochs": 1, "run_name": "tiny"})
    run_composed(C.compose(overrides))
    return base / "runs" / "tiny"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    glyphs, _ = make_glyphs(3, seed=5)
    paths = []
    for i, glyph in enumerate(glyphs):
        path = folder / f"photo{i}.jpg"
        digit_photo(glyph, rng).save(path, quality=90)
        paths.append(path)
    blank = folder / "blank.png"
    blank_paper(rng).save(blank)
    return [*paths, blank, *DIGITS]


@pytest.fixture(scope="module")
def model_dir(run_dir, tmp_path_factory) -> Path:
    """model.tar.gz packed from the run folder, unpacked as SageMaker unpacks it into /opt/ml/model."""
    work = tmp_path_factory.mktemp("artifact")
    cfg = C.load_resolved(run_dir / "model" / C.RESOLVED_CONFIG_NAME)
    archive = serving.pack_model(run_dir / "model", cfg, work / serving.MODEL_ARCHIVE)
    with tarfile.open(archive) as tar:
        assert serving.archive_problem(tar.getnames()) is None
        tar.extractall(work / "model", filter="data")
    return work / "model"


@pytest.fixture(scope="module")
def handler(model_dir):
    """code/inference.py imported from the unpacked artifact, with its model loaded."""
    loaded = Handler(model_dir)
    yield loaded
    sys.path.remove(str(model_dir / "code"))
    for name in ("inference", "preprocess"):
        sys.modules.pop(name, None)


def call(handler, body: bytes, content_type: str, accept: str = "application/json") -> dict:
    return json.loads(handler(body, content_type, accept))


def test_training_writes_the_serving_code_into_the_model_folder(run_dir):
    code = run_dir / "model" / serving.CODE_DIR
    assert {p.name for p in code.iterdir()} == {*serving.SHIPPED, serving.SERVING_FILE}
    assert (code / serving.HANDLER).read_bytes() == (ROOT / "project" / "serving" / "inference.py").read_bytes()
    facts = json.loads((code / serving.SERVING_FILE).read_text())
    assert facts == {"classifier": True, "input_shape": [1, 28, 28], "top_k": 3}
    assert serving.exported_by(run_dir / "model" / serving.TORCHSCRIPT_FILE) == torch.__version__


def test_model_ts_records_the_pytorch_that_saved_it(model_dir, tmp_path):
    """model.ts carries its PyTorch version into the archive; a file saved without it, or no zip, says None."""
    assert serving.exported_by(model_dir / serving.TORCHSCRIPT_FILE) == torch.__version__
    torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)).save(str(tmp_path / "plain.ts"))
    assert serving.exported_by(tmp_path / "plain.ts") is None
    (tmp_path / "text.ts").write_text("not a zip")
    assert serving.exported_by(tmp_path / "text.ts") is None


def test_the_handler_imports_nothing_of_this_project(model_dir):
    """In a bare interpreter (no project on sys.path, -I), code/ alone loads the model and answers."""
    script = (
        "import sys, json; sys.path.insert(0, 'code'); import inference as h\n"
        "assert not [m for m in sys.modules if m == 'project' or m.startswith('project.')]\n"
        "m = h.model_fn('.'); body = open(sys.argv[1], 'rb').read()\n"
        "print(h.output_fn(h.predict_fn(h.input_fn(body, 'image/png'), m), 'application/json'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, str(DIGITS[0])], cwd=model_dir, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["predictions"][0]["class"] in range(10)


def test_images_get_the_same_answers_as_invoke_predict(handler, run_dir, photos):
    local = predict(run_dir, photos)
    for path, expected in zip(photos, local, strict=True):
        kind = "image/jpeg" if path.suffix == ".jpg" else "image/png"
        (answer,) = call(handler, path.read_bytes(), kind)["predictions"]
        if expected.ranked:
            assert answer["class"] == expected.label
            assert [(a["class"], round(a["probability"], 5)) for a in answer["top_k"][:2]] == [
                (c, round(p, 5)) for c, p in expected.ranked
            ]
        else:
            assert answer == {"class": None, "probability": None, "top_k": [], "problem": expected.problem}
    assert any(not p.ranked for p in local) and any(p.ranked for p in local)  # both kinds were compared


def test_arrays_as_npy_and_json_match_the_model_itself(handler, model_dir):
    images, _ = make_glyphs(5, seed=9)
    pixels = images.astype(np.float32)
    model = torch.jit.load(str(model_dir / TORCHSCRIPT_FILE))
    with torch.no_grad():
        expected = model(torch.from_numpy(pixels)[:, None])
    buffer = io.BytesIO()
    np.save(buffer, pixels[:, None])  # N x 1 x 28 x 28
    as_npy = call(handler, buffer.getvalue(), "application/x-npy")["predictions"]
    as_json = call(handler, json.dumps(pixels.tolist()).encode(), "application/json")["predictions"]  # N x 28 x 28
    one = call(handler, json.dumps({"instances": pixels[0].tolist()}).encode(), "application/json; charset=utf-8")
    assert [a["class"] for a in as_npy] == [a["class"] for a in as_json] == expected.argmax(1).tolist()
    assert [a["probability"] for a in as_npy] == pytest.approx(expected.max(1).values.tolist(), abs=1e-5)
    assert one["predictions"][0]["class"] == as_json[0]["class"]


@pytest.mark.parametrize(
    ("body", "content_type", "accept", "status", "reason"),
    [
        (b"", "image/png", "application/json", 400, "empty request body"),
        (b"not a png", "image/png", "application/json", 400, "not an image"),
        (b"[[1, 2], [3]]", "application/json", "application/json", 400, "cannot read the application/json body"),
        (b"{", "application/json", "application/json", 400, "cannot read the application/json body"),
        (
            json.dumps([[0.0] * 27] * 27).encode(),
            "application/json",
            "application/json",
            400,
            "this model takes 1 x 28",
        ),
        (b"[NaN]", "application/json", "application/json", 400, "NaN"),
        (b"\x93NUMPY garbage", "application/x-npy", "application/json", 400, "cannot read the application/x-npy"),
        (b"a,b", "text/csv", "application/json", 415, "content type 'text/csv' is not served"),
        (json.dumps([[0.0] * 28] * 28).encode(), "application/json", "text/csv", 406, "answers application/json"),
    ],
)
def test_bad_payloads_are_a_4xx_with_one_line(handler, body, content_type, accept, status, reason):
    from project.sandbox.model_server import answer

    code, kind, text = answer(handler, body, content_type, accept)
    assert (code, kind) == (status, "text/plain"), text
    assert reason in text and "\n" not in text and "Traceback" not in text


def test_a_model_that_is_not_a_classifier_gets_its_raw_outputs(run_dir, tmp_path):
    cfg = C.load_resolved(run_dir / "model" / C.RESOLVED_CONFIG_NAME)
    from omegaconf import open_dict

    with open_dict(cfg.model):
        cfg.model["_target_"] = "mymodels.csv_regression.MLPRegressor"  # a LightningModule, not model.net
    assert not C.is_classifier(cfg)
    archive = serving.pack_model(run_dir / "model", cfg, tmp_path / serving.MODEL_ARCHIVE)
    script = (
        "import sys, json; sys.path.insert(0, 'code'); import inference as h\n"
        "m = h.model_fn('.'); out = json.loads(h.output_fn(h.predict_fn(h.input_fn(sys.argv[1], "
        "'application/json'), m), '*/*'))\n"
        "print(len(out['outputs']), len(out['outputs'][0]))\n"
        "try: h.input_fn(b'png', 'image/png')\nexcept h.PayloadError as e: print(e.status_code)\n"
    )
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "model", filter="data")
    pixels = json.dumps([[[0.0] * 28] * 28] * 2)
    result = subprocess.run(
        [sys.executable, "-I", "-c", script, pixels],
        cwd=tmp_path / "model",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split() == ["2", "10", "415"], result.stderr[-2000:]


def test_the_contract_over_http(handler):
    """GET /ping and POST /invocations as the inference image serves them, over a real socket."""
    import threading

    server = make_server(handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=10) as ping:
            assert ping.status == 200
        image = DIGITS[0].read_bytes()
        request = urllib.request.Request(f"{url}/invocations", image, {"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.headers["Content-Type"] == "application/json"
            assert json.loads(response.read()) == call(handler, image, "image/png")
        bad = urllib.request.Request(f"{url}/invocations", b"nope", {"Content-Type": "image/png"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bad, timeout=30)
        assert refused.value.code == 400 and "not an image" in refused.value.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_archive_problems_name_what_is_missing():
    assert "no model.ts" in serving.archive_problem(["model.pt", "config.yaml"])
    assert "no code/inference.py" in serving.archive_problem(["model.ts", "model.pt"])
    assert serving.archive_problem(["./model.ts", "./code/inference.py"]) is None


def test_images_are_read_as_pillow_reads_them(handler, tmp_path):
    """A PNG with transparency reads as white paper, as invoke predict reads it: same answer."""
    rgba = Image.new("RGBA", (60, 60), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (25, 10, 33, 50))  # a dark bar: a 1
    path = tmp_path / "one.png"
    rgba.save(path)
    rgb = Image.new("RGB", (60, 60), "white")
    rgb.paste((0, 0, 0), (25, 10, 33, 50))
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG")
    assert call(handler, path.read_bytes(), "image/png") == call(handler, buffer.getvalue(), "image/png")
