//! The server on SQLite (issue 10) as an operator runs it: the real binary with no
//! `DATABASE_URL`, the one log line naming the store, a second server on the same data directory
//! refused, state surviving SIGKILL, and `migrate` and `gc` beside a running server.
//!
//! What it leaves out, because it is not copied per backend: the API itself on SQLite, which the
//! `rotate`, `revoke`, `introspect`, `sessions`, `issue`, `authz`, `keys`, `interop`, `policy`,
//! `limits`, `attacks` and `key_rotation` modules run on every backend
//! (`on_every_backend!`: e.g. `rotate::sqlite::sixty_four_concurrent_rotations_of_one_token_let_exactly_one_win`),
//! and what the store contract proves below the API (`store::contract`).

use std::process::{Command, Stdio};
use std::time::Duration;

use ratchet::grpc::pb::RotateRequest;
use ratchet::grpc::status::reason;

use crate::support::{BIN, DataDir, Server, assert_token_error, free_port, issue};

#[tokio::test]
async fn serve_without_a_database_url_runs_on_sqlite_and_refuses_a_second_server_on_it() {
    let dir = DataDir::new();
    let (server, mut client, first) = dir.serve("first.log").await;
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
    let log = dir.log(&first);
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
    let (server, client, first) = dir.serve("first.log").await;
    let pair = issue(&client, "alice").await;
    // No drain, no checkpoint, no close: only what each commit put on disk.
    server.kill();

    let (server, mut client, second) = dir.serve("second.log").await;
    let rotate = |refresh_token: String| RotateRequest { refresh_token };
    let next = match client.rotate(rotate(pair.refresh_token.clone())).await {
        Ok(next) => next.into_inner(),
        Err(status) => panic!(
            "{status:?}\n--- first ---\n{}\n--- second ---\n{}",
            dir.log(&first),
            dir.log(&second)
        ),
    };
    assert_eq!(next.family_id, pair.family_id, "the family issued before the kill");
    let replay = client.rotate(rotate(pair.refresh_token.clone())).await.unwrap_err();
    assert_token_error(&replay, reason::TOKEN_REUSED);

    // The restart needed nothing cleaned up: the lock went with the killed process. `ratchet
    // migrate` and `ratchet gc` work on the same data directory beside the running server (they
    // take no lock file; SQLite's write lock and busy timeout order their writes with its).
    let tool = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env_remove("DATABASE_URL")
            .env("RATCHET_DATA_DIR", dir.0.join("data"))
            .output()
            .unwrap()
    };
    let migrate = tool(&["migrate"]);
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let gc = tool(&["gc", "--gc-retention", "0s"]);
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    assert_eq!(
        String::from_utf8_lossy(&gc.stdout).trim(),
        "removed 1 families and 2 refresh tokens; cleared 0 expired seals; removed 0 audit events",
        "the family revoked for reuse, with both its tokens"
    );
    assert_token_error(
        &client.rotate(rotate(next.refresh_token)).await.unwrap_err(),
        reason::TOKEN_INVALID,
    );
    assert!(server.terminate().await.success());
}

/// Issue 20: an existing database that group or others may read (a `cp` or an archive that
/// dropped the mode, a umask of 022 when it was first made) holds every subject, every token hash
/// and every seal. The server refuses it, saying how to fix it, rather than serve from it; so does
/// `ratchet migrate`.
#[tokio::test]
async fn serve_refuses_a_database_file_that_group_or_others_may_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = DataDir::new();
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let database = data.join("ratchet.db");
    std::fs::write(&database, b"").unwrap();
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();

    let mut server =
        Server::start_on_sqlite_with(&data, &dir.0.join("exposed.log"), "127.0.0.1:0".parse().unwrap(), &[]);
    let status = server.wait(Duration::from_secs(20)).await;
    let log = dir.log("exposed.log");
    if status.is_none() {
        server.kill();
        panic!("the server ran on a database others may read:\n{log}");
    }
    assert_eq!(status.unwrap().code(), Some(64), "{log}");
    assert!(
        log.contains("may be read by group or others (mode 644)")
            && log.contains(&format!("chmod 600 {}", database.display())),
        "{log}"
    );
    let migrate = Command::new(BIN)
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .env("RATCHET_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(!migrate.status.success());
    assert!(String::from_utf8_lossy(&migrate.stderr).contains("chmod 600"));

    // As told: private again, and it serves.
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (server, client, _) = dir.serve("private.log").await;
    issue(&client, "alice").await;
    assert!(server.terminate().await.success());
}
