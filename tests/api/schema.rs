//! Upgrading a database that holds data: what a migration does to rows an earlier version wrote.
//! Each test applies the migrations before the one it checks, writes the rows as that earlier
//! version could have left them, and then lets the server's migrator apply the rest, as
//! `ratchet migrate` (or `serve`) does on an upgrade.

use sqlx::Connection as _;
use sqlx::migrate::Migrator;

/// What the migration must leave, on either store: the healthy family untouched, the two broken
/// ones revoked with every token gone. A macro because the two connections share no trait that
/// `query_as` takes without naming the database.
macro_rules! assert_broken_families_ended {
    ($db:ident) => {
        let tokens: Vec<(String, i64)> = sqlx::query_as(
            "select f.subject, count(t.hash) from families f left join refresh_tokens t on t.family_id = f.id
             group by f.subject order by f.subject",
        )
        .fetch_all(&mut $db)
        .await
        .unwrap();
        assert_eq!(
            tokens,
            [
                ("cross-linked".into(), 0),
                ("half-purged".into(), 0),
                ("healthy".into(), 2)
            ]
        );
        let revoked: Vec<(String, Option<String>)> =
            sqlx::query_as("select subject, revoked_reason from families order by subject")
                .fetch_all(&mut $db)
                .await
                .unwrap();
        assert_eq!(
            revoked,
            [
                ("cross-linked".into(), Some("revoke".into())),
                ("half-purged".into(), Some("revoke".into())),
                ("healthy".into(), None)
            ]
        );
    };
}

/// The version of `migrations/*/20261207000001_parent_in_family.sql`.
const PARENT_IN_FAMILY: i64 = 20261207000001;

/// Applies every migration of `migrator` older than `version`, as an earlier release did.
async fn migrate_before<C: sqlx::migrate::Migrate>(connection: &mut C, migrator: &Migrator, version: i64) {
    connection.ensure_migrations_table("_sqlx_migrations").await.unwrap();
    for migration in migrator
        .iter()
        .filter(|m| m.version < version && m.migration_type.is_up_migration())
    {
        connection.apply("_sqlx_migrations", migration).await.unwrap();
    }
}

/// Before issue 20 the cleanup deleted an ended family's spent tokens in any order, a batch per
/// statement, so a cleanup that stopped half-way left tokens naming a parent that was gone; SQL
/// written by hand could name a parent of another family. The composite key refuses both, so the
/// migration ends those families (as the cleanup was doing) instead of failing, and leaves every
/// other family as it was.
#[sqlx::test]
async fn on_postgres_the_parent_in_family_migration_ends_families_with_broken_chains(
    _pool: sqlx::postgres::PgPoolOptions,
    options: sqlx::postgres::PgConnectOptions,
) {
    let mut db = sqlx::postgres::PgConnection::connect_with(&options).await.unwrap();
    migrate_before(&mut db, &ratchet::store::postgres::MIGRATOR, PARENT_IN_FAMILY).await;
    sqlx::raw_sql(
        "insert into families (id, subject, client_id, scopes, audiences, claims, created_at, last_rotated_at,
                               refresh_expires_at, expires_at, revoked_at, revoked_reason)
         values ('00000000-0000-0000-0000-000000000001', 'healthy', '', '{}', '{}', '{}', now(), now(), now() + interval '1 day', now() + interval '1 day', null, null),
                ('00000000-0000-0000-0000-000000000002', 'half-purged', '', '{}', '{}', '{}', now(), now(), now(), now(), now(), 'revoke'),
                ('00000000-0000-0000-0000-000000000003', 'cross-linked', '', '{}', '{}', '{}', now(), now(), now() + interval '1 day', now() + interval '1 day', null, null);
         insert into refresh_tokens (hash, family_id, parent_hash, created_at, expires_at, spent_at, successor_hash) values
             (sha256('a'), '00000000-0000-0000-0000-000000000001', null,        now(), now() + interval '1 day', now(), sha256('b')),
             (sha256('b'), '00000000-0000-0000-0000-000000000001', sha256('a'), now(), now() + interval '1 day', null, null),
             -- its first token (x1) was purged already
             (sha256('x2'), '00000000-0000-0000-0000-000000000002', sha256('x1'), now(), now(), now(), sha256('x3')),
             (sha256('x3'), '00000000-0000-0000-0000-000000000002', sha256('x2'), now(), now(), null, null),
             -- names the healthy family's spent token as its parent
             (sha256('c'), '00000000-0000-0000-0000-000000000003', null,        now(), now() + interval '1 day', now(), sha256('d')),
             (sha256('d'), '00000000-0000-0000-0000-000000000003', sha256('zz'), now(), now() + interval '1 day', null, null);",
    )
    .execute(&mut db)
    .await
    .unwrap();

    ratchet::store::postgres::MIGRATOR.run(&mut db).await.unwrap();

    assert_broken_families_ended!(db);
}

/// [`on_postgres_the_parent_in_family_migration_ends_families_with_broken_chains`] on SQLite,
/// where the migration rebuilds the table: seals survive it too.
#[tokio::test]
async fn on_sqlite_the_parent_in_family_migration_ends_families_with_broken_chains_and_keeps_seals() {
    let path = std::env::temp_dir().join(format!("ratchet-schema-{}.db", uuid::Uuid::new_v4().simple()));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .foreign_keys(true);
    let mut db = sqlx::sqlite::SqliteConnection::connect_with(&options).await.unwrap();
    migrate_before(&mut db, &ratchet::store::sqlite::MIGRATOR, PARENT_IN_FAMILY).await;
    let family = |n: u8| format!("00000000-0000-0000-0000-00000000000{n}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "insert into families (id, subject, client_id, scopes, audiences, claims, created_at, last_rotated_at,
                               refresh_expires_at, expires_at, revoked_at, revoked_reason)
         values ('{f1}', 'healthy', '', '[]', '[]', '{{}}', 1, 1, 9e15, 9e15, null, null),
                ('{f2}', 'half-purged', '', '[]', '[]', '{{}}', 1, 1, 2, 2, 2, 'revoke'),
                ('{f3}', 'cross-linked', '', '[]', '[]', '{{}}', 1, 1, 9e15, 9e15, null, null);
         insert into refresh_tokens (hash, family_id, parent_hash, created_at, expires_at, spent_at, successor_hash) values
             (x'0000000000000000000000000000000000000000000000000000000000000001', '{f1}', null,                     1, 9e15, 1, x'0000000000000000000000000000000000000000000000000000000000000002'),
             (x'0000000000000000000000000000000000000000000000000000000000000002', '{f1}', x'0000000000000000000000000000000000000000000000000000000000000001',    1, 9e15, null, null),
             (x'0000000000000000000000000000000000000000000000000000000000000022', '{f2}', x'0000000000000000000000000000000000000000000000000000000000000021',    1, 2, 1, x'0000000000000000000000000000000000000000000000000000000000000023'),
             (x'0000000000000000000000000000000000000000000000000000000000000023', '{f2}', x'0000000000000000000000000000000000000000000000000000000000000022',    1, 2, null, null),
             (x'0000000000000000000000000000000000000000000000000000000000000031', '{f3}', null,                     1, 9e15, 1, x'0000000000000000000000000000000000000000000000000000000000000032'),
             (x'0000000000000000000000000000000000000000000000000000000000000032', '{f3}', x'00000000000000000000000000000000000000000000000000000000000000ff',    1, 9e15, null, null);
         insert into seals (hash, seal, created_at) values (x'0000000000000000000000000000000000000000000000000000000000000002', x'0000000000000000000000000000000000000000000000000000000000000000', 1);",
        f1 = family(1),
        f2 = family(2),
        f3 = family(3),
    )))
    .execute(&mut db)
    .await
    .unwrap();

    ratchet::store::sqlite::MIGRATOR.run(&mut db).await.unwrap();

    assert_broken_families_ended!(db);
    let seals: i64 = sqlx::query_scalar("select count(*) from seals")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(seals, 1, "dropping the old table deleted no seal");
    let violations: Vec<(String,)> = sqlx::query_as("select \"table\" from pragma_foreign_key_check")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    db.close().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// The audit trail is append-only whoever connects (here the owner, who has every grant): a
/// trigger refuses any update, on both stores; deleting (the retention) works.
#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn on_postgres_no_one_can_rewrite_an_audit_event(
    _pool: sqlx::postgres::PgPoolOptions,
    options: sqlx::postgres::PgConnectOptions,
) {
    let mut db = sqlx::postgres::PgConnection::connect_with(&options).await.unwrap();
    sqlx::raw_sql(
        "insert into audit_events (at, kind, family_id, subject, client_id, detail)
         values (now(), 'revoked', gen_random_uuid(), 'alice', 'web', 'family')",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let error = sqlx::raw_sql("update audit_events set caller = 'someone else'")
        .execute(&mut db)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
    let error = sqlx::raw_sql("insert into audit_events (at, kind, family_id, subject, client_id) values (now(), 'stolen', gen_random_uuid(), 'a', 'b')")
        .execute(&mut db)
        .await
        .unwrap_err();
    assert_eq!(
        error.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23514"),
        "unknown kinds are refused"
    );
    let deleted = sqlx::raw_sql("delete from audit_events")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 1);
    db.close().await.unwrap();
}

#[tokio::test]
async fn on_sqlite_no_one_can_rewrite_an_audit_event() {
    let path = std::env::temp_dir().join(format!("ratchet-schema-{}.db", uuid::Uuid::new_v4().simple()));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .foreign_keys(true);
    let mut db = sqlx::sqlite::SqliteConnection::connect_with(&options).await.unwrap();
    ratchet::store::sqlite::MIGRATOR.run(&mut db).await.unwrap();
    sqlx::raw_sql(
        "insert into audit_events (at, kind, family_id, subject, client_id, detail)
         values (1, 'revoked', '00000000-0000-0000-0000-000000000001', 'alice', 'web', 'family')",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let error = sqlx::raw_sql("update audit_events set caller = 'someone else'")
        .execute(&mut db)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("append-only"), "{error}");
    let deleted = sqlx::raw_sql("delete from audit_events")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(deleted.rows_affected(), 1);
    db.close().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
