//! [`FamilyStore`] on PostgreSQL.
//!
//! Every connection runs at `default_transaction_isolation = serializable` (checked when it is
//! opened, see [`pool`](mod@pool)), so each statement is a SERIALIZABLE transaction of its own; the
//! statements are in `sql`, their rows in `rows`, and how each one is run to a definite
//! outcome (retries, lost answers, timeouts) in `run`; where the database is and the session
//! settings every connection gets in `target`, and which of several servers a connection goes to
//! in [`hosts`]; creating and migrating the database in `migrate`; waiting at start for a database that cannot be
//! reached yet in [`wait`]. [`revocations`] carries revocations from
//! the database to this server's family cache as they are committed, wherever they were made.

pub mod hosts;
mod migrate;
pub mod pool;
pub mod revocations;
mod rows;
mod run;
mod sql;
mod target;
#[cfg(test)]
mod tests;
pub mod wait;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgQueryResult, Postgres};
use sqlx::query::{Query, QueryAs};
use sqlx::types::Json;
use time::OffsetDateTime;
use tokio::sync::watch;
use uuid::Uuid;

pub use self::hosts::PgHosts;
pub use self::migrate::{MIGRATOR, migrate};
pub use self::pool::ConnectionPool;
use self::rows::{EventRow, SessionRow, SpentRow, TokenRow};
use self::run::Kind;
pub use self::run::RetryPolicy;
/// The advisory lock key the cleanup sweep holds: for operators (and tests) who need to hold
/// cleanup off, `select pg_advisory_lock(<key>)`.
pub use self::sql::SWEEP_LOCK_KEY;
/// The statements Issue and Rotate run, for the benchmark's pgbench ceiling (`ratchet-bench
/// --print-pgbench`), which must run these very statements and no copy of them. Only with the
/// `bench-sql` feature, which the bench crate turns on: the SQL is not the service's API.
#[cfg(feature = "bench-sql")]
pub use self::sql::{CREATE_FAMILY, SPEND, SPEND_LIVE};
pub use self::target::{PgTarget, PoolSettings, pool, tune, tuned};
use super::cached::FamilyCache;
use super::{
    AuditEvent, EventFilter, FamilyStatus, FamilyStore, IdleWindow, NewFamily, Purged, RefreshTokenRecord, Revocation,
    RevokeReason, SessionCursor, SessionRecord, SpendOutcome, SpendRequest, StoreError, SweepLock, audit,
};
use crate::domain::{Actor, FamilyId, TokenHash};

/// PostgreSQL-backed [`FamilyStore`].
#[derive(Clone)]
pub struct PgStore {
    pool: ConnectionPool,
    timeout: Duration,
    retry: RetryPolicy,
    /// Where the revocation listener connects, when not where the pool does.
    listener: Option<Arc<PgHosts>>,
}

/// By hand: `PgConnectOptions`' own `Debug` prints the password.
impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    pub fn new(pool: ConnectionPool, settings: &PoolSettings) -> Self {
        Self {
            pool,
            timeout: settings.timeout,
            retry: RetryPolicy::default(),
            listener: None,
        }
    }

    /// A store on `target`, its pool opened lazily: nothing is connected yet, so this works (and
    /// the server reports NOT_SERVING) while the database is down.
    pub fn open(target: &PgTarget) -> Self {
        Self::new(pool(target.hosts.clone(), &target.settings), &target.settings)
    }

    /// The revocation listener connects with `options` instead of the pool's: LISTEN needs a
    /// session of its own, which a transaction-pooling proxy in front of the pool does not give
    /// (and tests route it through a proxy they can cut).
    #[must_use]
    pub fn with_listener_options(mut self, options: PgConnectOptions) -> Self {
        self.listener = Some(Arc::new(PgHosts::one(options)));
        self
    }

    pub fn pool(&self) -> &ConnectionPool {
        &self.pool
    }

    /// Bound on any one statement, waiting for a connection included.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Keeps `cache` current with the revocations committed anywhere, until `stopped` changes;
    /// see [`revocations`].
    pub async fn listen_for_revocations(&self, cache: Arc<FamilyCache>, stopped: watch::Receiver<bool>) {
        let hosts = match &self.listener {
            Some(hosts) => PgHosts::clone(hosts),
            None => revocations::options(self.pool.hosts()),
        };
        revocations::listen(hosts, cache, self.timeout, stopped).await;
    }

    /// Runs the statement `query` builds (afresh for every attempt) and returns its result.
    async fn execute<'q>(
        &self,
        kind: Kind,
        query: impl Fn() -> Query<'q, Postgres, PgArguments>,
    ) -> Result<PgQueryResult, StoreError> {
        self.run(kind, |mut connection| {
            let query = query();
            async move {
                let outcome = query.execute(connection.begin()).await;
                (connection, outcome)
            }
        })
        .await
    }

    /// Runs the query `query` builds (afresh for every attempt) and returns its row, if any.
    async fn fetch_optional<'q, O>(
        &self,
        kind: Kind,
        query: impl Fn() -> QueryAs<'q, Postgres, O, PgArguments>,
    ) -> Result<Option<O>, StoreError>
    where
        O: Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        self.run(kind, |mut connection| {
            let query = query();
            async move {
                let outcome = query.fetch_optional(connection.begin()).await;
                (connection, outcome)
            }
        })
        .await
    }

    /// Runs the query `query` builds (afresh for every attempt) and returns all its rows.
    async fn fetch_all<'q, O>(
        &self,
        kind: Kind,
        query: impl Fn() -> QueryAs<'q, Postgres, O, PgArguments>,
    ) -> Result<Vec<O>, StoreError>
    where
        O: Send + Unpin + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        self.run(kind, |mut connection| {
            let query = query();
            async move {
                let outcome = query.fetch_all(connection.begin()).await;
                (connection, outcome)
            }
        })
        .await
    }
}

/// Row counts are never negative; a conversion cannot fail in practice.
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl FamilyStore for PgStore {
    async fn create_family(&self, new: &NewFamily, actor: &Actor) -> Result<Vec<FamilyId>, StoreError> {
        let family = &new.family;
        let keep_others = i64::from(new.max_live.saturating_sub(1));
        let evicted: Vec<(Uuid,)> = self
            .fetch_all(Kind::Insert, || {
                sqlx::query_as(sql::CREATE_FAMILY)
                    .bind(family.id.as_uuid())
                    .bind(&family.subject)
                    .bind(&family.client_id)
                    .bind(&family.scopes)
                    .bind(&family.audiences)
                    .bind(Json(&family.claims))
                    .bind(family.created_at)
                    .bind(new.first.expires_at)
                    .bind(family.expires_at)
                    .bind(&new.first.hash.0[..])
                    .bind(keep_others)
                    .bind(actor.caller.as_deref())
                    .bind(actor.request_id.as_deref())
            })
            .await?;
        Ok(evicted.into_iter().map(|(id,)| FamilyId::from_uuid(id)).collect())
    }

    async fn spend(&self, request: &SpendRequest, actor: &Actor) -> Result<SpendOutcome, StoreError> {
        let seal = request.successor_seal.map(|seal| seal.0);
        let limit = request.rotate_limit;
        let (interval, tolerance) = (limit.interval_micros(), limit.tolerance_micros());
        let spent = self
            .fetch_optional(Kind::Write, || {
                sqlx::query_as::<_, SpentRow>(sql::SPEND_LIVE)
                    .bind(&request.presented.0[..])
                    .bind(&request.successor.hash.0[..])
                    .bind(request.now)
                    .bind(seal.as_ref().map(|seal| &seal[..]))
                    .bind(request.successor.expires_at)
                    .bind(actor.caller.as_deref())
                    .bind(actor.request_id.as_deref())
                    .bind(request.audit_rotation)
                    .bind(interval)
                    .bind(tolerance)
            })
            .await?;
        if let Some(spent) = spent {
            return Ok(SpendOutcome::Spent {
                family: spent.family.into(),
                successor_expires_at: spent.new_expires_at,
            });
        }
        // Refused, or spent by an earlier delivery of this request: the whole statement says which.
        let row = self
            .fetch_optional(Kind::Write, || {
                sqlx::query_as::<_, TokenRow>(sql::SPEND)
                    .bind(&request.presented.0[..])
                    .bind(&request.successor.hash.0[..])
                    .bind(request.now)
                    .bind(seal.as_ref().map(|seal| &seal[..]))
                    .bind(request.successor.expires_at)
                    .bind(request.retry_after)
                    .bind(actor.caller.as_deref())
                    .bind(actor.request_id.as_deref())
                    .bind(request.audit_rotation)
                    .bind(interval)
                    .bind(tolerance)
            })
            .await?;
        let Some(row) = row else {
            return Ok(SpendOutcome::Refused {
                token: None,
                revoked_for_reuse: false,
            });
        };
        Ok(match (row.new_expires_at, row.successor_expires_at) {
            (Some(successor_expires_at), _) => {
                let mut family: super::FamilyRecord = row.family.into();
                family.last_rotated_at = request.now;
                family.refresh_expires_at = successor_expires_at;
                SpendOutcome::Spent {
                    family,
                    successor_expires_at,
                }
            }
            // Spent into our own successor: an earlier delivery of this request did it.
            (None, Some(successor_expires_at)) if row.spent_into(&request.successor.hash) => SpendOutcome::Spent {
                family: row.family.into(),
                successor_expires_at,
            },
            // Live but not spent: the family's Rotate bucket is full (the statement's one refusal
            // of a live token).
            _ if row.is_unspent() && row.limited_until.is_some() => SpendOutcome::Limited {
                family: super::FamilyRecord::from(row.family).id,
                retry_at: row.limited_until.unwrap_or(request.now),
            },
            _ => SpendOutcome::Refused {
                revoked_for_reuse: row.revoked_for_reuse.unwrap_or(false),
                token: Some(row.into_record()),
            },
        })
    }

    async fn refresh_token(&self, hash: &TokenHash) -> Result<Option<RefreshTokenRecord>, StoreError> {
        let row = self
            .fetch_optional(Kind::Read, || {
                sqlx::query_as::<_, TokenRow>(sql::PRESENTED_TOKEN).bind(&hash.0[..])
            })
            .await?;
        Ok(row.map(TokenRow::into_record))
    }

    async fn family_status(&self, id: FamilyId) -> Result<Option<FamilyStatus>, StoreError> {
        let row: Option<(bool, OffsetDateTime)> = self
            .fetch_optional(Kind::Read, || sqlx::query_as(sql::FAMILY_STATUS).bind(id.as_uuid()))
            .await?;
        Ok(row.map(|(revoked, expires_at)| FamilyStatus { revoked, expires_at }))
    }

    async fn family_subject(&self, id: FamilyId) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = self
            .fetch_optional(Kind::Read, || sqlx::query_as(sql::FAMILY_SUBJECT).bind(id.as_uuid()))
            .await?;
        Ok(row.map(|(subject,)| subject))
    }

    async fn revoke_family(
        &self,
        id: FamilyId,
        now: OffsetDateTime,
        reason: RevokeReason,
        actor: &Actor,
    ) -> Result<Revocation, StoreError> {
        let (kind, detail) = reason.event();
        let row: Option<(bool, bool)> = self
            .fetch_optional(Kind::Write, || {
                sqlx::query_as(sql::REVOKE_FAMILY)
                    .bind(id.as_uuid())
                    .bind(now)
                    .bind(reason.as_str())
                    .bind(kind.as_str())
                    .bind(detail)
                    .bind(actor.caller.as_deref())
                    .bind(actor.request_id.as_deref())
            })
            .await?;
        Ok(match row {
            Some((true, true)) => Revocation::Revoked,
            Some((true, false)) => Revocation::AlreadyRevoked,
            _ => Revocation::Unknown,
        })
    }

    async fn revoke_subject(
        &self,
        subject: &str,
        now: OffsetDateTime,
        limit: u32,
        actor: &Actor,
    ) -> Result<Vec<FamilyId>, StoreError> {
        let ids: Vec<(Uuid,)> = self
            .fetch_all(Kind::Write, || {
                sqlx::query_as(sql::REVOKE_SUBJECT)
                    .bind(subject)
                    .bind(now)
                    .bind(i64::from(limit))
                    .bind(actor.caller.as_deref())
                    .bind(actor.request_id.as_deref())
            })
            .await?;
        Ok(ids.into_iter().map(|(id,)| FamilyId::from_uuid(id)).collect())
    }

    async fn live_families(
        &self,
        subject: &str,
        now: OffsetDateTime,
        after: Option<SessionCursor>,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let rows: Vec<SessionRow> = self
            .fetch_all(Kind::Read, || {
                let query = sqlx::query_as(match after {
                    None => sql::LIVE_FAMILIES,
                    Some(_) => sql::LIVE_FAMILIES_AFTER,
                })
                .bind(subject)
                .bind(now)
                .bind(i64::from(limit));
                match after {
                    None => query,
                    Some(cursor) => query.bind(cursor.created_at).bind(cursor.id.as_uuid()),
                }
            })
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn revoked_families(&self, revoked_before: OffsetDateTime, limit: u32) -> Result<Vec<FamilyId>, StoreError> {
        let ids: Vec<(Uuid,)> = self
            .fetch_all(Kind::Read, || {
                sqlx::query_as(sql::REVOKED_FAMILIES)
                    .bind(revoked_before)
                    .bind(i64::from(limit))
            })
            .await?;
        Ok(ids.into_iter().map(|(id,)| FamilyId::from_uuid(id)).collect())
    }

    async fn idle_window(
        &self,
        after: Option<FamilyId>,
        window: u32,
        ended_before: OffsetDateTime,
    ) -> Result<IdleWindow, StoreError> {
        // The nil UUID sorts first, and random (v4) ids are never nil.
        let after = after.map_or(Uuid::nil(), |id| id.as_uuid());
        let rows: Vec<(Uuid, bool)> = self
            .fetch_all(Kind::Read, || {
                sqlx::query_as(sql::IDLE_WINDOW)
                    .bind(after)
                    .bind(i64::from(window))
                    .bind(ended_before)
            })
            .await?;
        Ok(IdleWindow {
            last: rows.last().map(|(id, _)| FamilyId::from_uuid(*id)),
            ended: rows
                .into_iter()
                .filter_map(|(id, ended)| ended.then_some(FamilyId::from_uuid(id)))
                .collect(),
        })
    }

    async fn purge_families(&self, families: &[FamilyId], limit: u32) -> Result<Purged, StoreError> {
        let ids: Vec<Uuid> = families.iter().map(FamilyId::as_uuid).collect();
        let mut purged = Purged::default();
        if ids.is_empty() {
            return Ok(purged);
        }
        // Spent tokens first, a batch at a time: the families go once none are left.
        loop {
            let deleted = self
                .execute(Kind::Write, || {
                    sqlx::query(sql::PURGE_SPENT_TOKENS).bind(&ids).bind(i64::from(limit))
                })
                .await?
                .rows_affected();
            purged.tokens += deleted;
            if deleted < u64::from(limit) {
                break;
            }
        }
        let row: Option<(i64, i64)> = self
            .fetch_optional(Kind::Write, || sqlx::query_as(sql::PURGE_FAMILIES).bind(&ids))
            .await?;
        let (families, tokens) = row.unwrap_or_default();
        purged.families += count(families);
        purged.tokens += count(tokens);
        Ok(purged)
    }

    async fn clear_seals(&self, sealed_before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        Ok(self
            .execute(Kind::Write, || {
                sqlx::query(sql::CLEAR_SEALS).bind(sealed_before).bind(i64::from(limit))
            })
            .await?
            .rows_affected())
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let statement = audit::select_statement(filter, sql::EVENT_COLUMNS, |n| format!("${n}"));
        let rows: Vec<EventRow> = self
            .run(Kind::Read, |mut connection| {
                // Built from fixed fragments (`audit::select_statement`); every value is bound.
                let mut query = sqlx::query_as(sqlx::AssertSqlSafe(statement.clone()));
                if let Some(family) = filter.family {
                    query = query.bind(family.as_uuid());
                }
                if let Some(subject) = &filter.subject {
                    query = query.bind(subject.clone());
                }
                if let Some(kind) = filter.kind {
                    query = query.bind(kind.as_str());
                }
                if let Some(since) = filter.since {
                    query = query.bind(since);
                }
                let query = query.bind(i64::from(filter.limit));
                async move {
                    let outcome = async {
                        let mut read = connection.begin().begin_with(sql::BEGIN_EVENTS_READ).await?;
                        let rows = query.fetch_all(&mut *read).await?;
                        read.commit().await?;
                        Ok(rows)
                    }
                    .await;
                    (connection, outcome)
                }
            })
            .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn purge_events(&self, before: OffsetDateTime, limit: u32) -> Result<u64, StoreError> {
        Ok(self
            .execute(Kind::Write, || {
                sqlx::query(sql::PURGE_EVENTS).bind(before).bind(i64::from(limit))
            })
            .await?
            .rows_affected())
    }

    /// The database answers, and accepts writes: ratchet is of no use on a server that does not.
    async fn ping(&self) -> Result<(), StoreError> {
        let writable: Option<(bool,)> = self.fetch_optional(Kind::Read, || sqlx::query_as(sql::PING)).await?;
        if writable == Some((true,)) {
            return Ok(());
        }
        // A failover left the pool's server behind as a standby (or read-only): its idle
        // connections go, so that the next ones find the server that accepts writes (`hosts`).
        self.pool.drop_idle();
        Err(StoreError::Unavailable(
            "the database server no longer accepts writes".into(),
        ))
    }

    /// A session-level advisory lock ([`sql::SWEEP_LOCK_KEY`]) on a connection of its own, not
    /// one of the pool's, held for the whole pass and given back by closing that connection.
    ///
    /// Why session-level: the pass is many short transactions (so that Rotate never waits on
    /// it), and a transaction-level lock (`pg_try_advisory_xact_lock`) would only keep two
    /// replicas from running the same *batch* at once, not from sweeping side by side.
    ///
    /// Why its own connection: a session lock lives as long as its session. On a pooled
    /// connection, a pass that failed or was cancelled (shutdown) before unlocking would hand the
    /// connection back still holding it, and no replica would clean again until that connection
    /// happened to be closed. Here the lock goes with the connection: dropping the guard drops
    /// it, PostgreSQL ends the session and releases the lock, whatever way the pass ended. (A
    /// replica that vanishes without closing its socket holds it until PostgreSQL notices the
    /// dead connection; the others skip until then.) It costs one connection per pass, beyond the
    /// pool's size, once an interval (a minute by default).
    async fn sweep_lock(&self) -> Result<Option<SweepLock>, StoreError> {
        let take = async {
            let mut session = self.pool.hosts().connect(self.pool.per_host()).await?;
            let (taken,): (bool,) = sqlx::query_as(sql::TRY_SWEEP_LOCK)
                .bind(sql::SWEEP_LOCK_KEY)
                .fetch_one(&mut session)
                .await?;
            Ok::<_, sqlx::Error>(taken.then(|| SweepLock::held_by(session)))
        };
        match tokio::time::timeout(self.timeout, take).await {
            Ok(Ok(lock)) => Ok(lock),
            Ok(Err(error)) => Err(StoreError::Unavailable(Box::new(error))),
            Err(elapsed) => Err(StoreError::Unavailable(Box::new(elapsed))),
        }
    }
}

/// Whether `error` says the database is reachable but misconfigured for us (see
/// [`pool::NotSerializable`]): a reason to refuse to start rather than wait.
pub fn is_misconfigured(error: &StoreError) -> bool {
    let StoreError::Unavailable(source) = error else {
        return false;
    };
    match source.downcast_ref::<sqlx::Error>() {
        Some(sqlx::Error::Configuration(inner)) => inner.is::<pool::NotSerializable>(),
        _ => false,
    }
}
