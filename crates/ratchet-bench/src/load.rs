//! The workers: K concurrent clients, each looping over its scenario's operations and checking
//! the answers as it goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::authz::{AuthzClient, Encoded};
use crate::h2::{Client, Clients};
use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use hdrhistogram::Histogram;
use ratchet::grpc::pb::{IntrospectRequest, IssueRequest, RotateRequest};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    Issue,
    Rotate,
    Introspect,
    /// Every client introspects the same single token: a sidecar checking one caller's token on
    /// every request.
    IntrospectHot,
    /// Envoy's ext_authz Check of the same single token, as a sidecar sends it (the headers of a
    /// typical request): what a mesh costs per request, against `introspect-hot`.
    Check,
    Mixed,
    /// A new connection (TCP, TLS with `--tls-ca`, HTTP/2) per operation, carrying one health
    /// Check: what a handshake costs (src/connect.rs).
    Connect,
}

/// Percentages of the mixed scenario; issue gets the rest.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub introspect: u32,
    pub rotate: u32,
}

/// What every worker shares.
pub struct Plan {
    pub scenario: Scenario,
    pub mix: Mix,
    pub measure_from: Instant,
    pub until: Instant,
    /// Stop after this many measured operations in all (0: no limit).
    pub count: u64,
    pub done: AtomicU64,
    /// Replay every n-th spent refresh token and expect TOKEN_REUSED (0: never).
    pub replay_every: u64,
    /// Valid access tokens for introspection.
    pub access_tokens: Vec<String>,
}

/// One worker's results.
pub struct Tally {
    pub latency_us: Histogram<u64>,
    pub ops: u64,
    pub errors: BTreeMap<String, u64>,
    pub checks_passed: u64,
    pub check_failures: Vec<String>,
    /// TLS handshakes of the `connect` scenario, by kind.
    pub full_handshakes: u64,
    pub resumed_handshakes: u64,
}

/// Latencies in µs, 1 µs .. 60 s at 3 significant digits.
#[allow(clippy::expect_used)] // constant, valid bounds
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

impl Tally {
    pub fn new() -> Self {
        Self {
            latency_us: latency_histogram(),
            ops: 0,
            errors: BTreeMap::new(),
            checks_passed: 0,
            check_failures: Vec::new(),
            full_handshakes: 0,
            resumed_handshakes: 0,
        }
    }

    /// A successful operation that took `took`.
    pub fn record_ok(&mut self, took: Duration) {
        self.ops += 1;
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self.latency_us.record(micros.min(60_000_000));
    }

    pub fn record_error(&mut self, status: &Status) {
        *self.errors.entry(format!("{:?}", status.code())).or_default() += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        let _ = self.latency_us.add(&other.latency_us);
        self.ops += other.ops;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.checks_passed += other.checks_passed;
        self.check_failures.extend(other.check_failures);
        self.full_handshakes += other.full_handshakes;
        self.resumed_handshakes += other.resumed_handshakes;
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            self.checks_passed += 1;
        } else if self.check_failures.len() < 20 {
            self.check_failures.push(what());
        } else {
            // Keep counting without keeping every message.
            self.check_failures.push(String::new());
        }
    }
}

pub fn issue_request(worker: usize, n: u64) -> IssueRequest {
    IssueRequest {
        subject: format!("bench-{worker}-{n}"),
        scopes: vec!["read".into(), "write".into()],
        audiences: vec![],
        client_id: "ratchet-bench".into(),
        claims: None,
    }
}

struct Worker {
    id: usize,
    client: Client,
    authz: AuthzClient,
    /// The Check request, encoded once (see `authz`).
    check_request: Option<Encoded>,
    plan: Arc<Plan>,
    tally: Tally,
    /// The refresh token this worker's chain continues from.
    chain: Option<String>,
    rotations: u64,
    issued: u64,
    rng: u64,
}

/// Runs one worker until the plan's deadline or count.
pub async fn run(id: usize, clients: Clients, plan: Arc<Plan>) -> Tally {
    let mut worker = Worker {
        id,
        client: clients.tokens,
        authz: clients.authz,
        check_request: None,
        plan: plan.clone(),
        tally: Tally::new(),
        chain: None,
        rotations: 0,
        issued: 0,
        rng: 0x9E37_79B9_7F4A_7C15 ^ (id as u64 + 1),
    };
    loop {
        if Instant::now() >= plan.until || (plan.count > 0 && plan.done.load(Ordering::Relaxed) >= plan.count) {
            break;
        }
        let op = worker.next_op();
        if op == Scenario::Rotate && worker.chain.is_none() {
            // Starting (or restarting) a chain is set-up, not the operation measured.
            match worker.issue().await {
                Ok(token) => worker.chain = Some(token),
                Err(status) => worker.record(Err(status), Duration::ZERO),
            }
            continue;
        }
        let start = Instant::now();
        let outcome = match op {
            Scenario::Issue => worker.issue().await.map(drop),
            Scenario::Rotate => worker.rotate().await,
            Scenario::Introspect | Scenario::IntrospectHot | Scenario::Mixed => worker.introspect().await,
            Scenario::Check => worker.check().await,
            Scenario::Connect => Err(Status::internal("the connect scenario has workers of its own")),
        };
        let end = Instant::now();
        if start >= plan.measure_from && end <= plan.until {
            if plan.count > 0 && plan.done.fetch_add(1, Ordering::Relaxed) >= plan.count {
                break;
            }
            worker.record(outcome, end - start);
        }
    }
    worker.tally
}

impl Worker {
    /// xorshift: a cheap per-worker random stream, good enough to spread picks.
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn next_op(&mut self) -> Scenario {
        match self.plan.scenario {
            Scenario::Mixed => {
                let roll = (self.random() % 100) as u32;
                if roll < self.plan.mix.introspect {
                    Scenario::Introspect
                } else if roll < self.plan.mix.introspect + self.plan.mix.rotate {
                    Scenario::Rotate
                } else {
                    Scenario::Issue
                }
            }
            other => other,
        }
    }

    fn record(&mut self, outcome: Result<(), Status>, took: Duration) {
        match outcome {
            Ok(()) => self.tally.record_ok(took),
            Err(status) => self.tally.record_error(&status),
        }
    }

    async fn issue(&mut self) -> Result<String, Status> {
        self.issued += 1;
        let pair = self
            .client
            .issue(issue_request(self.id, self.issued))
            .await?
            .into_inner();
        self.tally.check(
            pair.refresh_token.starts_with("rt_") && !pair.access_token.is_empty(),
            || "issue answered without tokens".into(),
        );
        Ok(pair.refresh_token)
    }

    async fn rotate(&mut self) -> Result<(), Status> {
        let Some(presented) = self.chain.take() else {
            return Err(Status::failed_precondition("no chain to rotate"));
        };
        let pair = self
            .client
            .rotate(RotateRequest {
                refresh_token: presented.clone(),
            })
            .await?
            .into_inner();
        self.tally.check(pair.refresh_token != presented, || {
            "rotate returned the presented token".into()
        });
        self.rotations += 1;
        if self.plan.replay_every > 0 && self.rotations.is_multiple_of(self.plan.replay_every) {
            // Replaying a spent token must be refused as reuse (and kills this chain).
            let replay = self
                .client
                .rotate(RotateRequest {
                    refresh_token: presented,
                })
                .await;
            let reused = matches!(&replay, Err(status) if status.code() == Code::Unauthenticated
                && status.get_details_error_info().is_some_and(|info| info.reason == "TOKEN_REUSED"));
            self.tally.check(reused, || {
                format!("replayed spent token was not refused as reuse: {replay:?}")
            });
            return Ok(());
        }
        self.chain = Some(pair.refresh_token);
        Ok(())
    }

    async fn introspect(&mut self) -> Result<(), Status> {
        let pick = self.random() as usize % self.plan.access_tokens.len();
        let token = self.plan.access_tokens[pick].clone();
        let answer = self
            .client
            .introspect(IntrospectRequest {
                token,
                token_type_hint: "access_token".into(),
            })
            .await?
            .into_inner();
        self.tally
            .check(answer.active, || "a valid access token introspected inactive".into());
        Ok(())
    }

    async fn check(&mut self) -> Result<(), Status> {
        let request = self
            .check_request
            .get_or_insert_with(|| Encoded::new(&check_request(&self.plan.access_tokens[0])))
            .clone();
        let answer = self.authz.check(request).await?;
        let allowed = answer.status.as_ref().is_some_and(|s| s.code == Code::Ok as i32) && answer.ok_response.is_some();
        self.tally
            .check(allowed, || format!("a valid access token was not allowed: {answer:?}"));
        Ok(())
    }
}

/// The Check an Envoy sidecar sends for a plain `GET` carrying `token`, configured as
/// docs/mesh.md recommends (`allowed_headers`: `authorization` and the `x-ratchet-` prefix): the
/// request's line and host, and its one `authorization` header.
fn check_request(token: &str) -> CheckRequest {
    let headers = std::iter::once(("authorization".to_owned(), format!("Bearer {token}"))).collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/v1/orders?page=2".into(),
                    host: "orders.default.svc.cluster.local".into(),
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
