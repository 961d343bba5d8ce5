-- One family per pgbench client (client_id 0 .. k - 1), each with its first refresh token, the
-- SHA-256 of the text of -1 - client_id, as the rotation scripts' `\set cur` presents it on their
-- first transaction; the families seeded before are removed first, with their tokens.
--   psql -v ON_ERROR_STOP=1 -v k=16 -f bench/seed-chains.sql DATABASE_URL
-- Used by bench/run.sh, bench/audit-ab.sh and bench/spend-variants.sh.
delete from families where subject like 'pgbench-%';
insert into families (id, subject, client_id, scopes, audiences, claims, created_at, last_rotated_at,
                      refresh_expires_at, expires_at)
select gen_random_uuid(), 'pgbench-' || c, 'pgbench', '{read,write}', '{ratchet}', '{}', now(), now(),
       now() + interval '7 days', now() + interval '30 days' from generate_series(0, :k - 1) c;
insert into refresh_tokens (hash, family_id, created_at, expires_at)
select sha256((-1 - substr(subject, 9)::int)::text::bytea), id, now(), now() + interval '7 days'
from families where subject like 'pgbench-%';
