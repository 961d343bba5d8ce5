//! Command line: `ratchet serve`, `migrate`, `gc`, `events` and `keys`. Every flag has an environment fallback
//! and a default; [`crate::config`] validates them.
//!
//! Durations are kept as the text given and parsed (humantime: `90s`, `15m`, `7d`) by
//! [`crate::config`], so that a malformed or absurd one is a configuration problem reported with
//! the others (exit 64), not a clap error (exit 2).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::database_url::DatabaseUrl;
use crate::telemetry::LogFormat;

/// Where state is kept on disk unless configured otherwise: the SQLite database (without a
/// `DATABASE_URL`) and the key directory.
pub const DEFAULT_DATA_DIR: &str = "ratchet-data";

#[derive(Debug, Parser)]
#[command(
    name = "ratchet",
    version,
    about = "gRPC token issuer: JWT access tokens and rotating one-time refresh tokens"
)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        env = "RATCHET_LOG_FORMAT",
        default_value = "text",
        value_parser = PossibleValuesParser::new(["text", "json"]).try_map(|name| name.parse::<LogFormat>()),
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server (applies pending migrations first unless --no-migrate).
    Serve(Box<ServeArgs>),
    /// Apply pending database migrations, then exit.
    Migrate(MigrateArgs),
    /// Run one cleanup pass (what `serve` does every --gc-interval), print what it removed, exit.
    Gc(GcArgs),
    /// Print audit events (issued, rotated, reuse_detected, revoked, evicted) as JSON lines,
    /// newest first. Reads while a server runs, on SQLite too.
    Events(EventsArgs),
    /// Manage signing keys: generate, list, activate, retire. Running servers pick changes up on
    /// SIGHUP and within --keys-reload-interval.
    Keys(KeysArgs),
}

/// Where the signing keys are.
#[derive(Debug, Clone, Args)]
pub struct KeySourceArgs {
    /// Directory of signing keys and their states (default: `keys` in the data directory). Give
    /// every replica the same one (a shared volume, or one Kubernetes secret mounted into each).
    #[arg(long, env = "RATCHET_KEYS_DIR")]
    pub keys_dir: Option<PathBuf>,
    /// A single PEM private key to sign with, from before key directories: used while the key
    /// directory does not exist, and imported as its active key by the first `ratchet keys`
    /// command.
    #[arg(long, env = "RATCHET_SIGNING_KEY")]
    pub signing_key: Option<PathBuf>,
    /// Directory for state kept on disk: the SQLite database `ratchet.db` (when no
    /// DATABASE_URL is set), the key directory by default, and the key earlier versions
    /// generated, `signing-key.pem`.
    #[arg(long, env = "RATCHET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub source: KeySourceArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Add a new key. It is published (in the JWKS, accepted) but does not sign until activated;
    /// the first key of an empty directory is activated at once.
    Generate {
        /// EdDSA (Ed25519), ES256 (P-256) or RS256 (RSA 2048).
        #[arg(long, default_value = "EdDSA")]
        alg: String,
    },
    /// Print every key: kid, algorithm, state, creation time.
    List,
    /// Make KID the signing key; the one before stays published. Wait until verifiers have the
    /// key (the JWKS max-age plus the reload interval after `generate`) before activating it.
    Activate {
        // A kid is base64url: one in 64 starts with `-`, which must not be taken for a flag.
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
    /// Remove KID: tokens it signed stop verifying. Only after the longest access-token lifetime
    /// has passed since it stopped signing.
    Retire {
        #[arg(allow_hyphen_values = true)]
        kid: String,
    },
}

/// How ended families are cleaned up.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// How long a family is kept after it ended (expired or was revoked), so that its tokens are
    /// still answered with the right reason (TOKEN_REUSED, TOKEN_REVOKED, TOKEN_EXPIRED).
    #[arg(long, env = "RATCHET_GC_RETENTION", default_value = "1d")]
    pub gc_retention: String,
    /// Rows deleted per statement.
    #[arg(long, env = "RATCHET_GC_BATCH", default_value_t = 1000)]
    pub gc_batch: u32,
    /// How long audit events are kept; older ones are deleted by the cleanup. 1d to 10y.
    #[arg(long, env = "RATCHET_AUDIT_RETENTION", default_value = "90d")]
    pub audit_retention: String,
}

/// `ratchet events`: which audit events to print.
#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Where the SQLite database is when no DATABASE_URL is set (as for `serve`).
    #[arg(long, env = "RATCHET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Only events of this family (session) id.
    #[arg(long)]
    pub family: Option<String>,
    /// Only events of this subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// Only events of this kind: issued, rotated, reuse_detected, revoked, evicted.
    #[arg(long)]
    pub kind: Option<String>,
    /// Only events at or after this time: an RFC 3339 time (`2026-12-07T00:00:00Z`) or a
    /// duration ago (`24h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// At most this many events (the newest). 1 to 10000.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub cleanup: CleanupArgs,
    /// Where the SQLite database is when no DATABASE_URL is set (as for `serve`).
    #[arg(long, env = "RATCHET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Where the SQLite database is when no DATABASE_URL is set (as for `serve`).
    #[arg(long, env = "RATCHET_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (`postgres://...`): for replicas and production. `serve` (unless
    /// --no-migrate) and `migrate` create the database if it does not exist. Unset (or empty):
    /// an embedded SQLite database, `ratchet.db` in the data directory, for one process
    /// (development, small single-node installs); `sqlite:PATH` names another SQLite file.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,
    /// Most pooled database connections (on SQLite: reading connections; it writes through one).
    #[arg(long, env = "RATCHET_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Bound on any one database operation, waiting for a connection included; past it the
    /// caller gets UNAVAILABLE instead of a hang. 100ms to 60s.
    #[arg(long, env = "RATCHET_DB_TIMEOUT", default_value = "5s")]
    pub db_timeout: String,
    /// PostgreSQL only: at start, how long to keep trying a database that cannot be reached yet
    /// (it may be starting alongside ratchet), logging each failed try, before giving up with
    /// exit status 69. `0s`: one try. At most 10m. Does not apply to SQLite: a file opens or not.
    #[arg(long, env = "RATCHET_DB_WAIT", default_value = "30s")]
    pub db_wait: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Address to serve gRPC on.
    #[arg(long, env = "RATCHET_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// `iss` of every access token; use the URL your verifiers know this issuer by.
    #[arg(long, env = "RATCHET_ISSUER", default_value = "ratchet")]
    pub issuer: String,
    /// `aud` of access tokens whose Issue request names no audience.
    #[arg(long, env = "RATCHET_AUDIENCE", default_value = "ratchet")]
    pub audience: String,
    /// Lifetime of an access token; at most 1d.
    #[arg(long, env = "RATCHET_ACCESS_TTL", default_value = "15m")]
    pub access_ttl: String,
    /// Idle lifetime of a refresh token: a session unused for this long ends. At most 400d.
    #[arg(long, env = "RATCHET_REFRESH_TTL", default_value = "7d")]
    pub refresh_ttl: String,
    /// Absolute lifetime of a family (login session), however often it rotates. At most 400d.
    #[arg(long, env = "RATCHET_FAMILY_TTL", default_value = "30d")]
    pub family_ttl: String,
    /// How long after a rotation presenting the spent refresh token again is taken as a client
    /// retry (answered with the same new refresh token) instead of theft. `0s` is strict; at
    /// most 10m.
    #[arg(long, env = "RATCHET_REUSE_GRACE", default_value = "0s")]
    pub reuse_grace: String,
    /// Clock skew tolerated for `nbf` and `iat` in the future; `exp` is always exact. At most 5m.
    #[arg(long, env = "RATCHET_LEEWAY", default_value = "5s")]
    pub leeway: String,
    #[command(flatten)]
    pub keys: KeySourceArgs,
    /// How often the key directory is read again for changes (SIGHUP reads it at once). 1s to 1h.
    #[arg(long, env = "RATCHET_KEYS_RELOAD_INTERVAL", default_value = "1m")]
    pub keys_reload_interval: String,
    /// Address of the HTTP listener serving the JWKS (`/.well-known/jwks.json`) and discovery
    /// metadata (`/.well-known/openid-configuration`); `off` for none.
    #[arg(long, env = "RATCHET_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: String,
    /// Where Prometheus metrics are served (`GET /metrics`): unset, on the HTTP listener; an
    /// address (host:port), on a plain-HTTP listener of their own and not on the HTTP listener
    /// (which may face the internet while metrics should not); `off` for none.
    #[arg(long, env = "RATCHET_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// `Cache-Control: max-age` of the JWKS: how long verifiers may keep it. A new key must be
    /// published at least this long (plus the reload interval) before it is activated. 0s to 1d.
    #[arg(long, env = "RATCHET_JWKS_MAX_AGE", default_value = "5m")]
    pub jwks_max_age: String,
    /// The `jwks_uri` the discovery metadata announces (default: `<issuer>/.well-known/jwks.json`
    /// when the issuer is an http(s) URL; otherwise no discovery document is served). Never taken
    /// from the request.
    #[arg(long, env = "RATCHET_JWKS_URI")]
    pub jwks_uri: Option<String>,
    /// How long Introspect may answer "live" for a family from memory while revocations made
    /// elsewhere are not known to reach this server. Revocations reach every replica's cache
    /// through PostgreSQL LISTEN/NOTIFY within milliseconds; while that listener is connected a
    /// cached "live" needs no re-reading (up to 10m). When it is down, this bounds how long another
    /// replica's revocation can go unseen here; on reconnect the cache is dropped. 5s: short,
    /// since it only matters during outages and costs no database reads otherwise. `0s` asks the
    /// database every time (and runs no listener); at most 1h.
    #[arg(long, env = "RATCHET_FAMILY_CACHE_TTL", default_value = "5s")]
    pub family_cache_ttl: String,
    /// File holding the server secret that keys refresh-token seals (reuse grace window) and
    /// ListSessions page tokens; created (mode 0600) if missing. Without it, the secret is
    /// derived from the signing key. Every replica must use the same one.
    #[arg(long, env = "RATCHET_SEAL_KEY")]
    pub seal_key: Option<PathBuf>,
    /// Most live sessions (families) per subject and client_id; Issue beyond it revokes the
    /// oldest.
    #[arg(long, env = "RATCHET_MAX_SESSIONS", default_value_t = 100)]
    pub max_sessions: u32,
    /// How often the background cleanup runs; `0s` turns it off (run `ratchet gc` instead).
    #[arg(long, env = "RATCHET_GC_INTERVAL", default_value = "1m")]
    pub gc_interval: String,
    #[command(flatten)]
    pub cleanup: CleanupArgs,
    #[command(flatten)]
    pub limits: TransportLimitArgs,
    /// Memory budget of the verified access-token cache, in bytes; `0` disables the cache. At
    /// most 4 GiB.
    #[arg(long, env = "RATCHET_VERIFIED_CACHE_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub verified_cache_bytes: u64,
    /// Record every rotation in the audit trail (`rotated` events), beside the events always
    /// recorded (issued, reuse_detected, revoked, evicted). Off by default: one more row per
    /// Rotate, measured at 30-70 µs more PostgreSQL CPU per Rotate (BENCHMARKS.md).
    #[arg(long, env = "RATCHET_AUDIT_ROTATIONS")]
    pub audit_rotations: bool,
    /// Do not apply pending migrations at start.
    #[arg(long, env = "RATCHET_NO_MIGRATE")]
    pub no_migrate: bool,
    /// On SIGTERM or SIGINT, health turns NOT_SERVING and new calls are refused (UNAVAILABLE) at
    /// once; calls in flight get this long to finish, then the rest are cut (a write among them
    /// answered DEADLINE_EXCEEDED, outcome unknown) and the process exits. `0s` cuts at once; at
    /// most 5m. Keep the orchestrator's own limit (Kubernetes' terminationGracePeriodSeconds)
    /// above it.
    #[arg(long, env = "RATCHET_SHUTDOWN_GRACE", default_value = "10s")]
    pub shutdown_grace: String,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
}

impl ServeArgs {
    /// `ratchet serve` with no flags, whatever the environment holds: the defaults alone, which
    /// tests start from (see [`crate::config::Settings::defaults`]).
    ///
    /// # Errors
    /// Only if the defaults stopped parsing.
    pub fn defaults() -> Result<Self, clap::Error> {
        // Without their environment fallbacks, so that a `RATCHET_*` variable in the shell that
        // runs the tests changes nothing.
        let command = Cli::command()
            .mut_args(|arg| arg.env(None::<&'static str>))
            .mut_subcommand("serve", |serve| serve.mut_args(|arg| arg.env(None::<&'static str>)));
        let matches = command.try_get_matches_from(["ratchet", "serve"])?;
        match matches.subcommand() {
            Some(("serve", serve)) => Self::from_arg_matches(serve),
            _ => Err(clap::Error::new(clap::error::ErrorKind::MissingSubcommand)),
        }
    }
}

/// Who may call what, and the abuse limits (issue 11).
#[derive(Debug, Clone, Args)]
pub struct AccessArgs {
    /// The caller policy (TOML): which callers (mTLS identity or API key hash) may call which
    /// RPCs and mint what. Re-read on SIGHUP and when it changes. Without it the server is open
    /// to anyone who can reach it.
    #[arg(long, env = "RATCHET_POLICY")]
    pub policy: Option<PathBuf>,
    /// Refuse to start without a policy file.
    #[arg(long, env = "RATCHET_REQUIRE_AUTH")]
    pub require_auth: bool,
    /// How often the policy file is checked for changes (SIGHUP reads it at once). 1s to 1h.
    #[arg(long, env = "RATCHET_POLICY_RELOAD_INTERVAL", default_value = "10s")]
    pub policy_reload_interval: String,
    /// Serve gRPC server reflection (`--reflection false` to turn it off).
    #[arg(long, env = "RATCHET_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,
    /// Rotations allowed at once per family and per presented token before RESOURCE_EXHAUSTED.
    /// Keep it above 64 (the concurrency a legitimate client's retries can reach).
    #[arg(long, env = "RATCHET_ROTATE_BURST", default_value_t = 100)]
    pub rotate_burst: u32,
    /// Sustained rotations a second per family and per presented token.
    #[arg(long, env = "RATCHET_ROTATE_PER_SECOND", default_value_t = 1)]
    pub rotate_per_second: u32,
}

/// TLS, mutual TLS and caller identity (see README, "Transport security").
#[derive(Debug, Clone, Args)]
pub struct TransportArgs {
    /// PEM certificate chain (server certificate first): serve TLS on the gRPC and HTTP
    /// listeners. Needs --tls-key.
    #[arg(long, env = "RATCHET_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; must be readable by its owner only (0600 or 0400).
    #[arg(long, env = "RATCHET_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: gRPC clients must present a certificate they issued (mutual TLS);
    /// its SPIFFE ID (else first DNS name) is the caller's identity. Needs --tls-cert.
    #[arg(long, env = "RATCHET_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are read again for changes (SIGHUP reads them at once). 1s to 1h.
    #[arg(long, env = "RATCHET_TLS_RELOAD_INTERVAL", default_value = "1m")]
    pub tls_reload_interval: String,
    /// Take the caller's identity from the sidecar's `x-forwarded-client-cert` header (its URI=
    /// SPIFFE ID). Only with a plaintext gRPC listener bound to loopback.
    #[arg(long, env = "RATCHET_TRUST_XFCC")]
    pub trust_xfcc: bool,
}

/// Bounds on what callers can make the gRPC transport hold.
#[derive(Debug, Clone, Args)]
pub struct TransportLimitArgs {
    /// Most calls in flight over all connections; one more is answered RESOURCE_EXHAUSTED at once
    /// (health checks are never refused). 1 to 100000.
    #[arg(long, env = "RATCHET_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: u32,
    /// Most concurrent HTTP/2 streams (calls) on one connection; the client waits for a free one.
    /// 1 to 10000.
    #[arg(long, env = "RATCHET_MAX_STREAMS_PER_CONNECTION", default_value_t = 256)]
    pub max_streams_per_connection: u32,
    /// Largest request header block (metadata), in bytes. 1 KiB to 1 MiB.
    #[arg(long, env = "RATCHET_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: u32,
    /// How often an HTTP/2 PING checks an open connection's peer; `0s` never. At most 1h.
    #[arg(long, env = "RATCHET_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s")]
    pub http2_keepalive_interval: String,
    /// How long a PING may go unanswered before the connection is closed. 1s to 5m.
    #[arg(long, env = "RATCHET_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s")]
    pub http2_keepalive_timeout: String,
    /// Connections older than this are asked to reconnect (GOAWAY, calls in flight finish), so
    /// that load spreads over new replicas; `0s` never. At most 1d.
    #[arg(long, env = "RATCHET_MAX_CONNECTION_AGE", default_value = "0s")]
    pub max_connection_age: String,
    /// A connection with no call in flight for this long is closed (GOAWAY; the client opens a
    /// new one for its next call). Keepalive PINGs do not count; a long call is never cut. `0s`
    /// never; at most 1d.
    #[arg(long, env = "RATCHET_IDLE_TIMEOUT", default_value = "5m")]
    pub idle_timeout: String,
    /// HTTP (JWKS) listener: a client must send a complete request head within this, from
    /// connecting or from its previous answer, or is disconnected (slowloris). 1s to 5m.
    #[arg(long, env = "RATCHET_HTTP_HEADER_READ_TIMEOUT", default_value = "10s")]
    pub http_header_read_timeout: String,
    /// HTTP (JWKS) listener: a connection with no request in flight for this long is closed.
    /// 1s to 1h.
    #[arg(long, env = "RATCHET_HTTP_IDLE_TIMEOUT", default_value = "1m")]
    pub http_idle_timeout: String,
    /// HTTP (JWKS) listener: connections served at once; further ones wait to be accepted (in
    /// the kernel's backlog). 1 to 100000.
    #[arg(long, env = "RATCHET_HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub http_max_connections: u32,
    /// gRPC connections served at once; further ones wait to be accepted (in the kernel's
    /// backlog). 1 to 1000000.
    #[arg(long, env = "RATCHET_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: u32,
    /// A new gRPC connection that has not sent its first request's headers within this (after
    /// its TLS handshake) gets a GOAWAY, and is cut a second later. 1s to 5m.
    #[arg(long, env = "RATCHET_FIRST_REQUEST_TIMEOUT", default_value = "10s")]
    pub first_request_timeout: String,
    /// Health `Watch` streams open at once (they need no credentials); one more is refused
    /// RESOURCE_EXHAUSTED. 1 to 100000.
    #[arg(long, env = "RATCHET_MAX_HEALTH_WATCHES", default_value_t = 1000)]
    pub max_health_watches: u32,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn a_kid_that_starts_with_a_hyphen_is_a_kid_not_a_flag() {
        for command in ["activate", "retire"] {
            let cli = Cli::try_parse_from(["ratchet", "keys", command, "-Xo3kq_abc"]).unwrap();
            let Command::Keys(args) = cli.command else {
                panic!("not a keys command")
            };
            let kid = match args.command {
                KeysCommand::Activate { kid } | KeysCommand::Retire { kid } => kid,
                other => panic!("{other:?}"),
            };
            assert_eq!(kid, "-Xo3kq_abc");
        }
    }
}
