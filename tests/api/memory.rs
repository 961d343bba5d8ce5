//! A request's size must not decide the server's memory (issue 20, item 3).
//!
//! For each RPC, a fresh `ratchet serve` (the real binary, in a process of its own, so that its
//! peak resident memory, VmHWM in /proc, is that RPC's alone) takes 16 clients, each on a
//! connection of its own, sending for a few seconds the worst requests that RPC's limits allow:
//! the largest message, the most entries in every repeated field, the deepest nesting, each with
//! 14 KiB of metadata. Every eighth call is over a limit instead and must be RESOURCE_EXHAUSTED.
//! The peak must stay under 128 MiB; each RPC's is printed.
//!
//! `MEMORY_SECONDS` (default 2) sets how long each RPC is driven and `MEMORY_STREAMS` (default 1)
//! how many calls each client keeps in flight; BENCHMARKS.md records the run with 10 seconds, and
//! with 64 streams (1,024 calls in flight: the default `--max-concurrent-requests`).
//!
//! The limits are written out here as the API documents them (`proto/ratchet/v1/token.proto`,
//! `docs/mesh.md`), not imported: this checks the contract, and a server that ignores it.
//!
//! Where it runs: SQLite, the binary as an operator starts it without a DATABASE_URL. Only the
//! largest valid Issue reaches the store; every other request is refused before it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, skip_field};
use tokio::sync::Mutex;
use tonic::Code;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::sqlite::DataDir;

const CLIENTS: usize = 16;
/// The bound the issue sets.
const CEILING_KIB: u64 = 128 * 1024;
/// Past this the server is killed at once: one that does not bound its memory would otherwise
/// take the machine's.
const ABORT_KIB: u64 = 1024 * 1024;
/// Of every RPC of the token service (token.proto).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Of Check (docs/mesh.md).
const MAX_CHECK_BYTES: usize = 256 * 1024;
/// Check's limit before issue 20, where the review's 8.4 million empty headers fit.
const OLD_MAX_CHECK_BYTES: usize = 16 * 1024 * 1024;
/// Of the health (and reflection) service's requests (`src/startup/router.rs`).
const MAX_HEALTH_BYTES: usize = 4 * 1024;
/// Entries of `scopes`, and of `audiences`, an IssueRequest may carry (token.proto).
const MAX_LIST_ENTRIES: usize = 1024;
/// Values (object members and array elements, at any depth) in an IssueRequest's `claims`.
const MAX_CLAIM_VALUES: usize = 8192;
/// Objects and arrays nested in `claims`, the claims object itself included.
const MAX_CLAIM_DEPTH: usize = 32;
/// Entries of a Check's `context_extensions` (docs/mesh.md).
const MAX_CONTEXT_EXTENSIONS: usize = 256;
/// Custom metadata entries on every call: with the standard headers, about 14.4 KiB of the
/// server's 16 KiB header list (HTTP/2 counts 32 bytes per entry on top of name and value).
const METADATA_ENTRIES: usize = 360;

/// A message already encoded, sent as its bytes; as an answer, read as nothing.
#[derive(Debug, Clone, Default)]
struct Raw(Bytes);

impl Message for Raw {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// A length-delimited field: a string, bytes or a message.
fn ld(tag: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

/// `field` written `n` times.
fn times(field: &[u8], n: usize) -> Vec<u8> {
    field.repeat(n)
}

/// `build(n)` for the largest `n` whose message fits in `limit` bytes.
fn largest(limit: usize, build: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let (mut low, mut high) = (0, limit);
    while low < high {
        let mid = (low + high).div_ceil(2);
        if build(mid).len() <= limit {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    let message = build(low);
    assert!(
        message.len() <= limit && message.len() > limit - limit / 64,
        "{} of {limit}",
        message.len()
    );
    message
}

/// `build(n)` for the smallest `n` whose message is over `limit` bytes: just over it.
fn just_over(limit: usize, build: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    let fits = largest(limit, &build);
    let mut n = 0;
    let mut over = build(n);
    while over.len() <= limit {
        n += (limit - over.len()).max(1);
        over = build(n);
    }
    assert!(over.len() > fits.len() && over.len() < limit + 64);
    over
}

/// One RPC's worst requests.
struct Case {
    rpc: &'static str,
    path: &'static str,
    /// Within every limit; any answer but RESOURCE_EXHAUSTED from a limit will do.
    allowed: Vec<(&'static str, Raw)>,
    /// Over a limit: must be RESOURCE_EXHAUSTED.
    over: Vec<(&'static str, Raw)>,
}

fn raw(bytes: Vec<u8>) -> Raw {
    Raw(bytes.into())
}

// envoy.service.auth.v3 (external_auth.proto, attribute_context.proto) and envoy.config.core.v3.

/// `CheckRequest { attributes { request { http { <http> } } <attributes> } }`.
fn check(http: &[u8], attributes: &[u8]) -> Vec<u8> {
    let request = ld(4, &ld(2, http));
    ld(1, &[request, attributes.to_vec()].concat())
}

/// A `map<string, string>` entry.
fn pair(tag: u32, key: &[u8], value: &[u8]) -> Vec<u8> {
    ld(tag, &[ld(1, key), ld(2, value)].concat())
}

fn names(n: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..n).map(|i| format!("{i:x}").into_bytes())
}

/// A `google.protobuf.Struct` nested `depth` deep (`{"k": {"k": ...}}`), the innermost object
/// holding `width` members without a value.
fn nested_struct(depth: usize, width: usize) -> Vec<u8> {
    let mut object: Vec<u8> = names(width).map(|k| ld(1, &ld(1, &k))).collect::<Vec<_>>().concat();
    for _ in 1..depth {
        object = member(b"k", &ld(5, &object));
    }
    object
}

fn check_case() -> Case {
    let empty_header_map = |limit| largest(limit, |n| check(&ld(13, &times(&ld(1, b""), n)), &[]));
    let one_header = |n: usize| check(&pair(3, b"x-big", &vec![b'a'; n]), &[]);
    let extensions = |count: usize| {
        move |n: usize| {
            let extensions: Vec<u8> = names(count)
                .map(|k| pair(10, &k, &vec![b'v'; n]))
                .collect::<Vec<_>>()
                .concat();
            check(&pair(3, b"authorization", b"Bearer x"), &extensions)
        }
    };
    Case {
        rpc: "Check",
        path: "/envoy.service.auth.v3.Authorization/Check",
        allowed: vec![
            (
                "the most header_map entries (empty)",
                raw(empty_header_map(MAX_CHECK_BYTES)),
            ),
            (
                "the most headers (distinct names)",
                raw(largest(MAX_CHECK_BYTES, |n| {
                    check(&names(n).map(|k| pair(3, &k, b"")).collect::<Vec<_>>().concat(), &[])
                })),
            ),
            ("the largest header", raw(largest(MAX_CHECK_BYTES, one_header))),
            (
                "the most context_extensions",
                raw(largest(MAX_CHECK_BYTES, extensions(MAX_CONTEXT_EXTENSIONS))),
            ),
            (
                "the deepest metadata_context",
                raw(largest(MAX_CHECK_BYTES, |n| {
                    // 30 deep: as deep as Envoy's own decoder (prost's, 100 messages) goes.
                    let filter = ld(
                        1,
                        &[ld(1, b"envoy.filters.http.jwt_authn"), ld(2, &nested_struct(30, n))].concat(),
                    );
                    check(&pair(3, b"authorization", b"Bearer x"), &ld(11, &filter))
                })),
            ),
        ],
        over: vec![
            ("just over the size limit", raw(just_over(MAX_CHECK_BYTES, one_header))),
            (
                "the review's 8.4 M empty headers",
                raw(empty_header_map(OLD_MAX_CHECK_BYTES)),
            ),
            (
                "one context_extension too many",
                raw(extensions(MAX_CONTEXT_EXTENSIONS + 1)(0)),
            ),
        ],
    }
}

// ratchet.v1.IssueRequest and google.protobuf.Struct / Value / ListValue (struct.proto).

/// `IssueRequest { subject: "alice", <fields> }`.
fn issue(fields: &[u8]) -> Vec<u8> {
    [ld(1, b"alice"), fields.to_vec()].concat()
}

/// A `Struct` entry (`fields` map) holding `value` (a `Value`'s bytes).
fn member(key: &[u8], value: &[u8]) -> Vec<u8> {
    ld(1, &[ld(1, key), ld(2, value)].concat())
}

/// A list `Value` of `n` empty values.
fn list_of_empty(n: usize) -> Vec<u8> {
    ld(6, &times(&ld(1, b""), n))
}

fn string_value(n: usize) -> Vec<u8> {
    ld(3, &vec![b'x'; n])
}

/// An IssueRequest's `claims` field nested `depth` deep through members named `key`, the innermost a list of
/// `values` empty values: `depth - 1` members and the list's values, `values + depth - 1` values.
fn deep_claims(depth: usize, key: &[u8], values: usize) -> Vec<u8> {
    let mut value = list_of_empty(values);
    for _ in 2..depth {
        value = ld(5, &member(key, &value));
    }
    ld(5, &member(key, &value))
}

fn issue_case() -> Case {
    let scopes = |count: usize| move |n: usize| issue(&times(&ld(2, &vec![b's'; n]), count));
    let values = |count: usize| {
        // "l": a list of count - 2 values, "pad": a string; count values in all.
        move |n: usize| {
            issue(&ld(
                5,
                &[
                    member(b"l", &list_of_empty(count - 2)),
                    member(b"pad", &string_value(n)),
                ]
                .concat(),
            ))
        }
    };
    let deep = |depth: usize| move |n: usize| issue(&deep_claims(depth, &vec![b'k'; n], MAX_CLAIM_VALUES - depth + 1));
    // Within what Issue accepts: 64 scopes and audiences of 255 bytes, 8 KiB of claims as JSON
    // holding as many values as fit ({"n":[0,0,...]}: two bytes each).
    let valid = {
        let name = |prefix: &str, i: usize| format!("{prefix}{i:03}{}", "x".repeat(251));
        let number = ld(1, &[0x11, 0, 0, 0, 0, 0, 0, 0, 0]);
        let scopes: Vec<u8> = (0..64)
            .map(|i| ld(2, name("s", i).as_bytes()))
            .collect::<Vec<_>>()
            .concat();
        let audiences: Vec<u8> = (0..64)
            .map(|i| ld(3, name("a", i).as_bytes()))
            .collect::<Vec<_>>()
            .concat();
        let claims = ld(5, &member(b"n", &ld(6, &times(&number, 4000))));
        [ld(1, &[b'u'; 255]), scopes, audiences, ld(4, &[b'c'; 255]), claims].concat()
    };
    Case {
        rpc: "Issue",
        path: "/ratchet.v1.TokenService/Issue",
        allowed: vec![
            (
                "the most scopes",
                raw(largest(MAX_REQUEST_BYTES, scopes(MAX_LIST_ENTRIES))),
            ),
            (
                "the most claim values",
                raw(largest(MAX_REQUEST_BYTES, values(MAX_CLAIM_VALUES))),
            ),
            (
                "the deepest claims, long names",
                raw(largest(MAX_REQUEST_BYTES, deep(MAX_CLAIM_DEPTH))),
            ),
            (
                "every list at its bound",
                raw(largest(MAX_REQUEST_BYTES, |n| {
                    let lists = [
                        times(&ld(2, b""), MAX_LIST_ENTRIES),
                        times(&ld(3, b""), MAX_LIST_ENTRIES),
                    ]
                    .concat();
                    [lists, values(MAX_CLAIM_VALUES)(n)].concat()
                })),
            ),
            ("the largest valid request", raw(valid)),
        ],
        over: vec![
            ("just over the size limit", raw(just_over(MAX_REQUEST_BYTES, scopes(1)))),
            ("one scope too many", raw(scopes(MAX_LIST_ENTRIES + 1)(0))),
            ("one claim value too many", raw(values(MAX_CLAIM_VALUES + 1)(0))),
            ("one level too deep", raw(deep(MAX_CLAIM_DEPTH + 1)(1))),
            // What the size limit alone lets through: half a million of each.
            (
                "1 MiB of empty scopes",
                raw(largest(MAX_REQUEST_BYTES, |n| issue(&times(&ld(2, b""), n)))),
            ),
            (
                "1 MiB of empty claim values",
                raw(largest(MAX_REQUEST_BYTES, |n| {
                    issue(&ld(5, &member(b"l", &list_of_empty(n))))
                })),
            ),
        ],
    }
}

/// An RPC whose request is a few strings: the largest string, the string field repeated, and
/// unknown fields, each up to `limit`.
fn strings_case(rpc: &'static str, path: &'static str, tag: u32, limit: usize) -> Case {
    let one = move |n: usize| ld(tag, &vec![b'a'; n]);
    Case {
        rpc,
        path,
        allowed: vec![
            ("the largest string", raw(largest(limit, one))),
            (
                "the string field repeated",
                raw(largest(limit, move |n| times(&ld(tag, b"aaaaaaaa"), n))),
            ),
            // Field 15, varint 0: skipped by the decoder.
            ("unknown fields", raw(largest(limit, |n| times(&[0x78, 0x00], n)))),
        ],
        over: vec![("just over the size limit", raw(just_over(limit, one)))],
    }
}

fn cases() -> Vec<Case> {
    let tokens = |rpc, method, tag| strings_case(rpc, method, tag, MAX_REQUEST_BYTES);
    vec![
        check_case(),
        issue_case(),
        tokens("Rotate", "/ratchet.v1.TokenService/Rotate", 1),
        tokens("Introspect", "/ratchet.v1.TokenService/Introspect", 1),
        tokens("Revoke", "/ratchet.v1.TokenService/Revoke", 1),
        tokens("ListSessions", "/ratchet.v1.TokenService/ListSessions", 3),
        // GetJwksRequest has no field: 15 is as unknown as any.
        tokens("GetJwks", "/ratchet.v1.TokenService/GetJwks", 15),
        strings_case("Health.Check", "/grpc.health.v1.Health/Check", 1, MAX_HEALTH_BYTES),
    ]
}

fn metadata() -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for i in 0..METADATA_ENTRIES {
        let name: tonic::metadata::MetadataKey<tonic::metadata::Ascii> = format!("x-m{i:03}").parse().unwrap();
        metadata.insert(name, MetadataValue::from_static("v"));
    }
    metadata
}

/// Peak and current resident memory of `pid`, in KiB.
fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

#[derive(Debug, Default)]
struct Outcome {
    idle_kib: u64,
    peak_kib: u64,
    calls: u64,
    /// Answers of the allowed requests, by code.
    answers: BTreeMap<String, u64>,
    /// Over-limit requests answered otherwise than RESOURCE_EXHAUSTED.
    wrong: BTreeMap<String, u64>,
    aborted: bool,
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn drive(case: &Case, seconds: u64, streams: usize) -> Outcome {
    let dir = DataDir::new();
    let (server, _client, _log) = dir
        .serve_with(case.rpc, &[("RUST_LOG", "warn,ratchet::startup=info")])
        .await;
    let pid = server.pid();
    let (idle_kib, _) = memory_kib(pid).unwrap();

    let aborted = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (aborted, done) = (aborted.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                match memory_kib(pid) {
                    Some((peak, _)) if peak > ABORT_KIB => {
                        let _ = std::process::Command::new("kill")
                            .args(["-KILL", &pid.to_string()])
                            .status();
                        aborted.store(true, Ordering::SeqCst);
                        return peak;
                    }
                    Some(_) => {}
                    None => return 0,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            0
        })
    };

    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let metadata = metadata();
    let allowed = Arc::new(case.allowed.clone());
    let over = Arc::new(case.over.clone());
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let channel: Channel = Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for s in 0..streams {
            let (channel, metadata, allowed, over, outcome, aborted) = (
                channel.clone(),
                metadata.clone(),
                allowed.clone(),
                over.clone(),
                outcome.clone(),
                aborted.clone(),
            );
            let path = PathAndQuery::from_static(case.path);
            clients.push(tokio::spawn(async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                let mut n = c * streams + s;
                while Instant::now() < deadline && !aborted.load(Ordering::SeqCst) {
                    n += 1;
                    let (is_over, (name, message)) = if n.is_multiple_of(8) {
                        (true, &over[n / 8 % over.len()])
                    } else {
                        (false, &allowed[n % allowed.len()])
                    };
                    if grpc.ready().await.is_err() {
                        break;
                    }
                    let mut request = tonic::Request::new(message.clone());
                    *request.metadata_mut() = metadata.clone();
                    request.set_timeout(Duration::from_secs(20));
                    let codec = tonic_prost::ProstCodec::<Raw, Raw>::default();
                    let code = match grpc.unary(request, path.clone(), codec).await {
                        Ok(_) => Code::Ok,
                        Err(status) => status.code(),
                    };
                    let mut outcome = outcome.lock().await;
                    outcome.calls += 1;
                    if is_over {
                        if code != Code::ResourceExhausted {
                            *outcome.wrong.entry(format!("{name}: {code:?}")).or_default() += 1;
                        }
                    } else {
                        *outcome.answers.entry(format!("{code:?}")).or_default() += 1;
                    }
                }
            }));
        }
    }
    for client in clients {
        client.await.unwrap();
    }
    done.store(true, Ordering::SeqCst);
    let killed_at = watchdog.await.unwrap();
    let mut outcome = Arc::try_unwrap(outcome).unwrap().into_inner();
    outcome.idle_kib = idle_kib;
    outcome.aborted = aborted.load(Ordering::SeqCst);
    outcome.peak_kib = memory_kib(pid).map_or(killed_at, |(peak, _)| peak.max(killed_at));
    drop(server);
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpcs_worst_requests_keep_the_server_under_128_mib() {
    let seconds = env_number("MEMORY_SECONDS", 2);
    let streams = usize::try_from(env_number("MEMORY_STREAMS", 1)).unwrap().max(1);
    let mut report = format!(
        "\npeak memory (VmHWM) of `ratchet serve`, {CLIENTS} clients x {streams} stream(s), {seconds} s per RPC\n"
    );
    let mut failures = Vec::new();
    for case in cases() {
        let outcome = drive(&case, seconds, streams).await;
        let _ = writeln!(
            report,
            "{:<13} idle {:>4} MiB  peak {:>5} MiB  {:>6} calls  allowed: {:?}  over the limit, not RESOURCE_EXHAUSTED: {:?}{}",
            case.rpc,
            outcome.idle_kib / 1024,
            outcome.peak_kib / 1024,
            outcome.calls,
            outcome.answers,
            outcome.wrong,
            if outcome.aborted { "  (killed past 1 GiB)" } else { "" },
        );
        if outcome.peak_kib >= CEILING_KIB {
            failures.push(format!("{}: peak {} MiB", case.rpc, outcome.peak_kib / 1024));
        }
        if !outcome.wrong.is_empty() {
            failures.push(format!(
                "{}: over-limit requests answered {:?}",
                case.rpc, outcome.wrong
            ));
        }
        if outcome.calls < CLIENTS as u64 {
            failures.push(format!("{}: only {} calls", case.rpc, outcome.calls));
        }
    }
    eprintln!("{report}");
    assert!(failures.is_empty(), "{failures:#?}\n{report}");
}
