//! Validated configuration: turns command-line arguments into what the server runs with, and
//! reports *every* problem at once (the CLI exits 64, EX_USAGE, on any).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::cli::{AccessArgs, CleanupArgs, DatabaseArgs, GcArgs, ServeArgs, TransportLimitArgs};
use crate::database_url::DatabaseUrl;
use crate::issuer::Policy;
use crate::issuer::cleanup::CleanupSettings;
use crate::issuer::types::MAX_NAME_BYTES;
use crate::keys::source::KeySource;
use crate::policy::AccessSettings;
use crate::store::postgres::PoolSettings;
use crate::store::sqlite::{DATABASE_FILE, SqliteSettings};
use crate::transport::serve::HttpLimits;
use crate::transport::{Reloadable, TlsFiles, TransportConfig};

/// Where the database is and how to talk to it: PostgreSQL when `DATABASE_URL` names one,
/// SQLite in the data directory when it is unset.
#[expect(clippy::large_enum_variant, reason = "made once at start: boxing would save nothing")]
#[derive(Clone)]
pub enum DatabaseConfig {
    Postgres {
        /// Kept to create the database if missing.
        url: DatabaseUrl,
        options: PgConnectOptions,
        pool: PoolSettings,
    },
    Sqlite {
        path: PathBuf,
        settings: SqliteSettings,
    },
}

/// By hand: `PgConnectOptions`' own `Debug` prints the password. The options come from the URL,
/// whose redacted form says the same.
impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres { url, pool, .. } => f
                .debug_struct("Postgres")
                .field("url", url)
                .field("pool", pool)
                .finish_non_exhaustive(),
            Self::Sqlite { path, settings } => f
                .debug_struct("Sqlite")
                .field("path", path)
                .field("settings", settings)
                .finish(),
        }
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub policy: Policy,
    pub keys: KeySource,
    /// How often the key directory is read again (SIGHUP reads it at once).
    pub keys_reload_interval: Duration,
    /// The JWKS/discovery HTTP listener; `None` when turned off.
    pub http: Option<HttpConfig>,
    pub migrate: bool,
    pub family_cache_ttl: Duration,
    /// Memory budget of the verified access-token cache, in bytes; zero disables it.
    pub verified_cache_bytes: usize,
    /// The server secret's file, if configured (else derived from the signing key).
    pub seal_key: Option<PathBuf>,
    pub cleanup: CleanupSettings,
    pub limits: TransportLimits,
    /// Zero: no background cleanup.
    pub cleanup_interval: std::time::Duration,
    pub access: AccessSettings,
    /// TLS, mutual TLS, XFCC.
    pub transport: TransportConfig,
}

/// Bounds on what callers can make the gRPC transport hold (see `TransportLimitArgs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportLimits {
    pub max_concurrent_requests: usize,
    pub max_streams_per_connection: u32,
    pub max_header_bytes: u32,
    /// Zero: no keepalive PINGs.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// Zero: connections live as long as their peers keep them.
    pub max_connection_age: Duration,
    /// Zero: idle connections stay open.
    pub idle_timeout: Duration,
    /// gRPC connections served at once; further ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// A new gRPC connection must complete its first request's headers within this, or is closed
    /// (and cut a second later).
    pub first_request_timeout: Duration,
    /// Health `Watch` streams open at once; one more is refused RESOURCE_EXHAUSTED.
    pub max_health_watches: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        Self {
            max_concurrent_requests: 1024,
            max_streams_per_connection: 256,
            max_header_bytes: 16 * 1024,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_connection_age: Duration::ZERO,
            idle_timeout: Duration::from_secs(5 * 60),
            max_connections: 10_000,
            first_request_timeout: Duration::from_secs(10),
            max_health_watches: 1000,
        }
    }
}

impl TransportLimits {
    fn collect(args: &TransportLimitArgs, problems: &mut Problems) -> Self {
        problems.check((1..=100_000).contains(&args.max_concurrent_requests), || {
            "max-concurrent-requests: must be 1 to 100000".into()
        });
        problems.check((1..=10_000).contains(&args.max_streams_per_connection), || {
            "max-streams-per-connection: must be 1 to 10000".into()
        });
        problems.check((1024..=1024 * 1024).contains(&args.max_header_bytes), || {
            "max-header-bytes: must be 1024 to 1048576".into()
        });
        problems.check((1..=1_000_000).contains(&args.max_connections), || {
            "max-connections: must be 1 to 1000000".into()
        });
        problems.check((1..=100_000).contains(&args.max_health_watches), || {
            "max-health-watches: must be 1 to 100000".into()
        });
        Self {
            max_concurrent_requests: usize::try_from(args.max_concurrent_requests).unwrap_or(1024),
            max_streams_per_connection: args.max_streams_per_connection,
            max_header_bytes: args.max_header_bytes,
            http2_keepalive_interval: problems.duration(
                "http2-keepalive-interval",
                &args.http2_keepalive_interval,
                &KEEPALIVE_INTERVAL,
            ),
            http2_keepalive_timeout: problems.duration(
                "http2-keepalive-timeout",
                &args.http2_keepalive_timeout,
                &KEEPALIVE_TIMEOUT,
            ),
            max_connection_age: problems.duration("max-connection-age", &args.max_connection_age, &CONNECTION_AGE),
            idle_timeout: problems.duration("idle-timeout", &args.idle_timeout, &IDLE_TIMEOUT),
            max_connections: usize::try_from(args.max_connections).unwrap_or(10_000),
            first_request_timeout: problems.duration(
                "first-request-timeout",
                &args.first_request_timeout,
                &FIRST_REQUEST_TIMEOUT,
            ),
            max_health_watches: usize::try_from(args.max_health_watches).unwrap_or(1000),
        }
    }
}

impl HttpLimits {
    fn collect(args: &TransportLimitArgs, problems: &mut Problems) -> Self {
        problems.check((1..=100_000).contains(&args.http_max_connections), || {
            "http-max-connections: must be 1 to 100000".into()
        });
        Self {
            header_read_timeout: problems.duration(
                "http-header-read-timeout",
                &args.http_header_read_timeout,
                &HTTP_HEADER_READ_TIMEOUT,
            ),
            idle_timeout: problems.duration("http-idle-timeout", &args.http_idle_timeout, &HTTP_IDLE_TIMEOUT),
            max_connections: usize::try_from(args.http_max_connections).unwrap_or(1024),
        }
    }
}

/// The JWKS and discovery HTTP listener.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// `Cache-Control: max-age` of the JWKS.
    pub jwks_max_age: Duration,
    /// The `jwks_uri` discovery announces; `None`: `<issuer>/.well-known/jwks.json`, or no
    /// discovery when the issuer is not an http(s) URL (`http::router`).
    pub jwks_uri: Option<String>,
    /// Header read timeout, idle timeout, connection cap.
    pub limits: HttpLimits,
}

/// What `ratchet gc` needs.
#[derive(Debug, Clone)]
pub struct GcConfig {
    pub database: DatabaseConfig,
    pub cleanup: CleanupSettings,
}

/// Idle-sweep windows per background cleanup pass: 50 windows of --gc-batch (1000) families a
/// minute by default, so a table of a million families is swept in 20 minutes, at a few
/// milliseconds of database time per window.
const SWEEP_WINDOWS: u32 = 50;
/// Pause between cleanup batches: leaves the database to the requests.
const CLEANUP_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

impl CleanupSettings {
    fn collect(args: &CleanupArgs, problems: &mut Problems) -> Self {
        let retention = problems.time_duration("gc-retention", &args.gc_retention, &GC_RETENTION);
        problems.check((1..=100_000).contains(&args.gc_batch), || {
            "gc-batch: must be 1 to 100000".into()
        });
        Self {
            retention,
            batch: args.gc_batch,
            sweep_windows: Some(SWEEP_WINDOWS),
            pause: CLEANUP_PAUSE,
        }
    }
}

/// Below a second re-reading the policy is busywork; above an hour a change waits too long.
const POLICY_RELOAD_INTERVAL: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: HOUR,
    why: "a policy change would wait that long on a server that missed its SIGHUP",
};

impl AccessSettings {
    fn collect(args: &AccessArgs, problems: &mut Problems) -> Self {
        let reload_interval = problems.duration(
            "policy-reload-interval",
            &args.policy_reload_interval,
            &POLICY_RELOAD_INTERVAL,
        );
        let policy = match &args.policy {
            Some(path) => match crate::policy::reload::PolicyFile::load(path) {
                Ok(file) => Some(std::sync::Arc::new(file)),
                Err(found) => {
                    problems
                        .0
                        .extend(found.into_iter().map(|p| format!("policy {}: {p}", path.display())));
                    None
                }
            },
            None => {
                problems.check(!args.require_auth, || {
                    "require-auth: no caller policy; set --policy (RATCHET_POLICY) to a policy file".into()
                });
                None
            }
        };
        let limit = |name: &str, value: u32, problems: &mut Problems| {
            std::num::NonZeroU32::new(value)
                .filter(|v| v.get() <= 1_000_000)
                .unwrap_or_else(|| {
                    problems.0.push(format!("{name}: must be 1 to 1000000"));
                    std::num::NonZeroU32::MIN
                })
        };
        Self {
            policy,
            reload_interval,
            reflection: args.reflection,
            rotate_limit: crate::policy::limits::RotateLimit {
                per_second: limit("rotate-per-second", args.rotate_per_second, problems),
                burst: limit("rotate-burst", args.rotate_burst, problems),
            },
        }
    }
}

impl GcConfig {
    /// # Errors
    /// Every problem found, one message each.
    pub fn from_args(args: &GcArgs) -> Result<Self, Vec<String>> {
        let mut problems = Problems::default();
        let database = DatabaseConfig::collect(&args.database, &args.data_dir, &mut problems);
        let cleanup = CleanupSettings::collect(&args.cleanup, &mut problems);
        match database {
            // By hand, the whole table is swept.
            Some(database) if problems.0.is_empty() => Ok(Self {
                database,
                cleanup: CleanupSettings {
                    sweep_windows: None,
                    ..cleanup
                },
            }),
            _ => Err(problems.0),
        }
    }
}

/// The range a duration setting must fall in. Every duration has a ceiling: past it a value is a
/// typo or a unit mix-up (`8000y`), and an absurd lifetime would also push expiry timestamps
/// towards overflow.
struct Bounds {
    min: Duration,
    max: Duration,
    /// Why the ceiling is where it is, told to whoever exceeds it.
    why: &'static str,
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// An access token cannot be recalled from a verifier that does not introspect, so it must expire
/// soon; a day is already generous.
const ACCESS_TTL: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: DAY,
    why: "access tokens are meant to be short-lived",
};
/// About 13 months: "remember me for a year" plus slack. Sessions meant to last longer should
/// sign in again.
const SESSION_TTL: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(400 * 24 * 60 * 60),
    why: "about 13 months, a year of \"remember me\" plus slack",
};
/// A client retrying a lost answer does so within seconds; a long window only gives a thief time.
const REUSE_GRACE: Bounds = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(10 * 60),
    why: "it is a retry window, not a lifetime",
};
/// Skew beyond minutes is a broken clock to fix, not one to tolerate.
const LEEWAY: Bounds = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(5 * 60),
    why: "clocks further apart need fixing, not tolerating",
};
/// It bounds how long a revocation made through another replica goes unseen by Introspect here
/// while the revocation listener is down.
const FAMILY_CACHE_TTL: Bounds = Bounds {
    min: Duration::ZERO,
    max: HOUR,
    why: "it is how long another replica's revocation may go unseen while the listener is down",
};
/// Below 100 ms a healthy but busy database times out; above a minute a caller is better told
/// UNAVAILABLE and left to retry than kept hanging (RPCs are cut at 15 s anyway; migrations at
/// start use it too, hence the margin).
const DB_TIMEOUT: Bounds = Bounds {
    min: Duration::from_millis(100),
    max: MINUTE,
    why: "past it a caller is better told UNAVAILABLE than kept waiting",
};

/// Below a second re-reading the key files is busywork; above an hour a key change waits too
/// long for a server that missed its SIGHUP.
const KEYS_RELOAD_INTERVAL: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: HOUR,
    why: "a key change would wait that long on a server that missed its SIGHUP",
};
/// Mesh certificates rotate hourly and are renewed well before they expire: a minute is plenty,
/// a second is the floor of sensible polling, an hour would let a certificate expire unseen.
const TLS_RELOAD_INTERVAL: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: HOUR,
    why: "short-lived certificates would expire before a server that missed its SIGHUP saw the new one",
};
/// Verifiers may keep the JWKS this long: a day at most, or key rotations take days.
const JWKS_MAX_AGE: Bounds = Bounds {
    min: Duration::ZERO,
    max: DAY,
    why: "every key rotation has to wait this long before activating",
};

/// A PING more than an hour apart finds a dead peer too late to matter.
const KEEPALIVE_INTERVAL: Bounds = Bounds {
    min: Duration::ZERO,
    max: HOUR,
    why: "a dead peer would hold its connection that long",
};
/// Under a second a busy but healthy peer is cut; over five minutes a dead one is kept.
const KEEPALIVE_TIMEOUT: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(5 * 60),
    why: "a dead peer would hold its connection that long",
};
const CONNECTION_AGE: Bounds = Bounds {
    min: Duration::ZERO,
    max: DAY,
    why: "longer is the same as never",
};
/// Zero keeps idle connections; past a day is the same as never.
const IDLE_TIMEOUT: Bounds = Bounds {
    min: Duration::ZERO,
    max: DAY,
    why: "longer is the same as never",
};
/// A real client sends its request head in one go; under a second a slow network is cut, over
/// five minutes a slowloris client holds its connection that long.
const HTTP_HEADER_READ_TIMEOUT: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(5 * 60),
    why: "a client dribbling its headers would hold a connection that long",
};
/// A client sends its first request as soon as it has connected (or finished its TLS handshake,
/// bounded apart); like the HTTP header read timeout, longer lets a silent client hold a
/// connection, and its place under `--max-connections`, that long.
const FIRST_REQUEST_TIMEOUT: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(5 * 60),
    why: "a connection that sends nothing would hold its place under the connection cap that long",
};
/// Verifiers fetch the JWKS every few minutes: keeping an idle connection longer saves nothing.
const HTTP_IDLE_TIMEOUT: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: HOUR,
    why: "idle connections would hold their place under the connection cap that long",
};

/// Ended families are kept at most as long as the longest family lives.
const GC_RETENTION: Bounds = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(400 * 24 * 60 * 60),
    why: "as long as the longest family lifetime",
};
/// Cleanup more than a day apart lets storage grow for no gain; zero turns it off.
const GC_INTERVAL: Bounds = Bounds {
    min: Duration::ZERO,
    max: DAY,
    why: "storage would grow for a day between passes",
};

/// Ceiling of `--verified-cache-bytes`. Entries are a few hundred bytes, so 4 GiB holds millions
/// of tokens: more than that is a unit mistake, and memory the process cannot count on.
const MAX_VERIFIED_CACHE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// `d` the way an operator writes it: the largest unit that divides it (`400d`, `10m`, `100ms`).
fn human(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms >= size && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    if ms == 0 { "0s".into() } else { format!("{ms}ms") }
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

    /// `value` as a humantime duration within `bounds`. A problem is recorded and the nearest
    /// bound stands in, so that checks relating two settings do not report it a second time.
    fn duration(&mut self, name: &str, value: &str, bounds: &Bounds) -> Duration {
        let parsed = match humantime::parse_duration(value) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.0.push(format!(
                    "{name}: {value:?} is not a duration such as 90s, 15m or 7d ({e})"
                ));
                return bounds.min;
            }
        };
        if parsed < bounds.min {
            self.0.push(format!("{name}: must be at least {}", human(bounds.min)));
            bounds.min
        } else if parsed > bounds.max {
            self.0.push(format!(
                "{name}: must be at most {} ({})",
                human(bounds.max),
                bounds.why
            ));
            bounds.max
        } else {
            parsed
        }
    }

    /// As [`Problems::duration`], for the domain's `time::Duration`.
    fn time_duration(&mut self, name: &str, value: &str, bounds: &Bounds) -> time::Duration {
        // Cannot fail: every bound is far below time::Duration::MAX.
        time::Duration::try_from(self.duration(name, value, bounds)).unwrap_or(time::Duration::MAX)
    }
}

impl DatabaseConfig {
    /// # Errors
    /// Every problem found, one message each.
    pub fn from_args(args: &DatabaseArgs, data_dir: &Path) -> Result<Self, Vec<String>> {
        let mut problems = Problems::default();
        let config = Self::collect(args, data_dir, &mut problems);
        if problems.0.is_empty() {
            config.ok_or_else(Vec::new)
        } else {
            Err(problems.0)
        }
    }

    fn collect(args: &DatabaseArgs, data_dir: &Path, problems: &mut Problems) -> Option<Self> {
        problems.check(args.db_max_connections >= 1, || {
            "db-max-connections: must be at least 1".into()
        });
        let timeout = problems.duration("db-timeout", &args.db_timeout, &DB_TIMEOUT);
        let sqlite = |path: PathBuf| Self::Sqlite {
            path,
            settings: SqliteSettings {
                readers: args.db_max_connections,
                timeout,
            },
        };
        // An empty DATABASE_URL (`DATABASE_URL= ratchet serve`) is no URL.
        let Some(url) = args.database_url.as_ref().filter(|url| !url.expose().is_empty()) else {
            return Some(sqlite(data_dir.join(DATABASE_FILE)));
        };
        if let Some(rest) = url.expose().strip_prefix("sqlite:") {
            // `sqlite://PATH` or `sqlite:PATH`, as sqlx writes them; a file, never in memory
            // (nothing would survive a restart) and without options (the store sets its own).
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let usable = !path.is_empty() && !path.contains('?') && !path.contains(":memory:");
            problems.check(usable, || {
                "database-url: a sqlite: URL names a database file (sqlite:PATH), without options".into()
            });
            return usable.then(|| sqlite(PathBuf::from(path)));
        }
        // The URL may hold a password: never echo it.
        match PgConnectOptions::from_str(url.expose()) {
            Ok(options) => Some(Self::Postgres {
                url: url.clone(),
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
        let database = DatabaseConfig::collect(&args.database, &args.keys.data_dir, &mut problems);
        let access_ttl = problems.time_duration("access-ttl", &args.access_ttl, &ACCESS_TTL);
        let refresh_ttl = problems.time_duration("refresh-ttl", &args.refresh_ttl, &SESSION_TTL);
        let family_ttl = problems.time_duration("family-ttl", &args.family_ttl, &SESSION_TTL);
        let reuse_grace = problems.time_duration("reuse-grace", &args.reuse_grace, &REUSE_GRACE);
        let leeway = problems.time_duration("leeway", &args.leeway, &LEEWAY);
        let family_cache_ttl = problems.duration("family-cache-ttl", &args.family_cache_ttl, &FAMILY_CACHE_TTL);
        problems.check(reuse_grace < refresh_ttl, || {
            "reuse-grace: must be shorter than refresh-ttl".into()
        });
        problems.check((1..=10_000).contains(&args.max_sessions), || {
            "max-sessions: must be 1 to 10000".into()
        });
        let keys_reload_interval = problems.duration(
            "keys-reload-interval",
            &args.keys_reload_interval,
            &KEYS_RELOAD_INTERVAL,
        );
        let jwks_max_age = problems.duration("jwks-max-age", &args.jwks_max_age, &JWKS_MAX_AGE);
        let http_limits = HttpLimits::collect(&args.limits, &mut problems);
        let http = match args.http_listen.as_str() {
            "off" => None,
            listen => match listen.parse() {
                Ok(listen) => Some(HttpConfig {
                    listen,
                    jwks_max_age,
                    jwks_uri: args.jwks_uri.clone(),
                    limits: http_limits,
                }),
                Err(_) => {
                    problems.0.push(format!(
                        "http-listen: {listen:?} is neither an address (host:port) nor `off`"
                    ));
                    None
                }
            },
        };
        if let Some(uri) = &args.jwks_uri {
            problems.check(uri.starts_with("https://") || uri.starts_with("http://"), || {
                "jwks-uri: must be an http:// or https:// URL".into()
            });
        }
        let transport = TransportConfig::collect(&args.transport, args.listen, &mut problems);
        let cleanup = CleanupSettings::collect(&args.cleanup, &mut problems);
        let limits = TransportLimits::collect(&args.limits, &mut problems);
        let access = AccessSettings::collect(&args.access, &mut problems);
        let cleanup_interval = problems.duration("gc-interval", &args.gc_interval, &GC_INTERVAL);
        let verified_cache_bytes = match usize::try_from(args.verified_cache_bytes) {
            Ok(bytes) if args.verified_cache_bytes <= MAX_VERIFIED_CACHE_BYTES => bytes,
            _ => {
                problems.0.push(format!(
                    "verified-cache-bytes: must be at most {MAX_VERIFIED_CACHE_BYTES} (4 GiB)"
                ));
                0
            }
        };
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
                keys: KeySource::from_args(&args.keys),
                keys_reload_interval,
                http,
                migrate: !args.no_migrate,
                family_cache_ttl,
                verified_cache_bytes,
                seal_key: args.seal_key,
                cleanup,
                limits,
                cleanup_interval,
                access,
                transport,
            }),
            _ => Err(problems.0),
        }
    }
}

impl TransportConfig {
    /// Checks the flags and reads the TLS files once: a file that cannot be loaded at start is a
    /// configuration problem like any other.
    fn collect(args: &crate::cli::TransportArgs, listen: SocketAddr, problems: &mut Problems) -> Self {
        let tls_reload_interval =
            problems.duration("tls-reload-interval", &args.tls_reload_interval, &TLS_RELOAD_INTERVAL);
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: args.tls_client_ca.clone(),
            }),
            (None, None) => {
                problems.check(args.tls_client_ca.is_none(), || {
                    "tls-client-ca: needs --tls-cert and --tls-key (mutual TLS is TLS first)".into()
                });
                None
            }
            _ => {
                problems.0.push("tls-cert, tls-key: give both or neither".into());
                None
            }
        };
        if let Some(files) = &tls
            && let Err(error) = Reloadable::load(files.clone())
        {
            problems.0.push(format!("tls: {error}"));
        }
        if args.trust_xfcc
            && let Some(problem) =
                crate::transport::xfcc_problem(listen, args.tls_cert.is_some() || args.tls_key.is_some())
        {
            problems.0.push(problem);
        }
        Self {
            tls,
            tls_reload_interval,
            trust_xfcc: args.trust_xfcc,
            probe: None,
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
        assert_eq!(config.verified_cache_bytes, 32 * 1024 * 1024);
        assert!(config.migrate);
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
            Config::from_args(serve_args(&[])).unwrap().transport.tls.is_none(),
            "plaintext by default"
        );
    }

    #[test]
    fn trust_xfcc_is_only_for_a_plaintext_loopback_listener() {
        let config = Config::from_args(serve_args(&["--trust-xfcc", "--listen", "[::1]:50051"])).unwrap();
        assert!(config.transport.trust_xfcc);
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
        assert_eq!(bytes("0").unwrap().verified_cache_bytes, 0, "zero disables the cache");
        if usize::BITS >= 64 {
            let four_gib = usize::try_from(MAX_VERIFIED_CACHE_BYTES).unwrap();
            assert_eq!(bytes("4294967296").unwrap().verified_cache_bytes, four_gib);
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
        assert_eq!(config.limits, TransportLimits::default());
        assert_eq!(config.limits.idle_timeout, Duration::from_secs(5 * 60));
        assert_eq!(config.http.unwrap().limits, HttpLimits::default());
        let off = Config::from_args(serve_args(&["--idle-timeout", "0s"])).unwrap();
        assert_eq!(off.limits.idle_timeout, Duration::ZERO, "0s turns the idle timeout off");
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
        let DatabaseConfig::Sqlite { path, settings } = database(&["--data-dir", "/srv/ratchet"]) else {
            panic!("no URL is SQLite")
        };
        assert_eq!(path, Path::new("/srv/ratchet/ratchet.db"));
        assert_eq!(settings.timeout, Duration::from_secs(5));
        let empty = serve_args(&["--database-url", "", "--data-dir", "/srv/ratchet"]);
        assert!(matches!(
            Config::from_args(empty).unwrap().database,
            DatabaseConfig::Sqlite { .. }
        ));
        for (url, file) in [("sqlite:///var/lib/r.db", "/var/lib/r.db"), ("sqlite:r.db", "r.db")] {
            match Config::from_args(serve_args(&["--database-url", url]))
                .unwrap()
                .database
            {
                DatabaseConfig::Sqlite { path, .. } => assert_eq!(path, Path::new(file)),
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
            let DatabaseConfig::Postgres { url: configured, .. } = &config.database else {
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
