"""The agent bundle and the boot script that installs it on a fresh VM, for any cloud.

No custom machine image is needed: the bundle (``meadow_core`` itself plus its runtime
dependencies and the cloud's SDK, built for the machine's Python and platform by ``uv
pip install --target``) is uploaded once per content hash to the place's store, and the
boot script (user data, custom data) of every machine downloads it, checks its sha256,
unpacks it and starts the cloud's machine agent module. How it downloads is the cloud
driver's: a piece of plain-stdlib Python (on AWS, a GET signed with the instance role's
credentials), so the machine needs no tool (curl, a cloud CLI) beyond ``python3`` and
the boot script, which others may read back, holds no credential of the caller's.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import filelock
import platformdirs

from meadow_core import _runtime, keys
from meadow_core._runtime import DISTRIBUTION
from meadow_core.interpreters import uv_binary
from meadow_core.transport.base import ObjectStore

#: The instance platform the bundle's compiled wheels are chosen for.
INSTANCE_PLATFORM = "x86_64-manylinux_2_28"
INSTALL_ROOT = "/opt/meadow"
AGENT_HOME = "/var/lib/meadow"


def _runtime_distributions(extras: tuple[str, ...]) -> list[str]:
    """Meadow's own (non-extra) dependencies plus the cloud's (``extras``), by name."""
    names = []
    for requirement in importlib.metadata.requires(DISTRIBUTION) or []:
        if "extra ==" not in requirement:
            names.append(re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0])
    return [*names, *extras]


def _pins(extras: tuple[str, ...]) -> list[str]:
    pins = []
    for name in _runtime_distributions(extras):
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError as exc:
            raise RuntimeError(
                f"{name} is not installed here; install it to launch machines in this cloud"
            ) from exc
    return pins


@functools.cache
def bundle_key(extras: tuple[str, ...]) -> str:
    """The store key of this caller's bundle: a hash of Python, pins and Meadow's
    shipped files (once per process: none of them changes while it runs)."""
    digest = hashlib.sha256()
    digest.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    digest.update("\n".join(_pins(extras)).encode())
    digest.update(_runtime.package_digest().encode())
    return f"{keys.BUNDLES}/{digest.hexdigest()}.tar.gz"


def build_bundle(extras: tuple[str, ...]) -> tuple[str, Path]:
    """Build (or reuse from the local cache) the bundle; returns its key and file."""
    key = bundle_key(extras)
    cache = Path(platformdirs.user_cache_dir("meadow")) / "bootstrap"
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / key.rsplit("/", 1)[-1]
    with filelock.FileLock(str(target) + ".lock"):
        if target.exists():
            return key, target
        with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:
            lib = Path(tmp) / "lib"
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            subprocess.run(
                [
                    uv_binary(),
                    "pip",
                    "install",
                    "--quiet",
                    "--target",
                    str(lib),
                    "--python-version",
                    version,
                    "--python-platform",
                    INSTANCE_PLATFORM,
                    *_pins(extras),
                ],
                check=True,
                capture_output=True,
            )
            package = _runtime.PACKAGE_ROOT
            partial = Path(tmp) / "bundle.tar.gz"
            with tarfile.open(partial, "w:gz", compresslevel=1) as tar:
                tar.add(lib, arcname="lib")
                for path in _runtime.package_files():
                    tar.add(path, arcname=f"lib/meadow_core/{path.relative_to(package)}")
                # envcache pins a worker's runtime from meadow-core's own metadata.
                metadata = Path(tmp) / "METADATA"
                metadata.write_text(
                    importlib.metadata.distribution(DISTRIBUTION).read_text("METADATA") or ""
                )
                version = importlib.metadata.version(DISTRIBUTION)
                dist_info = f"{DISTRIBUTION.replace('-', '_')}-{version}.dist-info"
                tar.add(metadata, arcname=f"lib/{dist_info}/METADATA")
            os.replace(partial, target)
    return key, target


class Published(NamedTuple):
    """A bundle in a store: its key and the sha256 of its bytes."""

    key: str
    sha256: str


def publish(store: ObjectStore, extras: tuple[str, ...]) -> Published:
    """Make sure the bundle is in ``store`` (uploads only if missing)."""
    key, path = build_bundle(extras)
    if not store.exists(key):
        store.put_file(key, path)
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return Published(key, digest.hexdigest())


def boot_script(
    fetch_snippet: str,
    bundle_sha256: str,
    agent_module: str,
    agent_arguments: Mapping[str, str],
) -> str:
    """The boot script: fetch the bundle, check it is the one this caller built (the
    store is writable by tasks; a replaced bundle would run as root on every new
    machine), unpack it, then start ``agent_module`` detached (cloud-init must not wait
    for it), logging to a file.

    ``fetch_snippet`` is the cloud driver's: Python run by the machine's ``python3``
    (stdlib only; nothing is installed yet) that binds ``data`` to the bundle's bytes,
    retrying as the machine's network and credentials come up. It sits in a quoted
    here-document, so no line of it may be ``PY``."""
    if "\nPY\n" in f"\n{fetch_snippet}\n":
        raise ValueError("the fetch snippet would end the boot script's here-document")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    version_tuple = (sys.version_info.major, sys.version_info.minor)
    arguments = " ".join(f"--{k} {shlex.quote(v)}" for k, v in sorted(agent_arguments.items()))
    return f"""#!/bin/bash
# Meadow machine bootstrap: installs the agent bundle and starts the agent.
set -euo pipefail
mkdir -p {INSTALL_ROOT} {AGENT_HOME}
python3 - <<'PY'
{fetch_snippet.strip()}
import hashlib, io, tarfile
if hashlib.sha256(data).hexdigest() != {bundle_sha256!r}:
    raise SystemExit("meadow: the agent bundle does not match its sha256; not installing it")
tarfile.open(fileobj=io.BytesIO(data)).extractall({INSTALL_ROOT!r})
PY
export PYTHONPATH={INSTALL_ROOT}/lib MEADOW_HOME={AGENT_HOME}
export PATH={INSTALL_ROOT}/lib/bin:$PATH
PYTHON=python3
# Pickled functions load only on the caller's minor version; fetch it if the image has another.
if ! python3 -c 'import sys; sys.exit(sys.version_info[:2] != {version_tuple})'; then
    uv python install {version}
    PYTHON="$(uv python find {version})"
fi
setsid nohup "$PYTHON" -m {agent_module} {arguments} \\
    >>{AGENT_HOME}/instance-agent.log 2>&1 </dev/null &
echo "meadow agent started"
"""
