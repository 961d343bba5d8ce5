//! The same server on SQLite (issue 10): what `ratchet serve` runs with no `DATABASE_URL`. Through
//! the public API of an in-process server on a SQLite file of its own ([`spawn_sqlite_app`]), and
//! through the real binary: the one log line naming the store, a second server on the same data
//! directory refused, and state surviving SIGKILL.
//!
//! What it leaves out: everything the store contract already proves on SQLite
//! (`store::contract`, run on every backend).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use futures::future::join_all;
use ratchet::grpc::pb::{RevokeRequest, RotateRequest, revoke_request};
use ratchet::grpc::status::reason;
use time::Duration;

use crate::binary::{BIN, Server, free_port};
use crate::helpers::{assert_token_error, issue, spawn_sqlite_app, test_policy};

#[tokio::test]
async fn issue_rotate_introspect_and_revoke_work_on_sqlite() {
    let app = spawn_sqlite_app(|_| {}).await;
    let first = app.issue("alice").await;
    app.advance(Duration::minutes(1));
    let second = app.rotate(&first.refresh_token).await.unwrap();
    assert_eq!(second.family_id, first.family_id);
    assert_eq!(
        second.refresh_expires_at,
        (app.now() + Duration::days(7)).unix_timestamp()
    );
    assert!(!app.introspect(&first.refresh_token).await.active, "spent");
    let live = app.introspect(&second.refresh_token).await;
    assert!(live.active);
    assert_eq!(live.subject, "alice");
    assert!(app.introspect(&second.access_token).await.active);
    assert_eq!(app.sessions("alice").await.len(), 1);

    app.client
        .clone()
        .revoke(RevokeRequest {
            target: Some(revoke_request::Target::FamilyId(second.family_id.clone())),
        })
        .await
        .unwrap();
    assert!(!app.introspect(&second.access_token).await.active);
    assert_token_error(
        &app.rotate(&second.refresh_token).await.unwrap_err(),
        reason::TOKEN_REVOKED,
    );
    assert!(app.sessions("alice").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn sixty_four_concurrent_rotations_of_one_token_on_sqlite_give_one_pair_and_sixty_three_reuses() {
    let app = spawn_sqlite_app(|_| {}).await;
    let pair = app.issue("alice").await;
    let attempts = (0..64).map(|_| {
        let app = &app;
        let token = pair.refresh_token.clone();
        async move { app.rotate(&token).await }
    });
    let results = join_all(attempts).await;

    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one rotation succeeds");
    let losers: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(losers.len(), 63);
    for status in losers {
        // Contention is a queue on SQLite, never UNAVAILABLE.
        assert_token_error(status, reason::TOKEN_REUSED);
    }
    // Theft was detected, so the winner's tokens died with the family.
    assert!(!app.introspect(&winners[0].refresh_token).await.active);
    assert!(!app.introspect(&winners[0].access_token).await.active);
    assert!(app.sessions("alice").await.is_empty(), "the family is revoked");
    app.stop().await;
}

#[tokio::test]
async fn within_the_grace_window_a_retry_on_sqlite_gets_the_same_pair_and_after_it_is_reuse() {
    let app = spawn_sqlite_app(|parts| {
        parts.policy = ratchet::issuer::Policy {
            reuse_grace: Duration::seconds(10),
            ..test_policy()
        }
    })
    .await;
    let first = app.issue("alice").await;
    let second = app.rotate(&first.refresh_token).await.unwrap();
    app.advance(Duration::seconds(9));
    let retry = app.rotate(&first.refresh_token).await.unwrap();
    assert_eq!(retry.refresh_token, second.refresh_token, "the same successor");
    assert_eq!(retry.family_id, second.family_id);
    assert!(app.introspect(&second.refresh_token).await.active);

    app.advance(Duration::seconds(2));
    assert_token_error(
        &app.rotate(&first.refresh_token).await.unwrap_err(),
        reason::TOKEN_REUSED,
    );
    assert!(!app.introspect(&second.refresh_token).await.active);
    app.stop().await;
}

/// A data directory of its own, removed at the end.
struct DataDir(PathBuf);

impl DataDir {
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!("ratchet-sqlite-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).unwrap();
        Self(root)
    }

    /// `ratchet serve` with no DATABASE_URL, keeping everything in `data/`.
    fn serve(&self, log: &str) -> Server {
        let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Server::start_on_sqlite(&self.0.join("data"), &self.0.join(log), addr)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn serve_without_a_database_url_runs_on_sqlite_and_refuses_a_second_server_on_it() {
    let dir = DataDir::new();
    let server = dir.serve("first.log");
    let mut client = server.client().await;
    let pair = issue(&client, "alice").await;
    let rotated = client
        .rotate(RotateRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.family_id, pair.family_id);
    let database = dir.0.join("data").join("ratchet.db");
    assert!(database.is_file());
    let log = dir.log("first.log");
    assert_eq!(
        log.matches("store: SQLite at").count(),
        1,
        "one line names the store: {log}"
    );
    assert!(log.contains(&database.display().to_string()), "{log}");

    // A second server on the same data directory: refused, saying why, before it binds anything.
    let second = Command::new(BIN)
        .arg("serve")
        .env_remove("DATABASE_URL")
        .env("RATCHET_DATA_DIR", dir.0.join("data"))
        .env("RATCHET_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("RATCHET_HTTP_LISTEN", "off")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("is in use by process") && stderr.contains("use PostgreSQL"),
        "{stderr}"
    );

    // The first one never noticed.
    client
        .rotate(RotateRequest {
            refresh_token: rotated.refresh_token.clone(),
        })
        .await
        .unwrap();
    assert!(server.terminate().await.success());
}

#[tokio::test]
async fn on_sqlite_nothing_is_lost_across_a_sigkill() {
    let dir = DataDir::new();
    let server = dir.serve("first.log");
    let client = server.client().await;
    let pair = issue(&client, "alice").await;
    // No drain, no checkpoint, no close: only what each commit put on disk.
    server.kill();

    let server = dir.serve("second.log");
    let mut client = server.client().await;
    let rotate = |refresh_token: String| RotateRequest { refresh_token };
    let next = client
        .rotate(rotate(pair.refresh_token.clone()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.family_id, pair.family_id, "the family issued before the kill");
    let replay = client.rotate(rotate(pair.refresh_token.clone())).await.unwrap_err();
    assert_token_error(&replay, reason::TOKEN_REUSED);

    // And the lock went with the killed process: the second start needed nothing cleaned up.
    let deadline = Instant::now() + StdDuration::from_secs(5);
    while !dir.log("second.log").contains("store: SQLite at") {
        assert!(Instant::now() < deadline, "{}", dir.log("second.log"));
        tokio::time::sleep(StdDuration::from_millis(50)).await;
    }
    assert!(server.terminate().await.success());
}
