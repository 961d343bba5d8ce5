//! Key rotation as an operator runs it: `ratchet keys` on a key directory that two real `ratchet
//! serve` processes share, SIGHUP, first start on an empty directory, the upgrade from a single
//! signing key, and refusing a key file others may read.
//!
//! Where they run: the upgrade from a single signing key (one server, issuing and introspecting)
//! on every backend. The two tests of several `ratchet serve` processes on one database stay on
//! PostgreSQL: on SQLite one process serves (a lock file keeps a second one out). Refusing a key
//! file others may read never gets as far as a database.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ratchet::keys::{KeyAlgorithm, SigningKey, keyfile};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::support::{
    BIN, Db, Server, database_url, free_port, http_get, introspect, issue, jwt_part, on_every_backend,
};

struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!("ratchet-keyrot-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&root).unwrap();
        Self { root }
    }

    fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    fn log(&self) -> PathBuf {
        self.root.join("server.log")
    }

    /// `ratchet keys ARGS` on this directory.
    fn keys(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("keys")
            .args(args)
            .env("RATCHET_KEYS_DIR", self.keys_dir())
            .env("RATCHET_DATA_DIR", &self.root)
            .output()
            .unwrap()
    }

    /// `ratchet keys ARGS`, which must succeed; its standard output.
    fn keys_ok(&self, args: &[&str]) -> String {
        let output = self.keys(args);
        assert!(
            output.status.success(),
            "ratchet keys {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `ratchet serve` on the shared key directory and the PostgreSQL database at `url`; keys are
    /// re-read on SIGHUP only (the interval is an hour), so that a test proves the signal works.
    fn serve(&self, url: &str, extra: &[(&str, &str)]) -> Server {
        let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let keys_dir = self.keys_dir();
        let mut env = vec![
            ("RATCHET_KEYS_DIR", keys_dir.to_str().unwrap()),
            ("RATCHET_KEYS_RELOAD_INTERVAL", "1h"),
        ];
        env.extend_from_slice(extra);
        Server::start_with(url, &self.root, &self.log(), addr, &env)
    }

    /// [`Self::serve`] on `db`: its PostgreSQL database, or a SQLite file in the data directory.
    fn serve_on(&self, db: &Db) -> Server {
        match db {
            Db::Postgres(options) => self.serve(&url_of(options), &[]),
            Db::Sqlite => {
                let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                let keys_dir = self.keys_dir();
                let env = [
                    ("RATCHET_KEYS_DIR", keys_dir.to_str().unwrap()),
                    ("RATCHET_KEYS_RELOAD_INTERVAL", "1h"),
                ];
                Server::start_on_sqlite_with(&self.root, &self.log(), addr, &env)
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn kid(token: &str) -> String {
    jwt_part(token, 0)["kid"].as_str().unwrap().to_owned()
}

async fn jwks_kids(server: &Server) -> Vec<String> {
    let jwks = http_get(server.http, "/.well-known/jwks.json", &[]).await.json();
    let mut kids: Vec<String> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["kid"].as_str().unwrap().to_owned())
        .collect();
    kids.sort();
    kids
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn url_of(options: &PgConnectOptions) -> String {
    database_url(options, options.get_database().unwrap())
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn two_servers_sharing_a_key_directory_rotate_keys_together(_pool: PgPoolOptions, options: PgConnectOptions) {
    let scratch = Scratch::new();
    let url = url_of(&options);
    let first = scratch.keys_ok(&["generate"]).trim().to_owned();
    let (a, b) = (scratch.serve(&url, &[]), scratch.serve(&url, &[]));
    let (client_a, client_b) = (a.client().await, b.client().await);

    let old = issue(&client_a, "alice").await;
    assert_eq!(kid(&old.access_token), first);
    assert!(
        introspect(&client_b, &old.access_token).await.active,
        "B verifies A's tokens"
    );

    // generate: published on both servers after SIGHUP, signing on neither
    let second = scratch.keys_ok(&["generate", "--alg", "ES256"]).trim().to_owned();
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    for server in [&a, &b] {
        server.signal("HUP");
    }
    for server in [&a, &b] {
        eventually("both keys published", async || jwks_kids(server).await == both).await;
    }
    assert_eq!(kid(&issue(&client_b, "alice").await.access_token), first);

    // activate: both sign with the new key; every token verifies on both
    scratch.keys_ok(&["activate", &second]);
    for server in [&a, &b] {
        server.signal("HUP");
    }
    for client in [&client_a, &client_b] {
        eventually("the new key signs", async || {
            kid(&issue(client, "alice").await.access_token) == second
        })
        .await;
    }
    let new = issue(&client_b, "alice").await;
    assert_eq!(jwt_part(&new.access_token, 0)["alg"], "ES256");
    for client in [&client_a, &client_b] {
        assert!(introspect(client, &old.access_token).await.active);
        assert!(introspect(client, &new.access_token).await.active);
    }
    let list = scratch.keys_ok(&["list"]);
    let state_of = |kid: &str| {
        list.lines()
            .find(|line| line.starts_with(kid))
            .map(|line| line.split_whitespace().nth(2).unwrap().to_owned())
    };
    assert_eq!(state_of(&first).as_deref(), Some("published"), "{list}");
    assert_eq!(state_of(&second).as_deref(), Some("active"), "{list}");

    // retire the old key: its tokens stop verifying everywhere
    let refused = scratch.keys(&["retire", &second]);
    assert!(!refused.status.success(), "the active key cannot be retired");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("activate another key first"));
    scratch.keys_ok(&["retire", &first]);
    for server in [&a, &b] {
        server.signal("HUP");
    }
    for client in [&client_a, &client_b] {
        eventually("the retired key's token is inactive", async || {
            !introspect(client, &old.access_token).await.active
        })
        .await;
        assert!(introspect(client, &new.access_token).await.active);
    }
    assert_eq!(jwks_kids(&a).await, vec![second.clone()]);
    assert!(!scratch.keys_dir().join(format!("{first}.pem")).exists());

    // a typo is a usage error that creates nothing
    let typo = scratch.keys(&["generate", "--alg", "HS256"]);
    assert_eq!(typo.status.code(), Some(64));
    assert_eq!(scratch.keys_ok(&["list"]).lines().count(), 2);
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn servers_starting_together_on_an_empty_directory_share_one_new_key(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let scratch = Scratch::new();
    let url = url_of(&options);
    let servers: Vec<Server> = (0..3).map(|_| scratch.serve(&url, &[])).collect();
    let mut kids = Vec::new();
    for server in &servers {
        kids.push(kid(&issue(&server.client().await, "alice").await.access_token));
    }
    assert!(kids.windows(2).all(|w| w[0] == w[1]), "{kids:?}");
    let list = scratch.keys_ok(&["list"]);
    assert_eq!(list.lines().count(), 2, "one key: {list}");
    assert!(list.contains(&kids[0]) && list.contains("EdDSA") && list.contains("active"));
    for file in [format!("{}.pem", kids[0]), "server-secret".into(), "keys.json".into()] {
        let mode = std::fs::metadata(scratch.keys_dir().join(&file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} is private");
    }
}

async fn a_signing_key_from_before_key_directories_keeps_signing_and_is_adopted(db: Db) {
    let scratch = Scratch::new();
    // What an earlier version left in its data directory.
    let (legacy, der) = SigningKey::generate(KeyAlgorithm::EdDSA).unwrap();
    keyfile::write_new(&scratch.root.join(keyfile::GENERATED_KEY_FILE), &der).unwrap();

    let server = scratch.serve_on(&db);
    let client = server.client().await;
    let before = issue(&client, "alice").await;
    assert_eq!(kid(&before.access_token), legacy.kid());
    assert!(
        !scratch.keys_dir().exists(),
        "serve does not create a directory next to a legacy key"
    );

    // The first `ratchet keys` command builds the directory around it, active.
    let list = scratch.keys_ok(&["list"]);
    assert!(list.contains(legacy.kid()) && list.contains("active"), "{list}");
    let next = scratch.keys_ok(&["generate", "--alg", "RS256"]).trim().to_owned();
    server.signal("HUP");
    eventually("the directory is picked up", async || {
        jwks_kids(&server).await.len() == 2
    })
    .await;
    let after = issue(&client, "alice").await;
    assert_eq!(kid(&after.access_token), legacy.kid(), "the same key still signs");
    assert!(introspect(&client, &before.access_token).await.active);
    assert_ne!(next, legacy.kid());
}

on_every_backend!(a_signing_key_from_before_key_directories_keeps_signing_and_is_adopted);

#[test]
fn serve_refuses_a_private_key_others_may_read_and_says_how_to_fix_it() {
    let scratch = Scratch::new();
    let kid = scratch.keys_ok(&["generate"]).trim().to_owned();
    let key = scratch.keys_dir().join(format!("{kid}.pem"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = Command::new(BIN)
        .args(["serve", "--no-migrate", "--http-listen", "off"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("RATCHET_LISTEN", format!("127.0.0.1:{}", free_port()))
        .env("RATCHET_KEYS_DIR", scratch.keys_dir())
        .env("RATCHET_DATA_DIR", &scratch.root)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("chmod 600 {}", key.display())), "{stderr}");
}
