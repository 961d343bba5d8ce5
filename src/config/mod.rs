//! Validated configuration: turns command-line arguments into what the server runs with, and
//! reports *every* problem at once (the CLI exits 64, EX_USAGE, on any).
//!
//! One shape from the flags to the code that reads them: [`Config::from_args`] produces the
//! store's own [`Target`], the keys' [`KeySource`] and the [`Settings`] that
//! [`crate::startup::Application`] keeps as they are, so a new setting touches its flag
//! ([`crate::cli`]), its check (one file here) and the code that reads it, nothing in between.
//!
//! - `problems`: collecting problems, and the checks every flag goes through (a duration in
//!   bounds, a count in range).
//! - `bounds`: the table of limits, each with its reason.
//! - one file per group of flags: [`database`], `transport` (listeners, their limits, TLS),
//!   `access` (caller policy, Rotate limit), `issuer` (tokens and sessions), [`keys`] and
//!   `cleanup` (with the audit trail's retention); and [`events`], the filters of
//!   `ratchet events`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{GcArgs, ServeArgs};
use crate::issuer::Policy;
use crate::issuer::cleanup::CleanupSettings;
use crate::keys::source::KeySource;
use crate::policy::AccessSettings;
use crate::store::Target;
use crate::transport::TransportConfig;

mod access;
mod bounds;
mod cleanup;
pub mod database;
pub mod events;
mod issuer;
pub mod keys;
mod problems;
mod transport;

pub use events::EventsConfig;
use problems::Problems;
pub use transport::{HttpConfig, MetricsConfig, TransportLimits};

/// Everything `serve` needs: what [`crate::startup::Application::build`] turns into parts (the
/// store, the keys, the server secret), and the [`Settings`] the running server reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: Target,
    pub keys: KeySource,
    /// The server secret's file, if configured (else derived from the signing key).
    pub seal_key: Option<PathBuf>,
    pub migrate: bool,
    pub settings: Settings,
}

/// What the running server reads, as validated: kept by the application as it is, and started
/// from by tests ([`Settings::defaults`]) with only what they exercise changed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    /// What tokens say and how long sessions live.
    pub policy: Policy,
    /// How often the key directory is read again (SIGHUP reads it at once).
    pub keys_reload_interval: Duration,
    /// Memory budget of the verified access-token cache, in bytes; zero disables it.
    pub verified_cache_bytes: usize,
    /// The JWKS/discovery HTTP listener; `None` when turned off.
    pub http: Option<HttpConfig>,
    /// Where `/metrics` is served, if anywhere.
    pub metrics: MetricsConfig,
    /// How long Introspect trusts a cached "family is live" while revocations made elsewhere are
    /// not known to reach this server (zero: always ask the database, and no listener).
    pub family_cache_ttl: Duration,
    pub cleanup: CleanupSettings,
    /// How often the background cleanup runs (zero: never; `ratchet gc` by hand instead).
    pub cleanup_interval: Duration,
    pub limits: TransportLimits,
    /// Who may call what, reflection, the Rotate limit.
    pub access: AccessSettings,
    /// TLS, mutual TLS, XFCC; the default is plaintext.
    pub transport: TransportConfig,
    /// After the shutdown signal: how long calls in flight get to finish before they are cut.
    pub shutdown_grace: Duration,
}

impl Config {
    /// # Errors
    /// Every problem found, one message each.
    pub fn from_args(args: ServeArgs) -> Result<Self, Vec<String>> {
        let mut problems = Problems::default();
        let database = database::collect(&args.database, &args.keys.data_dir, &mut problems);
        let policy = issuer::collect(&args, &mut problems);
        let family_cache_ttl = problems.duration("family-cache-ttl", &args.family_cache_ttl, &bounds::FAMILY_CACHE_TTL);
        let keys = keys::collect(&args, &mut problems);
        let settings = Settings {
            listen: args.listen,
            policy,
            keys_reload_interval: keys.reload_interval,
            verified_cache_bytes: keys.verified_cache_bytes,
            http: HttpConfig::collect(&args, &mut problems),
            metrics: MetricsConfig::collect(&args, &mut problems),
            family_cache_ttl,
            cleanup: cleanup::collect(&args.cleanup, &mut problems),
            cleanup_interval: cleanup::interval(&args.gc_interval, &mut problems),
            limits: TransportLimits::collect(&args.limits, &mut problems),
            access: access::collect(&args.access, &mut problems),
            transport: transport::tls(&args.transport, args.listen, &mut problems),
            shutdown_grace: problems.duration("shutdown-grace", &args.shutdown_grace, &bounds::SHUTDOWN_GRACE),
        };
        let config = database.map(|database| Self {
            database,
            keys: keys.source,
            seal_key: keys.seal_key,
            migrate: !args.no_migrate,
            settings,
        });
        problems.into_result(config)
    }
}

impl Settings {
    /// What `ratchet serve` runs with given no flags and no environment: where tests start.
    ///
    /// # Errors
    /// Only if the defaults themselves stopped passing validation (a test checks they do not).
    pub fn defaults() -> Result<Self, Vec<String>> {
        let args = ServeArgs::defaults().map_err(|error| vec![error.to_string()])?;
        Config::from_args(args).map(|config| config.settings)
    }
}

/// What `ratchet gc` needs.
#[derive(Debug, Clone)]
pub struct GcConfig {
    pub database: Target,
    pub cleanup: CleanupSettings,
}

impl GcConfig {
    /// # Errors
    /// Every problem found, one message each.
    pub fn from_args(args: &GcArgs) -> Result<Self, Vec<String>> {
        let mut problems = Problems::default();
        let database = database::collect(&args.database, &args.data_dir, &mut problems);
        let cleanup = cleanup::collect(&args.cleanup, &mut problems);
        let config = database.map(|database| Self {
            database,
            // By hand, the whole table is swept.
            cleanup: CleanupSettings {
                sweep_windows: None,
                ..cleanup
            },
        });
        problems.into_result(config)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use std::path::Path;

    use super::bounds::{DB_TIMEOUT, FAMILY_CACHE_TTL, REUSE_GRACE, SESSION_TTL, VERIFIED_CACHE_BYTES};
    use super::problems::human;
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::store::sqlite::SqliteTarget;
    use crate::transport::serve::HttpLimits;

    fn serve_args(extra: &[&str]) -> ServeArgs {
        let mut argv = vec!["ratchet", "serve"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(args) => *args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_args(serve_args(&[])).unwrap();
        assert_eq!(config.settings.policy.access_ttl, time::Duration::minutes(15));
        assert_eq!(config.settings.policy.refresh_ttl, time::Duration::days(7));
        assert_eq!(config.settings.policy.family_ttl, time::Duration::days(30));
        assert_eq!(config.settings.policy.reuse_grace, time::Duration::ZERO);
        assert_eq!(config.settings.policy.leeway, time::Duration::seconds(5));
        assert_eq!(config.settings.verified_cache_bytes, 32 * 1024 * 1024);
        assert!(config.migrate);
        assert_eq!(config.settings.cleanup.audit_retention, time::Duration::days(90));
        assert!(
            !config.settings.policy.audit_rotations,
            "rotations are not audited by default"
        );
        let on = Config::from_args(serve_args(&["--audit-rotations"])).unwrap();
        assert!(on.settings.policy.audit_rotations);
    }

    #[test]
    fn the_defaults_tests_start_from_are_what_serve_runs_with_no_flags() {
        let defaults = Settings::defaults().unwrap();
        assert_eq!(defaults.listen, "127.0.0.1:50051".parse().unwrap());
        assert_eq!(defaults.family_cache_ttl, Duration::from_secs(5));
        assert_eq!(defaults.cleanup_interval, Duration::from_secs(60));
        assert_eq!(defaults.limits, TransportLimits::default());
        assert_eq!(defaults.http.unwrap().limits, HttpLimits::default());
        assert!(defaults.access.policy.is_none() && defaults.transport.tls.is_none());
        assert_eq!(defaults.shutdown_grace, Duration::from_secs(10));
        let cut_at_once = Config::from_args(serve_args(&["--shutdown-grace", "0s"])).unwrap();
        assert_eq!(cut_at_once.settings.shutdown_grace, Duration::ZERO, "0s is allowed");
    }

    #[test]
    fn a_count_out_of_range_names_the_flag_and_the_range() {
        for (flag, value, problem) in [
            ("--max-sessions", "0", "max-sessions: must be 1 to 10000"),
            ("--gc-batch", "100001", "gc-batch: must be 1 to 100000"),
            ("--rotate-burst", "0", "rotate-burst: must be 1 to 1000000"),
            ("--max-header-bytes", "100", "max-header-bytes: must be 1024 to 1048576"),
            ("--max-connections", "0", "max-connections: must be 1 to 1000000"),
            (
                "--http-max-connections",
                "0",
                "http-max-connections: must be 1 to 100000",
            ),
            ("--db-max-connections", "0", "db-max-connections: must be at least 1"),
            (
                "--verified-cache-bytes",
                "4294967297",
                "verified-cache-bytes: must be at most 4294967296 (4 GiB)",
            ),
            ("--issuer", "", "issuer: must be 1 to 255 bytes"),
        ] {
            assert_eq!(problems_of(&[flag, value]), [problem]);
        }
    }

    #[test]
    fn tls_cert_and_key_go_together_and_a_client_ca_needs_them() {
        let problems = problems_of(&["--tls-cert", "/nonexistent/cert.pem"]);
        assert_eq!(problems, ["tls-cert, tls-key: give both or neither"]);
        let problems = problems_of(&["--tls-client-ca", "/nonexistent/ca.pem"]);
        assert!(
            problems[0].starts_with("tls-client-ca: needs --tls-cert"),
            "{problems:?}"
        );
        let problems = problems_of(&["--tls-cert", "/nonexistent/c.pem", "--tls-key", "/nonexistent/k.pem"]);
        assert!(
            problems.len() == 1 && problems[0].starts_with("tls: ") && problems[0].contains("/nonexistent/"),
            "a file that cannot be loaded at start is a configuration problem: {problems:?}"
        );
        assert!(
            Config::from_args(serve_args(&[]))
                .unwrap()
                .settings
                .transport
                .tls
                .is_none(),
            "plaintext by default"
        );
    }

    #[test]
    fn trust_xfcc_is_only_for_a_plaintext_loopback_listener() {
        let config = Config::from_args(serve_args(&["--trust-xfcc", "--listen", "[::1]:50051"])).unwrap();
        assert!(config.settings.transport.trust_xfcc);
        let problems = problems_of(&["--trust-xfcc", "--listen", "0.0.0.0:50051"]);
        assert!(problems.len() == 1 && problems[0].contains("loopback"), "{problems:?}");
        let problems = problems_of(&[
            "--trust-xfcc",
            "--tls-cert",
            "/nonexistent/c",
            "--tls-key",
            "/nonexistent/k",
        ]);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("trust-xfcc: ") && p.contains("TLS")),
            "{problems:?}"
        );
    }

    #[test]
    fn the_verified_cache_budget_is_zero_to_four_gib() {
        let bytes = |value: &str| Config::from_args(serve_args(&["--verified-cache-bytes", value]));
        assert_eq!(
            bytes("0").unwrap().settings.verified_cache_bytes,
            0,
            "zero disables the cache"
        );
        if usize::BITS >= 64 {
            let four_gib = usize::try_from(VERIFIED_CACHE_BYTES.max).unwrap();
            assert_eq!(bytes("4294967296").unwrap().settings.verified_cache_bytes, four_gib);
        }
        let problems = bytes("4294967297").unwrap_err();
        assert!(
            problems.len() == 1 && problems[0].starts_with("verified-cache-bytes: "),
            "{problems:?}"
        );
    }

    fn problems_of(extra: &[&str]) -> Vec<String> {
        Config::from_args(serve_args(extra)).unwrap_err()
    }

    #[test]
    fn every_duration_has_a_ceiling_and_the_problem_names_the_flag() {
        for (flag, too_long, fine) in [
            ("access-ttl", "25h", "1d"),
            ("refresh-ttl", "401d", "400d"),
            ("family-ttl", "8000y", "400d"),
            ("reuse-grace", "11m", "10m"),
            ("leeway", "6m", "5m"),
            ("family-cache-ttl", "61m", "1h"),
            ("db-timeout", "61s", "60s"),
            ("shutdown-grace", "6m", "5m"),
            ("audit-retention", "11y", "10y"),
        ] {
            let flag_arg = format!("--{flag}");
            let problems = problems_of(&[&flag_arg, too_long]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].starts_with(&format!("{flag}: must be at most")),
                "{problems:?}"
            );
            Config::from_args(serve_args(&[&flag_arg, fine])).unwrap();
        }
    }

    #[test]
    fn durations_below_their_floor_are_refused() {
        for (flag, too_short) in [
            ("access-ttl", "0s"),
            ("refresh-ttl", "0s"),
            ("family-ttl", "0s"),
            ("db-timeout", "99ms"),
            ("audit-retention", "23h"),
        ] {
            let problems = problems_of(&[&format!("--{flag}"), too_short]);
            assert!(
                problems.len() == 1 && problems[0].starts_with(&format!("{flag}: must be at least")),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn a_duration_humantime_cannot_represent_is_a_problem_naming_the_flag() {
        for value in ["99999999999999999999y", "soon", "", "-5s"] {
            let problems = problems_of(&[&format!("--family-ttl={value}")]);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].starts_with("family-ttl: "), "{problems:?}");
        }
    }

    #[test]
    fn bounds_are_shown_the_way_operators_write_them() {
        assert_eq!(human(SESSION_TTL.max), "400d");
        assert_eq!(human(DB_TIMEOUT.min), "100ms");
        assert_eq!(human(REUSE_GRACE.max), "10m");
        assert_eq!(human(FAMILY_CACHE_TTL.max), "1h");
        assert_eq!(human(Duration::ZERO), "0s");
        assert_eq!(human(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn transport_limits_have_bounds_and_defaults() {
        let config = Config::from_args(serve_args(&[])).unwrap();
        assert_eq!(config.settings.limits, TransportLimits::default());
        assert_eq!(config.settings.limits.idle_timeout, Duration::from_secs(5 * 60));
        assert_eq!(config.settings.http.unwrap().limits, HttpLimits::default());
        let off = Config::from_args(serve_args(&["--idle-timeout", "0s"])).unwrap();
        assert_eq!(
            off.settings.limits.idle_timeout,
            Duration::ZERO,
            "0s turns the idle timeout off"
        );
        for (flag, value) in [
            ("--max-concurrent-requests", "0"),
            ("--max-streams-per-connection", "20000"),
            ("--max-header-bytes", "100"),
            ("--http2-keepalive-timeout", "0s"),
            ("--max-connection-age", "2d"),
            ("--idle-timeout", "2d"),
            ("--http-header-read-timeout", "0s"),
            ("--http-header-read-timeout", "6m"),
            ("--http-idle-timeout", "0s"),
            ("--http-max-connections", "0"),
        ] {
            let problems = problems_of(&[flag, value]);
            assert!(
                problems.iter().any(|p| p.starts_with(flag.trim_start_matches("--"))),
                "{flag} {value}: {problems:?}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = Config::from_args(serve_args(&[
            "--access-ttl",
            "0s",
            "--reuse-grace",
            "1h",
            "--issuer",
            "",
            "--database-url",
            "postgres://h:notaport/db",
        ]))
        .unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().all(|p| !p.contains("notaport")));
    }

    #[test]
    fn without_a_database_url_the_store_is_sqlite_in_the_data_directory() {
        let database = |extra: &[&str]| {
            let mut args = serve_args(extra);
            args.database.database_url = None;
            Config::from_args(args).unwrap().database
        };
        let Target::Sqlite(SqliteTarget { path, settings }) = database(&["--data-dir", "/srv/ratchet"]) else {
            panic!("no URL is SQLite")
        };
        assert_eq!(path, Path::new("/srv/ratchet/ratchet.db"));
        assert_eq!(settings.timeout, Duration::from_secs(5));
        let empty = serve_args(&["--database-url", "", "--data-dir", "/srv/ratchet"]);
        assert!(matches!(Config::from_args(empty).unwrap().database, Target::Sqlite(_)));
        for (url, file) in [("sqlite:///var/lib/r.db", "/var/lib/r.db"), ("sqlite:r.db", "r.db")] {
            match Config::from_args(serve_args(&["--database-url", url]))
                .unwrap()
                .database
            {
                Target::Sqlite(SqliteTarget { path, .. }) => assert_eq!(path, Path::new(file)),
                other => panic!("{url}: {other:?}"),
            }
        }
        for url in ["sqlite::memory:", "sqlite://r.db?mode=ro", "sqlite:"] {
            let problems = problems_of(&["--database-url", url]);
            assert!(
                problems.len() == 1 && problems[0].starts_with("database-url: "),
                "{url}: {problems:?}"
            );
        }
    }

    const WITH_PASSWORD: &str = "postgres://app:hunter2-secret@db.internal:5432/ratchet";

    #[test]
    fn debug_output_of_the_configuration_never_shows_the_database_password() {
        for url in [
            WITH_PASSWORD,
            "postgres://app@db.internal/ratchet?password=hunter2-secret",
        ] {
            let args = serve_args(&["--database-url", url]);
            let shown = format!("{args:?} {:?}", args.database);
            assert!(!shown.contains("hunter2"), "{shown}");
            let config = Config::from_args(args).unwrap();
            let shown = format!("{config:?} {config:#?} {:?}", config.database);
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("db.internal"), "still useful: {shown}");
            let Target::Postgres(crate::store::postgres::PgTarget { url: configured, .. }) = &config.database else {
                panic!("a postgres URL is PostgreSQL")
            };
            assert_eq!(configured.expose(), url, "connecting still has it");
        }
    }

    #[test]
    fn problems_with_a_bad_database_url_never_show_its_password() {
        for url in [
            "postgres://app:hunter2-secret@db.internal:notaport/ratchet",
            "postgres://app:hunter2-secret@db.internal/ratchet?sslmode=hunter2-secret",
            "hunter2-secret",
        ] {
            let problems = Config::from_args(serve_args(&["--database-url", url])).unwrap_err();
            assert!(
                problems.len() == 1 && problems[0].starts_with("database-url: "),
                "{problems:?}"
            );
            assert!(problems.iter().all(|p| !p.contains("hunter2")), "{problems:?}");
        }
    }
}
