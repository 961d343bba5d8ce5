-- no-transaction
-- A refresh token's parent is a token of its own family (issue 20), as on PostgreSQL (its
-- migration of the same name says why): a composite foreign key (family_id, parent_hash) ->
-- (family_id, hash), whose referenced key needs a unique index on (family_id, hash), which
-- replaces the plain index on family_id.
--
-- SQLite cannot add a constraint to a table, so the table is rebuilt the way its documentation
-- says (https://sqlite.org/lang_altertable.html, "Making Other Kinds Of Table Schema Changes"):
-- foreign keys off (so that dropping the old table deletes no seal by cascade), one transaction,
-- a new table, copy, drop, rename, the indexes again. That needs foreign keys switched off outside
-- a transaction, hence `no-transaction` above: the script makes its own. Run again after a crash
-- between its COMMIT and sqlx's bookkeeping, it rebuilds the table once more, to the same result.
--
-- The key is DEFERRABLE INITIALLY DEFERRED: checked at COMMIT. SQLite cannot `set null` one
-- column of a composite key (its `on delete set null` nulls family_id too, which may not be null),
-- so the cleanup does it itself in the same transaction: it deletes the oldest spent tokens of an
-- ended family, then makes the oldest one left the family's first (`PURGE_SPENT_TOKENS`,
-- `UNLINK_ORPHANS`). Between the two statements the key does not hold; at COMMIT it must.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

-- Rows the key would refuse: see the PostgreSQL migration. Their families end here.
CREATE TEMPORARY TABLE broken_families AS
    SELECT DISTINCT c.family_id AS id FROM refresh_tokens c
    WHERE c.parent_hash IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM refresh_tokens p WHERE p.hash = c.parent_hash AND p.family_id = c.family_id);
UPDATE families SET revoked_at = CAST(unixepoch('subsec') * 1000000 AS INTEGER), revoked_reason = 'revoke'
    WHERE id IN (SELECT id FROM broken_families) AND revoked_at IS NULL;
DELETE FROM refresh_tokens WHERE family_id IN (SELECT id FROM broken_families);
DROP TABLE broken_families;

CREATE TABLE refresh_tokens_new (
    hash           blob primary key check (length(hash) = 32),
    family_id      text not null references families (id) on delete cascade,
    -- the token this one was rotated from, of the same family; written once, on insert (null: the
    -- family's first, or the oldest left after the cleanup deleted older spent ones)
    parent_hash    blob check (parent_hash <> hash),
    created_at     integer not null,
    -- idle expiry; never after the family's expires_at
    expires_at     integer not null,
    spent_at       integer,
    -- the token this one was rotated into
    successor_hash blob,
    check ((spent_at is null) = (successor_hash is null)),
    foreign key (family_id, parent_hash) references refresh_tokens (family_id, hash) deferrable initially deferred
) strict;
INSERT INTO refresh_tokens_new (hash, family_id, parent_hash, created_at, expires_at, spent_at, successor_hash)
    SELECT hash, family_id, parent_hash, created_at, expires_at, spent_at, successor_hash FROM refresh_tokens;
DROP TABLE refresh_tokens;
ALTER TABLE refresh_tokens_new RENAME TO refresh_tokens;

-- The key's referenced index; also what cascading deletes of families and the cleanup look up.
CREATE UNIQUE INDEX refresh_tokens_by_family_and_hash ON refresh_tokens (family_id, hash);
-- As in the initial migration.
CREATE UNIQUE INDEX refresh_tokens_one_successor ON refresh_tokens (parent_hash);
CREATE UNIQUE INDEX refresh_tokens_one_first_per_family ON refresh_tokens (family_id) WHERE parent_hash IS NULL;
CREATE UNIQUE INDEX refresh_tokens_one_unspent_per_family ON refresh_tokens (family_id) WHERE spent_at IS NULL;

COMMIT;
PRAGMA foreign_keys = ON;
