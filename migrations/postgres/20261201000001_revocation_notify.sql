-- Revocation reaches every replica (issue 8): each family that becomes revoked is announced on
-- the channel `ratchet_family_revoked` with its id as payload; every server LISTENs and marks the
-- family revoked in its Introspect cache. NOTIFY is transactional: the announcement goes out at
-- commit, and never for a revocation that rolled back.
--
-- A trigger rather than a NOTIFY in each statement, so that every way `revoked_at` gets set
-- (Revoke by family, token or subject, reuse detection in Rotate, the sessions cap in Issue, and
-- an operator's SQL) is covered, including ways not written yet.
--
-- Per row, not per statement with a transition table: a trigger with transition tables may not
-- name columns (`update of revoked_at`) and cannot have a WHEN clause, so it would capture every
-- updated row of every UPDATE on families, Rotate's bookkeeping (`last_rotated_at`,
-- `refresh_expires_at`) included, into a tuplestore: a cost on every rotation. This one fires only
-- for statements whose SET list names `revoked_at` (Rotate's normal path does not), and then only
-- for rows whose revocation this is. (To decide that, PostgreSQL re-reads the old version of each
-- row an UPDATE on families changed: a buffer hit, without a lock or an SSI predicate lock. pgbench
-- on Rotate's statement could not tell it from noise.) It adds no index and touches no column
-- Rotate updates, so Rotate's updates stay HOT (see the hardening migration).
--
-- Payload: one id (36 bytes) per notification, far below the 8000-byte limit. Revoking a subject
-- with 100k families goes in statements of 1000 rows (the store's batches), each committing 1000
-- notifications, ~80 bytes each in PostgreSQL's notification queue (8 GB by default): about 8 MB
-- for all 100k, read at once by the listeners.
create function notify_family_revoked() returns trigger language plpgsql as $$
begin
    perform pg_notify('ratchet_family_revoked', new.id::text);
    return null;
end
$$;

create trigger families_revoked_notify
    after update of revoked_at on families
    for each row
    when (old.revoked_at is null and new.revoked_at is not null)
    execute function notify_family_revoked();
