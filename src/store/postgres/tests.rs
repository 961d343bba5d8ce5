//! Tests of what only PostgreSQL does; what every store must do is in the contract suite
//! (`store::contract`), run on every backend.

use super::*;
use sqlx::postgres::PgConnection;

#[test]
fn released_migrations_keep_the_checksums_databases_recorded() {
    // SHA-384 of each file as released: what every database migrated since holds in
    // `_sqlx_migrations`. sqlx refuses to migrate a database whose applied migration has
    // changed, so moving or reformatting a released file must leave this list as it is.
    let released = [
        (
            20261126000001,
            "5188482fec45e40720c7a8db7238047adf057923c602ead5acefb02cb390d58fc8257b0309eb354f28600fb7b091d1cc",
        ),
        (
            20261130000001,
            "d42a49866b0bdb792d13d2aec3f52207b353aa579f608a2d28112177aaa47e76f24e24c4a6ebaf36b27dca2dc6668d5b",
        ),
        (
            20261201000001,
            "65b875e5f09835e20f53429b0119c019f38245ce501ccaf329d63443f01c26957b97c03b959f8f839c58edfeedc9ead8",
        ),
    ];
    let embedded: Vec<(i64, String)> = MIGRATOR
        .iter()
        .map(|m| (m.version, m.checksum.iter().map(|b| format!("{b:02x}")).collect()))
        .collect();
    assert!(embedded.len() >= released.len(), "{embedded:?}");
    for ((version, checksum), (released_version, released_checksum)) in embedded.iter().zip(released) {
        assert_eq!((*version, checksum.as_str()), (released_version, released_checksum));
    }
}

#[sqlx::test(migrator = "crate::store::postgres::MIGRATOR")]
async fn a_value_the_database_refuses_is_invalid_data_not_internal(
    _pool: sqlx::postgres::PgPoolOptions,
    options: PgConnectOptions,
) {
    let settings = PoolSettings::default();
    let store = PgStore::new(pool(options, &settings), &settings);
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    // Validation refuses control characters at the edge; should one ever slip through, the
    // database's refusal (SQLSTATE 22021 for a NUL in text) must still read as bad input.
    let new = crate::store::contract::new_family("nul\u{0}byte", now);
    let error = store.create_family(&new, &Actor::NOBODY).await.unwrap_err();
    assert!(matches!(error, StoreError::InvalidData(_)), "{error:?}");
    store.pool().close().await;
}

/// Every scan of a table that `nodes` holds, as (node type, table, index, whether it has an
/// index condition), from an `explain (format json)` plan.
fn table_scans(node: &serde_json::Value, scans: &mut Vec<(String, String, String, bool)>) {
    let text = |key: &str| {
        node.get(key)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let kind = text("Node Type");
    if kind.ends_with("Scan") && kind != "CTE Scan" && node.get("Relation Name").is_some() {
        scans.push((
            kind,
            text("Relation Name"),
            text("Index Name"),
            node.get("Index Cond").is_some(),
        ));
    }
    for child in node
        .get("Plans")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        table_scans(child, scans);
    }
}

/// Under SERIALIZABLE a statement that reads a row takes a predicate lock on it, and one that
/// scans an index locks all it scanned: then every other rotation that touches any family
/// conflicts with it. Rotate's statements must read an index only by key, and only the primary
/// key, whatever plan PostgreSQL picks (generic or custom, as a prepared statement gets after
/// five runs), on a database with statistics. `SPEND_LIVE` once joined the families into its
/// update and PostgreSQL scanned all of `families_live_by_subject`: 481 rotations/s at K=64,
/// against 2,072 before.
#[sqlx::test(migrator = "crate::store::postgres::MIGRATOR")]
async fn rotate_reads_no_index_but_the_primary_key_and_that_by_key(
    _pool: sqlx::postgres::PgPoolOptions,
    options: PgConnectOptions,
) {
    let settings = PoolSettings::default();
    let store = PgStore::new(pool(options, &settings), &settings);
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    for i in 0..64 {
        let new = crate::store::contract::new_family(&format!("user{}", i % 20), now);
        store.create_family(&new, &Actor::NOBODY).await.unwrap();
    }
    let mut db = <PgConnection as sqlx::Connection>::connect_with(store.pool().hosts().first())
        .await
        .unwrap();
    // Without statistics (a new deployment, a benchmark's first seconds: the plan that scanned
    // the whole index), then with them.
    for analyzed in [false, true] {
        if analyzed {
            sqlx::raw_sql("analyze").execute(&mut db).await.unwrap();
        }
        assert_rotate_reads_indexes_by_primary_key(&mut db, analyzed).await;
    }
    sqlx::Connection::close(db).await.unwrap();
    store.pool().close().await;
}

async fn assert_rotate_reads_indexes_by_primary_key(db: &mut PgConnection, analyzed: bool) {
    let statements = [
        (
            "SPEND_LIVE",
            sql::SPEND_LIVE,
            "bytea, bytea, timestamptz, bytea, timestamptz, text, text, bool, bigint, bigint",
        ),
        (
            "SPEND",
            sql::SPEND,
            "bytea, bytea, timestamptz, bytea, timestamptz, timestamptz, text, text, bool, bigint, bigint",
        ),
    ];
    for (name, statement, types) in statements {
        for mode in ["force_generic_plan", "force_custom_plan"] {
            let arguments = if name == "SPEND" {
                "sha256('a'), sha256('b'), now(), null, now(), now(), null, null, false, 1000000, 99000000"
            } else {
                "sha256('a'), sha256('b'), now(), null, now(), null, null, false, 1000000, 99000000"
            };
            let script =
                format!("set plan_cache_mode = {mode}; prepare {name}_{mode}_{analyzed} ({types}) as {statement};");
            sqlx::raw_sql(sqlx::AssertSqlSafe(script))
                .execute(&mut *db)
                .await
                .unwrap();
            let (plan,): (sqlx::types::Json<serde_json::Value>,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "explain (format json) execute {name}_{mode}_{analyzed} ({arguments})"
            )))
            .fetch_one(&mut *db)
            .await
            .unwrap();
            let mut scans = Vec::new();
            table_scans(&plan.0[0]["Plan"], &mut scans);
            assert!(
                !scans.is_empty(),
                "{name}, {mode}, analyzed: {analyzed}: no scan found in {}",
                plan.0
            );
            for (kind, table, index, by_condition) in &scans {
                // A table of a few pages is read whole (PostgreSQL's choice, and cheap: the
                // predicate lock is then one page or the table either way); any index is read
                // by key.
                let by_key = kind.starts_with("Index") && *index == format!("{table}_pkey") && *by_condition;
                assert!(
                    by_key || kind == "Seq Scan",
                    "{name}, {mode}, analyzed: {analyzed}: {kind} of {table} on {index:?} (condition: {by_condition}); every scan: {scans:?}"
                );
            }
        }
    }
}
