-- Hardening (issue 7).

-- Seals move from the spent token's row (successor_seal, the successor sealed under the spent
-- token's secret) to the sealed token's own row (seal), so that spending a token clears its own
-- seal in the row the spend updates anyway. Every existing seal was made with a pad that a
-- database dump and one old refresh token could reproduce: all of them are erased first (rather
-- than only dropped with the column, which would leave the bytes in the rows on disk).
update refresh_tokens set successor_seal = null where successor_seal is not null;
alter table refresh_tokens drop column successor_seal;
-- this token's secret, sealed under its parent's secret and the server secret (never in the
-- database); kept only while the reuse grace window may need it
alter table refresh_tokens add column seal bytea check (octet_length(seal) = 32);

-- At most one unspent refresh token per family: no code path, present or future, can branch a
-- family, whatever the isolation level it runs at.
create unique index refresh_tokens_one_unspent_per_family on refresh_tokens (family_id) where spent_at is null;

-- Cleanup finds ended families through their unspent token's expiry (the family's idle or
-- absolute end, whichever is first) and through their revocation time; and old seals by age.
create index refresh_tokens_unspent_by_expiry on refresh_tokens (expires_at) where spent_at is null;
create index families_revoked_by_time on families (revoked_at) where revoked_at is not null;
create index refresh_tokens_sealed_by_age on refresh_tokens (created_at) where seal is not null;

-- ListSessions pages by (created_at, id), newest first.
drop index families_live_by_subject;
create index families_live_by_subject on families (subject, created_at desc, id desc) where revoked_at is null;

-- 'evicted': revoked by the sessions cap.
comment on column families.revoked_reason is
    'why: revoke (an explicit Revoke), reuse (a spent refresh token was presented), evicted (sessions cap)';
