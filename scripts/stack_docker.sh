#!/usr/bin/env bash
# The container test stack: Debian's dockerd, a base image built offline with
# debootstrap, and Debian's docker-registry on loopback.
#
#   bash scripts/stack_docker.sh up      # prints `export MEADOW_TEST_...=...` lines
#   bash scripts/stack_docker.sh down
#   source scripts/stack_docker.sh; docker_stack_up; ...; docker_stack_down
#
# `up` is idempotent and fast once everything runs: it installs only missing
# packages, starts dockerd only if no daemon answers (and remembers that it did),
# rebuilds the base image only if it is missing (the debootstrap rootfs is cached
# under /var/cache/meadow-test/, so that costs ~5 s instead of ~60 s) and starts
# the registry only if it is not already answering. `down` stops the registry,
# removes every container labelled `meadow` and stops dockerd only if `up`
# started it. Needs root (apt-get, dockerd, debootstrap).
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DOCKER_STACK_SUITE="bookworm"
DOCKER_STACK_BASE_IMAGE="meadow-base:${DOCKER_STACK_SUITE}"
DOCKER_STACK_BASE_PACKAGES="python3,python3-venv,python3-pip"
DOCKER_STACK_REGISTRY="127.0.0.1:5000"
DOCKER_STACK_CACHE="${MEADOW_TEST_CACHE:-/var/cache/meadow-test}"
DOCKER_STACK_STATE="${MEADOW_TEST_STATE:-/run/meadow-test/docker}"

# The first Debian mirror of the machine's own apt sources (deb822 .sources files
# or one-line sources.list). Never hard-coded: CI may use a mirror of its own.
_docker_stack_mirror() {
    local mirror=""
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f "$f" ]] || continue
        mirror="$(awk '
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-/) ok = 1 }
            /^[[:space:]]*$/ { if (uri != "" && ok) { print uri; exit } uri = ""; ok = 0 }
            END { if (uri != "" && ok) print uri }' "$f" | head -n1)"
        [[ -n "$mirror" ]] && break
    done
    if [[ -z "$mirror" ]]; then
        for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [[ -f "$f" ]] || continue
            mirror="$(awk '$1 == "deb" && $0 !~ /security/ {
                for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { print $i; exit } }' "$f")"
            [[ -n "$mirror" ]] && break
        done
    fi
    [[ -n "$mirror" ]] || die "no Debian mirror found in /etc/apt/sources.list{,.d}"
    printf '%s\n' "$mirror"
}

_docker_stack_install() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}" >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; } \
        || die "apt-get install ${missing[*]} failed"
}

_docker_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# A pid from a state file, if that process still runs and is what we think it is.
_docker_stack_pid() {
    local file="$DOCKER_STACK_STATE/$1.pid" pid
    [[ -f "$file" ]] || return 1
    pid="$(cat "$file")"
    if [[ -n "$pid" ]] && grep -qa "$2" "/proc/$pid/cmdline" 2>/dev/null; then
        printf '%s\n' "$pid"
        return 0
    fi
    rm -f "$file"
    return 1
}

_docker_stack_dockerd() {
    if _docker_answers; then
        return 0
    fi
    log "starting dockerd"
    # setsid: the daemon is nobody's child, so it survives this script.
    setsid dockerd --host unix:///var/run/docker.sock \
        >"$DOCKER_STACK_STATE/dockerd.log" 2>&1 </dev/null &
    echo $! >"$DOCKER_STACK_STATE/dockerd.pid"
    local i
    for ((i = 0; i < 300; i++)); do
        _docker_answers && return 0
        if ! kill -0 "$(cat "$DOCKER_STACK_STATE/dockerd.pid")" 2>/dev/null; then
            tail -n 20 "$DOCKER_STACK_STATE/dockerd.log" >&2
            die "dockerd exited at start (log above)"
        fi
        sleep 0.1
    done
    die "dockerd did not answer within 30 s (see $DOCKER_STACK_STATE/dockerd.log)"
}

_docker_stack_base_image() {
    if docker image inspect "$DOCKER_STACK_BASE_IMAGE" >/dev/null 2>&1; then
        return 0
    fi
    local key tarball
    key="$(printf '%s %s' "$DOCKER_STACK_SUITE" "$DOCKER_STACK_BASE_PACKAGES" \
        | sha256sum | cut -c1-12)"
    tarball="$DOCKER_STACK_CACHE/rootfs-$DOCKER_STACK_SUITE-$key.tar"
    if [[ ! -f "$tarball" ]]; then
        local mirror rootfs
        mirror="$(_docker_stack_mirror)"
        mkdir -p "$DOCKER_STACK_CACHE"
        rootfs="$(mktemp -d "$DOCKER_STACK_CACHE/rootfs.XXXXXX")"
        log "debootstrap $DOCKER_STACK_SUITE from $mirror (about a minute, cached afterwards)"
        if ! debootstrap --variant=minbase --include="$DOCKER_STACK_BASE_PACKAGES" \
            "$DOCKER_STACK_SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
            tail -n 20 "$rootfs.log" >&2
            rm -rf "$rootfs" "$rootfs.log"
            die "debootstrap failed (log above)"
        fi
        # The machine's mirror stays out of the image: builds that need apt bring
        # their own sources (MEADOW_APT_MIRROR), so no CI address is baked in.
        printf '# No apt sources: Meadow builds add a mirror only while installing.\n' \
            >"$rootfs/etc/apt/sources.list"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/debootstrap
        tar -C "$rootfs" -cf "$tarball.partial" .
        mv "$tarball.partial" "$tarball"
        rm -rf "$rootfs" "$rootfs.log"
    fi
    log "importing $DOCKER_STACK_BASE_IMAGE from $tarball"
    docker import --change 'CMD ["python3"]' "$tarball" "$DOCKER_STACK_BASE_IMAGE" >/dev/null
}

_registry_answers() {
    python3 - "$DOCKER_STACK_REGISTRY" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}/v2/", timeout=1).read()
EOF
}

_docker_stack_registry() {
    if _registry_answers; then
        return 0
    fi
    local storage config
    storage="$(mktemp -d "${TMPDIR:-/tmp}/meadow-registry.XXXXXX")"
    echo "$storage" >"$DOCKER_STACK_STATE/registry.storage"
    config="$DOCKER_STACK_STATE/registry.yml"
    cat >"$config" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $storage
  delete:
    enabled: true
http:
  addr: $DOCKER_STACK_REGISTRY
EOF
    log "starting docker-registry on $DOCKER_STACK_REGISTRY"
    setsid docker-registry serve "$config" \
        >"$DOCKER_STACK_STATE/registry.log" 2>&1 </dev/null &
    echo $! >"$DOCKER_STACK_STATE/registry.pid"
    local i
    for ((i = 0; i < 100; i++)); do
        _registry_answers && return 0
        sleep 0.05
    done
    tail -n 20 "$DOCKER_STACK_STATE/registry.log" >&2
    die "docker-registry did not answer on $DOCKER_STACK_REGISTRY (log above)"
}

docker_stack_up() {
    mkdir -p "$DOCKER_STACK_STATE"
    _docker_stack_install
    _docker_stack_dockerd
    _docker_stack_base_image
    _docker_stack_registry
    export MEADOW_TEST_REGISTRY="$DOCKER_STACK_REGISTRY"
    export MEADOW_TEST_BASE_IMAGE="$DOCKER_STACK_BASE_IMAGE"
    MEADOW_TEST_APT_MIRROR="$(_docker_stack_mirror)"
    export MEADOW_TEST_APT_MIRROR
}

docker_stack_down() {
    local pid
    if pid="$(_docker_stack_pid registry docker-registry)"; then
        kill "$pid" 2>/dev/null || true
        rm -f "$DOCKER_STACK_STATE/registry.pid"
    fi
    if [[ -f "$DOCKER_STACK_STATE/registry.storage" ]]; then
        rm -rf "$(cat "$DOCKER_STACK_STATE/registry.storage")"
        rm -f "$DOCKER_STACK_STATE/registry.storage"
    fi
    if _docker_answers; then
        local leftovers
        leftovers="$(docker ps -aq --filter label=meadow)"
        if [[ -n "$leftovers" ]]; then
            log "removing containers labelled meadow: $(echo "$leftovers" | wc -l)"
            # shellcheck disable=SC2086
            docker rm -f $leftovers >/dev/null
        fi
    fi
    if pid="$(_docker_stack_pid dockerd dockerd)"; then
        log "stopping dockerd (started by docker_stack_up)"
        kill "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 200; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
        rm -f "$DOCKER_STACK_STATE/dockerd.pid"
    fi
    return 0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    case "${1:-}" in
        up)
            docker_stack_up
            printf 'export MEADOW_TEST_REGISTRY=%s\n' "$MEADOW_TEST_REGISTRY"
            printf 'export MEADOW_TEST_BASE_IMAGE=%s\n' "$MEADOW_TEST_BASE_IMAGE"
            printf 'export MEADOW_TEST_APT_MIRROR=%s\n' "$MEADOW_TEST_APT_MIRROR"
            ;;
        down) docker_stack_down ;;
        *) die "usage: $0 up|down" ;;
    esac
fi
