//! The `ratchet` binary as an operator runs it: `migrate` creates and migrates a database,
//! `serve` answers gRPC (with reflection for grpcurl), tokens survive a restart because the
//! key directory created on the first start is reused, SIGTERM stops it cleanly, and no token ever reaches its logs.
//!
//! Where they run: on PostgreSQL (DATABASE_URL). The binary on SQLite, as an operator runs it
//! with no DATABASE_URL, is `sqlite.rs`'s; the last two tests are PostgreSQL by nature (session
//! isolation, two processes on one database).

use std::process::Command;
use std::time::{Duration, Instant};

use ratchet::grpc::pb::RotateRequest;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};

use crate::support::{
    BIN, DatabaseGuard, Proxy, Server, database_url, free_port, introspect, issue, list_services, migrate,
};

#[sqlx::test(migrations = false)]
async fn the_binary_migrates_serves_survives_a_restart_and_never_logs_tokens(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    // `migrate` must create the database itself, so use a name nobody has created.
    let database = format!("ratchet_bin_{}", uuid::Uuid::new_v4().simple());
    let _dropped_last = DatabaseGuard::new(&options, &database);
    let url = database_url(&options, &database);
    let scratch = std::env::temp_dir().join(&database);
    std::fs::create_dir_all(&scratch).unwrap();
    let log = scratch.join("server.log");

    migrate(&url);

    let server = Server::start(&url, &scratch.join("data"), &log);
    let mut client = server.client().await;
    let pair = issue(&client, "alice").await;
    let rotated = client
        .rotate(RotateRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let survivor = issue(&client, "carol").await;
    let reused = client
        .rotate(RotateRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), tonic::Code::Unauthenticated);
    let services = list_services(server.addr).await;
    assert!(
        services.contains(&"ratchet.v1.TokenService".to_string()),
        "{services:?}"
    );
    assert!(services.contains(&"grpc.health.v1.Health".to_string()), "{services:?}");
    assert!(server.terminate().await.success(), "a clean exit on SIGTERM");

    // A second start reuses the key directory the first one created.
    let server = Server::start(&url, &scratch.join("data"), &log);
    let client = server.client().await;
    let other = issue(&client, "bob").await;
    let answer = introspect(&client, &other.access_token).await;
    assert!(answer.active);
    let answer = introspect(&client, &rotated.access_token).await;
    assert!(
        !answer.active,
        "its family was revoked by the reuse above, across the restart too"
    );
    let from_the_first_start = introspect(&client, &survivor.access_token).await;
    assert!(
        from_the_first_start.active,
        "signed before the restart, still verifiable after it"
    );
    assert!(server.terminate().await.success());

    // `ratchet gc` by hand: with no retention, the family revoked for reuse goes, with its two
    // tokens; the live ones stay.
    let gc = Command::new(BIN)
        .args(["gc", "--gc-retention", "0s"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    assert_eq!(
        String::from_utf8_lossy(&gc.stdout).trim(),
        "removed 1 families and 2 refresh tokens; cleared 0 expired seals; removed 0 audit events"
    );

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("created a key directory with a new EdDSA key") && logs.contains("loaded the key directory"),
        "{logs}"
    );
    assert!(
        !logs.contains('\u{1b}'),
        "a log file, not a terminal: no colour escape codes in it\n{logs}"
    );
    for pair in [&pair, &rotated, &survivor, &other] {
        for token in [&pair.refresh_token, &pair.access_token] {
            assert!(!logs.contains(token.as_str()), "a token leaked into the logs");
            assert!(!logs.contains(&token[3..20]), "part of a token leaked into the logs");
        }
    }
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn an_absurd_duration_is_a_configuration_error_naming_the_flag() {
    // 8000y parses but is absurd; the second overflows humantime itself.
    for value in ["8000y", "99999999999999999999y"] {
        let output = Command::new(BIN)
            .args(["serve", "--family-ttl", value])
            // Never reached when the configuration is refused; should it be accepted, the start
            // fails fast on a refused connection instead of serving forever.
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("RATCHET_LISTEN", "127.0.0.1:0")
            .env("RATCHET_DATA_DIR", std::env::temp_dir().join("ratchet-never-created"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{value}: {stderr}");
        assert!(stderr.contains("family-ttl"), "{value}: {stderr}");
    }
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn serve_refuses_a_database_session_that_is_not_serializable(_pool: PgPoolOptions, options: PgConnectOptions) {
    // Behind a pooler that drops startup parameters, ours included.
    let proxy = Proxy::in_front_of(&options).await;
    proxy.strip_startup_options();
    let routed = proxy.route(options.clone());
    let url = format!(
        "postgres://{}@127.0.0.1:{}/{}?sslmode=disable",
        routed.get_username(),
        routed.get_port(),
        options.get_database().unwrap()
    );
    let scratch = std::env::temp_dir().join(format!("ratchet-isolation-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = Server::start_with(&url, &scratch.join("data"), &scratch.join("log"), addr, &[]);
    let status = server
        .wait(Duration::from_secs(20))
        .await
        .expect("serve should refuse to start");
    assert!(!status.success());
    let log = std::fs::read_to_string(scratch.join("log")).unwrap();
    assert!(
        log.contains("refusing to serve") && log.contains("not 'serializable'"),
        "{log}"
    );
    std::fs::remove_dir_all(&scratch).unwrap();
}

/// Issue 8, literally: two `ratchet serve` processes on one database, sharing the signing key
/// (the second reuses the key the first generated in the shared data directory), each caching
/// "live" for an hour. A revocation through one shows in the other's Introspect within a second.
#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn two_server_processes_on_one_database_see_each_others_revocations_within_a_second(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let url = format!(
        "{}?sslmode=disable",
        database_url(&options, options.get_database().unwrap())
    );
    let scratch = std::env::temp_dir().join(format!("ratchet-two-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&scratch).unwrap();
    let data = scratch.join("data");
    let env = [("RATCHET_FAMILY_CACHE_TTL", "1h")];
    let start = |name: &str| {
        let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Server::start_with(&url, &data, &scratch.join(name), addr, &env)
    };
    let a = start("a.log");
    let a_client = a.client().await;
    // Only now: the first start writes the key that the second must reuse.
    let b = start("b.log");
    let b_client = b.client().await;

    let pair = issue(&a_client, "alice").await;
    assert!(
        introspect(&b_client, &pair.access_token).await.active,
        "B verifies A's token"
    );
    assert!(
        introspect(&b_client, &pair.access_token).await.active,
        "and caches it live"
    );
    let mut db = PgConnection::connect_with(&options).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listeners: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and application_name = 'ratchet-revocations'
               and state = 'idle' and (query like 'LISTEN%' or query = 'select 1')",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        if listeners == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the two listeners never subscribed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    a_client
        .clone()
        .revoke(ratchet::grpc::pb::RevokeRequest {
            target: Some(ratchet::grpc::pb::revoke_request::Target::FamilyId(
                pair.family_id.clone(),
            )),
        })
        .await
        .unwrap();
    let revoked_at = Instant::now();
    while introspect(&b_client, &pair.access_token).await.active {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "B still says active a second after A revoked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    db.close().await.unwrap();
    assert!(b.terminate().await.success());
    assert!(a.terminate().await.success());
    std::fs::remove_dir_all(&scratch).unwrap();
}
