#!/usr/bin/env bash
# What a change to Rotate's statement costs the database: pgbench runs the rotation script
# (bench/pgbench-rotation.sql, i.e. `SPEND_LIVE`) as committed at REV_A and at REV_B, alternating
# (A B, B A, ...) for ROUNDS rounds, each on freshly seeded chains, SERIALIZABLE, K clients for T
# seconds, on one database that holds BACKGROUND_FAMILIES other sessions and is migrated by the
# working tree's binary (so both scripts run against the newest schema). Prints each run's
# transactions per second and the database's CPU per transaction, then the medians.
#
#   bench/rotation-ab.sh e4404f1 HEAD      (DATABASE_URL: the server to create a database on)
#
# Environment: K (16), T (8), ROUNDS (3), BACKGROUND_FAMILIES (20000). Needs psql, pgbench and a
# build of ratchet and ratchet-bench (target/release, else target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# = 2 ] || { sed -n '2,11p' "$0" >&2; exit 64; }
: "${K:=16}" "${T:=8}" "${ROUNDS:=3}" "${BACKGROUND_FAMILIES:=20000}"
base_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
database="ratchet_rotation_ab_$$"
url="${base_url%/*}/$database?sslmode=disable"
profile=release
[ -x target/release/ratchet-bench ] && [ -x target/release/ratchet ] || profile=debug
bench_bin=target/$profile/ratchet-bench
out=bench/results/$(date -u +%Y%m%dT%H%M%SZ)-rotation-ab.jsonl
mkdir -p bench/results
: >"$out"
scripts=$(mktemp -d /tmp/ratchet-rotation-ab.XXXXXX)
git show "$1:bench/pgbench-rotation.sql" >"$scripts/A.sql"
git show "$2:bench/pgbench-rotation.sql" >"$scripts/B.sql"
psql -q "$base_url" -c "create database $database" >/dev/null
trap 'psql -q "$base_url" -c "drop database if exists $database with (force)" >/dev/null 2>&1; rm -rf "$scripts"' EXIT
DATABASE_URL="$url" "target/$profile/ratchet" migrate 2>/dev/null
psql -q "$url" -v ON_ERROR_STOP=1 -v families="$BACKGROUND_FAMILIES" -f bench/seed-background.sql >/dev/null
export PGOPTIONS="-c default_transaction_isolation=serializable"
run() { # label script
    local before after o processed tps failed
    psql -q "$url" -v ON_ERROR_STOP=1 -v k="$K" -f bench/seed-chains.sql >/dev/null
    before=$("$bench_bin" --print-cpu postgres)
    o=$(pgbench -n -M prepared -c "$K" -j 2 -T "$T" --max-tries=40 -D prev=0 -f "$2" "$url" 2>&1)
    for _ in $(seq 50); do
        [ "$(psql -Atq "$base_url" -c "select count(*) from pg_stat_activity where datname = '$database' and application_name = 'pgbench'")" = 0 ] && break
        sleep 0.1
    done
    after=$("$bench_bin" --print-cpu postgres)
    tps=$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' <<<"$o")
    processed=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$o")
    failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' <<<"$o")
    echo "{\"label\":\"$1\",\"scenario\":\"pgbench-rotate\",\"concurrency\":$K,\"ops\":$processed,\"ops_per_s\":$tps,\"db_cpu_us_per_op\":$(( (after - before) / processed )),\"failed\":${failed:-0}}" | tee -a "$out"
}
for round in $(seq "$ROUNDS"); do
    for side in $( [ $((round % 2)) = 1 ] && echo "A B" || echo "B A" ); do
        run "$side-$round" "$scripts/$side.sql"
    done
done
python3 - "$out" "$1" "$2" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = {}
for side, rev in (("A", sys.argv[2]), ("B", sys.argv[3])):
    mine = [r for r in rows if r["label"].startswith(side + "-")]
    cpu = [r["db_cpu_us_per_op"] for r in mine]
    tps = [r["ops_per_s"] for r in mine]
    med[side] = statistics.median(cpu)
    print(f"{side} = {rev}: database CPU per rotation {statistics.median(cpu)} µs ({min(cpu)}–{max(cpu)}), "
          f"{statistics.median(tps):.0f} tps ({min(tps):.0f}–{max(tps):.0f})")
print(f"B/A database CPU per rotation: {med['B'] / med['A']:.3f}")
PY
echo "raw lines: $out" >&2
