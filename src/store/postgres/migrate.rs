//! Creating the database if it is missing and applying the migrations, on the server of a
//! multi-host URL that accepts writes ([`PgHosts`]).

use std::time::Duration;

use sqlx::Connection as _;

use super::hosts::PgHosts;
use super::target::{PgTarget, tuned};
use crate::store::MigrateError;

/// The migrations in `migrations/postgres/`, embedded in the binary. Each backend has a folder of
/// its own (their SQL differs), so `#[sqlx::test]` finds none by itself: PostgreSQL tests name
/// this migrator (`#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// Creates the database if it is missing, then applies pending migrations ([`MIGRATOR`]).
///
/// # Errors
/// The database cannot be reached, created or migrated.
pub async fn migrate(target: &PgTarget) -> Result<(), MigrateError> {
    let hosts = tuned(&target.hosts, &target.settings);
    let per_host = hosts.per_host(target.settings.timeout);
    create_database_if_missing(&hosts, per_host).await?;
    let mut connection = hosts
        .connect(per_host)
        .await
        .map_err(|e| MigrateError::Unreachable(e.into()))?;
    MIGRATOR
        .run(&mut connection)
        .await
        .map_err(|e| MigrateError::Apply(e.into()))?;
    connection.close().await.map_err(|e| MigrateError::Close(e.into()))
}

/// Creates the database `hosts` name, on the server that accepts writes, unless it exists.
/// (sqlx's `Postgres::create_database` takes a URL of one host.)
async fn create_database_if_missing(hosts: &PgHosts, per_host: Duration) -> Result<(), MigrateError> {
    let first = hosts.first();
    // As libpq and sqlx: no database named is the user's own.
    let name = first.get_database().unwrap_or(first.get_username()).to_owned();
    let mut admin = hosts
        .map(|options| options.database("postgres"))
        .connect(per_host)
        .await
        .map_err(|e| MigrateError::Unreachable(e.into()))?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .map_err(|e| MigrateError::Unreachable(e.into()))?;
    if !exists {
        let create = format!("create database \"{}\"", name.replace('"', "\"\""));
        sqlx::raw_sql(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
            .map_err(|e| MigrateError::Create(e.into()))?;
        tracing::info!("created the database");
    }
    let _ = admin.close().await;
    Ok(())
}
