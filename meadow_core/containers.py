"""Container images: resolve a named image to a digest, build an environment's image once
per key, and Meadow's worker runtime for images Meadow did not build.

The only module that imports the docker SDK, lazily, so the rest of Meadow works
without it. Where the job runs, the agent starts ``docker run`` on the pinned reference
this module returns (``agent.processes``). Configuration is read from the caller's
environment: ``MEADOW_REGISTRY`` (push built images there, e.g. ``127.0.0.1:5000``;
unset: images stay on this machine), ``MEADOW_BASE_IMAGE`` (what built images start
from; default ``python:<version>-slim-bookworm``) and ``MEADOW_APT_MIRROR`` (a Debian
mirror used only while installing ``additional_software``, for base images that ship
no apt sources).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
import platformdirs

from meadow_core import _runtime
from meadow_core.container_interpreters import ContainerImageSpec
from meadow_core.errors import InvalidRequestError, MeadowError
from meadow_core.interpreters import EnvironmentSpec, uv_binary

log = logging.getLogger("meadow.containers")

REGISTRY_VARIABLE = "MEADOW_REGISTRY"
BASE_IMAGE_VARIABLE = "MEADOW_BASE_IMAGE"
APT_MIRROR_VARIABLE = "MEADOW_APT_MIRROR"
#: Every container Meadow starts carries this label (cleanup, leak checks).
LABEL = "meadow"
#: Repository (under the registry) of the images Meadow builds; the tag is the key.
ENV_REPOSITORY = "meadow-env"
#: Where a built image's virtualenv lives; its bin/ is first on PATH.
ENV_PREFIX = "/opt/meadow/env"


class ContainerUnavailableError(MeadowError):
    """The docker SDK or daemon is missing."""


class ImageNotFoundError(InvalidRequestError):
    """A named image exists neither on this machine nor in its registry."""


class ImageBuildError(InvalidRequestError):
    """An environment's image could not be built; the message ends with the build log."""


def _client() -> Any:
    try:
        import docker
    except ImportError as exc:
        raise ContainerUnavailableError(
            "container images need the docker SDK: pip install 'meadow-core[containers]'"
        ) from exc
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ContainerUnavailableError(
            f"cannot reach the docker daemon ({exc}); start dockerd or set DOCKER_HOST"
        ) from exc
    return client


def _errors() -> Any:
    import docker.errors

    return docker.errors


def split_reference(reference: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of ``repo[:tag][@digest]``."""
    repository, _, digest = reference.partition("@")
    tag = None
    head, _, last = repository.rpartition("/")
    if ":" in last:
        last, tag = last.split(":", 1)
        repository = f"{head}/{last}" if head else last
    return repository, tag, digest or None


def _auth(spec: ContainerImageSpec) -> dict[str, str] | None:
    secret = spec.username_password_secret
    if secret is None:
        return None
    value = secret.read().strip()
    try:
        data = json.loads(value)
        return {"username": str(data["username"]), "password": str(data["password"])}
    except (ValueError, KeyError, TypeError):
        user, sep, password = value.partition(":")
        if not sep:
            raise InvalidRequestError(
                'username_password_secret must hold "user:password" or '
                '{"username": ..., "password": ...}'
            ) from None
        return {"username": user, "password": password}


def _pinned(image: Any, repository: str) -> str:
    """``repo@sha256:...`` if the image came from (or went to) ``repository``'s
    registry, else its local id (usable on this machine only)."""
    for repo_digest in image.attrs.get("RepoDigests") or []:
        if repo_digest.split("@", 1)[0] == repository:
            return str(repo_digest)
    return str(image.id)


def resolve_image(spec: ContainerImageSpec) -> str:
    """The image ``spec`` names, pinned to a digest; ``ImageNotFoundError`` naming the
    image if neither this machine nor its registry has it."""
    client = _client()
    errors = _errors()
    reference = spec.reference
    repository, _, digest = split_reference(reference)
    with contextlib.suppress(errors.ImageNotFound):
        image = client.images.get(reference)
        return f"{repository}@{digest}" if digest else _pinned(image, repository)
    if spec.always_use_local:
        raise ImageNotFoundError(
            f"the container image {reference!r} is not on this machine (always_use_local=True)"
        )
    try:
        data = client.images.get_registry_data(reference, auth_config=_auth(spec))
    except errors.APIError as exc:
        raise ImageNotFoundError(
            f"the container image {reference!r} does not exist: it is not on this machine "
            f"and its registry says: {exc.explanation or exc}"
        ) from exc
    return f"{repository}@{data.id}"


# -- images built for an environment spec ----------------------------------------------


def _lock_dir() -> Path:
    base = os.environ.get("MEADOW_CACHE_DIR") or platformdirs.user_cache_dir("meadow")
    path = Path(base) / "image-locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def image_tag(spec: EnvironmentSpec, base_image: str) -> str:
    """The tag of ``spec``'s image: its key, with the base image it starts from."""
    digest = hashlib.sha256(spec.key.encode() + b"\0" + base_image.encode()).hexdigest()
    return digest


#: The caller's package index settings, passed to the builder stage only.
_FORWARDED = ("UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "UV_INDEX", "UV_DEFAULT_INDEX")


def _dockerfile(spec: EnvironmentSpec, base_image: str, trust: bool) -> str:
    packages = " ".join(shlex.quote(p) for p in spec.system_packages)
    lines = [f"FROM {base_image} AS system"]
    if packages:
        # The mirror exists only during this step, so no build machine's address stays
        # in the image; base images with their own apt sources need none.
        lines += [
            "ARG MEADOW_APT_MIRROR=",
            "RUN set -e; . /etc/os-release; "
            'if [ -n "$MEADOW_APT_MIRROR" ]; then '
            'echo "deb $MEADOW_APT_MIRROR $VERSION_CODENAME main" '
            "> /etc/apt/sources.list.d/meadow-build.list; fi; "
            "apt-get update -q; "
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "
            f"{packages}; "
            "rm -rf /etc/apt/sources.list.d/meadow-build.list /var/lib/apt/lists/*",
        ]
    check = (
        "import sys; v = '%d.%d' % sys.version_info[:2]; "
        f"sys.exit(None if v == '{spec.python_version}' else "
        f"'the base image has Python ' + v + ', the environment needs {spec.python_version}: "
        f"set {BASE_IMAGE_VARIABLE} to an image with Python {spec.python_version}')"
    )
    export = ""
    if spec.kind == "uv_project":
        export = (
            "cd /meadow-build && /meadow-build/uv export --frozen --no-hashes "
            "--no-emit-project -o requirements.txt && "
        )
    lines += [
        "FROM system AS builder",
        "COPY meadow-build /meadow-build",
        "ENV UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy UV_NO_CACHE=1",
        *[f"ARG {name}" for name in _FORWARDED],
        *(["ENV SSL_CERT_FILE=/meadow-build/ca.pem"] if trust else []),
        f"RUN python3 -c {shlex.quote(check)} && "
        f"/meadow-build/uv venv --python python3 {ENV_PREFIX} && {export}"
        f"/meadow-build/uv pip install --python {ENV_PREFIX}/bin/python "
        "-r /meadow-build/requirements.txt",
        "FROM system",
        f"COPY --from=builder {ENV_PREFIX} {ENV_PREFIX}",
        f"ENV PATH={ENV_PREFIX}/bin:$PATH VIRTUAL_ENV={ENV_PREFIX}",
        f'LABEL {LABEL}.environment="{spec.key}"',
    ]
    return "\n".join(lines) + "\n"


def _uv_executable() -> str:
    """A uv binary to copy into a build: the uv wheel's (a Meadow dependency), since
    the one on PATH may be a shell shim that means nothing inside an image."""
    with contextlib.suppress(ImportError, FileNotFoundError):
        import uv

        return str(uv.find_uv_bin())
    found = os.path.realpath(uv_binary())
    with open(found, "rb") as f:
        if f.read(4) != b"\x7fELF":
            raise ImageBuildError(f"{found} is not a uv executable to build images with")
    return found


def _build(spec: EnvironmentSpec, base_image: str, reference: str) -> None:
    client = _client()
    with tempfile.TemporaryDirectory(prefix="meadow-image-") as work:
        context = Path(work)
        files = context / "meadow-build"
        files.mkdir()
        shutil.copy2(_uv_executable(), files / "uv")
        if spec.kind == "uv_project":
            (files / "pyproject.toml").write_text(spec.requirements)
            (files / "uv.lock").write_text(spec.lock or "")
        elif spec.kind == "requirements":
            (files / "requirements.txt").write_text(spec.requirements)
        else:
            raise ImageBuildError(f"a {spec.kind!r} environment cannot be built as an image")
        # The machine's own trust store (e.g. a TLS-inspecting proxy's CA) for reaching
        # the package index; only the discarded builder stage sees it.
        ca = os.environ.get("SSL_CERT_FILE")
        trust = bool(ca) and os.path.isfile(str(ca))
        if trust:
            shutil.copyfile(str(ca), files / "ca.pem")
        (context / "Dockerfile").write_text(_dockerfile(spec, base_image, trust))
        buildargs = {name: os.environ[name] for name in _FORWARDED if name in os.environ}
        if spec.system_packages:
            buildargs["MEADOW_APT_MIRROR"] = os.environ.get(APT_MIRROR_VARIABLE, "")
        output: list[str] = []
        failure = None
        for chunk in client.api.build(
            path=str(context),
            tag=reference,
            rm=True,
            forcerm=True,
            pull=False,
            network_mode="host",  # the network the machine itself has (index, mirror)
            buildargs=buildargs,
            labels={LABEL: ""},
            decode=True,
        ):
            if "stream" in chunk:
                output.extend(chunk["stream"].splitlines())
            if "error" in chunk:
                failure = chunk["error"]
        if failure is not None:
            tail = "\n".join(line for line in output[-25:] if line.strip())
            raise ImageBuildError(
                f"building the image for {spec.kind} environment failed: {failure.strip()}\n{tail}"
            )


def _push(repository: str, tag: str) -> str:
    """Push and return the pushed manifest's digest."""
    client = _client()
    digest = None
    for chunk in client.api.push(repository, tag, stream=True, decode=True):
        if "error" in chunk:
            raise ImageBuildError(f"pushing {repository}:{tag} failed: {chunk['error']}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = aux["Digest"]
    if digest is None:
        raise ImageBuildError(f"pushing {repository}:{tag} returned no digest")
    return f"{repository}@{digest}"


def environment_image(
    spec: EnvironmentSpec, registry: str | None = None, base_image: str | None = None
) -> str:
    """The image of ``spec`` (``additional_software`` and/or containers asked for), as
    a pinned reference: found on this machine, else pulled from the registry, else
    built and pushed. One build per key at a time on this machine (a file lock)."""
    registry = registry if registry is not None else os.environ.get(REGISTRY_VARIABLE) or None
    base = (
        base_image
        or os.environ.get(BASE_IMAGE_VARIABLE)
        or f"python:{spec.python_version}-slim-bookworm"
    )
    client = _client()
    errors = _errors()
    tag = image_tag(spec, base)
    repository = f"{registry.rstrip('/')}/{ENV_REPOSITORY}" if registry else ENV_REPOSITORY
    reference = f"{repository}:{tag}"
    with filelock.FileLock(str(_lock_dir() / f"{tag}.lock")):
        try:
            image = client.images.get(reference)
        except errors.ImageNotFound:
            image = None
        if image is not None:
            pinned = _pinned(image, repository)
            if registry and "@" not in pinned:  # built here, its push did not finish
                pinned = _push(repository, tag)
            return pinned
        if registry:
            try:
                client.images.get_registry_data(reference)
            except errors.APIError:
                pass  # not in the registry: build it
            else:
                started = time.monotonic()
                image = client.images.pull(repository, tag=tag)
                log.info("pulled image %s in %.1fs", reference, time.monotonic() - started)
                return _pinned(image, repository)
        started = time.monotonic()
        _build(spec, base, reference)
        log.info("built image %s in %.1fs", reference, time.monotonic() - started)
        if registry:
            return _push(repository, tag)
        return str(client.images.get(reference).id)


def image_for(spec: EnvironmentSpec) -> str:
    """The pinned image a job with ``spec`` runs in: the user's image, resolved, or the
    environment's image, built once."""
    if isinstance(spec, ContainerImageSpec):
        return resolve_image(spec)
    return environment_image(spec)


# -- the worker runtime mounted into every container -----------------------------------


_runtime_cache: dict[Path, Path] = {}


def worker_runtime(cache_root: Path) -> Path:
    """A folder holding ``core/meadow_core`` and ``deps/`` (what it imports, at the
    agent's versions, for the agent's Python on manylinux), mounted read-only into
    containers so any image with a matching ``python3`` can run Meadow's worker.
    Built once per Meadow version on this machine."""
    from meadow_core.envcache import meadow_runtime_requirements, run_uv

    if cache_root in _runtime_cache:
        return _runtime_cache[cache_root]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    pins = sorted(meadow_runtime_requirements())
    key = hashlib.sha256(
        "\n".join([version, platform.machine(), _runtime.runtime_id(), *pins]).encode()
    ).hexdigest()[:24]
    target = cache_root / key
    cache_root.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(target) + ".lock"):
        if not (target / ".complete").exists():
            shutil.rmtree(target, ignore_errors=True)
            staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=".staging-"))
            try:
                run_uv(
                    [
                        "pip", "install", "--target", str(staging / "deps"),
                        "--python-version", version,
                        "--python-platform", f"{platform.machine()}-manylinux_2_17",
                        "--no-build", *pins,
                    ]
                )  # fmt: skip
                shutil.copytree(
                    _runtime.PACKAGE_ROOT,
                    staging / "core" / "meadow_core",
                    ignore=shutil.ignore_patterns("__pycache__"),
                )
                (staging / ".complete").touch()
                for folder in _walk_dirs(staging):
                    folder.chmod(0o755)  # readable by any user an image runs as
                os.replace(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    _runtime_cache[cache_root] = target
    return target


def _walk_dirs(root: Path) -> Iterator[Path]:
    yield root
    for path in root.rglob("*"):
        if path.is_dir():
            yield path


def worker_bootstrap(runtime: Path) -> str:
    """``python3 -c`` code that runs Meadow's worker from the mounted runtime: Meadow
    first, its dependencies after the image's own packages (the user's versions win,
    as in built environments)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return (
        "import sys\n"
        f"if '%d.%d' % sys.version_info[:2] != {version!r}:\n"
        "    sys.exit('meadow: python3 in this image is %d.%d; tasks pickled by the caller '\n"
        f"             'need Python {version}' % sys.version_info[:2])\n"
        f"sys.path.insert(0, {str(runtime / 'core')!r})\n"
        f"sys.path.append({str(runtime / 'deps')!r})\n"
        "import runpy\n"
        "runpy.run_module('meadow_core.agent.worker', run_name='__main__')\n"
    )
