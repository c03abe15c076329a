"""Remote data sources: the training storey reads s3:// through fetch.Source, which the AWS storey
registers (project/aws/source.py) in the processes that read S3, never in the training process."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from project.aws.session import aws_clients
from project.training import fetch
from project.training.raw import DataError
from tests.cli import invoke, one_error_line
from tests.synthetic import tiny_overrides

ROOT = Path(__file__).resolve().parent.parent


def folder_source(folder: Path) -> fetch.Source:
    """A Source over a plain folder: the whole interface a platform implements, nothing of AWS."""

    def download(client: Path, uri: str, out) -> None:
        out.write((client / uri.rsplit("/", 1)[1]).read_bytes())

    def mirror(client: Path, uri: str, dest: Path, echo) -> list[str]:
        raise AssertionError("a dataset with files is fetched, not mirrored")

    return fetch.Source(
        connect=lambda endpoint_url: folder,
        download=download,
        mirror=mirror,
        failures=lambda: (),
        setup_problem=lambda exc: None,
    )


def test_a_registered_source_serves_a_channel_verified(tiny_data, tmp_path, monkeypatch):
    folder, files = tiny_data
    monkeypatch.setitem(fetch.SOURCES, "mem", folder_source(folder))
    paths = fetch.fetch_raw("mem://tiny", tmp_path / "cache", files)
    assert sorted(paths) == sorted(files) and all(path.parent == tmp_path / "cache" for path in paths.values())
    (folder / f"{next(iter(files))}.gz").rename(tmp_path / "gone.gz")  # a missing object: one line, both names
    try:
        with pytest.raises(DataError, match=r"cannot fetch \S+ from mem://tiny \(\S+\.gz: .*No such file"):
            fetch.fetch_raw("mem://tiny", tmp_path / "other", files)
    finally:
        (tmp_path / "gone.gz").rename(folder / f"{next(iter(files))}.gz")


def test_the_training_process_reads_no_s3(tiny_data, tmp_path):
    """`python -m project.training.train` (the job's and the child's code) imports nothing of aws/: an
    s3:// channel it would have to fetch itself is one line, and nothing of aws/ was loaded."""
    folder, files = tiny_data
    overrides = tiny_overrides(folder, files, tmp_path / "runs", **{"dataset.channels.train": "s3://no-bucket/tiny"})
    probe = (
        "import sys, runpy\n"
        "try:\n"
        "    runpy.run_module('project.training.train', run_name='__main__')\n"
        "finally:\n"
        "    print('aws loaded:', sorted(m for m in sys.modules if m.startswith('project.aws')), file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        "error: s3://no-bucket/tiny: this process reads folders and http(s) only, not s3://: train with "
        "`invoke local`, which fetches it first, or point the channel at a folder holding the data"
    ) in result.stderr
    assert "aws loaded: []" in result.stderr


def test_invoke_local_trains_from_an_s3_channel(moto_endpoint, tiny_data, tmp_path):
    """The user's path: the check fetches the s3:// channel (aws/ registered it in that process) and
    hands the training process the verified folder."""
    folder, files = tiny_data
    s3 = aws_clients("us-east-1", moto_endpoint).s3
    bucket = f"src-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    for path in folder.iterdir():
        s3.upload_file(str(path), bucket, f"tiny/{path.name}")
    channel = {"dataset.channels.train": f"s3://{bucket}/tiny", "trainer.max_epochs": 1}
    result = invoke("local", *tiny_overrides(folder, files, tmp_path / "runs", **channel))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "test_acc=" in result.stdout
    assert sorted(p.name for p in (tmp_path / "cache" / "mnist").glob("*.gz")) == sorted(f"{s}.gz" for s in files)
    empty = {**channel, "dataset.channels.train": f"s3://{bucket}/nothing"}  # a wrong prefix: one line
    line = one_error_line(invoke("local", *tiny_overrides(folder, files, tmp_path / "other" / "runs", **empty)))
    assert line.startswith("error: cannot fetch ") and f"from s3://{bucket}/nothing" in line, line
    assert not (tmp_path / "other" / "runs").exists()
