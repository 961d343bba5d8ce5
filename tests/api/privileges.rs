//! Database privileges: the whole API on the least-privileged runtime role that
//! `docs/runtime-role.sql` documents, which can do nothing else; and TLS to the database with
//! `sslmode=verify-full`.
//!
//! Where they run: PostgreSQL only, by nature: roles, GRANTs and TLS to a PostgreSQL server.

use std::process::Command;
use std::time::Duration;

use ratchet::grpc::pb::revoke_request::Target;
use ratchet::grpc::pb::{RevokeRequest, RotateRequest};
use ratchet::store::postgres::{self, PoolSettings};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use tonic::Code;

use crate::support::{BIN, PrivateCluster, Server, TestApp, free_port, test_cleanup, test_policy};

/// A role created for one test and dropped (with its privileges) when the test ends, however it
/// ends: roles belong to the whole cluster, not to the test's database.
struct RuntimeRole {
    name: String,
    admin_url: String,
}

impl RuntimeRole {
    /// Runs `docs/runtime-role.sql` in `options`' database with a role name of this test's own
    /// (trust authentication: the documented password is dropped).
    async fn create(options: &PgConnectOptions) -> Self {
        let name = format!("ratchet_rt_{}", uuid::Uuid::new_v4().simple());
        let database = options.get_database().unwrap();
        let script = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runtime-role.sql"))
            .unwrap()
            .replace(" password 'change-me'", "")
            .replace("database ratchet ", &format!("database \"{database}\" "))
            .replace("ratchet_runtime", &name);
        let mut admin = PgConnection::connect_with(options).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(script))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        Self {
            admin_url: format!(
                "postgres://{}@{}:{}/{database}",
                options.get_username(),
                options.get_host(),
                options.get_port()
            ),
            name,
        }
    }
}

impl Drop for RuntimeRole {
    fn drop(&mut self) {
        // In the test's database (still there: it is dropped after the test function returns).
        let _ = Command::new("psql")
            .args(["-q", &self.admin_url, "-c"])
            .arg(format!("drop owned by {0}; drop role {0};", self.name))
            .output();
    }
}

#[sqlx::test(migrator = "ratchet::store::postgres::MIGRATOR")]
async fn the_whole_api_runs_on_the_runtime_role_which_can_do_nothing_else(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let role = RuntimeRole::create(&options).await;
    let runtime = options.clone().username(&role.name);
    let settings = PoolSettings {
        max_connections: 4,
        timeout: Duration::from_secs(5),
    };
    let pool = postgres::pool(runtime.clone(), &settings);
    let app = TestApp::builder(options.clone())
        .pool(settings)
        .on_pool(pool)
        .policy(test_policy())
        .spawn()
        .await;
    let mut client = app.client.clone();

    // Every statement the service runs: issue, rotate, reuse (revokes), revoke by subject,
    // introspect, list, cleanup (deletes).
    let pair = app.issue("alice").await;
    let next = client
        .rotate(RotateRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let reused = client
        .rotate(RotateRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);
    assert!(
        !app.introspect(&next.access_token).await.active,
        "reuse revoked the family"
    );
    let other = app.issue("alice").await;
    assert_eq!(app.sessions("alice").await.len(), 1);
    let revoked = client
        .revoke(RevokeRequest {
            target: Some(Target::Subject("alice".into())),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.families_revoked, 1);
    assert!(!app.introspect(&other.access_token).await.active);
    app.advance(time::Duration::days(400));
    let report = app.collect_garbage(&test_cleanup()).await;
    assert_eq!(report.families, 2, "{report:?}");
    // Issued twice, one reuse detected, one revoked by subject.
    assert_eq!(report.events, 4, "audit events past their retention: {report:?}");

    // ... and nothing else: no DDL, not the migrations table, no rewriting the audit trail.
    let recorded: i64 = sqlx::query_scalar("select count(*) from audit_events")
        .fetch_one(&mut PgConnection::connect_with(&runtime).await.unwrap())
        .await
        .unwrap();
    assert_eq!(recorded, 0, "the cleanup (as the runtime role) deleted them");
    let mut as_runtime = PgConnection::connect_with(&runtime).await.unwrap();
    for statement in [
        "drop table families",
        "alter table refresh_tokens add column x int",
        "create table mine (x int)",
        "delete from _sqlx_migrations",
        "update audit_events set kind = 'issued'",
        "truncate audit_events",
    ] {
        let error = sqlx::raw_sql(statement).execute(&mut as_runtime).await.unwrap_err();
        let code = error.as_database_error().and_then(|e| e.code()).unwrap_or_default();
        assert!(
            code == "42501" || code == "42P17",
            "{statement}: expected permission denied, got {error}"
        );
    }
    as_runtime.close().await.unwrap();
    app.stop().await;
    drop(role);
}

/// `openssl` with `args`, in `dir`; panics with its output on failure.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let output = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA and a server certificate it signed for 127.0.0.1, in `dir`: `ca.pem`, `server.pem`,
/// `server.key` (and `other-ca.pem`, a CA that signed nothing here).
fn make_certificates(dir: &std::path::Path) {
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=ratchet test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ],
        );
    }
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_tls_to_the_database_works_and_refuses_a_server_its_ca_did_not_sign() {
    let cluster = PrivateCluster::start().await;
    let data = cluster.dir().join("data");
    make_certificates(&data);
    // The server's key must be the postgres user's and private, or PostgreSQL refuses to start.
    let status = Command::new("chown")
        .args(["postgres", "server.key", "server.pem"])
        .current_dir(&data)
        .status();
    assert!(status.is_ok());
    std::fs::set_permissions(
        data.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .unwrap();
    std::io::Write::write_all(
        &mut conf,
        b"ssl = on\nssl_cert_file = 'server.pem'\nssl_key_file = 'server.key'\n",
    )
    .unwrap();
    cluster.restart().await;
    cluster.create_database("tls").await;

    let url = |ca: &str| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            cluster.url("tls").split('?').next().unwrap(),
            data.join(ca).display()
        )
    };
    // The right CA: migrate and serve over verified TLS.
    let migrate = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", url("ca.pem"))
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let scratch = std::env::temp_dir().join(format!("ratchet-tls-db-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch).unwrap();
    let addr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let server = Server::start_with(&url("ca.pem"), &scratch, &scratch.join("log"), addr, &[]);
    let client = server.client().await;
    let pair = crate::support::issue(&client, "alice").await;
    assert!(crate::support::introspect(&client, &pair.access_token).await.active);
    // Every connection of the server really is TLS.
    let mut admin = PgConnection::connect_with(&cluster.options().database("tls"))
        .await
        .unwrap();
    let plain: i64 = sqlx::query_scalar(
        "select count(*) from pg_stat_activity a join pg_stat_ssl s using (pid)
         where a.datname = 'tls' and a.pid <> pg_backend_pid() and not s.ssl",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(plain, 0, "no plaintext connection from the server");
    admin.close().await.unwrap();
    drop(server);

    // A CA that did not sign the server's certificate: refused, and said so.
    let refused = Command::new(BIN)
        .arg("migrate")
        .env("DATABASE_URL", url("other-ca.pem"))
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(stderr.contains("cannot reach the database"), "{stderr}");
    let _ = std::fs::remove_dir_all(&scratch);
}
