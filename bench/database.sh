# Sourced by bench/run.sh and bench/ab.sh: the benchmark's PostgreSQL database.
#
# new_database BIN: drops and creates $database on $base_url's server, migrated by the ratchet
# binary BIN; empty, or, with BACKGROUND_FAMILIES=N, a copy of a database seeded once (per
# script run) with N families of other subjects (bench/seed-background.sql): copying is seconds,
# seeding 100,000 families about twenty. Both of a run's subjects, ratchet and pgbench, then work
# on the same kind of database. drop_databases: both gone (the scripts' exit trap).
#
# Why a seeded database (BENCHMARKS.md, "Serialization retries and the size of the database"):
# SERIALIZABLE tracks B-tree reads per index page, and on a database holding only the benchmark's
# own chains a fifth of all rotations were retried, pgbench's minimal rotation's too; with
# 100,000 families already there, 0.02%.

new_database() { # bin
    local bin=$1 template="${database}_template"
    psql -q "$base_url" -c "drop database if exists $database with (force)" >/dev/null
    if [ "${BACKGROUND_FAMILIES:-0}" = 0 ]; then
        psql -q "$base_url" -c "create database $database" >/dev/null
    else
        if [ -z "${background_ready:-}" ]; then
            psql -q "$base_url" -c "drop database if exists $template" >/dev/null
            psql -q "$base_url" -c "create database $template" >/dev/null
            DATABASE_URL="${base_url%/*}/$template?sslmode=disable" "$bin" migrate 2>/dev/null
            echo "seeding $BACKGROUND_FAMILIES background families" >&2
            psql -q "${base_url%/*}/$template" -v ON_ERROR_STOP=1 -v families="$BACKGROUND_FAMILIES" \
                -f bench/seed-background.sql >/dev/null
            background_ready=1
        fi
        psql -q "$base_url" -c "create database $database template $template" >/dev/null
    fi
    # Also on a copy: a no-op when the template's binary had the same migrations.
    DATABASE_URL="$bench_url" "$bin" migrate 2>/dev/null
}

drop_databases() {
    psql -q "$base_url" -c "drop database if exists $database with (force)" >/dev/null 2>&1 || true
    psql -q "$base_url" -c "drop database if exists ${database}_template with (force)" >/dev/null 2>&1 || true
}
