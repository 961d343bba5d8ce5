//! The server on SQLite (issue 10) as an operator runs it: the real binary with no
//! `DATABASE_URL`, the one log line naming the store, a second server on the same data directory
//! refused, state surviving SIGKILL, and `migrate` and `gc` beside a running server.
//!
//! What it leaves out, because it is not copied per backend: the API itself on SQLite, which the
//! `rotate`, `revoke`, `introspect`, `sessions`, `issue`, `authz`, `keys`, `interop`, `policy`,
//! `limits`, `attacks` and `key_rotation` modules run on every backend
//! (`on_every_backend!`: e.g. `rotate::sqlite::sixty_four_concurrent_rotations_of_one_token_let_exactly_one_win`),
//! and what the store contract proves below the API (`store::contract`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ratchet::grpc::pb::RotateRequest;
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use ratchet::grpc::status::reason;

use crate::binary::{BIN, Server, free_port};
use crate::helpers::{assert_token_error, issue};
use tonic::transport::Channel;

/// A data directory of its own, removed at the end.
pub(crate) struct DataDir(PathBuf);

impl DataDir {
    pub(crate) fn new() -> Self {
        let root = std::env::temp_dir().join(format!("ratchet-sqlite-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).unwrap();
        Self(root)
    }

    /// `ratchet serve` with no DATABASE_URL, keeping everything in `data/`, and a client
    /// connected to *it*; returns the name of its log. `free_port` only finds a port that was free
    /// a moment ago: a server of another test may take it first, and then this one exits ("cannot
    /// listen") while the client reaches the other one, which knows none of this test's tokens.
    /// The log line saying this server serves on that address settles it; a taken port is tried
    /// again with another.
    async fn serve(&self, name: &str) -> (Server, TokenServiceClient<Channel>, String) {
        self.serve_with(name, &[]).await
    }

    /// [`Self::serve`] with `env` on top of the test defaults (which must keep `ratchet::startup`'s
    /// info lines: the one saying where it serves is awaited).
    pub(crate) async fn serve_with(
        &self,
        name: &str,
        env: &[(&str, &str)],
    ) -> (Server, TokenServiceClient<Channel>, String) {
        for attempt in 0..5 {
            let log = format!("{name}.{attempt}");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut server = Server::start_on_sqlite_with(&self.0.join("data"), &self.0.join(&log), addr, env);
            let client = server.client().await;
            let serving = format!("{addr}");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let text = self.log(&log);
                if text
                    .lines()
                    .any(|line| line.contains("serving gRPC") && line.contains(&serving))
                {
                    return (server, client, log);
                }
                if text.contains("cannot listen") {
                    assert!(server.wait(Duration::from_secs(5)).await.is_some(), "{text}");
                    break;
                }
                assert!(Instant::now() < deadline, "{text}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("no free port in five attempts")
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
        "removed 1 families and 2 refresh tokens; cleared 0 expired seals",
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
