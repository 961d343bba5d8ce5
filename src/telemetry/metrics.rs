//! The metrics served at `/metrics` (Prometheus text format): every name and label value is
//! written once, here, beside the small function each layer calls where its event happens.
//!
//! How: the `metrics` facade and `metrics-exporter-prometheus`'s recorder, installed once per
//! process by [`install`] when the server serves `/metrics` (a process runs one server; the tests
//! that start several in one process share the recorder). The facade's model is a process-wide
//! recorder, so this is the one global of the crate; the samplers of a server's own state (its
//! pool, its caches) are still passed to it, in its [`Exporter`].
//!
//! Cost, on the hot paths (Introspect of a hot token, Check, Rotate): every counter and
//! histogram those touch is resolved once, at install, into fixed tables (RPC × gRPC code, one
//! entry per label value); recording is an atomic add (a histogram sample: an atomic push),
//! with no label set hashed or allocated per call. Before `install`, and for good when metrics
//! are off, each function here is one atomic load. Gauges of a state (pool connections, cache
//! bytes) are sampled when scraped ([`Exporter::render`]), never updated per call. Measured in
//! BENCHMARKS.md ("What metrics cost").
//!
//! What it leaves out: any label value taken from a request. Label values are the fixed lists
//! below, or a caller's name from the policy file ("" when the caller is unknown): never a
//! token, hash, key, subject or family id, and their number stays bounded whatever callers send.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The metric names, as Prometheus sees them (the contract the alerts and dashboards in
/// `deploy/` are written against: change one there too).
pub mod name {
    pub const BUILD_INFO: &str = "ratchet_build_info";
    pub const GRPC_REQUESTS: &str = "ratchet_grpc_requests_total";
    pub const GRPC_REQUEST_DURATION: &str = "ratchet_grpc_request_duration_seconds";
    pub const ROTATIONS: &str = "ratchet_rotations_total";
    pub const REUSE_DETECTIONS: &str = "ratchet_reuse_detections_total";
    pub const REVOCATIONS: &str = "ratchet_revocations_total";
    pub const AUTHZ_DECISIONS: &str = "ratchet_authz_decisions_total";
    pub const ACCESS_REFUSALS: &str = "ratchet_access_refusals_total";
    pub const REQUESTS_SHED: &str = "ratchet_requests_shed_total";
    pub const OUTCOME_RESOLUTIONS: &str = "ratchet_store_outcome_resolutions_total";
    pub const SERIALIZATION_RETRIES: &str = "ratchet_store_serialization_retries_total";
    pub const POOL_CONNECTIONS: &str = "ratchet_store_pool_connections";
    pub const POOL_WAITING: &str = "ratchet_store_pool_waiting";
    pub const POOL_MAX_CONNECTIONS: &str = "ratchet_store_pool_max_connections";
    pub const CACHE_HITS: &str = "ratchet_cache_hits_total";
    pub const CACHE_MISSES: &str = "ratchet_cache_misses_total";
    pub const CACHE_BYTES: &str = "ratchet_cache_bytes";
    pub const CLEANUP_REMOVED: &str = "ratchet_cleanup_removed_total";
    pub const RELOADS: &str = "ratchet_reloads_total";
    pub const REVOCATION_LISTENER_CONNECTED: &str = "ratchet_revocation_listener_connected";
}

/// Upper bounds of the latency histogram's buckets, in seconds: 100 µs (a cached Introspect)
/// to 10 s (a write waiting out a slow database).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A label's values: an enum whose variants are the only values the label ever takes.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),*
        }

        impl $name {
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),*
                }
            }
        }
    };
}

label_values! {
    /// `rpc`: the methods counted (health and reflection are not).
    Rpc {
        Issue = "Issue",
        Rotate = "Rotate",
        Revoke = "Revoke",
        Introspect = "Introspect",
        ListSessions = "ListSessions",
        GetJwks = "GetJwks",
        Check = "Check",
    }
}

impl Rpc {
    /// The RPC a gRPC path calls, if it is one of ours: `/ratchet.v1.TokenService/Issue` is
    /// `Issue`, `/envoy.service.auth.v3.Authorization/Check` is `Check`; anything else (health,
    /// reflection, a method that does not exist) is `None`, so that no label value comes from
    /// what a client sends.
    pub fn from_path(path: &str) -> Option<Self> {
        if let Some(method) = path.strip_prefix("/ratchet.v1.TokenService/") {
            return match method {
                "Issue" => Some(Self::Issue),
                "Rotate" => Some(Self::Rotate),
                "Revoke" => Some(Self::Revoke),
                "Introspect" => Some(Self::Introspect),
                "ListSessions" => Some(Self::ListSessions),
                "GetJwks" => Some(Self::GetJwks),
                _ => None,
            };
        }
        (path == "/envoy.service.auth.v3.Authorization/Check").then_some(Self::Check)
    }
}

/// `code`: gRPC's status codes by number (the index), named as in the gRPC spec.
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];
/// `OK`.
pub const CODE_OK: u8 = 0;
/// `CANCELLED`: the call ended before its status was sent (the client went away).
pub const CODE_CANCELLED: u8 = 1;
/// `UNKNOWN`: a status this server cannot name (never sent by ratchet itself).
pub const CODE_UNKNOWN: u8 = 2;

label_values! {
    /// `target` of `ratchet_revocations_total`: why families were revoked.
    Revoked {
        /// Revoke by family id.
        Family = "family",
        /// Revoke by a token of the family.
        Token = "token",
        /// Revoke of every family of a subject.
        Subject = "subject",
        /// A spent refresh token presented again.
        Reuse = "reuse",
        /// Issue beyond the sessions cap revoked the oldest.
        Eviction = "eviction",
    }
}

label_values! {
    /// `decision` of `ratchet_authz_decisions_total`: Check's answers to Envoy.
    Decision {
        Allow = "allow",
        /// 401: no credentials, or a token that is not valid.
        Unauthenticated = "unauthenticated",
        /// 403: a valid token without what the route requires.
        Denied = "denied",
    }
}

label_values! {
    /// `reason` of `ratchet_access_refusals_total`.
    Refusal {
        /// The caller policy: the RPC, an audience, scope, claim, subject or client id.
        Policy = "policy",
        /// The caller's own rate limit.
        RateLimit = "rate_limit",
        /// Rotate's per-family limit.
        RotateLimit = "rotate_limit",
        /// Credentials that name no caller of the policy (the caller label is then "").
        UnknownCaller = "unknown_caller",
    }
}

label_values! {
    /// `reason` of `ratchet_requests_shed_total`.
    Shed {
        /// `--max-concurrent-requests` calls were in flight.
        Concurrency = "concurrency",
        /// The request memory budget was spent.
        Memory = "memory",
    }
}

label_values! {
    /// `result` of `ratchet_store_outcome_resolutions_total`: how a write whose answer was lost
    /// ended.
    Resolution {
        /// Running it again found it done, or did it.
        Applied = "applied",
        /// Running it again was refused outright: it did not happen.
        NotApplied = "not_applied",
        /// The database stayed silent: the caller heard DEADLINE_EXCEEDED.
        Unknown = "unknown",
    }
}

label_values! {
    /// `cache` of the cache metrics.
    Cache {
        /// Family liveness (Introspect, Check).
        Family = "family",
        /// Verified access tokens (Introspect, Check).
        Verified = "verified",
    }
}

label_values! {
    /// `kind` of `ratchet_cleanup_removed_total`: rows the cleanup removed.
    Removed {
        Families = "families",
        Tokens = "tokens",
        Seals = "seals",
        Events = "events",
    }
}

label_values! {
    /// `what` of `ratchet_reloads_total`.
    Reload {
        Keys = "keys",
        Policy = "policy",
        Tls = "tls",
    }
}

/// Every handle the hot paths use, resolved once ([`install`]).
struct Handles {
    /// Per [`Rpc`], per code.
    requests: Vec<[Counter; CODES.len()]>,
    /// Per [`Rpc`].
    durations: Vec<Histogram>,
    rotations: Counter,
    reuse_detections: Counter,
    revocations: Vec<Counter>,
    decisions: Vec<Counter>,
    shed: Vec<Counter>,
    resolutions: Vec<Counter>,
    serialization_retries: Counter,
    cache_hits: Vec<Counter>,
    cache_misses: Vec<Counter>,
    removed: Vec<Counter>,
    /// Per [`Reload`]: ok, failed.
    reloads: Vec<[Counter; 2]>,
}

static RECORDER: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
static HANDLES: OnceLock<Handles> = OnceLock::new();

fn per<T: Copy, H>(all: &[T], handle: impl Fn(T) -> H) -> Vec<H> {
    all.iter().map(|value| handle(*value)).collect()
}

impl Handles {
    fn register() -> Self {
        use metrics::counter;
        use name::*;
        Self {
            requests: per(Rpc::ALL, |rpc| {
                CODES.map(|code| counter!(GRPC_REQUESTS, "rpc" => rpc.as_str(), "code" => code))
            }),
            durations: per(
                Rpc::ALL,
                |rpc| metrics::histogram!(GRPC_REQUEST_DURATION, "rpc" => rpc.as_str()),
            ),
            rotations: counter!(ROTATIONS),
            reuse_detections: counter!(REUSE_DETECTIONS),
            revocations: per(
                Revoked::ALL,
                |target| counter!(REVOCATIONS, "target" => target.as_str()),
            ),
            decisions: per(
                Decision::ALL,
                |decision| counter!(AUTHZ_DECISIONS, "decision" => decision.as_str()),
            ),
            shed: per(Shed::ALL, |reason| counter!(REQUESTS_SHED, "reason" => reason.as_str())),
            resolutions: per(
                Resolution::ALL,
                |result| counter!(OUTCOME_RESOLUTIONS, "result" => result.as_str()),
            ),
            serialization_retries: counter!(SERIALIZATION_RETRIES),
            cache_hits: per(Cache::ALL, |cache| counter!(CACHE_HITS, "cache" => cache.as_str())),
            cache_misses: per(Cache::ALL, |cache| counter!(CACHE_MISSES, "cache" => cache.as_str())),
            removed: per(Removed::ALL, |kind| counter!(CLEANUP_REMOVED, "kind" => kind.as_str())),
            reloads: per(Reload::ALL, |what| {
                ["ok", "failed"].map(|result| counter!(RELOADS, "what" => what.as_str(), "result" => result))
            }),
        }
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    use name::*;
    describe_gauge!(BUILD_INFO, "The running ratchet's version (always 1)");
    describe_counter!(GRPC_REQUESTS, "gRPC calls answered, by RPC and gRPC status code");
    describe_histogram!(
        GRPC_REQUEST_DURATION,
        Unit::Seconds,
        "Time from a call's arrival to its status being sent, by RPC"
    );
    describe_counter!(ROTATIONS, "Refresh tokens spent for a new pair (successful Rotates)");
    describe_counter!(
        REUSE_DETECTIONS,
        "Spent refresh tokens presented again (possible theft)"
    );
    describe_counter!(REVOCATIONS, "Families revoked, by what revoked them");
    describe_counter!(AUTHZ_DECISIONS, "Envoy ext_authz Check decisions: allow, 401, 403");
    describe_counter!(
        ACCESS_REFUSALS,
        "Calls refused by the caller policy or a rate limit, by caller"
    );
    describe_counter!(
        REQUESTS_SHED,
        "Calls refused at once for load: too many in flight, or memory"
    );
    describe_counter!(
        OUTCOME_RESOLUTIONS,
        "Writes whose answer was lost, by how their outcome was resolved"
    );
    describe_counter!(
        SERIALIZATION_RETRIES,
        "PostgreSQL serialization failures and deadlocks retried"
    );
    describe_gauge!(POOL_CONNECTIONS, "Database connections open, in use or idle");
    describe_gauge!(POOL_WAITING, "Operations waiting for a database connection");
    describe_gauge!(POOL_MAX_CONNECTIONS, "Most database connections the pool opens");
    describe_counter!(CACHE_HITS, "Lookups answered from memory, by cache");
    describe_counter!(
        CACHE_MISSES,
        "Lookups that had to do the work (database read, signature check)"
    );
    describe_gauge!(
        CACHE_BYTES,
        Unit::Bytes,
        "Memory a cache holds (its entries, estimated)"
    );
    describe_counter!(CLEANUP_REMOVED, "Rows the cleanup removed, by kind");
    describe_counter!(RELOADS, "Readings of the keys, caller policy and TLS files, by result");
    describe_gauge!(
        REVOCATION_LISTENER_CONNECTED,
        "1 while other replicas' revocations reach this one's cache at once (PostgreSQL LISTEN)"
    );
}

/// The recorder could not be installed: another one was installed in this process first.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the metrics recorder: {0}")]
pub struct InstallError(String);

/// Installs the process's recorder (the first call; later ones return it again) and resolves
/// every handle, so that from now on the functions below record.
///
/// # Errors
/// Another `metrics` recorder was installed in this process.
pub fn install() -> Result<Exporter, InstallError> {
    let installed = RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(name::GRPC_REQUEST_DURATION.to_owned()), &DURATION_BUCKETS)
            .map_err(|error| error.to_string())?;
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).map_err(|error| error.to_string())?;
        describe();
        metrics::gauge!(name::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        Ok(handle)
    });
    let handle = installed.clone().map_err(InstallError)?;
    let process = metrics_process::Collector::default();
    process.describe();
    HANDLES.get_or_init(Handles::register);
    Ok(Exporter {
        handle,
        process,
        samplers: Vec::new(),
    })
}

type Sampler = Box<dyn Fn() + Send + Sync>;

/// Renders the scrape: the recorded metrics, with the process's and the server's gauges read
/// first.
pub struct Exporter {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    samplers: Vec<Sampler>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("samplers", &self.samplers.len())
            .finish()
    }
}

impl Exporter {
    /// Also runs `sample` before each scrape: where a server sets the gauges of its own state.
    #[must_use]
    pub fn with_sampler(mut self, sample: impl Fn() + Send + Sync + 'static) -> Self {
        self.samplers.push(Box::new(sample));
        self
    }

    /// The scrape, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        self.process.collect();
        for sample in &self.samplers {
            sample();
        }
        self.handle.render()
    }

    /// Folds the latency samples recorded since the last scrape into the histograms, which
    /// otherwise keep every sample until scraped: run every few seconds ([`UPKEEP_INTERVAL`]).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// How often [`Exporter::run_upkeep`] runs: samples kept in between are 16 bytes each, so at
/// 50,000 calls a second this holds about 4 MB at most.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

fn handles() -> Option<&'static Handles> {
    HANDLES.get()
}

/// A call of `rpc` ended with gRPC status `code` (its number; an unknown number counts as
/// UNKNOWN) after `elapsed`.
pub fn call(rpc: Rpc, code: u8, elapsed: Duration) {
    if let Some(handles) = handles() {
        let code = if usize::from(code) < CODES.len() {
            code
        } else {
            CODE_UNKNOWN
        };
        handles.requests[rpc as usize][usize::from(code)].increment(1);
        handles.durations[rpc as usize].record(elapsed.as_secs_f64());
    }
}

/// Is recording on (has [`install`] run)? For callers that would otherwise prepare a label.
pub fn enabled() -> bool {
    handles().is_some()
}

/// A refresh token was spent for a new pair.
pub fn rotated() {
    if let Some(handles) = handles() {
        handles.rotations.increment(1);
    }
}

/// A spent refresh token was presented again.
pub fn reuse_detected() {
    if let Some(handles) = handles() {
        handles.reuse_detections.increment(1);
    }
}

/// `families` families were revoked, for `target`.
pub fn revoked(target: Revoked, families: u64) {
    if let Some(handles) = handles()
        && families > 0
    {
        handles.revocations[target as usize].increment(families);
    }
}

/// Check answered Envoy with `decision`.
pub fn decided(decision: Decision) {
    if let Some(handles) = handles() {
        handles.decisions[decision as usize].increment(1);
    }
}

/// A call was refused for `reason`; `caller` is the policy's name for the caller, "" when
/// unknown. Not a hot path: the label set is looked up per refusal.
pub fn refused(reason: Refusal, caller: &str) {
    if enabled() {
        metrics::counter!(name::ACCESS_REFUSALS, "reason" => reason.as_str(), "caller" => caller.to_owned())
            .increment(1);
    }
}

/// A call was shed for `reason`.
pub fn shed(reason: Shed) {
    if let Some(handles) = handles() {
        handles.shed[reason as usize].increment(1);
    }
}

/// A write whose answer was lost ended with `result`.
pub fn resolved(result: Resolution) {
    if let Some(handles) = handles() {
        handles.resolutions[result as usize].increment(1);
    }
}

/// A statement is run again after a serialization failure or deadlock.
pub fn serialization_retry() {
    if let Some(handles) = handles() {
        handles.serialization_retries.increment(1);
    }
}

/// A lookup in `cache` was answered from it.
pub fn cache_hit(cache: Cache) {
    if let Some(handles) = handles() {
        handles.cache_hits[cache as usize].increment(1);
    }
}

/// A lookup in `cache` had to do the work.
pub fn cache_miss(cache: Cache) {
    if let Some(handles) = handles() {
        handles.cache_misses[cache as usize].increment(1);
    }
}

/// The cleanup removed `rows` rows of `kind`.
pub fn cleaned(kind: Removed, rows: u64) {
    if let Some(handles) = handles()
        && rows > 0
    {
        handles.removed[kind as usize].increment(rows);
    }
}

/// A reading of `what` succeeded (changed or not) or failed.
pub fn reloaded(what: Reload, ok: bool) {
    if let Some(handles) = handles() {
        handles.reloads[what as usize][usize::from(!ok)].increment(1);
    }
}

/// Whether the revocation listener is subscribed. Only a server that runs one (PostgreSQL, with
/// a family cache) sets it; elsewhere the gauge is absent.
pub fn revocation_listener_connected(connected: bool) {
    if enabled() {
        metrics::gauge!(name::REVOCATION_LISTENER_CONNECTED).set(if connected { 1.0 } else { 0.0 });
    }
}

/// The connection pool as a scrape found it; `waiting` where the pool tells it (PostgreSQL's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolGauges {
    pub in_use: usize,
    pub idle: usize,
    pub waiting: Option<usize>,
    pub max: usize,
}

/// Sets the pool gauges (at a scrape).
#[expect(clippy::cast_precision_loss, reason = "connection counts are small")]
pub fn pool(gauges: PoolGauges) {
    if !enabled() {
        return;
    }
    metrics::gauge!(name::POOL_CONNECTIONS, "state" => "in_use").set(gauges.in_use as f64);
    metrics::gauge!(name::POOL_CONNECTIONS, "state" => "idle").set(gauges.idle as f64);
    if let Some(waiting) = gauges.waiting {
        metrics::gauge!(name::POOL_WAITING).set(waiting as f64);
    }
    metrics::gauge!(name::POOL_MAX_CONNECTIONS).set(gauges.max as f64);
}

/// Sets what `cache` holds (at a scrape).
#[expect(clippy::cast_precision_loss, reason = "exact below 2^53 bytes")]
pub fn cache_bytes(cache: Cache, bytes: u64) {
    if enabled() {
        metrics::gauge!(name::CACHE_BYTES, "cache" => cache.as_str()).set(bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_rpcs_have_a_label_and_each_path_names_its_own() {
        assert_eq!(Rpc::from_path("/ratchet.v1.TokenService/Rotate"), Some(Rpc::Rotate));
        assert_eq!(
            Rpc::from_path("/envoy.service.auth.v3.Authorization/Check"),
            Some(Rpc::Check)
        );
        for path in [
            "/grpc.health.v1.Health/Check",
            "/ratchet.v1.TokenService/Nope",
            "/ratchet.v1.TokenService/",
            "",
        ] {
            assert_eq!(Rpc::from_path(path), None, "{path}");
        }
        for rpc in Rpc::ALL {
            let service = if *rpc == Rpc::Check {
                "envoy.service.auth.v3.Authorization"
            } else {
                "ratchet.v1.TokenService"
            };
            assert_eq!(Rpc::from_path(&format!("/{service}/{}", rpc.as_str())), Some(*rpc));
        }
    }
}
