-- Hardening (issue 7).
--
-- Rule for every index below: none may cover a column that Rotate's spend updates (spent_at,
-- successor_hash) or the families row's rotation bookkeeping (last_rotated_at,
-- refresh_expires_at), not even in a partial index's predicate. Those updates then stay HOT (no
-- new index entries), which matters beyond the write itself: under SERIALIZABLE, an index entry
-- written into a page that concurrent rotations read (the primary key) is a read-write conflict,
-- and with a partial index on `spent_at is null` 86% of rotations on a young database had to be
-- retried (bench: pgbench on Rotate's statement, K=16: 5,100 -> 250 tps).

-- Seals move out of the spent token's row into a table of their own, keyed by the sealed token:
-- made only with a reuse grace window, deleted when the sealed token is spent, and by the
-- cleanup once the window is over. Every existing seal was made with a pad that a database dump
-- and one old refresh token could reproduce: all of them are erased (rather than only dropped
-- with the column, which would leave the bytes in the rows on disk).
update refresh_tokens set successor_seal = null where successor_seal is not null;
alter table refresh_tokens drop column successor_seal;
create table seals (
    -- the sealed token ...
    hash       bytea primary key references refresh_tokens (hash) on delete cascade,
    -- ... its secret, XOR a pad derived from its parent's secret and the server secret (never in
    -- the database)
    seal       bytea not null check (octet_length(seal) = 32),
    created_at timestamptz not null
);
create index seals_by_age on seals (created_at);

-- No code path, present or future, can branch a family: a token is spent into at most one
-- successor (the successor names its parent, once, on insert), and a family has one first
-- token. `parent_hash` is written once and never updated, so these indexes cost Rotate one
-- insertion and no HOT update. (A partial unique index `(family_id) where spent_at is null`
-- would say the same, but its predicate is the column the spend updates; see above.)
alter table refresh_tokens add column parent_hash bytea;
update refresh_tokens c set parent_hash = p.hash from refresh_tokens p where p.successor_hash = c.hash;
create unique index refresh_tokens_one_successor on refresh_tokens (parent_hash);
create unique index refresh_tokens_one_first_per_family on refresh_tokens (family_id) where parent_hash is null;

-- Cleanup finds revoked families by their revocation time (written once, and only on
-- revocation: no index entry for the families Issue creates); expired ones, idle or absolute, by
-- a sweep over the primary key (`refresh_expires_at`, the earlier of the two ends, moves with
-- every rotation: an index on it would cost every Rotate).
create index families_revoked_by_time on families (revoked_at) where revoked_at is not null;

-- ListSessions pages by (created_at, id), newest first.
drop index families_live_by_subject;
create index families_live_by_subject on families (subject, created_at desc, id desc) where revoked_at is null;

comment on column families.revoked_reason is
    'why: revoke (an explicit Revoke), reuse (a spent refresh token was presented), evicted (sessions cap)';
