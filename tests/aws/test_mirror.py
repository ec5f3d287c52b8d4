"""An instance copies each object it needs from S3 once, even when all its worker loops
ask at the same moment, and streams it to disk (moto in server mode)."""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import os
from pathlib import Path
from typing import Any

import boto3
import pytest

from meadow_core.clouds.aws.session import AwsConfigurationError
from meadow_core.clouds.aws.store import ObjectNotFoundError, S3ObjectStore
from meadow_core.remote.mirror import StoreMirror
from meadow_core.transport.local import LocalObjectStore

pytestmark = [pytest.mark.devcloud]


@pytest.fixture
def remote(aws_env: dict[str, str]) -> tuple[S3ObjectStore, collections.Counter[str]]:
    """A bucket, and a count of the S3 operations its client makes."""
    client = boto3.client("s3", region_name=aws_env["AWS_DEFAULT_REGION"])
    client.create_bucket(
        Bucket="mirror-test",
        CreateBucketConfiguration={"LocationConstraint": aws_env["AWS_DEFAULT_REGION"]},
    )
    calls: collections.Counter[str] = collections.Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.s3.*", count)
    return S3ObjectStore("mirror-test", client), calls


def test_many_workers_asking_for_one_archive_download_it_once(
    remote: tuple[S3ObjectStore, collections.Counter[str]], tmp_path: Path
) -> None:
    store, calls = remote
    archive = os.urandom(40 << 20)  # above the multipart threshold: ranged GETs
    store.put("envs/packed/big.tar.zst", archive)
    store.put("envs/packed/other.tar.zst", archive)

    calls.clear()
    StoreMirror(store, LocalObjectStore(tmp_path / "one")).copy_down("envs/packed/other.tar.zst")
    one_download = sum(calls.values())

    local = LocalObjectStore(tmp_path / "machine")
    mirror = StoreMirror(store, local)
    calls.clear()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(mirror.copy_down, ["envs/packed/big.tar.zst"] * 8))
    assert sum(calls.values()) == one_download, calls
    assert calls["GetObject"] >= 1
    local_copy = local.get("envs/packed/big.tar.zst")
    assert hashlib.sha256(local_copy).digest() == hashlib.sha256(archive).digest()
    assert not [p for p in (tmp_path / "machine").rglob(".tmp-*")], "no partial file left"


def test_a_missing_object_says_where_it_looked_and_leaves_nothing(
    remote: tuple[S3ObjectStore, collections.Counter[str]], tmp_path: Path
) -> None:
    store, _ = remote
    mirror = StoreMirror(store, LocalObjectStore(tmp_path / "machine"))
    with pytest.raises(ObjectNotFoundError, match="s3://mirror-test/functions/gone"):
        mirror.copy_down("functions/gone")
    assert not [p for p in (tmp_path / "machine").rglob("*") if p.is_file()]


def test_a_packed_environment_goes_up_from_its_file(
    remote: tuple[S3ObjectStore, collections.Counter[str]], tmp_path: Path
) -> None:
    """``put_file`` streams a large file in parts (the caller packs environments into
    a file, not memory); a missing bucket says how to create it."""
    store, calls = remote
    archive = tmp_path / "environment.tar.zst"
    archive.write_bytes(os.urandom(40 << 20))
    store.put_file("envs/packed/streamed.tar.zst", archive)
    assert calls["UploadPart"] >= 2, calls  # multipart: never one 40 MB body in memory
    stored = store.get("envs/packed/streamed.tar.zst")
    assert hashlib.sha256(stored).digest() == hashlib.sha256(archive.read_bytes()).digest()
    missing = S3ObjectStore("no-such-bucket", store.client)
    with pytest.raises(AwsConfigurationError, match="meadow aws install"):
        missing.put_file("envs/packed/x.tar.zst", archive)
