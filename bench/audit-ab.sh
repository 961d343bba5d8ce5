#!/usr/bin/env bash
# What the audit trail (issue 17) costs the database, on Issue's and Rotate's exact statements
# (the committed pgbench scripts), pgbench K=16, 8 s each, variants alternating, 3 rounds, one
# database migrated with the audit table. Needs release builds of ratchet and ratchet-bench.
#   issue:  before = CREATE_FAMILY at 41aa023 (no audit trail)  vs  now = with its `issued` event
#   rotate: before = SPEND at 41aa023  vs  off = SPEND now, rotations not audited (the default)
#           vs  on = SPEND now with --audit-rotations ($9 = true)
#
#   bench/audit-ab.sh [OUT.jsonl]      (DATABASE_URL: the server to create a database on)
set -euo pipefail
cd "$(dirname "$0")/.."
base_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
database="ratchet_audit_ab_$$"
url="${base_url%/*}/$database?sslmode=disable"
bench_bin=target/release/ratchet-bench
out=${1:-bench/results/$(date -u +%Y%m%dT%H%M%SZ)-audit-ab.jsonl}
K=16
mkdir -p bench/results
: >"$out"
scripts=$(mktemp -d /tmp/ratchet-audit-ab.XXXXXX)
git show 41aa023:bench/pgbench-issue.sql >"$scripts/issue-before.sql"
git show 41aa023:bench/pgbench-rotation.sql >"$scripts/rotate-before.sql"
# The only `where false` in the script is `recorded`'s: the rotation's event, off by default.
sed 's/ where false / where true /' bench/pgbench-rotation.sql >"$scripts/rotate-audited.sql"
psql -q "$base_url" -c "create database $database" >/dev/null
trap 'psql -q "$base_url" -c "drop database if exists $database with (force)" >/dev/null 2>&1; rm -rf "$scripts"' EXIT
DATABASE_URL="$url" target/release/ratchet migrate 2>/dev/null
seed() {
    psql -q "$url" -v ON_ERROR_STOP=1 -v k="$K" -f bench/seed-chains.sql >/dev/null
}
run() { # label scenario script [pgbench args]
    local label=$1 scenario=$2 script=$3 before after o processed tps failed events0 events1
    shift 3
    events0=$(psql -Atq "$url" -c 'select count(*) from audit_events')
    before=$("$bench_bin" --print-cpu postgres)
    o=$(pgbench -n -M prepared -c $K -j 2 -T 8 --max-tries=40 "$@" -f "$script" "$url" 2>&1)
    for _ in $(seq 50); do
        [ "$(psql -Atq "$base_url" -c "select count(*) from pg_stat_activity where datname = '$database' and application_name = 'pgbench'")" = 0 ] && break
        sleep 0.1
    done
    after=$("$bench_bin" --print-cpu postgres)
    events1=$(psql -Atq "$url" -c 'select count(*) from audit_events')
    tps=$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' <<<"$o")
    processed=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$o")
    failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' <<<"$o")
    echo "{\"label\":\"$label\",\"scenario\":\"$scenario\",\"concurrency\":$K,\"ops\":$processed,\"ops_per_s\":$tps,\"db_cpu_us_per_op\":$(( (after - before) / processed )),\"failed\":${failed:-0},\"events_written\":$((events1 - events0))}" | tee -a "$out"
}
for round in 1 2 3; do
    for v in $( [ $((round % 2)) = 1 ] && echo "before now" || echo "now before" ); do
        case $v in
            before) run "issue-before-$round" pgbench-issue "$scripts/issue-before.sql" ;;
            now) run "issue-now-$round" pgbench-issue bench/pgbench-issue.sql ;;
        esac
    done
    for v in $( case $round in 1) echo "before off on";; 2) echo "on off before";; 3) echo "off before on";; esac ); do
        seed
        case $v in
            before) run "rotate-before-$round" pgbench-rotate "$scripts/rotate-before.sql" -D prev=0 ;;
            off) run "rotate-off-$round" pgbench-rotate bench/pgbench-rotation.sql -D prev=0 ;;
            on) run "rotate-on-$round" pgbench-rotate "$scripts/rotate-audited.sql" -D prev=0 ;;
        esac
    done
done
