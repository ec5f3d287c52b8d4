#!/usr/bin/env bash
# The whole test suite: the nox sessions of noxfile.py (lint, typecheck-*, core,
# adapter-*) plus the services the core suite needs, started here and stopped again.
#
#   bash scripts/test.sh                      # everything
#   bash scripts/test.sh -k transport -x      # extra args go to the core pytest run only
#   MEADOW_TEST_ONLY=lint,core bash scripts/test.sh
#   MEADOW_TEST_ONLY=prefect bash scripts/test.sh
#
# Parts: lint (ruff, ruff format --check, mypy on the core and on each adapter in its
# own venv), core, airflow, prefect, dagster (MEADOW_TEST_ONLY, comma list; default
# all). Every part runs even if an earlier one failed; an environment that cannot be
# built from uv.lock stops the run. Exits non-zero if any part failed; the last line
# is "N passed, M failed" summed over all pytest runs.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL_PARTS=(lint core airflow prefect dagster)
ADAPTERS=(airflow prefect dagster)

# CI runs us with no stdin; make sure nothing can wait on it either way.
exec </dev/null

TMP="$(mktemp -d "${TMPDIR:-/tmp}/meadow-test.XXXXXX")"
export MEADOW_JUNIT_DIR="$TMP/junit" # noxfile.py: one report per pytest run
mkdir -p "$MEADOW_JUNIT_DIR"
SERVICES_STARTED=0
BG_PID=""
cleanup() {
    if [[ -n "$BG_PID" ]]; then
        # Interrupted while the adapters' suites ran in the background: end their
        # whole process group (nox, pytest and what it started).
        kill -TERM -- -"$BG_PID" 2>/dev/null || true
        wait "$BG_PID" 2>/dev/null || true
    fi
    if ((SERVICES_STARTED)); then
        printf '\n==> services down\n'
        "$ROOT/.venv/bin/python" -m meadow_devcloud.docker_stack down || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT

# ---- which parts ---------------------------------------------------------------
ONLY="${MEADOW_TEST_ONLY:-}"
ONLY="${ONLY// /}"
declare -A SELECTED=()
if [[ -z "$ONLY" || "$ONLY" == all ]]; then
    for p in "${ALL_PARTS[@]}"; do SELECTED[$p]=1; done
else
    IFS=',' read -r -a wanted <<<"$ONLY"
    for p in "${wanted[@]}"; do
        [[ -z "$p" ]] && continue
        case " ${ALL_PARTS[*]} " in
            *" $p "*) SELECTED[$p]=1 ;;
            *) die "MEADOW_TEST_ONLY: unknown part '$p' (choose among: ${ALL_PARTS[*]})" ;;
        esac
    done
fi
selected() { [[ -n "${SELECTED[$1]:-}" ]]; }

# ---- steps and the summary -----------------------------------------------------
ROWS=()   # "name|PASS/FAIL|seconds" for the summary table
STEP_RC=0 # exit status of the last step
FAILED=0

seconds_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

# record NAME RC SECONDS: one summary row.
record() {
    local status=PASS
    if (($2 != 0)); then status=FAIL FAILED=1; fi
    printf '<== %s: %s in %ss\n' "$1" "$status" "$3"
    ROWS+=("$1|$status|$3")
}

# step NAME CMD...: run CMD in a subshell with errexit on, time it, record it.
# Always returns 0 (so our own errexit does not fire); read STEP_RC instead.
step() {
    local name="$1" t0=$EPOCHREALTIME
    shift
    printf '\n==> %s\n' "$name"
    set +e
    (set -e; "$@")
    STEP_RC=$?
    set -e
    record "$name" "$STEP_RC" "$(seconds_since "$t0")"
}

finish() {
    printf '\n==> summary\n%-20s %-6s %9s\n' step result seconds
    local row name status secs
    for row in "${ROWS[@]}"; do
        IFS='|' read -r name status secs <<<"$row"
        printf '%-20s %-6s %9s\n' "$name" "$status" "$secs"
    done
    [[ -z "${1:-}" ]] || log "error: $1; stopping here"
    shopt -s nullglob
    python3 "$ROOT/scripts/junit_totals.py" "$MEADOW_JUNIT_DIR"/*.xml
    exit "$FAILED"
}

nox() { (cd "$ROOT" && "$ROOT/.venvs/nox/bin/nox" "$@"); }

# ---- environments: one that cannot be built stops the run ---------------------------
# Here in the main shell, so that a PATH change made to reach uv holds for every step.
ensure_uv
step "nox venv" ensure_nox
((STEP_RC == 0)) || finish "could not build nox's venv (.venvs/nox)"
if selected lint || selected core; then
    step "core: venv" nox -s core --install-only
    ((STEP_RC == 0)) || finish "could not build the core venv (.venv)"
fi
for name in "${ADAPTERS[@]}"; do
    if selected "$name" || selected lint; then
        step "$name: venv" nox -s "adapter-$name" --install-only
        ((STEP_RC == 0)) || finish "could not build the $name venv (.venvs/$name)"
    fi
done

# ---- lint ----------------------------------------------------------------------------
if selected lint; then
    step "lint" nox -s lint
    for part in core "${ADAPTERS[@]}"; do
        step "typecheck: $part" nox -s "typecheck-$part"
    done
fi

# ---- suites ---------------------------------------------------------------------------
# The adapters' suites run one after another in the background while the core suite
# runs: much of both is waiting (VMs booting, idle timeouts, orchestrator start-up),
# so on a 2-core machine side by side takes about the time of the core suite alone.
# Each suite's output goes to a file, printed in full when the core's ends.
adapter_chain() {
    local name t0 rc
    for name in "$@"; do
        t0=$EPOCHREALTIME rc=0
        nox -s "adapter-$name" >"$TMP/$name.out" 2>&1 || rc=$?
        printf '%s %s\n' "$rc" "$(seconds_since "$t0")" >"$TMP/$name.result"
    done
}

if selected core; then
    # The daemons the core suite runs against (docker daemon, base image, registry;
    # moto and the VM simulator are started by the tests themselves), stopped again by
    # the EXIT trap, plus the packages its other tests need (sshd, ip). Exported in this
    # shell, not a step's subshell: the variables `up` prints (registry, base image,
    # apt mirror) must reach pytest.
    SERVICES_STARTED=1
    printf '\n==> services up\n'
    t0=$EPOCHREALTIME rc=0
    exports="$("$ROOT/.venv/bin/python" -m meadow_devcloud.docker_stack up \
        --apt openssh-server socat iproute2)" && eval "$exports" || rc=$?
    record "services up" "$rc" "$(seconds_since "$t0")"
fi
CHAIN=()
for name in "${ADAPTERS[@]}"; do selected "$name" && CHAIN+=("$name"); done
if ((${#CHAIN[@]})); then
    set -m # its own process group, so an interrupted run can end all of it
    adapter_chain "${CHAIN[@]}" &
    BG_PID=$!
    set +m
fi
if selected core; then
    step "core: pytest" nox -s core -- "$@"
fi
if [[ -n "$BG_PID" ]]; then
    wait "$BG_PID" || true
    BG_PID=""
fi
for name in "${CHAIN[@]}"; do
    printf '\n==> %s: pytest (ran beside the core suite)\n' "$name"
    cat "$TMP/$name.out" 2>/dev/null || true
    read -r rc secs <"$TMP/$name.result" 2>/dev/null || { rc=1 secs=0; }
    record "$name: pytest" "$rc" "$secs"
done

finish
