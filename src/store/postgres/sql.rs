//! Every statement the PostgreSQL store runs, in one place.
//!
//! Each operation is *one* statement (data-modifying CTEs where it writes several rows), hence
//! one round trip and one SERIALIZABLE transaction. Every write is idempotent: run twice, it does
//! what it did once and reports that, which is how a write whose answer was lost is resolved (see
//! the store's module docs). `SPEND` and `CREATE_FAMILY` are public so that the benchmark's
//! pgbench ceiling runs exactly them.

/// The columns of a `FamilyRow`, from `families f`. A macro so that it can be `concat!`-ed into
/// static SQL (sqlx 0.9 only takes `&'static str` as SQL without an explicit assertion).
macro_rules! family_columns {
    () => {
        "f.id, f.subject, f.client_id, f.scopes, f.audiences, f.claims, f.created_at, \
         f.last_rotated_at, f.refresh_expires_at, f.expires_at, f.revoked_at"
    };
}

/// The presented token ($1), its family and its successor: a `TokenRow`. `$seal` is the
/// successor's seal, from `$join`ed `seals x`.
macro_rules! presented_token_select {
    ($seal:literal, $join:literal) => {
        concat!(
            "select ",
            family_columns!(),
            ", t.hash, t.created_at as token_created_at, t.expires_at as token_expires_at, \
                t.spent_at, t.successor_hash, ",
            $seal,
            " as successor_seal, \
                s.expires_at as successor_expires_at, s.spent_at is not null as successor_spent \
         from refresh_tokens t \
         join families f on f.id = t.family_id \
         left join refresh_tokens s on s.hash = t.successor_hash",
            $join,
            " where t.hash = $1"
        )
    };
}

/// What a spend writes, after its `spent` CTE (which returns the family's id and expiry): the
/// presented token's own seal deleted, the successor (naming its parent: the schema refuses a
/// second successor) and its seal, the family's rotation bookkeeping (`touched`, left open for a
/// `returning`), its Rotate bucket included. Parameters as both spend statements number them: $1
/// presented hash, $2 successor hash, $3 now, $4 successor seal (null: no seal written or
/// deleted), $5 successor expiry; and `$interval`, the Rotate limit's interval in microseconds.
/// Shared, so that the two statements cannot write a rotation differently.
///
/// The family's Rotate bucket is GCRA's: `rotate_tat` is when the bucket is full again (null:
/// full). A rotation moves it one interval past the later of itself and now, and is allowed only
/// while it is at most the limit's tolerance (`burst - 1` intervals) past now
/// ([`crate::domain::RotateLimit`]). It is not indexed: a rotation's update of the family stays
/// a HOT update.
macro_rules! rotation_writes {
    ($interval:literal) => {
        concat!(
            "
    ), unsealed as (
        delete from seals x using spent s where $4 is not null and x.hash = $1
    ), successor as (
        insert into refresh_tokens (hash, family_id, parent_hash, created_at, expires_at)
        select $2, family_id, $1, $3, least($5, expires_at) from spent
        returning family_id, expires_at
    ), sealed as (
        insert into seals (hash, seal, created_at)
        select $2, $4, $3 from successor where $4 is not null
    ), touched as (
        update families f
        set last_rotated_at = $3, refresh_expires_at = s.expires_at,
            rotate_tat = greatest(f.rotate_tat, $3) + ",
            $interval,
            " * interval '1 microsecond'
        from successor s
        where f.id = s.family_id"
        )
    };
}

/// Introspect and Revoke need no seal.
pub(super) const PRESENTED_TOKEN: &str = presented_token_select!("null::bytea", "");

/// Rotate's first statement, and nearly always its only one: spends the presented token ($1) if
/// it and its family are live, and does nothing else. Parameters: $1 presented hash, $2 successor
/// hash, $3 now, $4 successor seal (null without a grace window, and then no seal is written or
/// deleted), $5 successor expiry, $6 caller, $7 request id (for the audit trail), $8 whether to
/// record the rotation (`--audit-rotations`), $9 and $10 the Rotate limit's interval and
/// tolerance in microseconds.
///
/// The same spend, successor, seals, touch and audit as [`SPEND`]'s, under the same condition
/// (an unspent, unexpired token of an unrevoked, unexpired family whose Rotate bucket has room:
/// see `rotation_writes!`), without what only a refusal
/// needs: reading the presented token's state whole, its successor and its successor's seal, the
/// reuse revocation. Those cost PostgreSQL about a third of the rotation (issue 18; BENCHMARKS.md
/// "Rotate's statement, split"). Returns the family as the rotation left it and the successor's
/// expiry; no row when it spent nothing, and then the store runs [`SPEND`], which says why (or,
/// after a lost answer, finds this very spend done) and revokes the family on reuse. Nothing is
/// lost by the split: every refusal is permanent (a spent token stays spent, a revoked family
/// revoked, time moves on), so between the two statements nothing can turn a refusal into a
/// spend, and `SPEND` alone decides what the caller hears.
///
/// `family` finds the family by its primary key, and alone: joined into the update, with the
/// liveness conditions as join filters, the planner scanned the whole `families_live_by_subject`
/// index (its predicate is `revoked_at is null`), and under SERIALIZABLE a read of every family
/// conflicts with every other rotation's touch (K=64: 481 rotations/s, errors; A/B in
/// BENCHMARKS.md). `materialized`, so that the conditions cannot be pushed back into that scan.
pub const SPEND_LIVE: &str = concat!(
    "with family as materialized (
        select f.id, f.expires_at, f.revoked_at, f.rotate_tat from families f
        where f.id = (select family_id from refresh_tokens where hash = $1)
    ), spent as (
        update refresh_tokens t
        set spent_at = $3, successor_hash = $2
        from family f
        where t.hash = $1 and t.spent_at is null and t.expires_at > $3
          and f.id = t.family_id and f.revoked_at is null and f.expires_at > $3
          and (f.rotate_tat is null or f.rotate_tat <= $3 + $10 * interval '1 microsecond')
        returning t.family_id, f.expires_at",
    rotation_writes!("$9"),
    "
        returning ",
    family_columns!(),
    "
    ), recorded as (
        insert into audit_events (at, kind, family_id, subject, client_id, caller, request_id)
        select $3, 'rotated', id, subject, client_id, $6, $7 from touched where $8
    )
    select ",
    family_columns!(),
    ", s.expires_at as new_expires_at from touched f, successor s"
);

/// Rotate's second statement, run only when [`SPEND_LIVE`] spent nothing: a refusal, or a
/// second delivery of a spend whose answer was lost. Parameters: $1 presented hash, $2 successor
/// hash, $3 now, $4 successor seal (null without a grace window, and then no seal is read,
/// written or deleted), $5 successor expiry, $6 the start of the grace window (`now - grace`), $7
/// caller, $8 request id (for the audit trail), $9 whether to record the rotation
/// (`--audit-rotations`), $10 and $11 the Rotate limit's interval and tolerance in microseconds.
/// On its own it is a whole rotation (it spends a live token too), which is what makes the split
/// safe. A Rotate limit's refusal is the one that is not permanent (the bucket refills): this
/// statement checks the bucket again, and alone says whether it is full (`limited_until`: when
/// it will have room, null unless it is full now).
///
/// `presented` reads the state. `spent` spends the token only if it is live (under SERIALIZABLE
/// a concurrent spend of the same row makes this fail with 40001 rather than slip through);
/// `rotation_writes!` (the token's own seal deleted, the successor, its seal, the family touched)
/// follow only if `spent` did. `reused` revokes the family when the presented token was already
/// spent and this is neither a retry within the grace window (the same condition as
/// `rotation::judge`) nor a second delivery of this very request (spent into `$2`): detection and
/// revocation are one atomic step, so once PostgreSQL has seen a replay the family is revoked
/// whatever happens to the caller. `recorded` writes the audit events of what `spent` (only if $9)
/// and `reused` did, so a second delivery, which does neither, records nothing. The final select
/// returns the state as read, the successor's expiry when the spend happened, and whether
/// `reused` revoked the family.
pub const SPEND: &str = concat!(
    "with presented as (",
    presented_token_select!(
        "x.seal",
        " left join seals x on $4 is not null and x.hash = t.successor_hash"
    ),
    "), limited as (
        select f.rotate_tat - $11 * interval '1 microsecond' as until from families f, presented p
        where f.id = p.id and f.rotate_tat > $3 + $11 * interval '1 microsecond'
    ), spent as (
        update refresh_tokens t
        set spent_at = $3, successor_hash = $2
        from presented p
        where t.hash = p.hash and t.spent_at is null
          and p.revoked_at is null and p.token_expires_at > $3 and p.expires_at > $3
          and not exists (select 1 from limited)
        returning t.family_id, p.expires_at",
    rotation_writes!("$10"),
    "
    ), reused as (
        update families f
        set revoked_at = $3, revoked_reason = 'reuse'
        from presented p
        where f.id = p.id and p.spent_at is not null and p.revoked_at is null and p.expires_at > $3
          and p.successor_hash <> $2
          and not (p.successor_seal is not null and p.spent_at > $6
                   and not p.successor_spent and p.successor_expires_at > $3)
        returning f.id
    ), recorded as (
        insert into audit_events (at, kind, family_id, subject, client_id, caller, request_id)
        select $3, 'rotated', p.id, p.subject, p.client_id, $7, $8 from spent s, presented p where $9
        union all
        select $3, 'reuse_detected', r.id, p.subject, p.client_id, $7, $8 from reused r, presented p
    )
    select p.*, (select expires_at from successor) as new_expires_at,
           exists (select 1 from reused) as revoked_for_reuse,
           (select until from limited) as limited_until
    from presented p"
);

/// Issue's statement. Parameters: $1 family id, $2 subject, $3 client id, $4 scopes,
/// $5 audiences, $6 claims, $7 now, $8 first token's expiry, $9 family expiry, $10 first token's
/// hash, $11 how many of the subject's other live families for this client may stay (the cap
/// minus one), $12 caller and $13 request id (for the audit trail).
///
/// A second delivery fails on the family's primary key (the id is random and new), which the
/// store takes as "done" when it is resolving a lost answer (`run::Kind::Insert`), and so records
/// no second `issued`. Returns the families it evicted.
pub const CREATE_FAMILY: &str = "with family as (
        insert into families (id, subject, client_id, scopes, audiences, claims, created_at,
                              last_rotated_at, refresh_expires_at, expires_at)
        values ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)
        returning id
    ), first as (
        insert into refresh_tokens (hash, family_id, created_at, expires_at)
        select $10, id, $7, $8 from family
    ), evicted as (
        update families f
        set revoked_at = $7, revoked_reason = 'evicted'
        from (select id from families
              where subject = $2 and client_id = $3 and revoked_at is null
                and expires_at > $7 and refresh_expires_at > $7
              order by created_at desc, id desc
              offset $11) oldest
        where f.id = oldest.id
        returning f.id
    ), recorded as (
        insert into audit_events (at, kind, family_id, subject, client_id, caller, request_id)
        select $7, 'issued', id, $2, $3, $12, $13 from family
        union all
        select $7, 'evicted', id, $2, $3, $12, $13 from evicted
    )
    select id from evicted";

pub(super) const FAMILY_STATUS: &str = "select revoked_at is not null, expires_at from families where id = $1";

pub(super) const FAMILY_SUBJECT: &str = "select subject from families where id = $1";

/// $1 family id, $2 now, $3 reason; the audit event: $4 kind, $5 detail, $6 caller, $7 request
/// id, recorded only if this revoked it. Returns whether the family exists and whether this
/// revoked it.
pub(super) const REVOKE_FAMILY: &str = "with target as (
        select id, revoked_at from families where id = $1
    ), revoked as (
        update families f set revoked_at = $2, revoked_reason = $3
        from target t
        where f.id = t.id and t.revoked_at is null
        returning f.id, f.subject, f.client_id
    ), recorded as (
        insert into audit_events (at, kind, family_id, subject, client_id, caller, request_id, detail)
        select $2, $4, id, subject, client_id, $6, $7, $5 from revoked
    )
    select exists (select 1 from target), exists (select 1 from revoked)";

/// $1 subject, $2 now, $3 batch size, $4 caller, $5 request id. One batch: a subject with 100k
/// families is revoked in many short statements instead of one that hits the statement timeout.
/// Each family revoked is recorded (`revoked`, named by subject).
pub(super) const REVOKE_SUBJECT: &str = "with revoked as (
        update families set revoked_at = $2, revoked_reason = 'revoke'
        where id in (select id from families
                     where subject = $1 and revoked_at is null and expires_at > $2
                     limit $3)
        returning id, client_id
    ), recorded as (
        insert into audit_events (at, kind, family_id, subject, client_id, caller, request_id, detail)
        select $2, 'revoked', id, $1, client_id, $4, $5, 'subject' from revoked
    )
    select id from revoked";

/// The live sessions of $1 at $2, newest first, at most $3; only the columns ListSessions shows.
macro_rules! live_families {
    ($after:literal) => {
        concat!(
            "select id, client_id, scopes, created_at, last_rotated_at, expires_at, refresh_expires_at
             from families
             where subject = $1 and revoked_at is null and expires_at > $2 and refresh_expires_at > $2 ",
            $after,
            " order by created_at desc, id desc limit $3"
        )
    };
}

pub(super) const LIVE_FAMILIES: &str = live_families!("");
/// The next page: after ($4, $5) in the listing order.
pub(super) const LIVE_FAMILIES_AFTER: &str = live_families!("and (created_at, id) < ($4, $5)");

/// Families revoked before $1, at most $2 of them. (Expired ones: [`IDLE_WINDOW`].)
pub(super) const REVOKED_FAMILIES: &str = "select id from families where revoked_at <= $1 limit $2";

/// The sweep: the next $2 families after $1 in id order, each with whether it expired before $3:
/// `refresh_expires_at` is the earlier of its idle and absolute ends, and moves with every
/// rotation, which is why it has no index (see the migration) and is read a bounded window of the
/// primary key per statement instead.
pub(super) const IDLE_WINDOW: &str = "select id, refresh_expires_at <= $3 from families
    where id > $1 order by id limit $2";

/// Cleanup of families $1 (that ended), step one: at most $2 of their spent refresh tokens, so
/// that a long chain goes in several statements, and always the *oldest*: each family's chain is
/// walked from its first token along parent links through spent tokens only, breadth first (a
/// recursive query yields its rows level by level, and the limit stops the walk), so each family
/// loses a prefix of its chain. The foreign key's `on delete set null (parent_hash)` then makes the
/// oldest token left the family's first, and the one-first-per-family index holds (see the
/// migration `parent_in_family`). Fewer than $2 deleted: no spent token is left.
pub(super) const PURGE_SPENT_TOKENS: &str = "with recursive chain (hash) as (
        select hash from refresh_tokens
        where family_id = any($1) and parent_hash is null and spent_at is not null
        union all
        select t.hash from chain c join refresh_tokens t on t.parent_hash = c.hash
        where t.spent_at is not null
    ), oldest as (
        select hash from chain limit $2
    )
    delete from refresh_tokens t using oldest o where t.hash = o.hash";

/// Step two: those of families $1 with no spent tokens left, with their last token (and its
/// seal, by cascade). Returns how many families and tokens went.
pub(super) const PURGE_FAMILIES: &str = "with doomed as (
        select f.id from families f
        where f.id = any($1)
          and not exists (select 1 from refresh_tokens t where t.family_id = f.id and t.spent_at is not null)
    ), tokens as (
        delete from refresh_tokens t using doomed d where t.family_id = d.id returning 1
    ), gone as (
        delete from families f using doomed d where f.id = d.id returning 1
    )
    select (select count(*) from gone), (select count(*) from tokens)";

/// Seals made before $1 (a seal is made with its token), at most $2 of them.
pub(super) const CLEAR_SEALS: &str = "delete from seals
    where hash in (select hash from seals where created_at <= $1 limit $2)";

/// The columns of an `EventRow`.
pub(super) const EVENT_COLUMNS: &str = "id, at, kind, family_id, subject, client_id, caller, request_id, detail";

/// Retention: at most $2 events recorded before $1, the oldest first.
pub(super) const PURGE_EVENTS: &str = "delete from audit_events
    where id in (select id from audit_events where at < $1 order by at, id limit $2)";

/// `ratchet events` reads in its own transaction at READ COMMITTED, read only: it needs no
/// serializable snapshot, and so takes no predicate locks that could make a concurrent write
/// retry.
pub(super) const BEGIN_EVENTS_READ: &str = "begin isolation level read committed, read only";

pub(super) const PING: &str = "select current_setting('transaction_read_only') = 'off'";

/// The advisory lock key cleanup holds while it sweeps: one fixed 64-bit number for every
/// ratchet server on a database, the bytes of "ratchet" and a 1 ("the sweep"). Anything else
/// using advisory locks on the same database must not use this key.
pub const SWEEP_LOCK_KEY: i64 = 0x7261_7463_6865_7401;

/// Takes the sweep lock for the session if no other session holds it; says whether it did.
pub(super) const TRY_SWEEP_LOCK: &str = "select pg_try_advisory_lock($1)";
