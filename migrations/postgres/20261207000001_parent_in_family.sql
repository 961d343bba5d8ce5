-- A refresh token's parent is a token of its own family (issue 20), in the schema rather than
-- only in the code that writes `parent_hash`: before this, a row could name a parent of another
-- family, and then (one successor per parent) that family's token could never be rotated.
--
-- A composite foreign key (family_id, parent_hash) -> (family_id, hash). Its referenced key needs
-- a unique index on (family_id, hash), which replaces the plain index on family_id: it serves every
-- lookup by family that one did, so Rotate still inserts into the same number of indexes. Neither
-- index covers a column Rotate updates (family_id, hash and parent_hash are written once, on
-- insert), so the spend stays a HOT update (see the hardening migration). What the key costs
-- Rotate is the check on inserting the successor: one probe of the new index, for a parent row the
-- same statement has just updated (and locked). Measured with pgbench on Rotate's statement:
-- BENCHMARKS.md, issue 20.
--
-- Cleanup deletes an ended family's spent tokens oldest first, a chain prefix per statement
-- (`PURGE_SPENT_TOKENS`): `on delete set null (parent_hash)` then makes the oldest token left the
-- family's first, so the one-first-per-family index holds after every statement.

-- Rows this key would refuse can only come from a cleanup that stopped half-way (it used to delete
-- spent tokens in any order, leaving their successors pointing at nothing) or from SQL written by
-- hand. Their families end here, as the cleanup was ending them: revoked if they were not already
-- (announced to every replica by the revocation trigger), and every token of theirs deleted, which
-- the cleanup would have done.
create temporary table broken_families as
    select distinct c.family_id as id from refresh_tokens c
    where c.parent_hash is not null
      and not exists (select 1 from refresh_tokens p where p.hash = c.parent_hash and p.family_id = c.family_id);
update families set revoked_at = now(), revoked_reason = 'revoke'
    where id in (select id from broken_families) and revoked_at is null;
delete from refresh_tokens where family_id in (select id from broken_families);
-- Dropped here rather than `on commit drop`, so that the file also runs under a plain `psql -f`.
drop table broken_families;

create unique index refresh_tokens_by_family_and_hash on refresh_tokens (family_id, hash);
drop index refresh_tokens_by_family;

alter table refresh_tokens add constraint refresh_tokens_parent_in_family
    foreign key (family_id, parent_hash) references refresh_tokens (family_id, hash)
    on delete set null (parent_hash);

-- And not itself: a token that named itself would satisfy the key.
alter table refresh_tokens add constraint refresh_tokens_parent_not_self check (parent_hash <> hash);
