//! Logging. `RUST_LOG` filters (default `info`); `--log-format json` for log shippers.
//! Security events (reuse detected, families revoked) use the target `security`; refusals, which
//! anyone can cause at will, go through [`throttle`] first. Every line a call writes carries the
//! call's [`context`]: its RPC, its [`request_id::RequestId`], its caller and family once known.
//! The Prometheus metrics' names, and the functions that record them, are [`metrics`].

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

use self::context::CallFormat;

pub mod context;
pub mod metrics;
pub mod request_id;
pub mod throttle;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The names `--log-format` takes.
impl FromStr for LogFormat {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is neither text nor json")),
        }
    }
}

/// Installs the global subscriber; a second call is a no-op (tests start many servers).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    // Never colours (tracing-subscriber is built without them): a log file, journald or a
    // container's log must not fill with escape codes, and painting cost every line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.event_format(CallFormat::text()).try_init(),
        LogFormat::Json => builder.json().event_format(CallFormat::json()).try_init(),
    };
}
