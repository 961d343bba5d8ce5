//! [`FamilyStore`] on PostgreSQL.
//!
//! Every connection runs at `default_transaction_isolation = serializable`, so each statement
//! below is a SERIALIZABLE transaction of its own. Each operation is *one* statement (data-
//! modifying CTEs where it writes several rows), hence one round trip: Rotate's spend, its
//! successor, the family's bookkeeping and the read the issuer needs to explain a refusal all
//! happen in a single statement. Serialization failures and deadlocks (SQLSTATE 40001, 40P01)
//! are retried with jittered exponential backoff; see [`RetryPolicy`].

use std::future::Future;
use std::time::Duration;

use deadpool::managed::PoolError;
use serde_json::{Map, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::pool::{ConnectionPool, PooledConnection};
use super::{
    FamilyRecord, FamilyStatus, FamilyStore, NewRefreshToken, RefreshTokenRecord, RevokeReason, SpendOutcome,
    SpendRequest, StoreError, Successor,
};
use crate::issuer::refresh_token::{Seal, TokenHash};
use crate::issuer::types::FamilyId;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// How connections are opened and how long anything may take.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// Bound on every database operation, including waiting for a connection: past it the caller
    /// gets UNAVAILABLE rather than a hang.
    pub timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Our session settings on top of `options` (from a URL, or from a test harness).
pub fn tune(options: PgConnectOptions, settings: &PoolSettings) -> PgConnectOptions {
    let statement_timeout = format!("{}ms", settings.timeout.as_millis());
    options.application_name("ratchet").options([
        ("default_transaction_isolation", "serializable"),
        ("statement_timeout", statement_timeout.as_str()),
        // A session stuck inside a transaction must not hold row locks forever.
        ("idle_in_transaction_session_timeout", "30s"),
    ])
}

/// A pool for `options` with our session settings; see [`ConnectionPool`] for how connections
/// are checked, and why not sqlx's pool.
pub fn pool(options: PgConnectOptions, settings: &PoolSettings) -> ConnectionPool {
    ConnectionPool::new(tune(options, settings), settings.max_connections, settings.timeout)
}

/// Bounded retries of serialization failures; all attempts together are also bounded by the
/// store's timeout.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 64 clients racing for one token settle in three attempts each (lose the spend, lose the
    /// family revocation, then see it revoked). Unrelated rotations conflict too: SERIALIZABLE
    /// tracks B-tree reads per index *page*, and while the tables are small every row shares a
    /// few pages. On a fresh database at K=64 about 4% of rotations conflicted and a few lost 12
    /// times in a row (bench, issue 3); 40 attempts with backoff capped at 50 ms wait at most
    /// about a second.
    fn default() -> Self {
        Self {
            max_attempts: 40,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(50),
        }
    }
}

/// PostgreSQL-backed [`FamilyStore`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: ConnectionPool,
    timeout: Duration,
    retry: RetryPolicy,
}

impl PgStore {
    pub fn new(pool: ConnectionPool, settings: &PoolSettings) -> Self {
        Self {
            pool,
            timeout: settings.timeout,
            retry: RetryPolicy::default(),
        }
    }

    pub fn pool(&self) -> &ConnectionPool {
        &self.pool
    }

    /// Runs `op` on a pooled connection until it succeeds, fails for a reason other than a
    /// serialization conflict, or runs out of attempts or time. All attempts together, waiting
    /// for connections included, are bounded by the store's timeout.
    ///
    /// `op` takes the connection and gives it back with the outcome (rather than borrowing it,
    /// which would need a higher-ranked closure that cannot capture the caller's references).
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(PooledConnection) -> Fut,
        Fut: Future<Output = (PooledConnection, Result<T, sqlx::Error>)>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut delay = self.retry.base_delay;
        let mut attempt = 0;
        while attempt < self.retry.max_attempts {
            attempt += 1;
            let outcome = tokio::time::timeout_at(deadline, self.attempt(&op))
                .await
                .map_err(|elapsed| StoreError::Unavailable(Box::new(elapsed)))??;
            match outcome {
                Ok(value) => return Ok(value),
                Err(error) if is_serialization_conflict(&error) => {
                    tracing::debug!(attempt, "serialization conflict, retrying");
                    // Full jitter: racing clients spread out instead of colliding again.
                    let pause = delay.mul_f64(rand::random::<f64>());
                    if attempt == self.retry.max_attempts || tokio::time::Instant::now() + pause >= deadline {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    delay = (delay * 2).min(self.retry.max_delay);
                }
                Err(error) => return Err(classify(error)),
            }
        }
        Err(StoreError::Contention { attempts: attempt })
    }

    /// One attempt of `op`. The outer error is the pool's (no connection), the inner one the
    /// statement's.
    async fn attempt<T, F, Fut>(&self, op: &F) -> Result<Result<T, sqlx::Error>, StoreError>
    where
        F: Fn(PooledConnection) -> Fut,
        Fut: Future<Output = (PooledConnection, Result<T, sqlx::Error>)>,
    {
        let connection = self.pool.get().await.map_err(|error| match error {
            PoolError::Backend(error) => classify(error),
            other => StoreError::Unavailable(Box::new(other)),
        })?;
        let (mut connection, outcome) = op(connection).await;
        // A result or a database error means PostgreSQL answered and the protocol is in step.
        // After anything else (I/O, protocol) the connection is not trusted again.
        if matches!(outcome, Ok(_) | Err(sqlx::Error::Database(_))) {
            connection.finished();
        }
        Ok(outcome)
    }
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned())
}

fn is_serialization_conflict(error: &sqlx::Error) -> bool {
    matches!(sqlstate(error).as_deref(), Some("40001" | "40P01"))
}

/// Sorts a database error into "try later" and "bug".
fn classify(error: sqlx::Error) -> StoreError {
    let unavailable = match &error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(_) => sqlstate(&error).is_some_and(|code| {
            // 08: connection exception; 53: insufficient resources (too many connections, out of
            // disk); 57: operator intervention (shutdown, statement_timeout cancel); 3D000: the
            // database does not exist (yet).
            code.starts_with("08") || code.starts_with("53") || code.starts_with("57") || code == "3D000"
        }),
        _ => false,
    };
    if unavailable {
        StoreError::Unavailable(Box::new(error))
    } else {
        StoreError::Internal(Box::new(error))
    }
}

/// The columns of [`FamilyRow`], from `families f`. A macro so that it can be `concat!`-ed into
/// static SQL (sqlx 0.9 only takes `&'static str` as SQL without an explicit assertion).
macro_rules! family_columns {
    () => {
        "f.id, f.subject, f.client_id, f.scopes, f.audiences, f.claims, f.created_at, \
         f.last_rotated_at, f.refresh_expires_at, f.expires_at, f.revoked_at"
    };
}

#[derive(sqlx::FromRow)]
struct FamilyRow {
    id: Uuid,
    subject: String,
    client_id: String,
    scopes: Vec<String>,
    audiences: Vec<String>,
    claims: Json<Map<String, Value>>,
    created_at: OffsetDateTime,
    last_rotated_at: OffsetDateTime,
    refresh_expires_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
}

impl From<FamilyRow> for FamilyRecord {
    fn from(row: FamilyRow) -> Self {
        Self {
            id: FamilyId::from_uuid(row.id),
            subject: row.subject,
            client_id: row.client_id,
            scopes: row.scopes,
            audiences: row.audiences,
            claims: row.claims.0,
            created_at: row.created_at,
            last_rotated_at: row.last_rotated_at,
            refresh_expires_at: row.refresh_expires_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        }
    }
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    #[sqlx(flatten)]
    family: FamilyRow,
    token_created_at: OffsetDateTime,
    token_expires_at: OffsetDateTime,
    spent_at: Option<OffsetDateTime>,
    successor_hash: Option<Vec<u8>>,
    successor_seal: Option<Vec<u8>>,
    successor_expires_at: Option<OffsetDateTime>,
    successor_spent: Option<bool>,
    /// Set only by the spend statement, when it spent the token.
    #[sqlx(default)]
    new_expires_at: Option<OffsetDateTime>,
}

fn to_array(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

impl TokenRow {
    fn into_record(self) -> RefreshTokenRecord {
        let successor = match (
            self.successor_hash.as_deref().and_then(to_array),
            self.successor_expires_at,
        ) {
            (Some(hash), Some(expires_at)) => Some(Successor {
                hash: TokenHash(hash),
                seal: self.successor_seal.as_deref().and_then(to_array).map(Seal),
                expires_at,
                spent: self.successor_spent.unwrap_or(false),
            }),
            _ => None,
        };
        RefreshTokenRecord {
            family: self.family.into(),
            created_at: self.token_created_at,
            expires_at: self.token_expires_at,
            spent_at: self.spent_at,
            successor,
        }
    }
}

/// The presented token, its family and its successor, by hash ($1).
macro_rules! presented_token_select {
    () => {
        concat!(
            "select ",
            family_columns!(),
            ", t.hash, t.created_at as token_created_at, t.expires_at as token_expires_at, \
                t.spent_at, t.successor_hash, t.successor_seal, \
                s.expires_at as successor_expires_at, s.spent_at is not null as successor_spent \
         from refresh_tokens t \
         join families f on f.id = t.family_id \
         left join refresh_tokens s on s.hash = t.successor_hash \
         where t.hash = $1"
        )
    };
}

/// Rotate's statement (public so the benchmark's pgbench ceiling runs exactly this). Parameters:
/// $1 presented hash, $2 successor hash, $3 now, $4 successor seal, $5 successor expiry.
///
/// One statement, one round trip. `presented` reads the state; `spent` spends only if it is live
/// (under SERIALIZABLE a concurrent spend of the same row makes this fail with 40001 rather than
/// slip through); `successor` and `touched` follow only if `spent` did. The final select returns
/// the state as read, plus the successor's expiry when the spend happened.
pub const SPEND: &str = concat!(
    "with presented as (",
    presented_token_select!(),
    "), spent as (
        update refresh_tokens t
        set spent_at = $3, successor_hash = $2, successor_seal = $4
        from presented p
        where t.hash = p.hash and t.spent_at is null
          and p.revoked_at is null and p.token_expires_at > $3 and p.expires_at > $3
        returning t.family_id
    ), successor as (
        insert into refresh_tokens (hash, family_id, created_at, expires_at)
        select $2, s.family_id, $3, least($5, p.expires_at) from spent s, presented p
        returning expires_at
    ), touched as (
        update families f
        set last_rotated_at = $3, refresh_expires_at = s.expires_at
        from successor s, spent p
        where f.id = p.family_id
    )
    select p.*, (select expires_at from successor) as new_expires_at from presented p"
);

/// Issue's statement (public for the benchmark's pgbench ceiling). Parameters: $1 family id,
/// $2 subject, $3 client id, $4 scopes, $5 audiences, $6 claims, $7 now, $8 first token's expiry,
/// $9 family expiry, $10 first token's hash.
pub const CREATE_FAMILY: &str = "with family as (
        insert into families (id, subject, client_id, scopes, audiences, claims, created_at,
                              last_rotated_at, refresh_expires_at, expires_at)
        values ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)
        returning id
    )
    insert into refresh_tokens (hash, family_id, created_at, expires_at)
    select $10, id, $7, $8 from family";

impl FamilyStore for PgStore {
    async fn create_family(&self, family: &FamilyRecord, first: &NewRefreshToken) -> Result<(), StoreError> {
        self.run(|mut connection| async move {
            let outcome = sqlx::query(CREATE_FAMILY)
                .bind(family.id.as_uuid())
                .bind(&family.subject)
                .bind(&family.client_id)
                .bind(&family.scopes)
                .bind(&family.audiences)
                .bind(Json(&family.claims))
                .bind(family.created_at)
                .bind(first.expires_at)
                .bind(family.expires_at)
                .bind(&first.hash.0[..])
                .execute(connection.begin())
                .await;
            (connection, outcome)
        })
        .await
        .map(drop)
    }

    async fn spend(&self, request: &SpendRequest) -> Result<SpendOutcome, StoreError> {
        let row = self
            .run(|mut connection| async move {
                let outcome = sqlx::query_as::<_, TokenRow>(SPEND)
                    .bind(&request.presented.0[..])
                    .bind(&request.successor.hash.0[..])
                    .bind(request.now)
                    .bind(&request.successor_seal.0[..])
                    .bind(request.successor.expires_at)
                    .fetch_optional(connection.begin())
                    .await;
                (connection, outcome)
            })
            .await?;
        Ok(match row {
            Some(row) => match row.new_expires_at {
                Some(successor_expires_at) => {
                    let mut family: FamilyRecord = row.family.into();
                    family.last_rotated_at = request.now;
                    family.refresh_expires_at = successor_expires_at;
                    SpendOutcome::Spent {
                        family,
                        successor_expires_at,
                    }
                }
                None => SpendOutcome::Refused(Some(row.into_record())),
            },
            None => SpendOutcome::Refused(None),
        })
    }

    async fn refresh_token(&self, hash: &TokenHash) -> Result<Option<RefreshTokenRecord>, StoreError> {
        let row = self
            .run(|mut connection| async move {
                let outcome = sqlx::query_as::<_, TokenRow>(presented_token_select!())
                    .bind(&hash.0[..])
                    .fetch_optional(connection.begin())
                    .await;
                (connection, outcome)
            })
            .await?;
        Ok(row.map(TokenRow::into_record))
    }

    async fn family_status(&self, id: FamilyId) -> Result<Option<FamilyStatus>, StoreError> {
        let row: Option<(bool, OffsetDateTime)> = self
            .run(|mut connection| async move {
                let outcome = sqlx::query_as("select revoked_at is not null, expires_at from families where id = $1")
                    .bind(id.as_uuid())
                    .fetch_optional(connection.begin())
                    .await;
                (connection, outcome)
            })
            .await?;
        Ok(row.map(|(revoked, expires_at)| FamilyStatus { revoked, expires_at }))
    }

    async fn revoke_family(&self, id: FamilyId, now: OffsetDateTime, reason: RevokeReason) -> Result<bool, StoreError> {
        let result = self
            .run(|mut connection| async move {
                let outcome = sqlx::query(
                    "update families set revoked_at = $2, revoked_reason = $3
                     where id = $1 and revoked_at is null",
                )
                .bind(id.as_uuid())
                .bind(now)
                .bind(reason.as_str())
                .execute(connection.begin())
                .await;
                (connection, outcome)
            })
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn revoke_subject(&self, subject: &str, now: OffsetDateTime) -> Result<Vec<FamilyId>, StoreError> {
        let ids: Vec<(Uuid,)> = self
            .run(|mut connection| async move {
                let outcome = sqlx::query_as(
                    "update families set revoked_at = $2, revoked_reason = $3
                     where subject = $1 and revoked_at is null and expires_at > $2
                     returning id",
                )
                .bind(subject)
                .bind(now)
                .bind(RevokeReason::Revoke.as_str())
                .fetch_all(connection.begin())
                .await;
                (connection, outcome)
            })
            .await?;
        Ok(ids.into_iter().map(|(id,)| FamilyId::from_uuid(id)).collect())
    }

    async fn live_families(
        &self,
        subject: &str,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<FamilyRecord>, StoreError> {
        const SQL: &str = concat!(
            "select ",
            family_columns!(),
            " from families f
             where f.subject = $1 and f.revoked_at is null and f.expires_at > $2 and f.refresh_expires_at > $2
             order by f.created_at desc, f.id
             limit $3"
        );
        let rows = self
            .run(|mut connection| async move {
                let outcome = sqlx::query_as::<_, FamilyRow>(SQL)
                    .bind(subject)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(connection.begin())
                    .await;
                (connection, outcome)
            })
            .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|mut connection| async move {
            let outcome = sqlx::query("select 1").execute(connection.begin()).await;
            (connection, outcome)
        })
        .await
        .map(drop)
    }
}
