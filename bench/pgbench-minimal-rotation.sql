-- The minimal rotation, issue 18's yardstick for Rotate: spend the presented token with one
-- UPDATE ... RETURNING, insert its successor, touch the family; one statement, SERIALIZABLE
-- (bench/run.sh's PGOPTIONS), and no guards: no reuse detection or family revocation, no branch
-- guard, no expiry or revocation checks, no grace-window seal, no audit, no sessions cap.
-- ratchet's own statement (pgbench-rotation.sql) over this one is what its guarantees cost.
-- Written by hand, not generated. Run with -D prev=0; bench/run.sh seeds one family per client.
\set next random(1, 9223372036854775806)
\set cur case when :prev = 0 then -1 - :client_id else :prev end
with spent as (update refresh_tokens set spent_at = now(), successor_hash = sha256(:next::text::bytea) where hash = sha256(:cur::text::bytea) and spent_at is null returning family_id), successor as (insert into refresh_tokens (hash, family_id, parent_hash, created_at, expires_at) select sha256(:next::text::bytea), family_id, sha256(:cur::text::bytea), now(), now() + interval '7 days' from spent) update families f set last_rotated_at = now() from spent where f.id = spent.family_id;
\set prev :next
