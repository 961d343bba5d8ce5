#!/usr/bin/env bash
# What each step of Rotate's whole statement costs PostgreSQL (issue 18): pgbench runs `SPEND` as
# a rotation (bench/pgbench-spend.sql: the statement Rotate ran for every rotation until it was
# split, now only after a refusal), then with one step after another taken out, then the
# statement a rotation runs now (`SPEND_LIVE`, bench/pgbench-rotation.sql), then the minimal
# rotation (bench/pgbench-minimal-rotation.sql); each on freshly seeded chains,
# SERIALIZABLE, at K clients for T seconds, in one order and then the reverse (the machine
# drifts). Prints transactions per second and the database's CPU per transaction.
#
#   bench/spend-variants.sh          K=16, T=8 (about three minutes)
#
# The variants are for measuring only: each drops a guarantee (the grace window's seal, the
# audit step, atomic reuse revocation, the successor read that idempotent re-delivery and the
# grace window use, the idle expiry's touch). Environment: DATABASE_URL (the server to create a
# scratch database on), K, T. Needs psql, pgbench, python3 and a release build of ratchet and
# ratchet-bench (bench/run.sh makes one).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${K:=16}" "${T:=8}"
base_url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
database="ratchet_variants_$$"
url="${base_url%/*}/$database?sslmode=disable"
bench_bin="${CARGO_TARGET_DIR:-target}/release/ratchet-bench"
server_bin="${CARGO_TARGET_DIR:-target}/release/ratchet"
scratch=$(mktemp -d /tmp/ratchet-variants.XXXXXX)
trap 'psql -q "$base_url" -c "drop database if exists $database with (force)" >/dev/null 2>&1; rm -rf "$scratch"' EXIT

python3 - "$scratch" <<'EOF'
import sys
out = sys.argv[1]
lines = open("bench/pgbench-spend.sql").read().splitlines()
sets = [l for l in lines if l.startswith("\\set next") or l.startswith("\\set cur")]
stmt = next(l for l in lines if l.startswith("with presented"))

def without(s, name):
    """`s` without its CTE `name` (`, name as (...)`, parentheses balanced)."""
    i = s.index(", " + name + " as (")
    depth = 0
    for k in range(s.index("(", i), len(s)):
        depth += {"(": 1, ")": -1}.get(s[k], 0)
        if depth == 0:
            return s[:i] + s[k + 1:]
    raise ValueError(name)

def replaced(s, old, new):
    assert old in s, old
    return s.replace(old, new)

v = {"0-as-sent": stmt}
s = replaced(stmt, "x.seal as successor_seal", "null::bytea as successor_seal")
s = replaced(s, " left join seals x on null::bytea is not null and x.hash = t.successor_hash", "")
v["1-no-seal-steps"] = s = without(without(s, "unsealed"), "sealed")
v["2-no-audit-step"] = s = without(s, "recorded")
v["3-no-reuse-step"] = s = replaced(without(s, "reused"), "exists (select 1 from reused)", "false")
s = replaced(s, ", s.expires_at as successor_expires_at, s.spent_at is not null as successor_spent",
             ", null::timestamptz as successor_expires_at, false as successor_spent")
v["4-no-successor-read"] = s = replaced(s, " left join refresh_tokens s on s.hash = t.successor_hash", "")
v["5-touch-one-column"] = replaced(s, "set last_rotated_at = now(), refresh_expires_at = s.expires_at",
                                   "set last_rotated_at = now()")
for name, st in v.items():
    open(f"{out}/{name}.sql", "w").write("\n".join(sets + [st + ";", "\\set prev :next"]) + "\n")
EOF
cp bench/pgbench-rotation.sql "$scratch/6-spend-live.sql"
cp bench/pgbench-minimal-rotation.sql "$scratch/7-minimal.sql"

psql -q "$base_url" -c "create database $database"
DATABASE_URL="$url" "$server_bin" migrate 2>/dev/null
export PGOPTIONS="-c default_transaction_isolation=serializable"
one() { # script
    psql -q "$url" -v ON_ERROR_STOP=1 -v k="$K" -f bench/seed-chains.sql >/dev/null
    local before after out tps processed
    before=$("$bench_bin" --print-cpu postgres)
    out=$(pgbench -n -M prepared -c "$K" -j 2 -T "$T" --max-tries=40 -D prev=0 -f "$1" "$url" 2>&1)
    sleep 0.5 # pgbench's backends exit
    after=$("$bench_bin" --print-cpu postgres)
    tps=$(sed -nE 's/^tps = ([0-9.]+) .*/\1/p' <<<"$out")
    processed=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$out")
    printf '%-22s %6.0f tps  %4d µs of database CPU per transaction\n' \
        "$(basename "$1" .sql)" "$tps" $(((after - before) / processed))
}
one "$scratch/0-as-sent.sql" >/dev/null # warm-up
for script in $(ls "$scratch"/*.sql) $(ls "$scratch"/*.sql | sort -r); do
    one "$script"
done
