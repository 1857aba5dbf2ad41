#!/usr/bin/env bash
# What TLS on the client side costs mongotap: the same proxy binary twice in
# front of one scripted upstream, one instance listening in plaintext and
# one with [tls.client], measured by bench-load in turn.
#
# 1. Throughput: closed-loop finds over long-lived connections, plaintext vs
#    TLS, at each connection count. Reports the TLS/plaintext ratio.
# 2. Handshakes: each connection slot loops over connect, TLS handshake
#    (full, no resumption), hello and close. Reports new connections per
#    second with and without TLS. Each one also makes mongotap open its
#    upstream connection, as in production.
#
# Runs are interleaved (each round measures both listeners at each count) so
# drift on this shared 2-core machine hits both alike; tables show medians.
# Besides rates, each run records the CPU time the mongotap process used per
# op (from /proc, over warm-up and measured time): mongotap's own cost,
# apart from the load client's TLS work on the same cores.
#
# Usage: bench/tls.sh
# Environment (defaults in brackets):
#   ROUNDS [10]             rounds; keep it even, so each listener runs first equally often
#   CONNS ["1 16 64"]       connection counts for the throughput runs
#   HS_CONNS ["1 8"]        concurrent connection slots for the handshake runs
#   DURATION [2]            measured seconds per run (short runs, many rounds: the
#                           machine's drift has a period of tens of seconds)
#   WARMUP [0.5]            unmeasured seconds before each run
#   UPSTREAM_DOCS [1]       documents in each find reply (bigger replies: more bytes to encrypt)
#   TLS_KEY [ec]            server key: ec (P-256) or rsa (2048 bits)
#   LOAD_RUNTIME [current]  tokio flavour of bench-load
#   MONGOTAP_BIN [target/release/mongotap]   a given binary is used as is
#   MONGOTAP_ARGS []        extra `mongotap proxy` arguments for both instances
#   BENCH_RAW []            also write every run's raw result to this file
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "bench/tls.sh: $*" >&2; exit 1; }
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
    "") ;;
    *) die "unknown argument $1 (see --help)" ;;
esac

ROUNDS=${ROUNDS:-10}
CONNS=${CONNS:-"1 16 64"}
HS_CONNS=${HS_CONNS:-"1 8"}
DURATION=${DURATION:-2}
WARMUP=${WARMUP:-0.5}
UPSTREAM_DOCS=${UPSTREAM_DOCS:-1}
TLS_KEY=${TLS_KEY:-ec}
LOAD_RUNTIME=${LOAD_RUNTIME:-current}
MONGOTAP_ARGS=${MONGOTAP_ARGS:-}
BENCH_RAW=${BENCH_RAW:-}

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bin=${CARGO_TARGET_DIR:-$repo/target}/release
build_mongotap=1
[ -n "${MONGOTAP_BIN:-}" ] && build_mongotap=0
MONGOTAP_BIN=${MONGOTAP_BIN:-$bin/mongotap}

tmp=$(mktemp -d -t mongotap-bench-tls.XXXXXX)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build ------------------------------------------------------------------
echo "building bench helpers (release)..." >&2
cargo build --release -p mongotap-bench >&2 || die "building mongotap-bench failed"
if [ "$build_mongotap" = 1 ]; then
    echo "building mongotap (release)..." >&2
    cargo build --release -p mongotap >&2 || die "building mongotap failed"
fi
[ -x "$MONGOTAP_BIN" ] || die "$MONGOTAP_BIN does not exist"
command -v openssl >/dev/null || die "openssl is needed to make the test certificates"

# --- certificates: a CA and a server certificate for 127.0.0.1 ---------------
case "$TLS_KEY" in
    ec) newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
    rsa) newkey=(-newkey rsa:2048) ;;
    *) die "TLS_KEY must be ec or rsa, not $TLS_KEY" ;;
esac
{
    openssl req -x509 "${newkey[@]}" -nodes -days 2 -subj "/CN=mongotap bench CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$tmp/ca.key" -out "$tmp/ca.pem"
    openssl req "${newkey[@]}" -nodes -subj "/CN=localhost" \
        -keyout "$tmp/server.key" -out "$tmp/server.csr"
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "extendedKeyUsage=serverAuth" \
        "basicConstraints=CA:FALSE" >"$tmp/server.ext"
    openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" \
        -CAcreateserial -days 2 -extfile "$tmp/server.ext" -out "$tmp/server.pem"
} >"$tmp/openssl.log" 2>&1 || { cat "$tmp/openssl.log" >&2; die "openssl failed"; }

# --- helpers ----------------------------------------------------------------
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null && return
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return; }
    done
}

# wait_port NAME PID PORT LOG: waits until PORT accepts, or fails with the log.
wait_port() {
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null; then return 0; fi
        kill -0 "$2" 2>/dev/null || { tail -20 "$4" >&2; die "$1 exited before listening"; }
        sleep 0.1
    done
    tail -20 "$4" >&2
    die "$1 did not listen on port $3 within 10 s"
}

# --- start the upstream and both proxies ----------------------------------------
"$bin/bench-upstream" --listen 127.0.0.1:0 --docs "$UPSTREAM_DOCS" \
    >"$tmp/upstream.out" 2>"$tmp/upstream.err" &
pids+=($!)
for _ in $(seq 100); do
    grep -qs "^listening " "$tmp/upstream.out" && break
    sleep 0.1
done
upstream=$(awk '/^listening /{print $2; exit}' "$tmp/upstream.out")
[ -n "$upstream" ] || { cat "$tmp/upstream.err" >&2; die "bench-upstream did not start"; }

printf '[tls.client]\ncert = "%s"\nkey = "%s"\n' "$tmp/server.pem" "$tmp/server.key" >"$tmp/tls.toml"
: >"$tmp/plain.toml"
declare -A addr mtpid
for t in plain tls; do
    port=$(free_port)
    # shellcheck disable=SC2086 # MONGOTAP_ARGS is split into words on purpose.
    "$MONGOTAP_BIN" proxy --config "$tmp/$t.toml" --listen "127.0.0.1:$port" --upstream "$upstream" \
        --admin 127.0.0.1:0 --log-format json $MONGOTAP_ARGS >"$tmp/mongotap-$t.log" 2>&1 &
    pids+=($!)
    wait_port "mongotap ($t)" "$!" "$port" "$tmp/mongotap-$t.log"
    addr[$t]=127.0.0.1:$port
    mtpid[$t]=$!
done
targets=(plain tls)

# --- measure ------------------------------------------------------------------
cat <<EOF
# mongotap TLS benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s docs=$UPSTREAM_DOCS
# server key $TLS_KEY, $(openssl x509 -in "$tmp/server.pem" -noout -text | awk '/Public-Key:/{print $0; exit}' | sed 's/^ *//'); load runtime=$LOAD_RUNTIME
# mongotap: $MONGOTAP_BIN proxy ... $MONGOTAP_ARGS
EOF

raw=$tmp/raw
: >"$raw"
field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/" <<<"$2"; }
# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
# measure MODE CONNS ROUND: one run against each listener, in rotating order.
measure() {
    local mode=$1 c=$2 round=$3 k t json extra before cpu
    for k in 0 1; do
        t=${targets[$(((round - 1 + k) % 2))]}
        extra=()
        [ "$t" = tls ] && extra+=(--tls-ca "$tmp/ca.pem")
        [ "$mode" = handshakes ] && extra+=(--handshakes)
        before=$(cpu_ticks "${mtpid[$t]}")
        json=$("$bin/bench-load" --target "${addr[$t]}" --connections "$c" \
            --duration-secs "$DURATION" --warmup-secs "$WARMUP" --runtime "$LOAD_RUNTIME" \
            --json "${extra[@]}") ||
            die "bench-load $mode against $t (${addr[$t]}) at $c connections failed"
        # µs of mongotap CPU per op, counting the warm-up's ops at the measured rate.
        cpu=$(awk -v d="$(($(cpu_ticks "${mtpid[$t]}") - before))" -v hz="$hz" -v r="$(field ops_per_sec "$json")" \
            -v s="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%.1f", d / hz * 1e6 / (r * (s + w)) }')
        echo "$mode $t $c $round $(field ops_per_sec "$json") $(field p50_us "$json") $(field p99_us "$json") $cpu" >>"$raw"
        printf 'round %s/%s  %-10s %3s conns  %-5s %9.0f ops/s  p50 %8.1f µs  p99 %8.1f µs  mongotap %6.1f µs CPU/op\n' \
            "$round" "$ROUNDS" "$mode" "$c" "$t" "$(field ops_per_sec "$json")" \
            "$(field p50_us "$json")" "$(field p99_us "$json")" "$cpu" >&2
    done
}
for round in $(seq "$ROUNDS"); do
    for c in $CONNS; do measure finds "$c" "$round"; done
    for c in $HS_CONNS; do measure handshakes "$c" "$round"; done
done
if [ -n "$BENCH_RAW" ]; then cp "$raw" "$BENCH_RAW"; fi

# --- report: medians across rounds ------------------------------------------------
echo
awk -v conns="$CONNS" -v hs="$HS_CONNS" '
    function median(list,   a, n, i, j, x) {
        n = split(list, a, " ")
        if (n == 0) return ""
        for (i = 2; i <= n; i++) {
            x = a[i] + 0
            for (j = i - 1; j >= 1 && a[j] + 0 > x; j--) a[j + 1] = a[j]
            a[j + 1] = x
        }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { k = $1 SUBSEP $2 SUBSEP $3; ops[k] = ops[k] " " $5; p50[k] = p50[k] " " $6; p99[k] = p99[k] " " $7; cpu[k] = cpu[k] " " $8 }
    function table(mode, counts, title, unit,   cs, i, c, p, t) {
        print title
        printf "| conns | plaintext %s | TLS %s | TLS/plaintext | plaintext p50 µs | TLS p50 µs | plaintext p99 µs | TLS p99 µs | mongotap CPU µs/op plaintext | mongotap CPU µs/op TLS |\n", unit, unit
        printf "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        split(counts, cs, " ")
        for (i = 1; cs[i] != ""; i++) {
            c = cs[i]
            p = median(ops[mode, "plain", c]); t = median(ops[mode, "tls", c])
            printf "| %s | %.0f | %.0f | %.2f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |\n", c, p, t, t / p,
                median(p50[mode, "plain", c]), median(p50[mode, "tls", c]),
                median(p99[mode, "plain", c]), median(p99[mode, "tls", c]),
                median(cpu[mode, "plain", c]), median(cpu[mode, "tls", c])
        }
        print ""
    }
    END {
        table("finds", conns, "Throughput over open connections (find round trips):", "ops/s")
        table("handshakes", hs, "New connections (connect, handshake, hello, close):", "conn/s")
    }' "$raw"
