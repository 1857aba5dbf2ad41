# shellcheck shell=bash
# Builds the driver-matrix client programs (tests/clients/{go,node,java}) into
# the tool cache, once, and exports where they are for tests/drivers.rs.
# Source it after scripts/lib.sh; do not run it.
#
# Like lib.sh, every ensure_* here is idempotent and silent when its client is
# already built: each build is stamped with a hash of its sources (and of this
# file), so a fresh clone with unchanged sources reuses the cached build, and
# changing a source or a pin rebuilds just that client. Downloads are cached
# too: Go modules in $MONGOTAP_CACHE/go/mod, npm's cache in
# $MONGOTAP_CACHE/npm, Maven's repository in $MONGOTAP_CACHE/m2.
#
# Python needs nothing here: tests/clients/python/matrix.py runs in the venv
# ensure_venv builds from requirements.txt. Rust needs nothing either: its
# workload is a module of tests/drivers.rs on the workspace's `mongodb`.

CLIENTS_DIR=$MONGOTAP_CACHE/clients
CLIENTS_SRC=$MONGOTAP_ROOT/tests/clients
GO_CLIENT_BIN=$CLIENTS_DIR/go/mongotap-go-client
NODE_CLIENT_DIR=$CLIENTS_DIR/node
JAVA_CLIENT_JAR=$CLIENTS_DIR/java/mongotap-java-client.jar

# _client_hash DIR: one hash over every file of a client's sources (paths and
# contents, build output and dependencies excluded) and over this script.
_client_hash() {
    {
        (cd "$1" && find . -type f ! -path './node_modules/*' ! -path './target/*' | LC_ALL=C sort | xargs sha256sum)
        sha256sum <"$MONGOTAP_ROOT/scripts/clients.sh"
    } | sha256sum | cut -d' ' -f1
}

# _built OUTPUT HASH: true when OUTPUT exists and was built from sources with HASH.
_built() {
    [ -e "$1" ] && [ "$(cat "$1.stamp" 2>/dev/null)" = "$2" ]
}

# _logged LOG CMD...: runs CMD with its output in LOG, shown only if it fails.
_logged() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 || {
        cat "$log" >&2
        die "failed: $* (log: $log)"
    }
}

# --- Go: go.mongodb.org/mongo-driver/v2, pinned in tests/clients/go/go.mod ---

_build_go_client() {
    local want
    want=$(_client_hash "$CLIENTS_SRC/go")
    _built "$GO_CLIENT_BIN" "$want" && return 0 # built by another process meanwhile
    ensure_go
    step "building the Go driver client into $CLIENTS_DIR/go"
    mkdir -p "$CLIENTS_DIR/go"
    (
        cd "$CLIENTS_SRC/go" || exit
        # -mod=readonly: go.sum is committed and must already be complete.
        export GOFLAGS="-buildvcs=false -mod=readonly" GOMODCACHE=$MONGOTAP_CACHE/go/mod
        _logged "$CLIENTS_DIR/go/build.log" go build -trimpath -o "$GO_CLIENT_BIN.tmp" .
    )
    mv -f "$GO_CLIENT_BIN.tmp" "$GO_CLIENT_BIN"
    echo "$want" >"$GO_CLIENT_BIN.stamp"
}

ensure_go_client() {
    _built "$GO_CLIENT_BIN" "$(_client_hash "$CLIENTS_SRC/go")" || with_cache_lock _build_go_client
}

# --- Node: mongodb, snappy and @mongodb-js/zstd, locked in package-lock.json ---

# node-gyp as npm bundles it; it compiles @mongodb-js/zstd below.
_node_gyp() {
    local bundled
    bundled=$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js
    if [ -f "$bundled" ]; then
        node "$bundled" "$@"
    else
        npm exec --yes --cache "$MONGOTAP_CACHE/npm" --package=node-gyp@12.4.0 -- node-gyp "$@"
    fi
}

_build_node_client() {
    local want
    want=$(_client_hash "$CLIENTS_SRC/node")
    _built "$NODE_CLIENT_DIR/client.js" "$want" && return 0
    command -v node >/dev/null || die "node not found: the Node client needs Node.js 20.19+ with npm"
    node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' ||
        die "Node.js $(node --version) is too old: mongodb 7 needs 20.19+"
    # A C++ toolchain and the zstd headers, for the zstd addon (see below).
    ensure_apt g++ make libzstd-dev
    step "installing the Node driver client into $NODE_CLIENT_DIR"
    local work=$CLIENTS_DIR/node.tmp
    rm -rf "$work"
    mkdir -p "$work"
    cp "$CLIENTS_SRC/node/package.json" "$CLIENTS_SRC/node/package-lock.json" "$CLIENTS_SRC/node/client.js" "$work/"
    # No install scripts: snappy's native code arrives as an npm package of its
    # own (@napi-rs/snappy-linux-x64-gnu), but @mongodb-js/zstd's script
    # downloads a prebuilt addon from outside the npm registry, or else zstd's
    # source, and neither can be reached here.
    (cd "$work" && _logged "$work/npm.log" npm ci --ignore-scripts --no-audit --no-fund \
        --cache "$MONGOTAP_CACHE/npm")
    # So the addon is compiled here instead, against Debian's zstd: its
    # binding.gyp expects zstd's headers in deps/zstd/lib and links
    # deps/zstd/out/lib/libzstd.a. Debian's libzstd.a is not position
    # independent and cannot go into a shared object, so that path names the
    # shared libzstd.so.1 (which the linker recognises by content, not name)
    # and the addon loads the system's libzstd at run time.
    local zstd=$work/node_modules/@mongodb-js/zstd multiarch nodedir
    multiarch=$(gcc -print-multiarch)
    nodedir=$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")
    [ -f "$nodedir/include/node/node_api.h" ] ||
        die "no Node.js headers under $nodedir/include/node: node-gyp would try to download them"
    mkdir -p "$zstd/deps/zstd/lib" "$zstd/deps/zstd/out/lib"
    cp /usr/include/zstd.h /usr/include/zstd_errors.h /usr/include/zdict.h "$zstd/deps/zstd/lib/"
    ln -sf "/usr/lib/$multiarch/libzstd.so.1" "$zstd/deps/zstd/out/lib/libzstd.a"
    (cd "$zstd" && _logged "$work/node-gyp.log" _node_gyp rebuild --nodedir="$nodedir")
    (cd "$work" && _logged "$work/check.log" node -e '
        const zstd = require("@mongodb-js/zstd"), snappy = require("snappy");
        if (snappy.uncompressSync(snappy.compressSync("ok")).toString() !== "ok") process.exit(1);
        zstd.compress(Buffer.from("ok"), 3).then(zstd.decompress)
            .then((b) => process.exit(b.toString() === "ok" ? 0 : 1));')
    rm -rf "$NODE_CLIENT_DIR"
    mv "$work" "$NODE_CLIENT_DIR"
    echo "$want" >"$NODE_CLIENT_DIR/client.js.stamp"
}

ensure_node_client() {
    _built "$NODE_CLIENT_DIR/client.js" "$(_client_hash "$CLIENTS_SRC/node")" || with_cache_lock _build_node_client
}

# --- Java: org.mongodb:mongodb-driver-sync, pinned in tests/clients/java/pom.xml ---

_build_java_client() {
    local want
    want=$(_client_hash "$CLIENTS_SRC/java")
    _built "$JAVA_CLIENT_JAR" "$want" && return 0
    command -v javac >/dev/null || ensure_apt openjdk-17-jdk-headless
    command -v mvn >/dev/null || ensure_apt maven
    step "building the Java driver client into $CLIENTS_DIR/java"
    local work=$MONGOTAP_CACHE/build/java-client
    rm -rf "$work"
    mkdir -p "$work" "$CLIENTS_DIR/java"
    cp -R "$CLIENTS_SRC/java/pom.xml" "$CLIENTS_SRC/java/src" "$work/"
    _logged "$CLIENTS_DIR/java/build.log" mvn -B -q -ntp -Dstyle.color=never -f "$work/pom.xml" \
        -Dmaven.repo.local="$MONGOTAP_CACHE/m2" -Dmaven.test.skip=true package
    mv -f "$work/target/mongotap-java-client.jar" "$JAVA_CLIENT_JAR"
    echo "$want" >"$JAVA_CLIENT_JAR.stamp"
    rm -rf "$work"
}

ensure_java_client() {
    _built "$JAVA_CLIENT_JAR" "$(_client_hash "$CLIENTS_SRC/java")" || with_cache_lock _build_java_client
}

# Builds whatever is missing and exports the paths tests/drivers.rs reads.
ensure_clients() {
    ensure_go_client
    ensure_node_client
    ensure_java_client
    export MONGOTAP_GO_CLIENT=$GO_CLIENT_BIN
    export MONGOTAP_NODE_CLIENT_DIR=$NODE_CLIENT_DIR
    export MONGOTAP_JAVA_CLIENT_JAR=$JAVA_CLIENT_JAR
}
