//! Rotation on SQLite: [`FamilyStore::spend`](crate::store::FamilyStore::spend), the one
//! operation whose atomicity carries the one-time-use guarantee, as one `BEGIN IMMEDIATE`
//! transaction (see the module docs of [`super`] for why IMMEDIATE).

use sqlx::{query, query_as};

use super::rows::{TokenRow, instant, micros};
use super::run::{Kind, classify};
use super::{SqliteStore, record_events, sql};
use crate::domain::Actor;
use crate::store::{EventKind, FamilyRecord, SpendOutcome, SpendRequest, StoreError};

/// Whether presenting the spent token of `row` again at `now` is a client's retry within the
/// grace window (answered with the same successor), the same condition as PostgreSQL's `SPEND`
/// and `rotation::judge`: spent after `retry_after`, and the successor still sealed (only with a
/// grace window), unspent and unexpired.
fn is_retry(row: &TokenRow, spent_at: i64, retry_after: i64, now: i64) -> bool {
    row.successor_seal.is_some()
        && spent_at > retry_after
        && !row.successor_spent.unwrap_or(false)
        && row.successor_expires_at.is_some_and(|expires_at| expires_at > now)
}

impl SqliteStore {
    /// PostgreSQL's `SPEND` as a transaction: read the presented token under the write lock,
    /// then exactly one of: spend it into the successor (live), revoke the family (a replay that
    /// is neither a retry nor this request again), or nothing. The answer is the token as read.
    /// The audit events (`rotated` if asked for, `reuse_detected`) go in the same transaction.
    pub(super) async fn spend_token(&self, request: &SpendRequest, actor: &Actor) -> Result<SpendOutcome, StoreError> {
        let presented = &request.presented.0[..];
        let successor = &request.successor.hash.0[..];
        let now = micros(request.now);
        self.bounded(Kind::Write, async {
            let mut tx = self.begin_write().await?;
            let statement = match request.successor_seal {
                Some(_) => sql::PRESENTED_TOKEN_SEALED,
                None => sql::PRESENTED_TOKEN,
            };
            let row: Option<TokenRow> = query_as(statement)
                .bind(presented)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
            let Some(row) = row else {
                tx.rollback().await.map_err(classify)?;
                return Ok(SpendOutcome::Refused {
                    token: None,
                    revoked_for_reuse: false,
                });
            };
            let family_live = row.family.revoked_at.is_none() && row.family.expires_at > now;

            if row.spent_at.is_none() && family_live && row.token_expires_at > now {
                // The family's Rotate bucket, as PostgreSQL's `rotation_writes!` keeps it.
                let limit = request.rotate_limit;
                let (interval, tolerance) = (limit.interval_micros(), limit.tolerance_micros());
                let due = row.rotate_tat.map_or(now, |tat| tat.max(now));
                if due - now > tolerance {
                    tx.rollback().await.map_err(classify)?;
                    let family: FamilyRecord = row.family.try_into()?;
                    return Ok(SpendOutcome::Limited {
                        family: family.id,
                        retry_at: instant(due - tolerance)?,
                    });
                }
                let family = row.family.id;
                let expires_at = micros(request.successor.expires_at).min(row.family.expires_at);
                // Spent first: the schema allows one unspent token per family.
                query(sql::SPEND_TOKEN)
                    .bind(now)
                    .bind(successor)
                    .bind(presented)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                query(sql::INSERT_SUCCESSOR)
                    .bind(successor)
                    .bind(family)
                    .bind(presented)
                    .bind(now)
                    .bind(expires_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                if let Some(seal) = &request.successor_seal {
                    query(sql::UNSEAL)
                        .bind(presented)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                    query(sql::SEAL)
                        .bind(successor)
                        .bind(&seal.0[..])
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                }
                query(sql::TOUCH_FAMILY)
                    .bind(now)
                    .bind(expires_at)
                    .bind(family)
                    .bind(due.saturating_add(interval))
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                if request.audit_rotation {
                    record_events(&mut tx, now, EventKind::Rotated, None, &[family], actor).await?;
                }
                tx.commit().await.map_err(classify)?;
                let successor_expires_at = instant(expires_at)?;
                let mut family: FamilyRecord = row.family.try_into()?;
                family.last_rotated_at = request.now;
                family.refresh_expires_at = successor_expires_at;
                return Ok(SpendOutcome::Spent {
                    family,
                    successor_expires_at,
                });
            }

            let reused = row.spent_at.is_some_and(|spent_at| {
                family_live
                    && !row.spent_into(&request.successor.hash)
                    && !is_retry(&row, spent_at, micros(request.retry_after), now)
            });
            if reused {
                // Detection and revocation in one transaction: once it commits, the family is
                // revoked whatever happens to the caller.
                query(sql::REVOKE_FOR_REUSE)
                    .bind(now)
                    .bind(row.family.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                record_events(&mut tx, now, EventKind::ReuseDetected, None, &[row.family.id], actor).await?;
                tx.commit().await.map_err(classify)?;
            } else {
                tx.rollback().await.map_err(classify)?;
            }
            // Spent into our own successor: an earlier delivery of this request did it.
            if !reused
                && row.spent_into(&request.successor.hash)
                && let Some(expires_at) = row.successor_expires_at
            {
                return Ok(SpendOutcome::Spent {
                    family: row.family.try_into()?,
                    successor_expires_at: instant(expires_at)?,
                });
            }
            Ok(SpendOutcome::Refused {
                token: Some(row.into_record()?),
                revoked_for_reuse: reused,
            })
        })
        .await
    }
}
