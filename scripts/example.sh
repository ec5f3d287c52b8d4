#!/usr/bin/env bash
# Quick start: run the local example pipeline in the core venv.
#   bash scripts/example.sh [args for examples/local_pipeline.py]
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_uv
ensure_core_venv
cd "$ROOT"
exec .venv/bin/python examples/local_pipeline.py "$@"
