//! Start-up with the database not reachable yet (`--db-wait`, issue 17): the binary keeps trying,
//! logging each failed try, and either serves once the database appears or exits 69 with a
//! one-line reason; a bad `--db-wait` is a configuration error like any other (64).

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::support::{BIN, DatabaseGuard, Proxy, Server, database_url, free_port, issue};

/// `ratchet serve` against `url`, on free ports, its data in a fresh scratch directory.
fn serve_command(url: &str, scratch: &str) -> Command {
    let data_dir = std::env::temp_dir().join(scratch);
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--http-listen", "off"])
        .env("DATABASE_URL", url)
        .env("RATCHET_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("RATCHET_DATA_DIR", data_dir)
        .env_remove("RUST_LOG");
    command
}

#[test]
fn a_database_that_never_answers_ends_the_start_with_exit_69_after_the_wait() {
    // Nothing listens on a port just freed.
    let url = format!("postgres://postgres@127.0.0.1:{}/ratchet?sslmode=disable", free_port());
    let started = Instant::now();
    let output = serve_command(&url, &format!("ratchet_dbwait_{}", uuid::Uuid::new_v4().simple()))
        .args(["--db-wait", "1s"])
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{stderr}");
    assert!(
        took >= Duration::from_secs(1),
        "gave up before the wait was over: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "waited far past --db-wait: {took:?}");
    let reason: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error: ")).collect();
    assert_eq!(reason.len(), 1, "{stderr}");
    assert!(reason[0].contains("database not reachable"), "{stderr}");
    // Tries at 0, 250 ms, 750 ms and at the deadline: each failed one is told, with its reason.
    let warned = stderr
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("database not reachable"))
        .count();
    assert!(warned >= 2, "{stderr}");
    assert!(stderr.contains("refused"), "the reason is logged: {stderr}");
}

#[sqlx::test(migrations = false)]
async fn a_database_that_appears_during_the_wait_is_served(_pool: PgPoolOptions, options: PgConnectOptions) {
    let database = format!("ratchet_dbwait_{}", uuid::Uuid::new_v4().simple());
    let _dropped_last = DatabaseGuard::new(&options, &database);
    let migrate = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", database_url(&options, &database))
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));

    // The database is behind a proxy that refuses connections until it is restored.
    let proxy = Proxy::in_front_of(&options).await;
    proxy.cut().await;
    let url = proxy.database_url(&options, &database);
    let scratch = std::env::temp_dir().join(&database);
    std::fs::create_dir_all(&scratch).unwrap();
    let log = scratch.join("server.log");
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut server = Server::start_with(&url, &scratch.join("data"), &log, addr, &[("RATCHET_DB_WAIT", "30s")]);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        server.wait(Duration::ZERO).await.is_none(),
        "it gave up during the wait"
    );
    proxy.restore().await;

    let client = server.client().await;
    let pair = issue(&client, "alice").await;
    assert!(!pair.access_token.is_empty());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("database not reachable yet"),
        "each failed try is logged: {logged}"
    );
    assert!(server.terminate().await.success());
    std::fs::remove_dir_all(&scratch).unwrap();
}

#[test]
fn a_bad_db_wait_is_a_configuration_error() {
    for bad in ["soon", "1h"] {
        let output = serve_command("postgres://postgres@127.0.0.1:1/ratchet", "ratchet_dbwait_unused")
            .args(["--db-wait", bad])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{bad}: {stderr}");
        assert!(stderr.contains("error: db-wait: "), "{bad}: {stderr}");
    }
}
