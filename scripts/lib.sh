# Shared helpers for the scripts in scripts/. Source it; don't run it.
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Copy files out of uv's cache instead of hardlinking: the cache and the work
# tree may sit on different filesystems, and uv warns on every install then.
export UV_LINK_MODE=copy
# Only the machine's python3 is used; uv must never fetch a Python of its own
# (the network reaches package registries only, so a download would fail anyway).
export UV_PYTHON_DOWNLOADS=never

log() { printf '%s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The interpreter every venv is built from: whatever python3 is on PATH.
system_python() {
    command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH"
    command -v python3
}

# Make `uv` callable. A fresh machine has only python3 + pip, so install uv
# from PyPI with pip when it is missing.
UV_PRIVATE="$ROOT/.venvs/_uv" # fallback install dir (git-ignored, under .venvs/)
ensure_uv() {
    # A uv installed by an earlier run into the private dir.
    if ! command -v uv >/dev/null 2>&1 && [[ -x "$UV_PRIVATE/bin/uv" ]]; then
        export PATH="$UV_PRIVATE/bin:$PATH"
    fi
    command -v uv >/dev/null 2>&1 && return 0

    log "uv not found; installing it with pip"
    local err
    err="$(mktemp)"
    if ! python3 -m pip install --quiet --root-user-action=ignore uv 2>"$err"; then
        # Typically Debian's own python3, which refuses pip installs (PEP 668,
        # "externally managed"). Put uv in a private folder instead.
        log "pip could not install uv into python3 ($(grep -m1 -i error "$err" || true));"
        log "installing it under ${UV_PRIVATE#"$ROOT"/} instead"
        python3 -m pip install --quiet --root-user-action=ignore --target "$UV_PRIVATE" uv \
            || die "could not install uv (is pip there? apt-get install python3-pip)"
        export PATH="$UV_PRIVATE/bin:$PATH"
    fi
    rm -f "$err"
    hash -r
    if ! command -v uv >/dev/null 2>&1; then
        # pip may have put the uv binary in a scripts dir that is not on PATH.
        local bin
        bin="$(python3 -c 'import uv; print(uv.find_uv_bin())')" \
            || die "uv was installed but its binary cannot be found"
        PATH="$(dirname "$bin"):$PATH"
        export PATH
    fi
    command -v uv >/dev/null 2>&1 || die "uv still not on PATH after install"
}

# make_venv DIR: create a venv at DIR from the system python3, unless a working
# one is already there (one whose interpreter no longer runs is rebuilt).
make_venv() {
    local dir="$1"
    if [[ -x "$dir/bin/python" ]] && "$dir/bin/python" -c '' >/dev/null 2>&1; then
        return 0
    fi
    log "creating venv $dir"
    uv venv --quiet --clear --python "$(system_python)" "$dir"
}

# The core venv at $ROOT/.venv: meadow-core and the dev cloud (editable) plus the dev
# group (pytest, ruff, mypy, ...), as noxfile.py builds it. Always re-runs the
# install: uv makes it a quick no-op when nothing changed.
ensure_core_venv() {
    ensure_uv
    make_venv "$ROOT/.venv"
    (cd "$ROOT" && uv pip install --quiet --python .venv/bin/python -e . -e ./devcloud \
        --group pyproject.toml:dev)
}

# nox (pinned in pyproject.toml's `nox` group) in a venv of its own, .venvs/nox.
ensure_nox() {
    ensure_uv
    make_venv "$ROOT/.venvs/nox"
    (cd "$ROOT" && uv pip install --quiet --python .venvs/nox/bin/python --group pyproject.toml:nox)
}
