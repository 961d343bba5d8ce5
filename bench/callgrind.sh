#!/usr/bin/env bash
# Instructions per call of a server binary, counted by valgrind's callgrind: the same count for the
# same binary and load whatever else the machine does, so a difference of a few hundred
# instructions per call shows where server CPU per call from /proc (bench/ab.sh) is lost in noise.
#
#   bench/callgrind.sh BINARY [SCENARIO]     e.g. bench/callgrind.sh target/ab/<sha>/ratchet introspect-hot
#
# Runs the server on SQLite under callgrind twice, once for N1 calls and once for N2, and prints
# (instructions after N2 − instructions after N1) / (N2 − N1): start-up and idle work cancel out.
# aws-lc's jitter entropy runs for a time, not a count, and is left out of the totals. The
# per-function difference of two binaries: callgrind_annotate on the four outputs kept in the
# printed directory (see bench/history/20261207T1600Z-issue17-callgrind.txt for one).
# Environment: N1 (1000), N2 (4000), K (4), BENCH_BIN (target/debug/ratchet-bench: its speed does
# not matter here), SERVER_ENV (extra NAME=VALUE words for the server, e.g. "RUST_LOG=warn" or
# "RATCHET_METRICS_LISTEN=off": one binary, two settings).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,16p' "$0" >&2; exit 64; }
bin=$(realpath "$1") scenario=${2:-introspect-hot}
: "${N1:=1000}" "${N2:=4000}" "${K:=4}" "${BENCH_BIN:=target/debug/ratchet-bench}" "${SERVER_ENV:=}"
command -v valgrind >/dev/null || { echo "error: valgrind is not installed" >&2; exit 1; }
[ -x "$BENCH_BIN" ] || cargo build --locked -p ratchet-bench >&2
scratch=$(mktemp -d /tmp/ratchet-callgrind.XXXXXX)

one() {
    local n=$1 dir="$scratch/$1" port pid
    mkdir -p "$dir/data"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    # shellcheck disable=SC2086 # SERVER_ENV is a list of NAME=VALUE words
    env -u DATABASE_URL -u RUST_LOG RATCHET_LISTEN="127.0.0.1:$port" RATCHET_DATA_DIR="$dir/data" \
        RATCHET_HTTP_LISTEN=127.0.0.1:0 RATCHET_ROTATE_BURST=1000000 RATCHET_ROTATE_PER_SECOND=1000000 \
        $SERVER_ENV valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" "$bin" serve 2>"$dir/server.log" &
    pid=$!
    for _ in $(seq 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.2
    done
    sleep 2
    "$BENCH_BIN" --addr "http://127.0.0.1:$port" --scenario "$scenario" -k "$K" --count "$n" --warmup 0s \
        --duration 3600s >"$dir/bench.json" 2>"$dir/bench.err"
    kill -TERM "$pid"
    wait "$pid" || true
    # Every function's own instructions, less aws-lc's jitter entropy (timed, not counted).
    callgrind_annotate --threshold=100 "$dir/callgrind.out" 2>/dev/null |
        grep -E '^ *[0-9,]+ ' | grep -vE 'TOTALS|PROGRAM|jent_|rol64|xoshiro|uint32rotl|ptr_to_le32' |
        awk '{gsub(",", "", $1); sum += $1} END {print sum}'
}

first=$(one "$N1")
second=$(one "$N2")
echo "$scenario: $(( (second - first) / (N2 - N1) )) instructions per call ($bin${SERVER_ENV:+ [$SERVER_ENV]}; outputs in $scratch)"
