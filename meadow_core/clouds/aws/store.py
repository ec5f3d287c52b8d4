"""`S3ObjectStore`: the object store of an AWS place, one bucket.

S3 writes are atomic per object (a reader sees the whole object or none), which is
what `ObjectStore.put` promises; ``If-None-Match: *`` makes the upload-skip path one
request that never overwrites what another caller stored first.
"""

from __future__ import annotations

import io
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from meadow_core.clouds.aws.session import AwsConfigurationError
from meadow_core.transport.base import ObjectNotFoundError, ObjectStore, StoredObjectInfo

__all__ = ["ObjectNotFoundError", "S3ObjectStore", "StoredObjectInfo"]

#: Objects larger than this go up in parallel parts (TransferManager).
MULTIPART_THRESHOLD = 16 * 1024 * 1024
_TRANSFER = TransferConfig(
    multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD
)
_DELETE_BATCH = 1000  # the most delete_objects takes at once


def _code(exc: botocore.exceptions.ClientError) -> str:
    error: dict[str, Any] = exc.response.get("Error", {})
    return str(error.get("Code", ""))


def _no_bucket(exc: botocore.exceptions.ClientError, bucket: str) -> None:
    """A missing bucket means Meadow is not installed there: say how to fix it."""
    if _code(exc) == "NoSuchBucket":
        raise AwsConfigurationError(
            f"bucket {bucket} does not exist: run `meadow aws install --region <region>` "
            "for this account and region"
        ) from exc


class S3ObjectStore(ObjectStore):
    """Objects under keys in ``bucket``, through a boto3 S3 ``client``."""

    def __init__(self, bucket: str, client: Any) -> None:
        self.bucket = bucket
        self.client = client

    @classmethod
    def from_url(cls, url: str) -> S3ObjectStore:
        """The bucket ``s3://<bucket>?region=<region>`` names, through boto3's chain (on
        an instance, its role); ``transport.open_store`` calls this for ``s3://``."""
        from meadow_core.clouds.aws import session

        parsed = urllib.parse.urlsplit(url)
        if not parsed.netloc:
            raise AwsConfigurationError(f"{url!r} names no bucket: use s3://<bucket>?region=<r>")
        region = urllib.parse.parse_qs(parsed.query).get("region", [None])[0]
        return cls(parsed.netloc, session.client("s3", region))

    def put(self, key: str, data: bytes) -> None:
        try:
            if len(data) > MULTIPART_THRESHOLD:
                self.client.upload_fileobj(io.BytesIO(data), self.bucket, key, Config=_TRANSFER)
            else:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except botocore.exceptions.ClientError as exc:
            _no_bucket(exc, self.bucket)
            raise

    def put_file(self, key: str, path: Path) -> None:
        """Upload a file in parallel parts, never holding it in memory."""
        try:
            self.client.upload_file(str(path), self.bucket, key, Config=_TRANSFER)
        except boto3.exceptions.S3UploadFailedError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, botocore.exceptions.ClientError):
                _no_bucket(cause, self.bucket)
            raise

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if len(data) > MULTIPART_THRESHOLD:
            # Large objects are content-addressed payloads: a racing writer stores the
            # same bytes, so check-then-put is as good as a condition here.
            return super().put_if_absent(key, data)
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*")
        except botocore.exceptions.ClientError as exc:
            # 412: present; 409: another conditional write of this key is in flight.
            if _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            _no_bucket(exc, self.bucket)
            raise
        return True

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def _get(self, key: str, **extra: Any) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, **extra)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise ObjectNotFoundError(f"no object {self.location(key)}") from exc
            _no_bucket(exc, self.bucket)
            raise
        body: bytes = response["Body"].read()
        return body

    def get(self, key: str) -> bytes:
        return self._get(key)

    def download(self, key: str, path: Path) -> None:
        """Stream an object into a file (large ones in parallel ranges), never holding
        it in memory: an environment archive can be gigabytes."""
        try:
            self.client.download_file(self.bucket, key, str(path), Config=_TRANSFER)
        except botocore.exceptions.ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise ObjectNotFoundError(f"no object {self.location(key)}") from exc
            _no_bucket(exc, self.bucket)
            raise

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            return self._get(key, Range=f"bytes={offset}-{offset + length - 1}")
        except botocore.exceptions.ClientError as exc:
            if _code(exc) == "InvalidRange":  # offset at or past the end, like a file read
                return b""
            raise

    def list_keys(self, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, in key order."""
        paginator = self.client.get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]

    def list_objects(self, prefix: str) -> Iterator[StoredObjectInfo]:
        """Every object under ``prefix`` with its size and upload time, in key order."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield StoredObjectInfo(
                    item["Key"], int(item["Size"]), item["LastModified"].timestamp()
                )

    def delete_keys(self, keys: Iterable[str]) -> int:
        """Delete these objects (a thousand per request); missing ones are no error."""
        count = 0
        batch: list[dict[str, str]] = []
        for key in [*keys, None]:
            if key is not None:
                batch.append({"Key": key})
            if batch and (key is None or len(batch) == _DELETE_BATCH):
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
                errors = response.get("Errors", [])
                if errors:
                    first = errors[0]
                    raise OSError(
                        f"could not delete {self.location(first['Key'])}: "
                        f"{first.get('Code')} {first.get('Message')}"
                    )
                count += len(batch)
                batch = []
        return count

    def delete_prefix(self, prefix: str) -> int:
        return self.delete_keys(self.list_keys(prefix))

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"
