//! The listeners: the gRPC address and what callers may make its transport hold, the JWKS/discovery
//! HTTP listener and its limits, TLS, mutual TLS and XFCC.

use std::net::SocketAddr;
use std::time::Duration;

use super::bounds::{
    CONNECTION_AGE, FIRST_REQUEST_TIMEOUT, HTTP_HEADER_READ_TIMEOUT, HTTP_IDLE_TIMEOUT, HTTP_MAX_CONNECTIONS,
    IDLE_TIMEOUT, JWKS_MAX_AGE, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, MAX_CONCURRENT_REQUESTS, MAX_CONNECTIONS,
    MAX_HEADER_BYTES, MAX_HEALTH_WATCHES, MAX_STREAMS_PER_CONNECTION, TLS_RELOAD_INTERVAL,
};
use super::problems::Problems;
use crate::cli::{ServeArgs, TransportArgs, TransportLimitArgs};
use crate::transport::serve::HttpLimits;
use crate::transport::{Reloadable, TlsFiles, TransportConfig};

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
    pub(super) fn collect(args: &TransportLimitArgs, problems: &mut Problems) -> Self {
        Self {
            max_concurrent_requests: problems.count(
                "max-concurrent-requests",
                args.max_concurrent_requests,
                &MAX_CONCURRENT_REQUESTS,
            ),
            max_streams_per_connection: problems.count(
                "max-streams-per-connection",
                args.max_streams_per_connection,
                &MAX_STREAMS_PER_CONNECTION,
            ),
            max_header_bytes: problems.count("max-header-bytes", args.max_header_bytes, &MAX_HEADER_BYTES),
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
            max_connections: problems.count("max-connections", args.max_connections, &MAX_CONNECTIONS),
            first_request_timeout: problems.duration(
                "first-request-timeout",
                &args.first_request_timeout,
                &FIRST_REQUEST_TIMEOUT,
            ),
            max_health_watches: problems.count("max-health-watches", args.max_health_watches, &MAX_HEALTH_WATCHES),
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

impl HttpConfig {
    /// `None` when `--http-listen off`.
    pub(super) fn collect(args: &ServeArgs, problems: &mut Problems) -> Option<Self> {
        let jwks_max_age = problems.duration("jwks-max-age", &args.jwks_max_age, &JWKS_MAX_AGE);
        let limits = http_limits(&args.limits, problems);
        if let Some(uri) = &args.jwks_uri {
            problems.check(uri.starts_with("https://") || uri.starts_with("http://"), || {
                "jwks-uri: must be an http:// or https:// URL".into()
            });
        }
        match args.http_listen.as_str() {
            "off" => None,
            listen => match listen.parse() {
                Ok(listen) => Some(Self {
                    listen,
                    jwks_max_age,
                    jwks_uri: args.jwks_uri.clone(),
                    limits,
                }),
                Err(_) => {
                    problems.push(format!(
                        "http-listen: {listen:?} is neither an address (host:port) nor `off`"
                    ));
                    None
                }
            },
        }
    }
}

/// Where `/metrics` is served (`--metrics-listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsConfig {
    /// On the HTTP listener, if there is one; with `--http-listen off`, nowhere.
    OnHttp,
    /// On a plain-HTTP listener of its own (and not on the HTTP listener), within the HTTP
    /// listener's limits.
    Listen {
        addr: SocketAddr,
        limits: HttpLimits,
    },
    Off,
}

impl MetricsConfig {
    pub(super) fn collect(args: &ServeArgs, problems: &mut Problems) -> Self {
        match args.metrics_listen.as_deref() {
            None => Self::OnHttp,
            Some("off") => Self::Off,
            Some(listen) => match listen.parse() {
                Ok(addr) => {
                    problems.check(addr != args.listen, || {
                        "metrics-listen: must differ from --listen (the gRPC listener)".into()
                    });
                    problems.check(args.http_listen.parse::<SocketAddr>() != Ok(addr), || {
                        "metrics-listen: must differ from --http-listen (leave it unset to serve metrics there)".into()
                    });
                    Self::Listen {
                        addr,
                        limits: http_limits(&args.limits, problems),
                    }
                }
                Err(_) => {
                    problems.push(format!(
                        "metrics-listen: {listen:?} is neither an address (host:port) nor `off`"
                    ));
                    Self::Off
                }
            },
        }
    }
}

fn http_limits(args: &TransportLimitArgs, problems: &mut Problems) -> HttpLimits {
    HttpLimits {
        header_read_timeout: problems.duration(
            "http-header-read-timeout",
            &args.http_header_read_timeout,
            &HTTP_HEADER_READ_TIMEOUT,
        ),
        idle_timeout: problems.duration("http-idle-timeout", &args.http_idle_timeout, &HTTP_IDLE_TIMEOUT),
        max_connections: problems.count("http-max-connections", args.http_max_connections, &HTTP_MAX_CONNECTIONS),
    }
}

/// Checks the flags and reads the TLS files once: a file that cannot be loaded at start is a
/// configuration problem like any other.
pub(super) fn tls(args: &TransportArgs, listen: SocketAddr, problems: &mut Problems) -> TransportConfig {
    let tls_reload_interval = problems.duration("tls-reload-interval", &args.tls_reload_interval, &TLS_RELOAD_INTERVAL);
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
            problems.push("tls-cert, tls-key: give both or neither".into());
            None
        }
    };
    if let Some(files) = &tls
        && let Err(error) = Reloadable::load(files.clone())
    {
        problems.push(format!("tls: {error}"));
    }
    if args.trust_xfcc
        && let Some(problem) = crate::transport::xfcc_problem(listen, args.tls_cert.is_some() || args.tls_key.is_some())
    {
        problems.push(problem);
    }
    TransportConfig {
        tls,
        tls_reload_interval,
        trust_xfcc: args.trust_xfcc,
        probe: None,
    }
}
