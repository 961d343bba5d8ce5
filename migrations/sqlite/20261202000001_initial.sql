-- The whole schema of migrations/postgres (as of its revocation_notify migration), translated to
-- SQLite: the same tables, columns and constraints, so that the store keeps the same guarantees.
-- Later changes to the schema get a migration in each folder.
--
-- Types. STRICT tables: a column holds only its declared type, as in PostgreSQL (SQLite would
-- otherwise store any value in any column).
-- - ids are UUIDs as lowercase hyphenated text: sorts in the same order as PostgreSQL's uuid (the
--   cleanup sweep pages by id), and an operator can paste a family id from a log into a query.
-- - timestamps are integers, microseconds since the Unix epoch in UTC (PostgreSQL's timestamptz
--   precision). Not sqlx's text encoding of a date-time (RFC 3339): its fraction has a variable
--   number of digits, so text comparison would order `12:00:00Z` after `12:00:00.5Z`, and every
--   expiry check here is a comparison. `datetime(x / 1000000, 'unixepoch')` shows one.
-- - text[] and jsonb are JSON text, checked to be an array or an object.
-- - bytea is blob, with the same length checks.

-- A family is one login session: what Issue was given, and its lifetimes. Revoking the family
-- kills all its refresh tokens at once.
create table families (
    id                 text primary key check (length(id) = 36),
    subject            text not null,
    client_id          text not null,
    scopes             text not null check (json_type(scopes) = 'array'),
    audiences          text not null check (json_type(audiences) = 'array'),
    -- extra claims copied into every access token of the family (a JSON object)
    claims             text not null check (json_type(claims) = 'object'),
    created_at         integer not null,
    last_rotated_at    integer not null,
    -- idle expiry of the family's current refresh token (denormalised for ListSessions)
    refresh_expires_at integer not null,
    -- absolute end of the family: no rotation extends it
    expires_at         integer not null,
    revoked_at         integer,
    -- why: revoke (an explicit Revoke), reuse (a spent refresh token was presented), evicted
    -- (sessions cap)
    revoked_reason     text,
    check ((revoked_at is null) = (revoked_reason is null))
) strict;

-- ListSessions and Revoke-by-subject look families up by subject, newest first, paged by
-- (created_at, id); revoked ones never matter.
create index families_live_by_subject on families (subject, created_at desc, id desc) where revoked_at is null;
-- Cleanup finds revoked families by their revocation time; expired ones by a sweep over the
-- primary key (as on PostgreSQL: `refresh_expires_at` moves with every rotation).
create index families_revoked_by_time on families (revoked_at) where revoked_at is not null;

-- Refresh tokens, stored only as SHA-256 of their secret bytes. Spent rows stay until their
-- family is gone, because presenting a spent token is how theft is detected.
create table refresh_tokens (
    hash           blob primary key check (length(hash) = 32),
    family_id      text not null references families (id) on delete cascade,
    -- the token this one was rotated from; written once, on insert (null: a family's first)
    parent_hash    blob,
    created_at     integer not null,
    -- idle expiry; never after the family's expires_at
    expires_at     integer not null,
    spent_at       integer,
    -- the token this one was rotated into
    successor_hash blob,
    check ((spent_at is null) = (successor_hash is null))
) strict;

-- Cascading deletes of families (and cleanup) find tokens by family.
create index refresh_tokens_by_family on refresh_tokens (family_id);

-- No code path, present or future, can branch a family. As on PostgreSQL: a token is spent into
-- at most one successor (the successor names its parent, once), and a family has one first token.
create unique index refresh_tokens_one_successor on refresh_tokens (parent_hash);
create unique index refresh_tokens_one_first_per_family on refresh_tokens (family_id) where parent_hash is null;
-- And here also the invariant itself: at most one unspent token per family. PostgreSQL leaves this
-- index out because its predicate is the column the spend updates, which would make every
-- rotation a non-HOT update and, under SERIALIZABLE, a read-write conflict on a shared index page
-- (see its hardening migration). Neither exists in SQLite: there are no HOT updates to lose
-- (an update rewrites the row and its index entries anyway), and writers are serialized by the
-- database lock (BEGIN IMMEDIATE), so an index entry conflicts with nothing. The spend marks the
-- presented token spent before it inserts the successor, so the index holds after every statement.
create unique index refresh_tokens_one_unspent_per_family on refresh_tokens (family_id) where spent_at is null;

-- A successor's secret sealed for the reuse grace window, keyed by the sealed token: made only
-- with a grace window, deleted when the sealed token is spent, and by cleanup once the window is
-- over.
create table seals (
    -- the sealed token ...
    hash       blob primary key references refresh_tokens (hash) on delete cascade,
    -- ... its secret, XOR a pad derived from its parent's secret and the server secret (never in
    -- the database)
    seal       blob not null check (length(seal) = 32),
    created_at integer not null
) strict;
create index seals_by_age on seals (created_at);

-- PostgreSQL's revocation NOTIFY trigger has no counterpart: on SQLite one process serves (a lock
-- file keeps a second one out), so every revocation passes through its own family cache.
