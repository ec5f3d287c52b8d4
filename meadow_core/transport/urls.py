"""Object stores by URL: ``open_store("s3://bucket?region=us-east-2")``.

A task learns its place's store as a URL (``MEADOW_STORE``); the scheme picks the
store class through a table of lazy import paths, so the agent and the task code name
no cloud, and a new cloud's store is one line here. A plain path (or ``file://``) is a
``LocalObjectStore`` directory.
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from meadow_core.errors import InvalidRequestError
from meadow_core.transport.base import ObjectStore

#: URL scheme -> (``module:factory`` taking the whole URL, the distribution it needs).
#: Built environments carry only what the worker itself needs (botocore alone is
#: ~100 MB), so a task that opens a cloud store may lack its SDK: the error says which.
STORE_SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("meadow_core.clouds.aws.store:S3ObjectStore.from_url", "boto3"),
}


def _factory(path: str) -> Callable[[str], ObjectStore]:
    module_name, _, attributes = path.partition(":")
    target: object = importlib.import_module(module_name)
    for attribute in attributes.split("."):
        target = getattr(target, attribute)
    return target  # type: ignore[return-value]


def open_store(url: str) -> ObjectStore:
    """The object store at ``url``: ``s3://<bucket>?region=<region>``, ``file:///dir``
    or a directory path."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("", "file") or (len(scheme) == 1 and url[1:3] in (":\\", ":/")):
        from meadow_core.transport.local import LocalObjectStore

        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path) if scheme == "file" else url
        return LocalObjectStore(Path(path))
    entry = STORE_SCHEMES.get(scheme)
    if entry is None:
        known = ", ".join(f"{s}://" for s in sorted(STORE_SCHEMES))
        raise InvalidRequestError(
            f"no object store for {url!r}: known schemes are {known}, file:// and paths"
        )
    path, needs = entry
    try:
        factory = _factory(path)
    except ImportError as exc:
        raise ImportError(
            f"the object store at {url} needs {needs} in the task's environment ({exc}): "
            f"add {needs} to the deployment's requirements"
        ) from None
    return factory(url)
