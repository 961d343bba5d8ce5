//! The limits every setting is checked against, each with its reason: the one table to read (and
//! to change) when a bound is questioned. The checks themselves are in [`super::problems`]; the
//! groups in the sibling modules only name the bound a flag falls under.

use std::time::Duration;

/// The range a duration setting must fall in. Every duration has a ceiling: past it a value is a
/// typo or a unit mix-up (`8000y`), and an absurd lifetime would also push expiry timestamps
/// towards overflow.
pub(super) struct Bounds {
    pub(super) min: Duration,
    pub(super) max: Duration,
    /// Why the ceiling is where it is, told to whoever exceeds it.
    pub(super) why: &'static str,
}

/// The range a count setting (connections, rows, bytes) must fall in; see
/// [`super::problems::Problems::count`] for how it is told.
pub(super) struct Count {
    pub(super) min: u64,
    /// `u64::MAX`: no ceiling beyond the flag's own type.
    pub(super) max: u64,
    /// Shown after the ceiling, for numbers easier read another way (`4 GiB`); empty if none.
    pub(super) shown: &'static str,
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

// ---- Tokens and sessions ----

/// An access token cannot be recalled from a verifier that does not introspect, so it must expire
/// soon; a day is already generous.
pub(super) const ACCESS_TTL: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: DAY,
    why: "access tokens are meant to be short-lived",
};
/// About 13 months: "remember me for a year" plus slack. Sessions meant to last longer should
/// sign in again.
pub(super) const SESSION_TTL: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(400 * 24 * 60 * 60),
    why: "about 13 months, a year of \"remember me\" plus slack",
};
/// A client retrying a lost answer does so within seconds; a long window only gives a thief time.
pub(super) const REUSE_GRACE: Bounds = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(10 * 60),
    why: "it is a retry window, not a lifetime",
};
/// Skew beyond minutes is a broken clock to fix, not one to tolerate.
pub(super) const LEEWAY: Bounds = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(5 * 60),
    why: "clocks further apart need fixing, not tolerating",
};
/// Live sessions per subject and client_id.
pub(super) const MAX_SESSIONS: Count = Count {
    min: 1,
    max: 10_000,
    shown: "",
};
/// `iss` and the default `aud`, in bytes: the longest name the API accepts
/// ([`crate::issuer::types::MAX_NAME_BYTES`]).
pub(super) const NAME_BYTES: Count = Count {
    min: 1,
    max: crate::issuer::types::MAX_NAME_BYTES as u64,
    shown: "",
};

// ---- The database ----

/// It bounds how long a revocation made through another replica goes unseen by Introspect here
/// while the revocation listener is down.
pub(super) const FAMILY_CACHE_TTL: Bounds = Bounds {
    min: Duration::ZERO,
    max: HOUR,
    why: "it is how long another replica's revocation may go unseen while the listener is down",
};
/// Below 100 ms a healthy but busy database times out; above a minute a caller is better told
/// UNAVAILABLE and left to retry than kept hanging (RPCs are cut at 15 s anyway; migrations at
/// start use it too, hence the margin).
pub(super) const DB_TIMEOUT: Bounds = Bounds {
    min: Duration::from_millis(100),
    max: MINUTE,
    why: "past it a caller is better told UNAVAILABLE than kept waiting",
};
/// Zero is one try. Ten minutes covers a database starting (or failing over) alongside ratchet;
/// a longer outage is for the orchestrator to see as a failed start, not for ratchet to hide.
pub(super) const DB_WAIT: Bounds = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(10 * 60),
    why: "a database down longer is an outage the orchestrator should see as a failed start",
};
/// A pool needs a connection; the ceiling is the database's own `max_connections`.
pub(super) const DB_MAX_CONNECTIONS: Count = Count {
    min: 1,
    max: u64::MAX,
    shown: "",
};

// ---- Keys ----

/// Below a second re-reading the key files is busywork; above an hour a key change waits too
/// long for a server that missed its SIGHUP.
pub(super) const KEYS_RELOAD_INTERVAL: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: HOUR,
    why: "a key change would wait that long on a server that missed its SIGHUP",
};
/// Verifiers may keep the JWKS this long: a day at most, or key rotations take days.
pub(super) const JWKS_MAX_AGE: Bounds = Bounds {
    min: Duration::ZERO,
    max: DAY,
    why: "every key rotation has to wait this long before activating",
};
/// Ceiling of `--verified-cache-bytes`. Entries are a few hundred bytes, so 4 GiB holds millions
/// of tokens: more than that is a unit mistake, and memory the process cannot count on.
pub(super) const VERIFIED_CACHE_BYTES: Count = Count {
    min: 0,
    max: 4 * 1024 * 1024 * 1024,
    shown: "4 GiB",
};

// ---- Transport ----

/// Mesh certificates rotate hourly and are renewed well before they expire: a minute is plenty,
/// a second is the floor of sensible polling, an hour would let a certificate expire unseen.
pub(super) const TLS_RELOAD_INTERVAL: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: HOUR,
    why: "short-lived certificates would expire before a server that missed its SIGHUP saw the new one",
};
/// A PING more than an hour apart finds a dead peer too late to matter.
pub(super) const KEEPALIVE_INTERVAL: Bounds = Bounds {
    min: Duration::ZERO,
    max: HOUR,
    why: "a dead peer would hold its connection that long",
};
/// Under a second a busy but healthy peer is cut; over five minutes a dead one is kept.
pub(super) const KEEPALIVE_TIMEOUT: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(5 * 60),
    why: "a dead peer would hold its connection that long",
};
pub(super) const CONNECTION_AGE: Bounds = Bounds {
    min: Duration::ZERO,
    max: DAY,
    why: "longer is the same as never",
};
/// Zero keeps idle connections; past a day is the same as never.
pub(super) const IDLE_TIMEOUT: Bounds = Bounds {
    min: Duration::ZERO,
    max: DAY,
    why: "longer is the same as never",
};
/// A real client sends its request head in one go; under a second a slow network is cut, over
/// five minutes a slowloris client holds its connection that long.
pub(super) const HTTP_HEADER_READ_TIMEOUT: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(5 * 60),
    why: "a client dribbling its headers would hold a connection that long",
};
/// A client sends its first request as soon as it has connected (or finished its TLS handshake,
/// bounded apart); like the HTTP header read timeout, longer lets a silent client hold a
/// connection, and its place under `--max-connections`, that long.
pub(super) const FIRST_REQUEST_TIMEOUT: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: Duration::from_secs(5 * 60),
    why: "a connection that sends nothing would hold its place under the connection cap that long",
};
/// Verifiers fetch the JWKS every few minutes: keeping an idle connection longer saves nothing.
pub(super) const HTTP_IDLE_TIMEOUT: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: HOUR,
    why: "idle connections would hold their place under the connection cap that long",
};
/// Calls in flight over all connections.
pub(super) const MAX_CONCURRENT_REQUESTS: Count = Count {
    min: 1,
    max: 100_000,
    shown: "",
};
/// HTTP/2 streams on one connection.
pub(super) const MAX_STREAMS_PER_CONNECTION: Count = Count {
    min: 1,
    max: 10_000,
    shown: "",
};
/// A request's header block (its metadata), in bytes.
pub(super) const MAX_HEADER_BYTES: Count = Count {
    min: 1024,
    max: 1024 * 1024,
    shown: "",
};
/// gRPC connections served at once.
pub(super) const MAX_CONNECTIONS: Count = Count {
    min: 1,
    max: 1_000_000,
    shown: "",
};
/// Health `Watch` streams open at once.
pub(super) const MAX_HEALTH_WATCHES: Count = Count {
    min: 1,
    max: 100_000,
    shown: "",
};
/// HTTP (JWKS) connections served at once.
pub(super) const HTTP_MAX_CONNECTIONS: Count = Count {
    min: 1,
    max: 100_000,
    shown: "",
};

// ---- Lifecycle ----

/// Zero cuts calls in flight at once (for development). No call runs longer than the request
/// timeout (the store's timeout four times over plus 5 s: at most about 4 minutes), so a grace
/// past 5 minutes waits for nothing; and it must stay under the orchestrator's own limit.
pub(super) const SHUTDOWN_GRACE: Bounds = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(5 * 60),
    why: "no call runs longer than the request timeout, at most about 4 minutes",
};

// ---- Access ----

/// Below a second re-reading the policy is busywork; above an hour a change waits too long.
pub(super) const POLICY_RELOAD_INTERVAL: Bounds = Bounds {
    min: Duration::from_secs(1),
    max: HOUR,
    why: "a policy change would wait that long on a server that missed its SIGHUP",
};
/// `--rotate-per-second` and `--rotate-burst`.
pub(super) const ROTATE_RATE: Count = Count {
    min: 1,
    max: 1_000_000,
    shown: "",
};

// ---- Cleanup ----

/// Ended families are kept at most as long as the longest family lives.
pub(super) const GC_RETENTION: Bounds = Bounds {
    min: Duration::ZERO,
    max: Duration::from_secs(400 * 24 * 60 * 60),
    why: "as long as the longest family lifetime",
};
/// Cleanup more than a day apart lets storage grow for no gain; zero turns it off.
pub(super) const GC_INTERVAL: Bounds = Bounds {
    min: Duration::ZERO,
    max: DAY,
    why: "storage would grow for a day between passes",
};
/// Audit events are evidence: kept at least a day (an incident is often noticed the next morning),
/// and at most ten years, past which a value is a typo; compliance rules ask for one to seven.
pub(super) const AUDIT_RETENTION: Bounds = Bounds {
    min: DAY,
    max: Duration::from_secs(10 * 366 * 24 * 60 * 60),
    why: "ten years is past any retention rule; a longer one is a typo",
};
/// Events `ratchet events` prints at once: more is a dump, better done with SQL (and it would be
/// held in memory at once).
pub(super) const EVENTS_LIMIT: Count = Count {
    min: 1,
    max: 10_000,
    shown: "",
};
/// Rows deleted per statement.
pub(super) const GC_BATCH: Count = Count {
    min: 1,
    max: 100_000,
    shown: "",
};
