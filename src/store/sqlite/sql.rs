//! Every statement the SQLite store runs, in one place.
//!
//! PostgreSQL does each operation in *one* statement (data-modifying CTEs); SQLite has no
//! data-modifying CTEs, so a write here is several statements inside one `BEGIN IMMEDIATE`
//! transaction, which holds the database's write lock from its first statement to its commit:
//! what the first statement reads stays true until the commit, and the store decides between the
//! statements in Rust (see `SqliteStore::spend`). Parameters are numbered (`?1`), so that one may
//! appear twice. Times are microseconds since the epoch, ids hyphenated UUID text (see the
//! migration).

/// The columns of a `FamilyRow`, from `families f`.
macro_rules! family_columns {
    () => {
        "f.id, f.subject, f.client_id, f.scopes, f.audiences, f.claims, f.created_at, \
         f.last_rotated_at, f.refresh_expires_at, f.expires_at, f.revoked_at"
    };
}

/// The presented token (?1), its family (with its Rotate bucket) and its successor: a
/// `TokenRow`. `$seal` is the successor's seal, from `$join`ed `seals x`.
macro_rules! presented_token_select {
    ($seal:literal, $join:literal) => {
        concat!(
            "select ",
            family_columns!(),
            ", f.rotate_tat, t.created_at as token_created_at, t.expires_at as token_expires_at, \
                t.spent_at, t.successor_hash, ",
            $seal,
            " as successor_seal, \
                s.expires_at as successor_expires_at, s.spent_at is not null as successor_spent \
         from refresh_tokens t \
         join families f on f.id = t.family_id \
         left join refresh_tokens s on s.hash = t.successor_hash",
            $join,
            " where t.hash = ?1"
        )
    };
}

/// Introspect, Revoke, and Rotate without a grace window need no seal.
pub(super) const PRESENTED_TOKEN: &str = presented_token_select!("null", "");

/// Rotate with a grace window: the successor's seal too, for a retry to be answered with.
pub(super) const PRESENTED_TOKEN_SEALED: &str =
    presented_token_select!("x.seal", " left join seals x on x.hash = t.successor_hash");

/// The spend itself: ?1 now, ?2 successor hash, ?3 presented hash. `spent_at is null` again,
/// although the transaction holds the write lock since it read the token: belt and braces.
pub(super) const SPEND_TOKEN: &str =
    "update refresh_tokens set spent_at = ?1, successor_hash = ?2 where hash = ?3 and spent_at is null";

/// A token's own seal exists only until the token is spent. ?1 the spent token.
pub(super) const UNSEAL: &str = "delete from seals where hash = ?1";

/// ?1 successor hash, ?2 family id, ?3 parent (presented) hash, ?4 now, ?5 expiry (already capped
/// at the family's). Naming the parent: the schema refuses a second successor.
pub(super) const INSERT_SUCCESSOR: &str =
    "insert into refresh_tokens (hash, family_id, parent_hash, created_at, expires_at) values (?1, ?2, ?3, ?4, ?5)";

/// ?1 sealed (successor) hash, ?2 seal, ?3 now.
pub(super) const SEAL: &str = "insert into seals (hash, seal, created_at) values (?1, ?2, ?3)";

/// The family's rotation bookkeeping: ?1 now, ?2 the successor's expiry, ?3 family id, ?4 when
/// its Rotate bucket is full again (GCRA's time, moved one interval on).
pub(super) const TOUCH_FAMILY: &str =
    "update families set last_rotated_at = ?1, refresh_expires_at = ?2, rotate_tat = ?4 where id = ?3";

/// Reuse detected: ?1 now, ?2 family id.
pub(super) const REVOKE_FOR_REUSE: &str =
    "update families set revoked_at = ?1, revoked_reason = 'reuse' where id = ?2 and revoked_at is null";

/// Issue, step one: ?1 id, ?2 subject, ?3 client id, ?4 scopes, ?5 audiences, ?6 claims, ?7 now,
/// ?8 first token's expiry, ?9 family expiry. A repeated id fails on the primary key.
pub(super) const INSERT_FAMILY: &str = "insert into families (id, subject, client_id, scopes, audiences, claims,
        created_at, last_rotated_at, refresh_expires_at, expires_at)
    values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8, ?9)";

/// Step two: ?1 hash, ?2 family id, ?3 now, ?4 expiry.
pub(super) const INSERT_FIRST_TOKEN: &str =
    "insert into refresh_tokens (hash, family_id, created_at, expires_at) values (?1, ?2, ?3, ?4)";

/// Step three, the sessions cap: revokes the live families of ?1 (subject) and ?2 (client) at ?3
/// (now) beyond the newest ?5, not counting the new one (?4), which PostgreSQL's statement does not
/// see either (its CTEs read the snapshot from before the insert). Returns those it revoked.
/// `limit -1`: SQLite takes an offset only after a limit.
pub(super) const EVICT: &str = "update families set revoked_at = ?3, revoked_reason = 'evicted'
    where id in (select id from families
                 where subject = ?1 and client_id = ?2 and revoked_at is null
                   and expires_at > ?3 and refresh_expires_at > ?3 and id <> ?4
                 order by created_at desc, id desc
                 limit -1 offset ?5)
    returning id";

pub(super) const FAMILY_STATUS: &str = "select revoked_at is not null, expires_at from families where id = ?1";

pub(super) const FAMILY_SUBJECT: &str = "select subject from families where id = ?1";

/// Whether ?1 exists, and when it was revoked.
pub(super) const FAMILY_REVOKED_AT: &str = "select revoked_at from families where id = ?1";

/// ?1 family id, ?2 now, ?3 reason.
pub(super) const REVOKE_FAMILY: &str =
    "update families set revoked_at = ?2, revoked_reason = ?3 where id = ?1 and revoked_at is null";

/// ?1 subject, ?2 now, ?3 batch size: one batch.
pub(super) const REVOKE_SUBJECT: &str = "update families set revoked_at = ?2, revoked_reason = 'revoke'
    where id in (select id from families
                 where subject = ?1 and revoked_at is null and expires_at > ?2
                 limit ?3)
    returning id";

/// The live sessions of ?1 at ?2, newest first, at most ?3; only the columns ListSessions shows.
macro_rules! live_families {
    ($after:literal) => {
        concat!(
            "select id, client_id, scopes, created_at, last_rotated_at, expires_at, refresh_expires_at
             from families
             where subject = ?1 and revoked_at is null and expires_at > ?2 and refresh_expires_at > ?2 ",
            $after,
            " order by created_at desc, id desc limit ?3"
        )
    };
}

pub(super) const LIVE_FAMILIES: &str = live_families!("");
/// The next page: after (?4, ?5) in the listing order.
pub(super) const LIVE_FAMILIES_AFTER: &str = live_families!("and (created_at, id) < (?4, ?5)");

/// Families revoked before ?1, at most ?2 of them.
pub(super) const REVOKED_FAMILIES: &str = "select id from families where revoked_at <= ?1 limit ?2";

/// The sweep: the next ?2 families after ?1 in id order, each with whether it expired before ?3.
pub(super) const IDLE_WINDOW: &str = "select id, refresh_expires_at <= ?3 from families
    where id > ?1 order by id limit ?2";

/// Cleanup of families ?1 (a JSON array of ids: SQLite has no array parameters), step one: at
/// most ?2 of their spent refresh tokens, the *oldest*: each family's chain walked from its first
/// token along parent links through spent tokens only, breadth first (SQLite's recursive query is
/// a FIFO queue; its LIMIT stops the walk), so that each family loses a prefix of its chain. Then,
/// in the same transaction, [`UNLINK_ORPHANS`]: the deferred foreign key on the parent must hold
/// again at COMMIT (see the migration `parent_in_family`).
pub(super) const PURGE_SPENT_TOKENS: &str = "with recursive chain (hash) as (
        select hash from refresh_tokens
        where family_id in (select value from json_each(?1)) and parent_hash is null and spent_at is not null
        union all
        select t.hash from chain c join refresh_tokens t on t.parent_hash = c.hash
        where t.spent_at is not null
        limit ?2
    )
    delete from refresh_tokens where hash in (select hash from chain)";

/// The oldest token left in each family of ?1 whose parent [`PURGE_SPENT_TOKENS`] deleted
/// becomes the family's first (one per family: a prefix went).
pub(super) const UNLINK_ORPHANS: &str = "update refresh_tokens set parent_hash = null
    where family_id in (select value from json_each(?1)) and parent_hash is not null
      and not exists (select 1 from refresh_tokens p where p.hash = refresh_tokens.parent_hash)";

/// Families of ?1 with no spent token left: what step two deletes.
macro_rules! doomed {
    () => {
        "select f.id from families f
         where f.id in (select value from json_each(?1))
           and not exists (select 1 from refresh_tokens t where t.family_id = f.id and t.spent_at is not null)"
    };
}

/// Step two, in one transaction with [`PURGE_FAMILIES`]: the last token of each (and its seal,
/// by cascade). Counted here: SQLite does not count rows a cascade deletes.
pub(super) const PURGE_LAST_TOKENS: &str = concat!("delete from refresh_tokens where family_id in (", doomed!(), ")");

/// Then the families themselves.
pub(super) const PURGE_FAMILIES: &str = concat!("delete from families where id in (", doomed!(), ")");

/// Seals made before ?1, at most ?2 of them.
pub(super) const CLEAR_SEALS: &str = "delete from seals
    where hash in (select hash from seals where created_at <= ?1 limit ?2)";

/// The audit events of families ?6 (a JSON array of ids), in the transaction of the change they
/// record: ?1 now, ?2 kind, ?3 caller, ?4 request id, ?5 detail. Subject and client from the
/// family's row.
pub(super) const RECORD_EVENTS: &str =
    "insert into audit_events (at, kind, family_id, subject, client_id, caller, request_id, detail)
     select ?1, ?2, id, subject, client_id, ?3, ?4, ?5 from families
     where id in (select value from json_each(?6))";

/// The columns of an `EventRow`.
pub(super) const EVENT_COLUMNS: &str = "id, at, kind, family_id, subject, client_id, caller, request_id, detail";

/// Retention: at most ?2 events recorded before ?1, the oldest first.
pub(super) const PURGE_EVENTS: &str = "delete from audit_events
    where id in (select id from audit_events where at < ?1 order by at, id limit ?2)";

pub(super) const PING: &str = "select 1";
