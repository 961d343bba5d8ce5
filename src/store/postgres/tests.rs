//! Tests of what only PostgreSQL does; what every store must do is in the contract suite
//! (`store::contract`), run on every backend.

use super::*;

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
