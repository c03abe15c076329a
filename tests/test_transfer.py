"""S3 transfers and AWS sessions against moto over real HTTP: nothing is mocked."""

from __future__ import annotations

import gzip
import io
import tarfile
import uuid
from pathlib import Path

import pytest

from project.aws import fetch, transfer, upload
from project.aws.errors import AwsError, aws_errors, explain
from project.aws.session import aws_clients, resolve_endpoint
from project.aws.transfer import TransferError
from project.aws.upload import SKIP, UPLOAD
from project.training.raw import file_sha256
from tests.synthetic import write_dataset


@pytest.fixture(scope="module")
def s3(moto_endpoint):
    return aws_clients("us-east-1", moto_endpoint).s3


@pytest.fixture
def bucket(s3):
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "raw"
    return folder, write_dataset(folder, n_train=50, n_test=20)


def paths_in(folder: Path, files) -> dict[str, Path]:
    """stem -> file, as fetch_raw returns them for a folder of .gz files."""
    return {stem: folder / f"{stem}.gz" for stem in files}


def keys(s3, bucket, prefix=""):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


# --- upload -------------------------------------------------------------------------------------


def test_upload_sends_new_files_with_their_checksum_then_skips_them(s3, bucket, dataset):
    folder, files = dataset
    items = upload.plan_upload(paths_in(folder, files), bucket, "datasets/tiny/", s3)
    assert [i.action for i in items] == [UPLOAD] * 4
    assert {i.key for i in items} == {f"datasets/tiny/{stem}.gz" for stem in files}

    lines = []
    summary = upload.upload(items, s3, progress=False, echo=lines.append)
    assert len(summary.uploaded) == 4 and not summary.skipped and not summary.dry_run
    assert sum(" -> s3://" in line for line in lines) == 4  # one line per file, no TTY
    assert lines[-1].startswith("uploaded 4 file(s)")
    for item in items:
        head = s3.head_object(Bucket=bucket, Key=item.key)
        assert head["Metadata"]["sha256"] == file_sha256(item.path) == item.sha256

    again = upload.plan_upload(paths_in(folder, files), bucket, "datasets/tiny", s3)
    assert [i.action for i in again] == [SKIP] * 4
    assert upload.upload(again, s3, progress=False, echo=lambda _: None).uploaded == []


def test_changed_file_is_uploaded_again(s3, bucket, dataset):
    folder, files = dataset
    upload.upload(upload.plan_upload(paths_in(folder, files), bucket, "d", s3), s3, progress=False, echo=lambda _: None)
    changed = folder / "t10k-labels-idx1-ubyte.gz"
    changed.write_bytes(gzip.compress(b"different labels"))

    items = {i.path.name: i for i in upload.plan_upload(paths_in(folder, files), bucket, "d", s3)}
    assert items[changed.name].action == UPLOAD
    assert items[changed.name].remote_sha256 not in (None, items[changed.name].sha256)
    assert sum(i.action == SKIP for i in items.values()) == 3
    upload.upload(list(items.values()), s3, progress=False, echo=lambda _: None)
    body = s3.get_object(Bucket=bucket, Key=f"d/{changed.name}")["Body"].read()
    assert gzip.decompress(body) == b"different labels"


def test_dry_run_moves_nothing(s3, bucket, dataset):
    folder, files = dataset
    lines = []
    summary = upload.upload(
        upload.plan_upload(paths_in(folder, files), bucket, "d", s3), s3, dry_run=True, echo=lines.append
    )
    assert summary.dry_run and len(summary.uploaded) == 4
    assert keys(s3, bucket) == []
    assert sum(line.startswith("would upload ") for line in lines) == 4
    assert "nothing moved" in lines[-1]


def test_large_file_goes_multipart_and_keeps_its_checksum(s3, bucket, tmp_path):
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * (9 * 4096))  # 9 MiB: above the 8 MiB multipart threshold
    items = upload.plan_upload({"big": big}, bucket, "", s3)
    upload.upload(items, s3, progress=False, echo=lambda _: None)
    assert s3.head_object(Bucket=bucket, Key="big")["Metadata"]["sha256"] == file_sha256(big)
    assert upload.plan_upload({"big": big}, bucket, "", s3)[0].action == SKIP


def test_missing_file_is_one_line_naming_file_and_folder(s3, bucket, dataset):
    folder, files = dataset
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(TransferError) as error:
        upload.plan_upload(paths_in(folder, files), bucket, "d", s3)
    message = str(error.value)
    assert "train-labels-idx1-ubyte" in message and str(folder) in message and "\n" not in message


def test_missing_bucket_says_to_apply_terraform(s3, dataset):
    folder, files = dataset
    with pytest.raises(TransferError, match="does not exist: run `terraform apply`"):
        upload.plan_upload(paths_in(folder, files), f"absent-{uuid.uuid4().hex[:8]}", "d", s3)


# --- fetch --------------------------------------------------------------------------------------


def tar_gz(members: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def job_artifacts(s3, bucket):
    """A finished job's S3 layout: output/model.tar.gz, output/output.tar.gz and checkpoints."""
    base = "jobs/job-1/output"
    s3.put_object(
        Bucket=bucket, Key=f"{base}/model.tar.gz", Body=tar_gz({"model.pt": b"weights", "config.yaml": b"a: 1\n"})
    )
    s3.put_object(
        Bucket=bucket,
        Key=f"{base}/output.tar.gz",
        Body=tar_gz({"metrics.json": b'{"test_acc": 0.5}', "tb/events": b"e"}),
    )
    s3.put_object(Bucket=bucket, Key="ckpt/run/last.ckpt", Body=b"ckpt")
    s3.put_object(Bucket=bucket, Key="ckpt/run/sub/step-1.ckpt", Body=b"ckpt1")
    s3.put_object(Bucket=bucket, Key="ckpt/run-other/not-mine.ckpt", Body=b"x")  # a sibling prefix
    uri = f"s3://{bucket}/{base}"
    return f"{uri}/model.tar.gz", f"{uri}/output.tar.gz", f"s3://{bucket}/ckpt/run"


def leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_fetch_recreates_the_local_run_layout(s3, job_artifacts, tmp_path):
    dest = tmp_path / "runs" / "job-1"
    lines = []
    assert fetch.fetch_job(s3, *job_artifacts, dest, progress=False, echo=lines.append) == dest
    assert (dest / "model" / "model.pt").read_bytes() == b"weights"
    assert (dest / "output" / "tb" / "events").read_bytes() == b"e"
    assert (dest / "metrics.json").read_text() == (dest / "output" / "metrics.json").read_text()
    assert sorted(p.relative_to(dest / "checkpoints").as_posix() for p in (dest / "checkpoints").rglob("*.ckpt")) == [
        "last.ckpt",
        "sub/step-1.ckpt",
    ]
    assert leftovers(dest.parent) == []
    assert lines[-1] == f"unpacked into {dest}/"


def test_fetch_downloads_small_files_in_one_get_and_large_ones_in_ranged_parts(s3, bucket, job_artifacts, tmp_path):
    """Both paths give the exact bytes: a 9 MiB checkpoint goes through ranged GETs, the rest whole."""
    import os

    model_uri, output_uri, _ = job_artifacts
    big = os.urandom(transfer.MULTIPART_THRESHOLD + transfer.MIB)
    s3.put_object(Bucket=bucket, Key="ckpt/big/last.ckpt", Body=big)
    s3.put_object(Bucket=bucket, Key="ckpt/big/small.ckpt", Body=b"small")
    dest = tmp_path / "job-1"
    fetch.fetch_job(s3, model_uri, output_uri, f"s3://{bucket}/ckpt/big", dest, progress=False, echo=lambda _: None)
    assert (dest / "checkpoints" / "last.ckpt").read_bytes() == big
    assert (dest / "checkpoints" / "small.ckpt").read_bytes() == b"small"
    assert (dest / "model" / "model.pt").read_bytes() == b"weights"


def test_fetch_replaces_an_existing_run_and_tolerates_no_output(s3, job_artifacts, tmp_path):
    model_uri, _, _ = job_artifacts
    dest = tmp_path / "job-1"
    (dest / "model").mkdir(parents=True)
    (dest / "stale.txt").write_text("old")
    fetch.fetch_job(
        s3,
        model_uri,
        model_uri.replace("model.tar.gz", "absent.tar.gz"),
        None,
        dest,
        progress=False,
        echo=lambda _: None,
    )
    assert not (dest / "stale.txt").exists()
    assert (dest / "model" / "config.yaml").read_text() == "a: 1\n"
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoints", "model", "output"]
    assert leftovers(tmp_path) == []


def test_corrupt_tarball_is_refused_and_dest_left_alone(s3, bucket, job_artifacts, tmp_path):
    model_uri, output_uri, checkpoint_uri = job_artifacts
    good = s3.get_object(Bucket=bucket, Key="jobs/job-1/output/output.tar.gz")["Body"].read()
    s3.put_object(Bucket=bucket, Key="jobs/job-1/output/output.tar.gz", Body=good[: len(good) // 2])  # truncated
    dest = tmp_path / "job-1"
    dest.mkdir()
    (dest / "keep.txt").write_text("previous fetch")
    with pytest.raises(TransferError, match="not a valid tar archive"):
        fetch.fetch_job(s3, model_uri, output_uri, checkpoint_uri, dest, progress=False, echo=lambda _: None)
    assert sorted(p.name for p in dest.iterdir()) == ["keep.txt"]
    assert leftovers(tmp_path) == []


def _with_bad_crc(gz: bytes) -> bytes:
    """The same gzip stream with its CRC32 trailer changed: every deflate block still decodes."""
    crc = int.from_bytes(gz[-8:-4], "little") ^ 1
    return gz[:-8] + crc.to_bytes(4, "little") + gz[-4:]


@pytest.mark.parametrize(
    "damage",
    [
        lambda gz: gz[: len(gz) // 2],
        _with_bad_crc,
        lambda gz: gz[:-4] + (int.from_bytes(gz[-4:], "little") + 1).to_bytes(4, "little"),
    ],
    ids=["truncated", "crc", "length"],
)
def test_a_damaged_gzip_stream_is_refused_though_its_tar_reads(s3, bucket, tmp_path, damage):
    """The tar members come out whole in each case; only the gzip trailer (or the missing end) tells."""
    good = tar_gz({"model.pt": b"weights" * 1000, "config.yaml": b"a: 1\n"})
    s3.put_object(Bucket=bucket, Key="bad/model.tar.gz", Body=damage(good))
    dest = tmp_path / "runs" / "bad"
    with pytest.raises(TransferError, match="not a valid tar archive .*truncated or corrupt"):
        fetch.fetch_job(s3, f"s3://{bucket}/bad/model.tar.gz", None, None, dest, progress=False, echo=lambda _: None)
    assert not dest.exists() and leftovers(dest.parent) == []


def test_a_link_out_of_the_folder_is_refused(s3, bucket, tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(tarfile.TarInfo("ok.txt"), io.BytesIO(b""))
        link = tarfile.TarInfo("model/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    s3.put_object(Bucket=bucket, Key="evil/model.tar.gz", Body=buffer.getvalue())
    dest = tmp_path / "runs" / "evil"
    with pytest.raises(TransferError, match="refusing s3://.*/evil/model.tar.gz: .*passwd"):
        fetch.fetch_job(s3, f"s3://{bucket}/evil/model.tar.gz", None, None, dest, progress=False, echo=lambda _: None)
    assert not dest.exists() and leftovers(dest.parent) == []


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/absolute-escape.txt", "model/../../escaped.txt"])
def test_member_outside_the_folder_is_refused(s3, bucket, tmp_path, member):
    s3.put_object(Bucket=bucket, Key="evil/model.tar.gz", Body=tar_gz({"ok.txt": b"ok", member: b"pwned"}))
    dest = tmp_path / "runs" / "evil"
    with pytest.raises(TransferError, match="outside the folder"):
        fetch.fetch_job(s3, f"s3://{bucket}/evil/model.tar.gz", None, None, dest, progress=False, echo=lambda _: None)
    assert (
        not dest.exists()
        and not (tmp_path / "escaped.txt").exists()
        and not (tmp_path / "runs" / "escaped.txt").exists()
    )
    assert leftovers(dest.parent) == []


def test_missing_model_artifacts_is_one_line(s3, bucket, tmp_path):
    with pytest.raises(TransferError, match="does not exist: the job has no model artifacts"):
        fetch.fetch_job(s3, f"s3://{bucket}/nope/model.tar.gz", None, None, tmp_path / "x", progress=False)


# --- session ------------------------------------------------------------------------------------


def test_endpoint_explicit_beats_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-env:1")
    assert resolve_endpoint("http://explicit:2") == "http://explicit:2"
    assert resolve_endpoint(None) == "http://from-env:1"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert resolve_endpoint(None) is None


def test_localstack_names_the_edge_endpoint_through_localstack_client():
    assert resolve_endpoint("localstack", {}) == "http://localhost:4566"
    environ = {"AWS_ENDPOINT_URL": "localstack", "LOCALSTACK_HOST": "127.0.0.1:4599"}
    assert resolve_endpoint(None, environ) == "http://127.0.0.1:4599"


def test_explicit_endpoint_reaches_clients_the_sdk_makes_from_the_session(moto_endpoint, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    clients = aws_clients("us-east-1", moto_endpoint)
    assert clients.s3 is clients.s3  # made once
    assert clients.session.client("sagemaker").meta.endpoint_url == moto_endpoint  # as the SageMaker SDK does
    assert clients.session.resource("s3").meta.client.meta.endpoint_url == moto_endpoint
    assert isinstance(list_buckets(clients), list)  # a real call through the endpoint


def list_buckets(clients) -> list:
    """The cheapest S3 call, under the error translation every AWS task runs in."""
    with aws_errors(clients.endpoint_url):
        return clients.s3.list_buckets()["Buckets"]


def test_no_credentials_is_one_actionable_line(moto_endpoint, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe (slow)
    with pytest.raises(AwsError, match=r"^no AWS credentials found: run `aws configure` or set AWS_PROFILE$"):
        list_buckets(aws_clients("us-east-1", moto_endpoint))


def test_unreachable_endpoint_names_it():
    with pytest.raises(AwsError, match=r"cannot reach AWS endpoint http://127\.0\.0\.1:9"):
        list_buckets(aws_clients("us-east-1", "http://127.0.0.1:9", max_attempts=1))


def test_each_retry_is_said_once_and_never_past_the_last_attempt(monkeypatch):
    """max_attempts counts every attempt (botocore's max_attempts counts retries: one more)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    said: list[str] = []
    clients = aws_clients("us-east-1", "http://127.0.0.1:9", max_attempts=3)
    clients.echo_retry = said.append
    with pytest.raises(AwsError, match="cannot reach AWS endpoint"):
        list_buckets(clients)
    assert said == [f"retrying ListBuckets (attempt {n} of 3) after EndpointConnectionError" for n in (2, 3)]
    said.clear()  # a client the SageMaker SDK makes from the session retries the same way
    with pytest.raises(AwsError, match="cannot reach AWS endpoint"), aws_errors(clients.endpoint_url):
        clients.session.client("s3").list_buckets()
    assert said == [f"retrying ListBuckets (attempt {n} of 3) after EndpointConnectionError" for n in (2, 3)]


def test_expired_and_rejected_credentials_are_explained():
    from botocore.exceptions import ClientError

    def client_error(code):
        return ClientError({"Error": {"Code": code, "Message": "m"}}, "GetCallerIdentity")

    assert "expired" in str(explain(client_error("ExpiredToken")))
    assert "rejected" in str(explain(client_error("InvalidClientTokenId")))
    assert explain(ValueError("not AWS")) is None


def test_any_other_client_error_names_operation_resource_code_and_cause():
    from botocore.exceptions import ClientError

    def line(code, operation, message="m", resource=None):
        return str(explain(ClientError({"Error": {"Code": code, "Message": message}}, operation), resource=resource))

    denied = line("AccessDenied", "PutObject", "Access Denied", "s3://b/k")
    assert denied.startswith("S3 PutObject on s3://b/k refused: AccessDenied (Access Denied): ")
    assert "lacks s3:PutObject there" in denied and "bucket policy" in denied and "get-caller-identity" in denied
    assert "kms:Decrypt" in line("AccessDenied", "GetObject", "User is not authorized to perform kms:Decrypt")
    assert "kms:Decrypt" in line("KMS.DisabledException", "GetObject")
    assert "sagemaker:CreateTrainingJob" in line("AccessDeniedException", "CreateTrainingJob")
    assert "throttling" in line("ThrottlingException", "ListTrainingJobs")
    assert "Service Quotas" in line("ResourceLimitExceeded", "CreateTrainingJob")
    assert "terraform apply" in line("NoSuchBucket", "ListObjectsV2")
    assert line("Weird", "SomeCall").startswith("AWS SomeCall refused: Weird (m): check the resource name")


def test_s3_dataset_source_uses_the_endpoint_it_is_given(s3, bucket, dataset, moto_endpoint, monkeypatch, tmp_path):
    from project.aws import source  # noqa: F401 (registers s3:// with project.training.fetch, as the tasks do)
    from project.training.fetch import fetch_raw

    folder, files = dataset
    for stem in files:
        s3.upload_file(str(folder / f"{stem}.gz"), bucket, f"mirror/{stem}.gz")
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the argument (aws.endpoint_url) names moto
    paths = fetch_raw(f"s3://{bucket}/mirror", tmp_path / "cache", files, endpoint_url=moto_endpoint)
    assert sorted(paths) == sorted(files)
    assert all(
        p.parent == tmp_path / "cache" and p.read_bytes() == (folder / p.name).read_bytes() for p in paths.values()
    )


def test_s3_uris_have_one_parser():
    from project.core.names import S3UriError, split_s3_uri

    assert split_s3_uri("s3://bucket/datasets/mnist/") == ("bucket", "datasets/mnist/")
    assert split_s3_uri("s3://bucket") == ("bucket", "")
    for bad in ("https://bucket/key", "s3:///key", "bucket/key"):
        with pytest.raises(S3UriError, match="not an S3 URI"):
            split_s3_uri(bad)


def test_an_s3_folder_is_mirrored_incrementally(s3, bucket, tmp_path):
    """A local run's s3:// channel: only new or changed objects move; a file whose object is gone goes."""
    for name, body in (("a.csv", b"1,2\n"), ("sub/b.csv", b"3,4\n"), ("c.csv", b"5,6\n")):
        s3.put_object(Bucket=bucket, Key=f"data/train/{name}", Body=body)
    s3.put_object(Bucket=bucket, Key="data/trainer/not-this.csv", Body=b"x")  # a sibling prefix, not the folder
    dest, uri, lines = tmp_path / "cache" / "train", f"s3://{bucket}/data/train", []
    assert sorted(fetch.mirror_folder(s3, uri, dest, echo=lines.append)) == ["a.csv", "c.csv", "sub/b.csv"]
    assert (dest / "sub" / "b.csv").read_bytes() == b"3,4\n" and lines[0].startswith("downloaded 3 of 3 file(s)")
    assert fetch.mirror_folder(s3, uri, dest) == []  # nothing changed: nothing moves
    s3.put_object(Bucket=bucket, Key="data/train/a.csv", Body=b"9,9\n")
    s3.delete_object(Bucket=bucket, Key="data/train/c.csv")
    assert fetch.mirror_folder(s3, uri + "/", dest) == ["a.csv"]
    assert (dest / "a.csv").read_bytes() == b"9,9\n" and not (dest / "c.csv").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == [".train.s3-etags.json", "train"]  # no scratch left


def test_an_empty_s3_folder_is_one_line(s3, bucket, tmp_path):
    with pytest.raises(TransferError, match=f"s3://{bucket}/nothing holds no objects: upload the data there"):
        fetch.mirror_folder(s3, f"s3://{bucket}/nothing", tmp_path / "train")
    assert not (tmp_path / "train").exists()
