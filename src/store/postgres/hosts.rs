//! Which PostgreSQL server a connection goes to, when `DATABASE_URL` names several (issue 19).
//!
//! libpq's syntax: `postgres://user:pw@h1:5432,h2:5433/ratchet?target_session_attrs=read-write`.
//! A connection tries the hosts in order and keeps the first that is reachable *and* accepts
//! what ratchet does:
//! - `read-write` (ratchet's default, one host or many: every RPC but Introspect of a cached
//!   family writes): the session is not read-only (`transaction_read_only` is off);
//! - `primary`: the server is not in recovery (a standby);
//! - `any`: the first that answers.
//!
//! So after a failover, a new connection finds the new primary by itself. A connection that was
//! opened to the primary and finds it read-only later (the old primary came back as a standby)
//! is refused by PostgreSQL with SQLSTATE 25006 before anything is written; the store then drops
//! it and every idle one, and runs the statement again on a new connection (`run`).
//!
//! sqlx takes one host per URL: each host becomes a URL of its own (same user, password,
//! database and options) parsed by sqlx, so every option keeps sqlx's meaning. Not supported:
//! `host=` lists in the query string, and the other libpq values (`read-only`, `standby`,
//! `prefer-standby`: ratchet writes), which are refused at start.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

const TARGET_SESSION_ATTRS: &str = "target_session_attrs";
/// The least time a connection attempt gives one host (when the total allows it).
const MIN_PER_HOST: Duration = Duration::from_secs(1);

/// What a server must accept for a connection to it to be kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionAttrs {
    Any,
    ReadWrite,
    Primary,
}

/// The servers a URL names, in its order, and what a connection needs of them.
#[derive(Clone)]
pub struct PgHosts {
    /// One per host; never empty.
    candidates: Vec<PgConnectOptions>,
    attrs: SessionAttrs,
}

/// Why a URL is not one ratchet can connect with. Never holds the URL (it may hold a password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostsError {
    #[error("unparseable")]
    Unparseable,
    #[error("target_session_attrs must be read-write, primary or any, not '{0}' (ratchet writes)")]
    SessionAttrs(String),
    #[error("a host in the list is empty")]
    EmptyHost,
}

/// No host was fit to keep: each was unreachable, or reachable and refused by
/// [`SessionAttrs`]. Reported as an I/O error ("not connected"), which is how every caller
/// already treats a database it cannot reach: wait, retry, report UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
#[error("no database host accepts writes: {0}")]
pub struct NoFitHost(String);

impl From<PgConnectOptions> for PgHosts {
    fn from(options: PgConnectOptions) -> Self {
        Self::one(options)
    }
}

impl PgHosts {
    /// One server, whose sessions must accept writes.
    pub fn one(options: PgConnectOptions) -> Self {
        Self {
            candidates: vec![options],
            attrs: SessionAttrs::ReadWrite,
        }
    }

    /// The hosts of `url`, in libpq's multi-host syntax or with one host.
    ///
    /// # Errors
    /// Not a URL sqlx parses once split into one per host, or an unsupported
    /// `target_session_attrs`.
    pub fn parse(url: &str) -> Result<Self, HostsError> {
        let (urls, attrs) = split(url)?;
        let candidates = urls
            .iter()
            .map(|url| PgConnectOptions::from_str(url).map_err(|_| HostsError::Unparseable))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { candidates, attrs })
    }

    /// The same hosts with `adjust` applied to each one's options.
    #[must_use]
    pub fn map(&self, adjust: impl Fn(PgConnectOptions) -> PgConnectOptions) -> Self {
        Self {
            candidates: self.candidates.iter().cloned().map(adjust).collect(),
            attrs: self.attrs,
        }
    }

    /// The first host's options: the database name and user, which every host shares.
    pub fn first(&self) -> &PgConnectOptions {
        &self.candidates[0]
    }

    /// How long a connection attempt may spend on each host so that, all together, they fit
    /// in `total`: a host that drops packets must not use up the time of the hosts after it.
    pub fn per_host(&self, total: Duration) -> Duration {
        let hosts = u32::try_from(self.candidates.len()).unwrap_or(u32::MAX);
        (total / hosts).max(MIN_PER_HOST.min(total))
    }

    pub fn attrs(&self) -> SessionAttrs {
        self.attrs
    }

    /// A connection to the first host, in order, that answers within `per_host` and accepts
    /// what [`SessionAttrs`] asks.
    ///
    /// # Errors
    /// With one host, its own error; with several, the first refusal of a server that answered
    /// (a missing database, a wrong password), else [`NoFitHost`] (as `sqlx::Error::Io`) saying
    /// what each host did.
    pub async fn connect(&self, per_host: Duration) -> Result<PgConnection, sqlx::Error> {
        self.connect_to(per_host).await.map(|(connection, _)| connection)
    }

    /// As [`connect`](Self::connect), then closes the connection: the options of the host to
    /// connect to (for a connection sqlx opens by itself: the revocation listener's). With one
    /// host, its options, without connecting.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn locate(&self, per_host: Duration) -> Result<PgConnectOptions, sqlx::Error> {
        // One host: no choice to make, and no connection to open and close for it (each costs
        // the server a process, and this one ~0.7 MiB of resident memory that stays allocated).
        if let [only] = self.candidates.as_slice() {
            return Ok(only.clone());
        }
        let (connection, index) = self.connect_to(per_host).await?;
        let _ = connection.close().await;
        Ok(self.candidates[index].clone())
    }

    async fn connect_to(&self, per_host: Duration) -> Result<(PgConnection, usize), sqlx::Error> {
        let mut failures = Vec::new();
        // The first refusal by a server that answered (a database that does not exist, a wrong
        // password): what the caller gets if no host does, as with one host.
        let mut answered = None;
        for (index, options) in self.candidates.iter().enumerate() {
            let outcome = tokio::time::timeout(per_host, PgConnection::connect_with(options)).await;
            let mut connection = match outcome {
                Ok(Ok(connection)) => connection,
                // One host: its own error, as before there were lists.
                Ok(Err(error)) if self.candidates.len() == 1 => return Err(error),
                Ok(Err(error)) => {
                    failures.push(format!("{}: {error}", describe(options)));
                    if answered.is_none() && matches!(error, sqlx::Error::Database(_)) {
                        answered = Some(error);
                    }
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{}: no answer within {per_host:?}", describe(options)));
                    continue;
                }
            };
            match refusal(&mut connection, self.attrs).await {
                Ok(None) => return Ok((connection, index)),
                Ok(Some(refused)) => failures.push(format!("{}: {refused}", describe(options))),
                Err(error) => failures.push(format!("{}: {error}", describe(options))),
            }
            let _ = connection.close().await;
        }
        if let Some(error) = answered {
            return Err(error);
        }
        Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            NoFitHost(failures.join("; ")),
        )))
    }
}

/// Why a session does not do for `attrs`, if it does not.
async fn refusal(connection: &mut PgConnection, attrs: SessionAttrs) -> Result<Option<&'static str>, sqlx::Error> {
    if attrs == SessionAttrs::Any {
        return Ok(None);
    }
    let (read_only, in_recovery): (String, bool) =
        sqlx::query_as("select current_setting('transaction_read_only'), pg_is_in_recovery()")
            .fetch_one(&mut *connection)
            .await?;
    Ok(match attrs {
        SessionAttrs::ReadWrite if read_only != "off" => Some("read-only"),
        SessionAttrs::Primary if in_recovery => Some("a standby"),
        _ => None,
    })
}

/// `host:port` of `options`, for messages (never the user or password).
fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

/// `url` as one URL per host, without `target_session_attrs`, and what that parameter asked.
fn split(url: &str) -> Result<(Vec<String>, SessionAttrs), HostsError> {
    let (scheme, rest) = url.split_once("://").ok_or(HostsError::Unparseable)?;
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    // The user information ends at the last `@`: a password may hold one, percent-encoded or not.
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let (path, query) = match tail.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (tail, None),
    };
    let mut attrs = SessionAttrs::ReadWrite;
    let mut kept = Vec::new();
    for pair in query.into_iter().flat_map(|q| q.split('&')).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((TARGET_SESSION_ATTRS, value)) => {
                attrs = match value {
                    "read-write" => SessionAttrs::ReadWrite,
                    "primary" => SessionAttrs::Primary,
                    "any" => SessionAttrs::Any,
                    other => return Err(HostsError::SessionAttrs(other.chars().take(32).collect())),
                };
            }
            _ => kept.push(pair),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    // A host list with no host at all (`postgres:///db`, a Unix socket) is one host, as written.
    let hosts: Vec<&str> = if hosts.is_empty() {
        vec![""]
    } else {
        hosts.split(',').collect()
    };
    if hosts.len() > 1 && hosts.iter().any(|h| h.is_empty()) {
        return Err(HostsError::EmptyHost);
    }
    let urls = hosts
        .into_iter()
        .map(|host| format!("{scheme}://{userinfo}{host}{path}{query}"))
        .collect();
    Ok((urls, attrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_is_one_url_as_written_and_read_write_by_default() {
        let (urls, attrs) = split("postgres://u:p@db:5433/ratchet?sslmode=require").unwrap();
        assert_eq!(urls, ["postgres://u:p@db:5433/ratchet?sslmode=require"]);
        assert_eq!(attrs, SessionAttrs::ReadWrite);
    }

    #[test]
    fn several_hosts_are_one_url_each_with_the_same_user_database_and_options() {
        let (urls, attrs) =
            split("postgres://u:p%40ss@h1:5432,h2,[::1]:5434/ratchet?sslmode=disable&target_session_attrs=primary")
                .unwrap();
        assert_eq!(
            urls,
            [
                "postgres://u:p%40ss@h1:5432/ratchet?sslmode=disable",
                "postgres://u:p%40ss@h2/ratchet?sslmode=disable",
                "postgres://u:p%40ss@[::1]:5434/ratchet?sslmode=disable",
            ]
        );
        assert_eq!(attrs, SessionAttrs::Primary);
        let hosts = PgHosts::parse("postgres://u@h1:5432,h2:5433/r?target_session_attrs=any").unwrap();
        assert_eq!(hosts.candidates.len(), 2);
        assert_eq!(hosts.per_host(Duration::from_secs(5)), Duration::from_millis(2500));
        assert_eq!(hosts.per_host(Duration::from_millis(500)), Duration::from_millis(500));
        assert_eq!(hosts.attrs(), SessionAttrs::Any);
        assert_eq!(describe(&hosts.candidates[1]), "h2:5433");
        assert_eq!(hosts.first().get_database(), Some("r"));
    }

    #[test]
    fn a_socket_url_without_a_host_is_kept_as_it_is() {
        let (urls, _) = split("postgres:///ratchet?host=/var/run/postgresql").unwrap();
        assert_eq!(urls, ["postgres:///ratchet?host=/var/run/postgresql"]);
    }

    #[test]
    fn what_ratchet_cannot_use_is_refused() {
        for value in ["read-only", "standby", "prefer-standby", "READ-WRITE"] {
            let url = format!("postgres://h1,h2/r?target_session_attrs={value}");
            assert!(matches!(split(&url), Err(HostsError::SessionAttrs(_))), "{value}");
        }
        assert_eq!(split("postgres://h1,,h2/r").unwrap_err(), HostsError::EmptyHost);
        assert_eq!(split("not a url").unwrap_err(), HostsError::Unparseable);
        assert!(PgHosts::parse("postgres://h1:notaport,h2/r").is_err());
    }
}
