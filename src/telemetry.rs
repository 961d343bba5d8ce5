//! Logging. `RUST_LOG` filters (default `info`); `--log-format json` for log shippers.
//! Security events (reuse detected, families revoked) use the target `security`; refusals, which
//! anyone can cause at will, go through [`throttle`] first.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

pub mod throttle;

/// Installs the global subscriber; a second call is a no-op (tests start many servers).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
