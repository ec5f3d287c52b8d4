#!/usr/bin/env bash
# The whole test suite: lint (ruff + mypy), the core tests, and one smoke run
# per orchestrator, each orchestrator in a venv of its own.
#
#   bash scripts/test.sh                      # everything
#   bash scripts/test.sh -k transport -x      # extra args go to the core pytest run only
#   MEADOW_TEST_ONLY=lint,core bash scripts/test.sh
#   MEADOW_TEST_ONLY=prefect bash scripts/test.sh
#
# Parts: lint, core, airflow, prefect, dagster (MEADOW_TEST_ONLY, comma list;
# default all). Every part runs even if an earlier one failed; a venv that
# cannot be built stops the run. Exits non-zero if any part failed.
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=stack_docker.sh
source "$(dirname "${BASH_SOURCE[0]}")/stack_docker.sh"

# ---- Orchestrator pins (the one place to change them) -----------------------
# Airflow 3.3 and Prefect 3.9 cannot share a venv, hence one venv each.
AIRFLOW_PIN="apache-airflow==3.3.2"
PREFECT_PIN="prefect==3.9.1"
# Prefect 3.9.1 asks for certifi>=2026.10.19, which the package index does not
# have; 2026.10.18 is the newest there, so it is forced with uv's --override.
PREFECT_OVERRIDES=("certifi==2026.10.18")
DAGSTER_PIN="dagster==1.13.29"
# Installed beside each orchestrator to run its smoke tests.
ORCH_TEST_DEPS=(pytest pytest-timeout)
# ------------------------------------------------------------------------------

ALL_PARTS=(lint core airflow prefect dagster)

# CI runs us with no stdin; make sure nothing can wait on it either way.
exec </dev/null

TMP="$(mktemp -d "${TMPDIR:-/tmp}/meadow-test.XXXXXX")"
SERVICES_STARTED=0
ORCH_PID=""
cleanup() {
    if [[ -n "$ORCH_PID" ]]; then
        # Interrupted while the orchestrators' suites ran in the background: end
        # their whole process group (pytest and what it started).
        kill -TERM -- -"$ORCH_PID" 2>/dev/null || true
        wait "$ORCH_PID" 2>/dev/null || true
    fi
    if ((SERVICES_STARTED)); then
        printf '\n==> services down\n'
        docker_stack_down || true
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

# ---- step bookkeeping ----------------------------------------------------------
ROWS=()        # "name|PASS/FAIL|seconds|note" for the summary table
STEP_RC=0      # exit status of the last step
FAILED=0
JUNIT_FILES=() # one XML per pytest run, summed at the end

# step NAME CMD...: run CMD in a subshell with errexit on, time it, record it.
# Always returns 0 (so our own errexit does not fire); read STEP_RC instead.
step() {
    local name="$1"
    shift
    printf '\n==> %s\n' "$name"
    local t0=$EPOCHREALTIME
    set +e
    (set -e; "$@")
    STEP_RC=$?
    set -e
    local secs
    secs="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
    local status=PASS
    if ((STEP_RC != 0)); then
        status=FAIL
        FAILED=1
    fi
    printf '<== %s: %s in %ss\n' "$name" "$status" "$secs"
    ROWS+=("$name|$status|$secs|")
}

# note TEXT: attach TEXT to the last step's summary row.
note() { ROWS[-1]="${ROWS[-1]}$*"; }

print_summary() {
    printf '\n==> summary\n'
    printf '%-18s %-6s %9s  %s\n' "step" "result" "seconds" ""
    local row name status secs note
    for row in "${ROWS[@]}"; do
        IFS='|' read -r name status secs note <<<"$row"
        printf '%-18s %-6s %9s  %s\n' "$name" "$status" "$secs" "$note"
    done
}

# Sum the counts of all pytest runs from their JUnit XML files and print the
# one closing line CI reads: "N passed, M failed[, K skipped]".
print_totals() {
    python3 - "${JUNIT_FILES[@]}" <<'PY'
import os, sys
import xml.etree.ElementTree as ET

tests = failed = skipped = 0
for path in sys.argv[1:]:
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        continue  # that run died before writing its report; its step already failed
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.iter("testsuite")
    for s in suites:
        tests += int(s.get("tests", 0))
        failed += int(s.get("failures", 0)) + int(s.get("errors", 0))
        skipped += int(s.get("skipped", 0))
passed = tests - failed - skipped
line = f"{passed} passed, {failed} failed"
if skipped:
    line += f", {skipped} skipped"
print(line)
PY
}

# Called when a venv cannot be built: nothing after it can run meaningfully.
abort_run() {
    print_summary
    log "error: $1; stopping here"
    print_totals
    exit 1
}

# run_pytest PART PYTHON ARGS...: pytest writing $TMP/PART.xml for the totals.
# Exit 5 (no tests collected) counts as a failure: a suite that ran nothing
# must not pass.
run_pytest() {
    local part="$1" py="$2"
    shift 2
    local xml="$TMP/$part.xml"
    local rc=0
    (cd "$ROOT" && "$py" -m pytest -q --junitxml="$xml" "$@") || rc=$?
    if ((rc == 5)); then
        log "error: pytest collected no tests for '$part' (exit 5); treating that as a failure"
    fi
    return "$rc"
}

# Once, here in the main shell, so that a PATH change made to reach uv holds
# for every step below (steps run in subshells).
ensure_uv

# ---- lint + core -----------------------------------------------------------------
if selected lint || selected core; then
    step "core venv" ensure_core_venv
    ((STEP_RC == 0)) || abort_run "could not build the core venv (.venv)"
fi

# Steps run in a subshell, so a cd inside them stays there.
lint_ruff() { cd "$ROOT" && .venv/bin/ruff check .; }
# mypy reads its targets (meadow_core, strict) from pyproject.toml.
lint_mypy() { cd "$ROOT" && .venv/bin/mypy; }

if selected lint; then
    step "lint: ruff" lint_ruff
    step "lint: mypy" lint_mypy
fi

# The real services the core tests run against (docker daemon, base image,
# registry; moto and the VM simulator are started by the tests themselves).
# Started in this shell so that the variables they export reach pytest, and
# stopped again by the EXIT trap.
services_up() {
    local t0=$EPOCHREALTIME rc=0
    printf '\n==> services up\n'
    SERVICES_STARTED=1
    set +e
    (set -e; apt_ensure openssh-server socat iproute2) && docker_stack_up
    rc=$?
    set -e
    local secs status=PASS
    secs="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
    ((rc == 0)) || { status=FAIL; FAILED=1; }
    printf '<== services up: %s in %ss\n' "$status" "$secs"
    ROWS+=("services up|$status|$secs|")
}

# ---- orchestrators ---------------------------------------------------------------
# Version of a distribution installed in a venv.
dist_version() {
    "$1" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$2"
}

# install_orch NAME: build .venvs/NAME with meadow[NAME] + the pinned
# orchestrator + pytest; if the pin cannot be installed, fall back to the newest
# release the index can resolve, and say so.
install_orch() {
    local name="$1" venv="$ROOT/.venvs/$1"
    local pin dist fallback extras="$name"
    local -a extra=() more=()
    case "$name" in
        airflow)
            # Its tests also run the operator on the dev cloud (EC2 through moto).
            pin="$AIRFLOW_PIN" dist=apache-airflow fallback="" extras="airflow,aws"
            more=("moto[server]>=5.0")
            ;;
        prefect)
            # Its tests also run a flow's tasks on the dev cloud (EC2 through moto).
            pin="$PREFECT_PIN" dist=prefect fallback=prefect extras="prefect,aws"
            more=("moto[server]>=5.0")
            printf '%s\n' "${PREFECT_OVERRIDES[@]}" >"$TMP/prefect-overrides.txt"
            extra=(--override "$TMP/prefect-overrides.txt")
            ;;
        dagster)
            # Its tests also run a job's steps on the dev cloud (EC2 through moto).
            pin="$DAGSTER_PIN" dist=dagster fallback=dagster extras="dagster,aws"
            more=("moto[server]>=5.0")
            ;;
        *) die "unknown orchestrator $name" ;;
    esac

    ensure_uv
    make_venv "$venv"
    cd "$ROOT"
    local -a base=(uv pip install --quiet --python "$venv/bin/python" -e ".[$extras]" -e ./devcloud "${ORCH_TEST_DEPS[@]}" "${more[@]}")
    local how="pinned"
    if ! "${base[@]}" "${extra[@]}" "$pin"; then
        [[ -n "$fallback" ]] || return 1
        log "warning: could not install $pin; falling back to the newest '$fallback' that resolves"
        "${base[@]}" "$fallback"
        how="FALLBACK, pin $pin failed"
    fi
    local version
    version="$(dist_version "$venv/bin/python" "$dist")"
    log "installed: $dist $version ($how)"
    printf '%s %s (%s)\n' "$dist" "$version" "$how" >"$TMP/$name.version"
}

# The smoke tests of one orchestrator, in its own venv. Each orchestrator's
# state (config, sqlite db, ...) goes to a throwaway home, not to $HOME.
orch_tests() {
    local name="$1"
    export AIRFLOW_HOME="$TMP/home/airflow" PREFECT_HOME="$TMP/home/prefect" \
        DAGSTER_HOME="$TMP/home/dagster"
    mkdir -p "$AIRFLOW_HOME" "$PREFECT_HOME" "$DAGSTER_HOME"
    run_pytest "$name" "$ROOT/.venvs/$name/bin/python" "integrations/$name/tests"
}

ORCHESTRATORS=()
for name in airflow prefect dagster; do
    selected "$name" || continue
    step "$name: venv" install_orch "$name"
    if [[ -f "$TMP/$name.version" ]]; then note "$(cat "$TMP/$name.version")"; fi
    ((STEP_RC == 0)) || abort_run "could not build the $name venv (.venvs/$name)"
    ORCHESTRATORS+=("$name")
done

# The orchestrators' suites run one after another in the background while the
# core suite runs: much of both is waiting (VMs booting, idle timeouts, task
# visibility timeouts, orchestrator start-up), so on this 2-core machine side
# by side takes about the time of the core suite alone instead of the sum.
# Each suite's output goes to a file, printed in full when the core's ends.
orch_chain() {
    local name t0 rc secs
    for name in "${ORCHESTRATORS[@]}"; do
        t0=$EPOCHREALTIME rc=0
        (set -e; orch_tests "$name") >"$TMP/$name.out" 2>&1 || rc=$?
        secs="$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')"
        printf '%s %s\n' "$rc" "$secs" >"$TMP/$name.result"
    done
}

ORCH_PID=""
if selected core; then
    services_up
fi
if ((${#ORCHESTRATORS[@]})); then
    set -m # its own process group, so an interrupted run can end all of it
    orch_chain &
    ORCH_PID=$!
    set +m
fi
if selected core; then
    JUNIT_FILES+=("$TMP/core.xml")
    step "core: pytest" run_pytest core "$ROOT/.venv/bin/python" tests "$@"
fi
if [[ -n "$ORCH_PID" ]]; then
    wait "$ORCH_PID" || true
    ORCH_PID=""
fi
for name in "${ORCHESTRATORS[@]}"; do
    JUNIT_FILES+=("$TMP/$name.xml")
    printf '\n==> %s: pytest (ran beside the core suite)\n' "$name"
    cat "$TMP/$name.out" 2>/dev/null || true
    read -r rc secs <"$TMP/$name.result" 2>/dev/null || { rc=1 secs=0; }
    status=PASS
    if ((rc != 0)); then
        status=FAIL
        FAILED=1
    fi
    printf '<== %s: pytest: %s in %ss\n' "$name" "$status" "$secs"
    ROWS+=("$name: pytest|$status|$secs|")
done

print_summary
print_totals
exit "$FAILED"
