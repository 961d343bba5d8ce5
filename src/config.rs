//! Validated configuration: turns command-line arguments into what the server runs with, and
//! reports *every* problem at once (the CLI exits 64, EX_USAGE, on any).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr as _;

use sqlx::postgres::PgConnectOptions;

use crate::cli::{CleanupArgs, DatabaseArgs, GcArgs, ServeArgs};
use crate::issuer::Policy;
use crate::issuer::cleanup::CleanupSettings;
use crate::issuer::types::MAX_NAME_BYTES;
use crate::store::postgres::PoolSettings;

/// Where the database is and how to talk to it.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Kept to create the database if missing.
    pub url: String,
    pub options: PgConnectOptions,
    pub pool: PoolSettings,
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub policy: Policy,
    pub signing_key: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub migrate: bool,
    pub family_cache_ttl: std::time::Duration,
    /// The server secret's file, if configured (else derived from the signing key).
    pub seal_key: Option<PathBuf>,
    pub cleanup: CleanupSettings,
    /// Zero: no background cleanup.
    pub cleanup_interval: std::time::Duration,
}

/// What `ratchet gc` needs.
#[derive(Debug, Clone)]
pub struct GcConfig {
    pub database: DatabaseConfig,
    pub cleanup: CleanupSettings,
}

/// Pause between cleanup batches: leaves the database to the requests.
const CLEANUP_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
/// Longest retention of ended families (as long as the longest family lifetime).
const MAX_GC_RETENTION: time::Duration = time::Duration::days(400);

impl CleanupSettings {
    fn collect(args: &CleanupArgs, problems: &mut Problems) -> Self {
        let retention = problems.duration("gc-retention", args.gc_retention);
        problems.check(retention <= MAX_GC_RETENTION, || {
            "gc-retention: must be at most 400d".into()
        });
        problems.check((1..=100_000).contains(&args.gc_batch), || {
            "gc-batch: must be 1 to 100000".into()
        });
        Self {
            retention,
            batch: args.gc_batch,
            pause: CLEANUP_PAUSE,
        }
    }
}

impl GcConfig {
    /// # Errors
    /// Every problem found, one message each.
    pub fn from_args(args: &GcArgs) -> Result<Self, Vec<String>> {
        let mut problems = Problems::default();
        let database = DatabaseConfig::collect(&args.database, &mut problems);
        let cleanup = CleanupSettings::collect(&args.cleanup, &mut problems);
        match database {
            Some(database) if problems.0.is_empty() => Ok(Self { database, cleanup }),
            _ => Err(problems.0),
        }
    }
}

/// Collects problems instead of stopping at the first.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn check(&mut self, ok: bool, problem: impl FnOnce() -> String) {
        if !ok {
            self.0.push(problem());
        }
    }

    fn duration(&mut self, name: &str, value: humantime::Duration) -> time::Duration {
        time::Duration::try_from(*value).unwrap_or_else(|_| {
            self.0.push(format!("{name}: {value} is too long"));
            time::Duration::ZERO
        })
    }
}

impl DatabaseConfig {
    /// # Errors
    /// Every problem found, one message each.
    pub fn from_args(args: &DatabaseArgs) -> Result<Self, Vec<String>> {
        let mut problems = Problems::default();
        let config = Self::collect(args, &mut problems);
        if problems.0.is_empty() {
            config.ok_or_else(Vec::new)
        } else {
            Err(problems.0)
        }
    }

    fn collect(args: &DatabaseArgs, problems: &mut Problems) -> Option<Self> {
        problems.check(args.db_max_connections >= 1, || {
            "db-max-connections: must be at least 1".into()
        });
        let timeout = *args.db_timeout;
        problems.check(timeout >= std::time::Duration::from_millis(100), || {
            "db-timeout: must be at least 100ms".into()
        });
        // The URL may hold a password: never echo it.
        match PgConnectOptions::from_str(&args.database_url) {
            Ok(options) => Some(Self {
                url: args.database_url.clone(),
                options,
                pool: PoolSettings {
                    max_connections: args.db_max_connections,
                    timeout,
                },
            }),
            Err(e) => {
                problems.0.push(format!(
                    "database-url: not a valid PostgreSQL URL ({})",
                    redact_error(&e)
                ));
                None
            }
        }
    }
}

/// sqlx's URL errors quote the URL back only in rare cases; keep just the kind of failure.
fn redact_error(error: &sqlx::Error) -> &'static str {
    match error {
        sqlx::Error::Configuration(_) => "bad configuration",
        _ => "unparseable",
    }
}

impl Config {
    /// # Errors
    /// Every problem found, one message each.
    pub fn from_args(args: ServeArgs) -> Result<Self, Vec<String>> {
        let mut problems = Problems::default();
        let database = DatabaseConfig::collect(&args.database, &mut problems);
        let access_ttl = problems.duration("access-ttl", args.access_ttl);
        let refresh_ttl = problems.duration("refresh-ttl", args.refresh_ttl);
        let family_ttl = problems.duration("family-ttl", args.family_ttl);
        let reuse_grace = problems.duration("reuse-grace", args.reuse_grace);
        let leeway = problems.duration("leeway", args.leeway);
        let second = time::Duration::SECOND;
        problems.check(access_ttl >= second, || "access-ttl: must be at least 1s".into());
        problems.check(access_ttl <= time::Duration::DAY, || {
            "access-ttl: must be at most 1d (access tokens are meant to be short-lived)".into()
        });
        problems.check(refresh_ttl >= second, || "refresh-ttl: must be at least 1s".into());
        problems.check(family_ttl >= second, || "family-ttl: must be at least 1s".into());
        problems.check(reuse_grace < refresh_ttl, || {
            "reuse-grace: must be shorter than refresh-ttl".into()
        });
        problems.check(reuse_grace <= time::Duration::minutes(10), || {
            "reuse-grace: must be at most 10m (it is a retry window, not a lifetime)".into()
        });
        problems.check(leeway <= time::Duration::minutes(5), || {
            "leeway: must be at most 5m".into()
        });
        problems.check((1..=10_000).contains(&args.max_sessions), || {
            "max-sessions: must be 1 to 10000".into()
        });
        let cleanup = CleanupSettings::collect(&args.cleanup, &mut problems);
        problems.check(*args.gc_interval <= std::time::Duration::from_secs(86_400), || {
            "gc-interval: must be at most 1d".into()
        });
        for (name, value) in [("issuer", &args.issuer), ("audience", &args.audience)] {
            problems.check(!value.is_empty() && value.len() <= MAX_NAME_BYTES, || {
                format!("{name}: must be 1 to {MAX_NAME_BYTES} bytes")
            });
        }
        match database {
            Some(database) if problems.0.is_empty() => Ok(Self {
                listen: args.listen,
                database,
                policy: Policy {
                    issuer: args.issuer,
                    default_audience: args.audience,
                    access_ttl,
                    refresh_ttl,
                    family_ttl,
                    reuse_grace,
                    leeway,
                    max_sessions: args.max_sessions,
                },
                signing_key: args.signing_key,
                data_dir: args.data_dir,
                migrate: !args.no_migrate,
                family_cache_ttl: *args.family_cache_ttl,
                seal_key: args.seal_key,
                cleanup,
                cleanup_interval: *args.gc_interval,
            }),
            _ => Err(problems.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

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
        assert_eq!(config.policy.access_ttl, time::Duration::minutes(15));
        assert_eq!(config.policy.refresh_ttl, time::Duration::days(7));
        assert_eq!(config.policy.family_ttl, time::Duration::days(30));
        assert_eq!(config.policy.reuse_grace, time::Duration::ZERO);
        assert_eq!(config.policy.leeway, time::Duration::seconds(5));
        assert!(config.migrate);
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
}
