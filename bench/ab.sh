#!/usr/bin/env bash
# A/B: two builds of ratchet, alternating on this machine, so that the machine's drift (these
# machines are small and noisy) falls on both alike. For CPU-bound work the headline is the
# server's CPU time per call, read from /proc: far steadier than throughput (BENCHMARKS.md).
#
#   bench/ab.sh REV_A REV_B          e.g. bench/ab.sh abfe700 HEAD
#   bench/ab.sh HEAD .               `.` is the working tree as it is (uncommitted changes too)
#   bench/ab.sh path/to/ratchet HEAD a server binary already built is taken as it is
#   ENV_A="RUST_LOG=warn" bench/ab.sh HEAD HEAD
#                                    one build, two settings: ENV_A / ENV_B are extra environment
#                                    (space-separated NAME=VALUE) for A's and B's server
#
# Each revision is built in release into a target directory of its own under target/ab/ (kept:
# a second run of the same commit builds nothing). Then PAIRS times (default 3), in the order
# A B, B A, A B, ... (so neither always goes first): a fresh database and server of A, every
# scenario at every K with the working tree's load generator, the same for B. One generator for
# both: only the server differs. Prints, per scenario and K, the median server CPU per call and
# throughput of each with their spread (min–max over the pairs), and B against A.
#
# Environment: PAIRS, SCENARIOS (default "introspect-hot check rotate"), KS (default 64), DURATION
# (8s), WARMUP (2s), BACKEND (postgres or sqlite), DATABASE_URL, BACKGROUND_FAMILIES (as bench/run.sh:
# default 100000; the database is seeded once, migrated by A's binary), ENV_A, ENV_B, BENCH_ARGS (extra
# ratchet-bench arguments, e.g. `--api-key ...`). Raw lines: bench/results/<time>-ab.jsonl, labelled
# A-<pair> / B-<pair>.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/database.sh
. bench/database.sh

[ $# = 2 ] || { sed -n '2,22p' "$0" >&2; exit 64; }
: "${PAIRS:=3}" "${SCENARIOS:=introspect-hot check rotate}" "${KS:=64}" "${DURATION:=8s}" "${WARMUP:=2s}"
: "${BACKEND:=postgres}" "${BACKGROUND_FAMILIES:=100000}" "${ENV_A:=}" "${ENV_B:=}" "${BENCH_ARGS:=}"
base_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
root=$PWD
mkdir -p target/ab bench/results
scratch=$(mktemp -d /tmp/ratchet-ab.XXXXXX)
database="ratchet_ab_$$"
bench_url="${base_url%/*}/$database?sslmode=disable"
server_pid=""

cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    drop_databases
    rm -rf "$scratch"
}
trap cleanup EXIT

# The server binary of `rev`, built if need be; prints its path.
build() {
    local rev=$1 sha dir
    if [ -f "$rev" ] && [ -x "$rev" ]; then
        realpath "$rev"
        return
    fi
    if [ "$rev" = . ]; then
        cargo build --locked --release -p ratchet --bin ratchet >&2 || return 1
        echo "${CARGO_TARGET_DIR:-$root/target}/release/ratchet"
        return
    fi
    sha=$(git rev-parse --verify "$rev^{commit}")
    dir="$root/target/ab/$sha"
    if [ ! -x "$dir/ratchet" ]; then
        echo "building $rev ($sha) in $dir" >&2
        rm -rf "$dir/tree"
        mkdir -p "$dir/tree"
        git archive "$sha" | tar -x -C "$dir/tree"
        (cd "$dir/tree" && CARGO_TARGET_DIR="$dir/target" cargo build --locked --release -p ratchet --bin ratchet >&2) || return 1
        cp "$dir/target/release/ratchet" "$dir/ratchet" || return 1
        # The binary is all a later run needs; the sources and objects are a few GiB.
        rm -rf "$dir/tree" "$dir/target"
    fi
    echo "$dir/ratchet"
}

bin_a=$(build "$1") || exit 1
bin_b=$(build "$2") || exit 1
cargo build --locked --release -p ratchet-bench >&2
bench_bin="${CARGO_TARGET_DIR:-target}/release/ratchet-bench"
results="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-ab.jsonl"
: >"$results"
echo "A = $1 ($bin_a) ${ENV_A:+[$ENV_A]}; B = $2 ($bin_b) ${ENV_B:+[$ENV_B]}; $PAIRS pairs; results in $results" >&2

# One server of `bin` with `env`, every scenario at every K, labelled `label`.
one() {
    local label=$1 bin=$2 env=$3 port store=() db_pids=(--db-pids postgres)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    rm -rf "$scratch/data"
    mkdir -p "$scratch/data"
    if [ "$BACKEND" = sqlite ]; then
        db_pids=()
    else
        new_database "$bin"
        store=(--no-migrate --database-url "$bench_url")
    fi
    # shellcheck disable=SC2086 # $env is a list of NAME=VALUE words
    env -u DATABASE_URL -u RUST_LOG RATCHET_LISTEN="127.0.0.1:$port" RATCHET_DATA_DIR="$scratch/data" \
        RATCHET_HTTP_LISTEN=127.0.0.1:0 RATCHET_ROTATE_BURST=1000000 RATCHET_ROTATE_PER_SECOND=1000000 \
        $env "$bin" serve "${store[@]}" 2>"$scratch/server-$label.log" &
    server_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    sleep 1
    local idle_rss
    idle_rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$server_pid/status")
    echo "{\"label\":\"$label\",\"scenario\":\"idle\",\"concurrency\":0,\"server_rss_kib\":$idle_rss}" >>"$results"
    for scenario in $SCENARIOS; do
        for k in $KS; do
            # shellcheck disable=SC2086 # BENCH_ARGS is a list of arguments
            "$bench_bin" --addr "http://127.0.0.1:$port" --scenario "$scenario" -k "$k" \
                --duration "$DURATION" --warmup "$WARMUP" --server-pid "$server_pid" "${db_pids[@]}" \
                --label "$label" $BENCH_ARGS >>"$results"
        done
    done
    kill "$server_pid"
    wait "$server_pid" || true
    server_pid=""
}

for pair in $(seq "$PAIRS"); do
    if [ $((pair % 2)) = 1 ]; then
        one "A-$pair" "$bin_a" "$ENV_A"
        one "B-$pair" "$bin_b" "$ENV_B"
    else
        one "B-$pair" "$bin_b" "$ENV_B"
        one "A-$pair" "$bin_a" "$ENV_A"
    fi
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
def cells(side, scenario, k, field):
    return [r[field] for r in rows if r["label"].startswith(side + "-") and r["scenario"] == scenario
            and r["concurrency"] == k and r.get(field) is not None]
def show(values, digits):
    if not values:
        return "-"
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"
keys = []
for r in rows:
    if r["scenario"] != "idle" and (r["scenario"], r["concurrency"]) not in keys:
        keys.append((r["scenario"], r["concurrency"]))
print(f"{'scenario':<16}{'K':>4}  {'server CPU/call µs, A':<24}{'B':<24}{'B/A':>6}   {'ops/s, A':<26}{'B':<26}{'B/A':>6}  errors A/B")
for scenario, k in keys:
    cpu_a, cpu_b = cells("A", scenario, k, "server_cpu_us_per_op"), cells("B", scenario, k, "server_cpu_us_per_op")
    ops_a, ops_b = cells("A", scenario, k, "ops_per_s"), cells("B", scenario, k, "ops_per_s")
    ratio = lambda a, b: f"{statistics.median(b) / statistics.median(a):.3f}" if a and b else "-"
    errors = lambda side: sum(sum(r.get("errors", {}).values()) + r.get("checks_failed", 0) for r in rows
                              if r["label"].startswith(side + "-") and r["scenario"] == scenario and r["concurrency"] == k)
    print(f"{scenario:<16}{k:>4}  {show(cpu_a, 1):<24}{show(cpu_b, 1):<24}{ratio(cpu_a, cpu_b):>6}   "
          f"{show(ops_a, 0):<26}{show(ops_b, 0):<26}{ratio(ops_a, ops_b):>6}  {errors('A')}/{errors('B')}")
# The database's CPU per call, where the generator measured it (PostgreSQL: --db-pids).
db = [(scenario, k, cells("A", scenario, k, "db_cpu_us_per_op"), cells("B", scenario, k, "db_cpu_us_per_op"))
      for scenario, k in keys]
db = [(scenario, k, a, b) for scenario, k, a, b in db if a and b and statistics.median(a) > 0]
if db:
    print(f"{'scenario':<16}{'K':>4}  {'database CPU/call µs, A':<24}{'B':<24}{'B/A':>6}")
    for scenario, k, a, b in db:
        print(f"{scenario:<16}{k:>4}  {show(a, 1):<24}{show(b, 1):<24}{statistics.median(b) / statistics.median(a):>6.3f}")
for side in "AB":
    idle = [r["server_rss_kib"] for r in rows if r["label"].startswith(side + "-") and r["scenario"] == "idle"]
    peak = [r["server_peak_rss_kib"] for r in rows if r["label"].startswith(side + "-") and r.get("server_peak_rss_kib")]
    if idle:
        print(f"{side}: idle RSS {statistics.median(idle) / 1024:.1f} MiB, peak RSS {max(peak, default=0) / 1024:.1f} MiB")
PY
echo "raw results: $results" >&2
