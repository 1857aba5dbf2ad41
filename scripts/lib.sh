# shellcheck shell=bash
# Shared setup for scripts/test and scripts/demo. Source it; do not run it.
#
# Everything here is idempotent and silent when the thing is already in place,
# so both scripts can call every ensure_* function unconditionally. Installed
# tools live in a cache outside the clone ($MONGOTAP_CACHE) so that fresh
# clones on the same machine reuse them instead of rebuilding FerretDB.

set -euo pipefail

MONGOTAP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MONGOTAP_CACHE=${MONGOTAP_CACHE:-$HOME/.cache/mongotap}
export MONGOTAP_CACHE

FERRETDB_VERSION=v1.24.2
FERRETDB_BIN=$MONGOTAP_CACHE/bin/ferretdb
VENV_DIR=$MONGOTAP_CACHE/venv
PY_REQUIREMENTS=$MONGOTAP_ROOT/tests/clients/python/requirements.txt

step() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Serialises installs into the shared cache: two clones running scripts/test at
# the same time must not build into the same directory at once.
with_cache_lock() {
    mkdir -p "$MONGOTAP_CACHE"
    (
        flock 9
        "$@"
    ) 9>"$MONGOTAP_CACHE/.install.lock"
}

# Root runs apt-get directly; anyone else needs sudo (CI images usually run as root).
_as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

_MONGOTAP_APT_UPDATED=
# ensure_apt PKG... installs only the Debian packages that are missing, and runs
# `apt-get update` at most once per script run (and only if something is missing).
ensure_apt() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
    step "installing Debian packages: ${missing[*]}"
    if [ -z "$_MONGOTAP_APT_UPDATED" ]; then
        _as_root apt-get update -qq >/dev/null
        _MONGOTAP_APT_UPDATED=1
    fi
    _as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Tools every script needs: a C compiler (ring and zstd-sys build C code),
# flock for the cache lock, curl for the demo's admin calls.
ensure_base_tools() {
    local pkgs=()
    command -v cc >/dev/null || pkgs+=(gcc libc6-dev)
    command -v flock >/dev/null || pkgs+=(util-linux)
    command -v curl >/dev/null || pkgs+=(curl ca-certificates)
    command -v tshark >/dev/null || pkgs+=(tshark) # tests/capture.rs decodes `capture export` output
    [ "${#pkgs[@]}" -eq 0 ] || ensure_apt "${pkgs[@]}"
}

# Headless Chromium for tests/console.rs (the incident console in a real
# browser), from Debian's packages.
ensure_chromium() {
    command -v chromium >/dev/null || ensure_apt chromium
}

# Rust cannot come from apt (Debian 12 ships 1.63; the workspace needs 1.85+),
# and rustup's site is not a package registry, so a missing toolchain is fatal.
ensure_rust() {
    if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH=$HOME/.cargo/bin:$PATH
    fi
    command -v cargo >/dev/null || die "cargo not found: install Rust 1.85+ with rustup"
    # scripts/test runs clippy; rustup's minimal profile leaves it out.
    if ! cargo clippy --version >/dev/null 2>&1; then
        command -v rustup >/dev/null || die "cargo clippy not found: install the clippy component"
        step "installing clippy (rustup component add clippy)"
        rustup component add clippy
    fi
}

# FerretDB v1.24.2 needs Go >= 1.24. Go 1.21+ fetches a newer toolchain through
# the module proxy by itself (GOTOOLCHAIN=auto), so only older or absent Go fails.
ensure_go() {
    if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
        export PATH=/usr/local/go/bin:$PATH
    fi
    command -v go >/dev/null || ensure_apt golang-go
    local minor
    minor=$(go env GOVERSION | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
    [ "${minor:-0}" -ge 21 ] || die "Go $(go env GOVERSION) is too old to build FerretDB; install Go 1.24+"
}

_ferretdb_ok() {
    [ -x "$FERRETDB_BIN" ] && "$FERRETDB_BIN" --version 2>/dev/null | grep -qx "version: $FERRETDB_VERSION"
}

# Builds FerretDB into $MONGOTAP_CACHE/bin. Two workarounds, both needed here:
# - `go install ...@v1.24.2` fails: it asks the proxy for the version list to
#   check deprecation and gets 403. Adding it as a requirement of a scratch
#   module with an exact version (`go get -tool`) avoids that lookup.
# - The module zip lacks the generated build/version/version.txt, and FerretDB
#   panics at init without it. Go refuses overlays into the module cache, so
#   the build uses a writable copy of the module (a `replace`) with that file.
_build_ferretdb() {
    _ferretdb_ok && return 0 # another process may have built it while we waited
    ensure_go
    step "building FerretDB $FERRETDB_VERSION into $MONGOTAP_CACHE/bin (1-4 min the first time)"
    local work=$MONGOTAP_CACHE/build/ferretdb-$FERRETDB_VERSION
    if [ -d "$work" ]; then chmod -R u+w "$work" && rm -rf "$work"; fi
    mkdir -p "$work" "$MONGOTAP_CACHE/bin"
    (
        cd "$work"
        # The cache may sit inside a git checkout; VCS stamping would then fail.
        export GOFLAGS=-buildvcs=false
        go mod init mongotap.local/ferretdb-tool >build.log 2>&1 ||
            { cat build.log >&2; exit 1; }
        go get -tool "github.com/FerretDB/FerretDB/cmd/ferretdb@$FERRETDB_VERSION" >>build.log 2>&1 ||
            { cat build.log >&2; exit 1; }
        local src
        src=$(go list -m -f '{{.Dir}}' github.com/FerretDB/FerretDB)
        cp -R "$src" ferretdb-src
        chmod -R u+w ferretdb-src
        echo "$FERRETDB_VERSION" >ferretdb-src/build/version/version.txt
        go mod edit -replace github.com/FerretDB/FerretDB=./ferretdb-src
        go build -o "$FERRETDB_BIN.tmp" github.com/FerretDB/FerretDB/cmd/ferretdb >>build.log 2>&1 ||
            { cat build.log >&2; exit 1; }
    )
    mv -f "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
    _ferretdb_ok || die "built $FERRETDB_BIN but \`ferretdb --version\` does not report $FERRETDB_VERSION"
    chmod -R u+w "$work" && rm -rf "$work"
}

ensure_ferretdb() {
    _ferretdb_ok || with_cache_lock _build_ferretdb
}

JAEGER_VERSION=v1.76.0
JAEGER_BIN=$MONGOTAP_CACHE/bin/jaeger

_jaeger_ok() {
    [ -x "$JAEGER_BIN" ] && [ "$(cat "$JAEGER_BIN.version" 2>/dev/null)" = "$JAEGER_VERSION" ]
}

# Builds Jaeger (the OTel-collector-based all-in-one, a real OTLP trace
# backend for tests/otel.rs) into $MONGOTAP_CACHE/bin, the same way as
# FerretDB: a scratch module with an exact `go get -tool` version, because the
# proxy refuses the version list `go install ...@v` asks for. About 6 min and
# 121 MB the first time.
_build_jaeger() {
    _jaeger_ok && return 0
    ensure_go
    step "building Jaeger $JAEGER_VERSION into $MONGOTAP_CACHE/bin (about 6 min the first time)"
    local work=$MONGOTAP_CACHE/build/jaeger-$JAEGER_VERSION
    if [ -d "$work" ]; then chmod -R u+w "$work" && rm -rf "$work"; fi
    mkdir -p "$work" "$MONGOTAP_CACHE/bin"
    (
        cd "$work"
        export GOFLAGS=-buildvcs=false
        go mod init mongotap.local/jaeger-tool >build.log 2>&1 ||
            { cat build.log >&2; exit 1; }
        go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" >>build.log 2>&1 ||
            { cat build.log >&2; exit 1; }
        go build -o "$JAEGER_BIN.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >>build.log 2>&1 ||
            { cat build.log >&2; exit 1; }
    )
    mv -f "$JAEGER_BIN.tmp" "$JAEGER_BIN"
    echo "$JAEGER_VERSION" >"$JAEGER_BIN.version"
    chmod -R u+w "$work" && rm -rf "$work"
}

ensure_jaeger() {
    _jaeger_ok || with_cache_lock _build_jaeger
}

# The venv is keyed by a hash of requirements.txt: changing a pin rebuilds it.
_venv_ok() {
    local want
    want=$(sha256sum <"$PY_REQUIREMENTS" | cut -d' ' -f1)
    [ -x "$VENV_DIR/bin/python" ] &&
        [ "$(cat "$VENV_DIR/.requirements.sha256" 2>/dev/null)" = "$want" ] &&
        "$VENV_DIR/bin/python" -c 'import pymongo' 2>/dev/null
}

_build_venv() {
    _venv_ok && return 0
    command -v python3 >/dev/null || ensure_apt python3
    python3 -c 'import venv, ensurepip' 2>/dev/null || ensure_apt python3-venv
    step "creating Python venv at $VENV_DIR from ${PY_REQUIREMENTS#"$MONGOTAP_ROOT"/}"
    rm -rf "$VENV_DIR"
    python3 -m venv "$VENV_DIR"
    "$VENV_DIR/bin/pip" install -q --disable-pip-version-check --no-input -r "$PY_REQUIREMENTS"
    sha256sum <"$PY_REQUIREMENTS" | cut -d' ' -f1 >"$VENV_DIR/.requirements.sha256"
}

ensure_venv() {
    _venv_ok || with_cache_lock _build_venv
}

# A build directory shared by every clone on this machine, unless the caller
# chose one: a fresh clone then compiles only what changed.
use_shared_target_dir() {
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$MONGOTAP_CACHE/target}
}

# Environment the Rust integration tests read (see tests/support/mod.rs).
export_test_env() {
    export MONGOTAP_FERRETDB=$FERRETDB_BIN
    export MONGOTAP_PYTHON=$VENV_DIR/bin/python
    export MONGOTAP_JAEGER=$JAEGER_BIN
}

# start_ferretdb DIR: starts a throwaway FerretDB (SQLite files, state and
# ferretdb.log in DIR) on a free port and waits until it accepts. Sets
# ferret_pid and ferret_port; the caller stops it. A free port can be taken
# between choosing and binding it, so it tries three ports.
start_ferretdb() {
    local dir=$1
    ferret_pid=
    for _ in 1 2 3; do
        ferret_port=$(free_port)
        "$FERRETDB_BIN" --handler=sqlite --sqlite-url="file:$dir/" --state-dir="$dir" \
            --listen-addr="127.0.0.1:$ferret_port" --debug-addr=127.0.0.1:0 \
            --telemetry=disable --log-level=warn >"$dir/ferretdb.log" 2>&1 &
        ferret_pid=$!
        wait_for_port "$ferret_port" 15 && return 0
        kill "$ferret_pid" 2>/dev/null || true
        wait "$ferret_pid" 2>/dev/null || true
        ferret_pid=
    done
    cat "$dir/ferretdb.log" >&2
    die "FerretDB did not start"
}

# Prints a free TCP port on 127.0.0.1. The port is released before use, so a
# caller should be ready to retry if something else grabs it first.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_for_port PORT SECONDS: true once something accepts TCP on 127.0.0.1:PORT.
wait_for_port() {
    local port=$1 deadline=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$deadline" ]; do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
