-- A family is one login session: what Issue was given, and its lifetimes. Every refresh token
-- ratchet ever handed out belongs to one family; revoking the family kills them all at once,
-- which is why revocation lives here and not on each token.
create table families (
    id                 uuid primary key,
    subject            text not null,
    client_id          text not null,
    scopes             text[] not null,
    audiences          text[] not null,
    -- extra claims copied into every access token of the family (a JSON object)
    claims             jsonb not null,
    created_at         timestamptz not null,
    last_rotated_at    timestamptz not null,
    -- idle expiry of the family's current refresh token (denormalised for ListSessions)
    refresh_expires_at timestamptz not null,
    -- absolute end of the family: no rotation extends it
    expires_at         timestamptz not null,
    revoked_at         timestamptz,
    -- why: 'revoke' (an explicit Revoke) or 'reuse' (a spent refresh token was presented)
    revoked_reason     text,
    check ((revoked_at is null) = (revoked_reason is null))
);

-- ListSessions and Revoke-by-subject look families up by subject; revoked ones never matter.
create index families_live_by_subject on families (subject, created_at desc) where revoked_at is null;

-- Refresh tokens, stored only as SHA-256 of their secret bytes: the plaintext exists only in the
-- response that hands it out. Spent rows stay until their family is gone, because presenting a
-- spent token is how theft is detected.
create table refresh_tokens (
    hash           bytea primary key check (octet_length(hash) = 32),
    family_id      uuid not null references families (id) on delete cascade,
    created_at     timestamptz not null,
    -- idle expiry; never after the family's expires_at
    expires_at     timestamptz not null,
    spent_at       timestamptz,
    -- the token this one was rotated into ...
    successor_hash bytea,
    -- ... and that token's secret, sealed with a key only the holder of *this* token's plaintext
    -- can derive, so that a retry within the reuse grace window can be answered with the same
    -- successor without keeping any refresh token in plaintext
    successor_seal bytea,
    check ((spent_at is null) = (successor_hash is null))
);

-- Cascading deletes of families (and their future clean-up) find tokens by family.
create index refresh_tokens_by_family on refresh_tokens (family_id);
