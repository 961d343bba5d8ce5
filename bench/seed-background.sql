-- The sessions a running deployment already holds: :families families of other subjects, each a
-- chain of five refresh tokens (four spent, each into the next, and the last live), as many
-- rotations of each as a day of sign-ins leaves. The benchmark's own chains rotate among them.
--   psql -v ON_ERROR_STOP=1 -v families=100000 -f bench/seed-background.sql DATABASE_URL
-- Why (BENCHMARKS.md, "Serialization retries and the size of the database"): under SERIALIZABLE,
-- PostgreSQL tracks a B-tree read per index *page*, so on a database holding only the benchmark's
-- few dozen chains every rotation reads and writes the same handful of pages as every other and
-- many are retried; in a deployment the same rotations are spread over thousands of pages. Used by
-- bench/run.sh and bench/ab.sh (BACKGROUND_FAMILIES), the same for ratchet and for pgbench.
insert into families (id, subject, client_id, scopes, audiences, claims, created_at, last_rotated_at,
                      refresh_expires_at, expires_at)
select gen_random_uuid(), 'background-' || f, 'background', '{read}', '{ratchet}', '{}',
       now() - interval '1 day', now() - interval '1 hour', now() + interval '6 days', now() + interval '29 days'
from generate_series(1, :families) f;
-- Each token's hash is the SHA-256 of its family id and its place in the chain (0 .. 4).
insert into refresh_tokens (hash, family_id, parent_hash, created_at, expires_at, spent_at, successor_hash)
select sha256((f.id::text || '/' || n)::bytea), f.id,
       case when n > 0 then sha256((f.id::text || '/' || (n - 1))::bytea) end,
       now() - interval '1 day', now() + interval '6 days',
       case when n < 4 then now() - interval '1 hour' end,
       case when n < 4 then sha256((f.id::text || '/' || (n + 1))::bytea) end
from families f cross join generate_series(0, 4) n
where f.subject like 'background-%'
order by n;
vacuum analyze families, refresh_tokens;
