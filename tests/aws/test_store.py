"""S3ObjectStore against moto in server mode."""

from __future__ import annotations

import os

import boto3
import pytest

from meadow_core.clouds.aws import session, store
from meadow_core.clouds.aws.store import S3ObjectStore

pytestmark = [pytest.mark.devcloud]

BUCKET = "meadow-test-store"


@pytest.fixture
def s3_store(aws_env: dict[str, str]) -> S3ObjectStore:
    session.reset()
    client = session.client("s3")
    client.create_bucket(
        Bucket=BUCKET,
        CreateBucketConfiguration={"LocationConstraint": aws_env["AWS_DEFAULT_REGION"]},
    )
    return S3ObjectStore(BUCKET, client)


def test_round_trip_and_ranges(s3_store: S3ObjectStore) -> None:
    data = bytes(range(256)) * 40
    s3_store.put("args/abc", data)
    assert s3_store.exists("args/abc")
    assert not s3_store.exists("args/other")
    assert s3_store.get("args/abc") == data
    assert s3_store.get_range("args/abc", 100, 50) == data[100:150]
    assert s3_store.get_range("args/abc", len(data) - 10, 50) == data[-10:]
    assert s3_store.get_range("args/abc", 0, 0) == b""
    assert s3_store.location("args/abc") == f"s3://{BUCKET}/args/abc"


def test_missing_object_is_file_not_found_and_key_error(s3_store: S3ObjectStore) -> None:
    with pytest.raises(FileNotFoundError, match=f"s3://{BUCKET}/nothing/here"):
        s3_store.get("nothing/here")
    with pytest.raises(KeyError):
        s3_store.get_range("nothing/here", 0, 10)


def test_missing_bucket_says_to_install(aws_env: dict[str, str]) -> None:
    session.reset()
    absent = S3ObjectStore("meadow-not-installed", session.client("s3"))
    with pytest.raises(session.AwsConfigurationError, match="meadow aws install"):
        absent.put("functions/x", b"x")
    with pytest.raises(session.AwsConfigurationError, match="meadow-not-installed"):
        absent.put_if_absent("functions/x", b"x")
    assert not absent.exists("functions/x")


def test_large_object_goes_up_in_parts(s3_store: S3ObjectStore) -> None:
    data = os.urandom(store.MULTIPART_THRESHOLD + 1024 * 1024)
    s3_store.put("envs/packed/big.tar.gz", data)
    head = s3_store.client.head_object(Bucket=BUCKET, Key="envs/packed/big.tar.gz")
    assert "-" in head["ETag"], "a multipart upload's ETag names its part count"
    assert s3_store.get("envs/packed/big.tar.gz") == data
    assert not s3_store.put_if_absent("envs/packed/big.tar.gz", b"other")
    assert s3_store.get_range("envs/packed/big.tar.gz", len(data) - 5, 5) == data[-5:]


def test_put_if_absent_never_overwrites(s3_store: S3ObjectStore) -> None:
    assert s3_store.put_if_absent("code/files/x", b"first")
    assert not s3_store.put_if_absent("code/files/x", b"second")
    assert s3_store.get("code/files/x") == b"first"
    # A second caller with its own client sees the same condition.
    other = S3ObjectStore(BUCKET, boto3.session.Session().client("s3"))
    assert not other.put_if_absent("code/files/x", b"third")
    assert other.get("code/files/x") == b"first"


def test_delete_prefix_in_batches_leaves_the_rest(
    s3_store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "_DELETE_BATCH", 4)
    for i in range(11):
        s3_store.put(f"results/job-1/outcomes/{i:04d}", b"r")
    s3_store.put("results/job-10/outcomes/0000", b"keep")
    s3_store.put("logs/job-1/0.log", b"keep")
    assert s3_store.list_keys("results/job-1/") == [
        f"results/job-1/outcomes/{i:04d}" for i in range(11)
    ]
    assert s3_store.delete_prefix("results/job-1/") == 11
    assert s3_store.list_keys("results/job-1/") == []
    assert s3_store.exists("results/job-10/outcomes/0000")
    assert s3_store.exists("logs/job-1/0.log")
    assert s3_store.delete_prefix("results/job-1/") == 0
