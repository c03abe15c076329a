import gzip
import http.server
import json
import socket
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from project.training import raw
from project.training.data import (
    DataError,
    EvalBatches,
    IndexBatches,
    fetch_raw,
    load_verified,
    parse_idx,
    read_bytes,
    split_indices,
)
from project.training.fetch import fetch_verified
from project.training.raw import VERIFIED_DIR, Contents, file_sha256
from project.training.resolve import Resolved
from tests.synthetic import idx_bytes, write_dataset


def test_parse_idx_reads_images_and_labels():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(parse_idx(idx_bytes(images)), images)
    labels = np.array([7, 1, 9], dtype=np.uint8)
    assert np.array_equal(parse_idx(idx_bytes(labels)), labels)


def test_parse_idx_big_endian_int32():
    content = (
        bytes([0, 0, 0x0C, 1]) + (2).to_bytes(4, "big") + (1).to_bytes(4, "big") + (-2).to_bytes(4, "big", signed=True)
    )
    assert parse_idx(content).tolist() == [1, -2]


@pytest.mark.parametrize(
    "content,message",
    [
        (b"\x01\x02\x08\x01\x00\x00\x00\x01x", "bad magic"),
        (bytes([0, 0, 8, 3, 0, 0]), "header truncated"),
        (idx_bytes(np.zeros((2, 2), np.uint8))[:-1], "IDX body has 3 bytes, header promises 4"),
    ],
)
def test_parse_idx_rejects_garbage(content, message):
    with pytest.raises(DataError, match=message):
        parse_idx(content)


def test_gzip_detected_by_content_not_name(tmp_path):
    raw = idx_bytes(np.ones((3,), np.uint8))
    (tmp_path / "plain.gz").write_bytes(raw)
    (tmp_path / "zipped").write_bytes(gzip.compress(raw))
    assert read_bytes(tmp_path / "plain.gz") == raw == read_bytes(tmp_path / "zipped")


def test_truncated_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.ones((500,), np.uint8)))[:-10])
    with pytest.raises(DataError, match="gzip stream check failed: the file is truncated"):
        read_bytes(path)


def test_checksum_mismatch_is_refused(tmp_path):
    files = write_dataset(tmp_path, n_train=20, n_test=10)
    stem = "train-labels-idx1-ubyte"
    load_verified(tmp_path / f"{stem}.gz", files[stem])
    with pytest.raises(DataError, match="SHA256 check failed"):
        load_verified(tmp_path / f"{stem}.gz", "0" * 64)


def test_reading_a_verified_file_checks_the_bytes_it_reads(tmp_path, monkeypatch):
    """After a file was verified, reading it hashes only its stored bytes (no second
    decompression to check it); a file replaced in between is still refused (its bytes are not
    the ones verified)."""
    files = write_dataset(tmp_path, n_train=20, n_test=10)
    stem = "train-labels-idx1-ubyte"
    verified = fetch_verified(str(tmp_path), tmp_path / "cache", files, remember=False)[stem]
    spy = _Decompressions(monkeypatch)
    assert parse_idx(raw.read(verified)).shape == (20,)
    assert spy.count == 1  # to read it, not to check it
    verified.path.write_bytes(gzip.compress(idx_bytes(np.zeros((20,), np.uint8))))
    with pytest.raises(DataError, match="SHA256 check failed"):
        raw.read(verified)


def test_fetch_from_local_dir_uses_files_in_place(tmp_path):
    src = tmp_path / "src"
    files = write_dataset(src, n_train=20, n_test=10, gz=False)
    paths = fetch_raw(str(src), tmp_path / "cache", files)
    assert all(path.parent == src for path in paths.values())
    assert not (tmp_path / "cache").exists()


def test_fetch_corrupt_local_source_fails_without_leaving_files(tmp_path):
    src = tmp_path / "src"
    files = write_dataset(src, n_train=20, n_test=10)
    (src / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01garbage"))
    with pytest.raises(DataError, match="SHA256 check failed"):
        fetch_raw(str(src), tmp_path / "cache", files)
    assert not any(p.name.endswith(".part") for p in (tmp_path / "cache").glob("*"))
    assert not (tmp_path / "cache" / "t10k-images-idx3-ubyte.gz").exists()  # checked before it took the name


def test_missing_source_folder_says_it_does_not_exist(tmp_path):
    with pytest.raises(
        DataError, match=r"dataset.channels.train .*/nowhere does not exist: point it at the folder holding"
    ):
        fetch_raw(str(tmp_path / "nowhere"), tmp_path / "cache", {"train-images-idx3-ubyte": "0" * 64})
    assert not (tmp_path / "cache").exists()


def test_a_file_missing_from_the_source_folder_is_named(tmp_path):
    files = write_dataset(tmp_path / "src", n_train=20, n_test=10)
    (tmp_path / "src" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"src has no t10k-labels-idx1-ubyte.gz or t10k-labels-idx1-ubyte"):
        fetch_raw(str(tmp_path / "src"), tmp_path / "cache", files)


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "crc":
        raw[-8] ^= 0xFF  # the trailer's CRC32
    elif how == "size":
        raw[-1] ^= 0x01  # the trailer's length (mod 2**32), high byte
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "how, check",
    [
        ("truncated", "gzip stream check failed: the file is truncated"),
        ("crc", "gzip CRC check failed"),
        ("size", "gzip size check failed"),
    ],
)
def test_a_damaged_source_file_is_named_with_the_check_it_failed(tmp_path, how, check):
    """The user's own file, never a temporary copy of it, and which check failed."""
    files = write_dataset(tmp_path / "src", n_train=20, n_test=10)
    damaged = tmp_path / "src" / "train-images-idx3-ubyte.gz"
    _damage(damaged, how)
    with pytest.raises(DataError) as caught:
        fetch_raw(str(tmp_path / "src"), tmp_path / "cache", files)
    message = str(caught.value)
    assert message.startswith(f"{damaged}: {check}"), message
    assert ".part" not in message and "replace it with a good copy" in message


def test_a_damaged_source_file_with_a_verified_cached_copy_uses_the_copy(tmp_path, capsys):
    files = write_dataset(tmp_path / "src", n_train=20, n_test=10)
    cache = tmp_path / "cache"
    stem = "train-labels-idx1-ubyte"
    cache.mkdir()
    (cache / f"{stem}.gz").write_bytes((tmp_path / "src" / f"{stem}.gz").read_bytes())
    _damage(tmp_path / "src" / f"{stem}.gz", "truncated")
    paths = fetch_raw(str(tmp_path / "src"), cache, files)
    assert paths[stem] == cache / f"{stem}.gz"
    warning = capsys.readouterr().err
    assert f"src/{stem}.gz: gzip stream check failed" in warning and "using the verified copy" in warning


def test_verified_files_are_remembered_by_their_stored_bytes(tmp_path):
    src = tmp_path / "src"
    files = write_dataset(src, n_train=20, n_test=10)
    cache = tmp_path / "cache"
    paths = fetch_raw(str(src), cache, files)
    assert all(path.parent == src for path in paths.values())  # used in place: only the record is in the cache
    records = {p.name: p.read_text() for p in (cache / VERIFIED_DIR).iterdir()}
    assert records == {file_sha256(paths[stem]): digest for stem, digest in files.items()}
    assert fetch_raw(str(src), cache, files) == paths

    # Same size, one byte changed: the record no longer applies and the content check fails.
    stem = "train-labels-idx1-ubyte"
    raw = bytearray((src / f"{stem}.gz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (src / f"{stem}.gz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"{stem}.*(SHA256 check failed|gzip .*check failed)"):
        fetch_raw(str(src), cache, files)


class _Decompressions:
    """Counts decompressions of whole files and streamed reads of gzipped files (a spy: both still run)."""

    def __init__(self, monkeypatch):
        self.count = 0
        for name in ("decompress", "open"):
            real = getattr(gzip, name)

            def counting(*args, _real=real, **kwargs):
                self.count += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(gzip, name, counting)


def test_the_training_process_decompresses_each_file_once_and_reads_the_checks_record(tmp_path, monkeypatch):
    src = tmp_path / "src"
    files = write_dataset(src, n_train=20, n_test=10)
    stem = "train-labels-idx1-ubyte"

    # Nothing recorded (a SageMaker job): verifying and reading decompress the file once, not twice,
    # and the training process writes no record.
    spy = _Decompressions(monkeypatch)
    contents = Contents()
    verified = fetch_verified(str(src), tmp_path / "cache", files, remember=False, contents=contents)
    assert spy.count == len(files)
    assert parse_idx(raw.read(verified[stem], contents)).shape == (20,)
    assert spy.count == len(files)
    assert not (tmp_path / "cache").exists()

    # invoke's check recorded the files: the training process hashes them as stored and decompresses
    # only to read them.
    fetch_raw(str(src), tmp_path / "cache", files)
    spy.count = 0
    contents = Contents()
    verified = fetch_verified(str(src), tmp_path / "cache", files, remember=False, contents=contents)
    assert spy.count == 0
    assert parse_idx(raw.read(verified[stem], contents)).shape == (20,)
    assert spy.count == 1


def test_content_kept_when_verified_is_the_verified_bytes_content(tmp_path):
    """What is read is what was verified: a file rewritten after its bytes were read, hashed and
    decompressed to verify them cannot change what the run trains on; one rewritten before that
    read is checked in full and refused."""
    files = write_dataset(tmp_path, n_train=20, n_test=10)
    stem = "train-labels-idx1-ubyte"
    expected = parse_idx(gzip.decompress((tmp_path / f"{stem}.gz").read_bytes()))
    contents = Contents()
    verified = fetch_verified(str(tmp_path), tmp_path / "cache", files, remember=False, contents=contents)[stem]
    verified.path.write_bytes(gzip.compress(idx_bytes(np.zeros((20,), np.uint8))))
    assert np.array_equal(parse_idx(raw.read(verified, contents)), expected)
    with pytest.raises(DataError, match="SHA256 check failed"):
        raw.read(verified, contents)  # taken once: the next read meets the file as it is now


def test_a_record_for_other_content_does_not_verify(tmp_path):
    src = tmp_path / "src"
    files = write_dataset(src, n_train=20, n_test=10)
    stem = "t10k-labels-idx1-ubyte"
    (src / f"{stem}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01not labels"))
    memo = tmp_path / "cache" / VERIFIED_DIR
    memo.mkdir(parents=True)
    (memo / file_sha256(src / f"{stem}.gz")).write_text("0" * 64)  # says: verified, as other content
    with pytest.raises(DataError, match="SHA256 check failed"):
        fetch_raw(str(src), tmp_path / "cache", files)


def test_data_error_is_a_user_error():
    from project.core.errors import UserError

    assert issubclass(DataError, UserError)


@pytest.fixture
def http_mirror(tmp_path):
    """A real HTTP server on loopback serving a folder, like the public MNIST mirrors."""
    root = tmp_path / "mirror"
    files = write_dataset(root, n_train=30, n_test=10)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", root, files
    server.shutdown()


def test_fetch_over_http_downloads_verifies_and_caches(http_mirror, tmp_path):
    url, root, files = http_mirror
    cache = tmp_path / "cache"
    paths = fetch_raw(url, cache, files)
    assert sorted(p.name for p in cache.iterdir() if p.is_file()) == sorted(f"{stem}.gz" for stem in files)
    for stem, path in paths.items():
        assert path.read_bytes() == (root / f"{stem}.gz").read_bytes()
    for path in root.iterdir():
        path.unlink()  # the mirror is gone: the verified cache is enough
    assert fetch_raw(url, cache, files) == paths


def test_fetch_over_http_missing_file_names_it(http_mirror, tmp_path):
    url, root, files = http_mirror
    (root / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="cannot fetch train-labels-idx1-ubyte from http://127.0.0.1"):
        fetch_raw(url, tmp_path / "cache", files)


def test_a_damaged_download_names_the_remote_file(http_mirror, tmp_path):
    url, root, files = http_mirror
    _damage(root / "t10k-images-idx3-ubyte.gz", "truncated")
    with pytest.raises(DataError) as caught:
        fetch_raw(url, tmp_path / "cache", files)
    assert str(caught.value).startswith(f"{url}/t10k-images-idx3-ubyte.gz: gzip stream check failed"), caught.value
    kept = {p.name for p in (tmp_path / "cache").iterdir() if p.is_file()}
    assert "t10k-images-idx3-ubyte.gz" not in kept and not any(".part" in name for name in kept)  # nothing unverified


def test_no_network_says_how_to_train_from_a_local_copy(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the connection is refused, as with no network
    with pytest.raises(
        DataError, match="no network[?] To train from a local copy, point dataset.channels.train at the folder"
    ):
        fetch_raw(f"http://127.0.0.1:{port}/mnist", tmp_path / "cache", {"train-images-idx3-ubyte": "0" * 64})


def test_split_is_deterministic_and_disjoint():
    train, val = split_indices(100, 10, seed=3)
    again_train, again_val = split_indices(100, 10, seed=3)
    assert np.array_equal(train, again_train) and np.array_equal(val, again_val)
    assert len(val) == 10 and not set(train) & set(val) and len(train) + len(val) == 100
    assert not np.array_equal(split_indices(100, 10, seed=4)[1], val)


def test_train_batches_reshuffle_per_epoch_and_cover_all():
    batches = IndexBatches(10, batch_size=4, shuffle=True, seed=0)
    first = np.concatenate(list(batches))
    batches.set_epoch(1)
    second = np.concatenate(list(batches))
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)
    assert len(batches) == 3


def test_eval_shards_count_every_sample_exactly_once():
    shards = [np.concatenate(list(EvalBatches(11, 3, False, 0, rank, 2))) for rank in range(2)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(11))


def test_train_shards_are_equal_length_across_ranks():
    lengths = {len(np.concatenate(list(IndexBatches(11, 3, True, 0, rank, 2)))) for rank in range(2)}
    assert lengths == {6}


def test_batches_on_a_device_are_slices_of_one_order_copied_per_epoch():
    """With the data resident on a device, batches are device tensors with the same indices
    (CPU stands in for the GPU here; the dtype and values are what a CUDA run slices with)."""
    import torch

    from project.training.data import TensorSplit

    host = IndexBatches(10, batch_size=4, shuffle=True, seed=0)
    resident = IndexBatches(10, batch_size=4, shuffle=True, seed=0)
    resident.device = torch.device("cpu")
    for epoch in (0, 1):
        host.set_epoch(epoch), resident.set_epoch(epoch)
        on_device = list(resident)
        assert all(isinstance(b, torch.Tensor) and b.dtype == torch.int64 for b in on_device)
        assert [b.tolist() for b in on_device] == [b.tolist() for b in host]
    split = TensorSplit(torch.arange(20.0).reshape(10, 2), torch.arange(10) * 10)
    images, labels = split[on_device[0]]
    assert labels.tolist() == [i * 10 for i in on_device[0].tolist()] and images.shape == (len(on_device[0]), 2)


def test_labels_outside_num_classes_are_one_clear_error(tmp_path):
    import torch  # noqa: F401 (project.training.data needs it)

    from project.training.data import IdxDataModule

    files = write_dataset(tmp_path / "raw")
    labels = parse_idx(gzip.decompress((tmp_path / "raw" / "train-labels-idx1-ubyte.gz").read_bytes()))
    module = IdxDataModule(
        str(tmp_path / "raw"), files, str(tmp_path / "cache"), val_size=50, num_classes=int(labels.max())
    )
    with pytest.raises(
        DataError,
        match=rf"train labels run from 0 to {labels.max()}, outside 0..{labels.max() - 1}: set dataset.num_classes",
    ):
        module.setup("fit")
    IdxDataModule(str(tmp_path / "raw"), files, str(tmp_path / "cache"), val_size=50, num_classes=10).setup("fit")


def _handed_over(src: Path, tmp_path: Path, files: dict[str, str], remember: bool = True) -> Resolved:
    """The data as `invoke local`'s check resolves it, after the trip through the go word: what its
    training child holds (no content kept: a fresh process)."""
    checked = Resolved({"train": src}, fetch_verified(str(src), tmp_path / "cache", files, remember=remember))
    return Resolved.from_json(json.loads(json.dumps(checked.to_json())))


def test_warmed_content_is_only_that_of_the_bytes_the_check_verified(tmp_path, monkeypatch):
    src = tmp_path / "src"
    files = write_dataset(src, n_train=20, n_test=10)
    stem, other = "train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"
    data = _handed_over(src, tmp_path, files)
    (src / f"{other}.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((10,), np.uint8))))  # changed since the check
    spy = _Decompressions(monkeypatch)
    data.warm()
    assert parse_idx(data.read(stem)).shape == (20,)
    assert spy.count == len(files) - 1  # each verified file decompressed once, by the warm thread
    spy.count = 0
    assert parse_idx(data.read("t10k-images-idx3-ubyte")).shape[0] == 10 and spy.count == 0  # taken, not again

    # Bytes changed between the check and the read: not warmed, and checked in full when read.
    with pytest.raises(DataError, match="SHA256 check failed"):
        data.read(other)


def test_a_damaged_file_warmed_is_left_to_the_read_that_names_it(tmp_path):
    src = tmp_path / "src"
    files = write_dataset(src, n_train=20, n_test=10)
    stem = "train-images-idx3-ubyte"
    data = _handed_over(src, tmp_path, files)
    (src / f"{stem}.gz").write_bytes((src / f"{stem}.gz").read_bytes()[:-20])  # truncated since the check
    data.warm()
    with pytest.raises(DataError, match="truncated"):
        data.read(stem)


def test_the_datamodule_reads_what_it_was_handed_without_verifying_again(tmp_path, monkeypatch):
    """IdxDataModule given the run's Resolved (what project.training.modules injects) verifies nothing again:
    its setup reads each file through it, hashing the stored bytes only, and decompresses each once."""
    from project.training.data import IdxDataModule

    src = tmp_path / "src"
    files = write_dataset(src, n_train=60, n_test=10)
    data = _handed_over(src, tmp_path, files, remember=False)  # no record: verifying again would decompress
    spy = _Decompressions(monkeypatch)
    # Digests it could not verify against: only the stems count once the files are handed over verified.
    unverifiable = dict.fromkeys(files, "0" * 64)
    module = IdxDataModule(str(src), unverifiable, val_size=12, resolved=data)
    module.prepare_data()
    module.setup(None)
    assert spy.count == len(files)  # each file once, to read it
    assert len(module.splits["train"]) == 48 and len(module.splits["test"]) == 10


def test_splits_are_the_normalized_pixels_of_their_indices(tmp_path):
    import torch

    from project.training.data import IdxDataModule

    files = write_dataset(tmp_path / "raw", n_train=60, n_test=10)
    module = IdxDataModule(str(tmp_path / "raw"), files, str(tmp_path / "cache"), val_size=12, mean=0.2, std=0.4)
    module.setup(None)
    train_idx, val_idx = split_indices(60, 12, module.seed)
    pixels = parse_idx(gzip.decompress((tmp_path / "raw" / "train-images-idx3-ubyte.gz").read_bytes()))
    for split, idx in (("train", train_idx), ("val", val_idx)):
        expected = torch.from_numpy((pixels[idx].astype(np.float32) / 255.0 - 0.2) / 0.4).unsqueeze(1)
        images = module.splits[split].images
        assert images.dtype == torch.float32 and images.shape == (len(idx), 1, 28, 28)
        assert torch.allclose(images, expected, atol=1e-6)
    assert module.splits["test"].images.shape == (10, 1, 28, 28)
