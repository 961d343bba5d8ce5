//! The request memory budget: what the calls in flight may hold of request bytes, and of what
//! those bytes decode to, over the whole server.
//!
//! Why: every call's size is bounded (1 MiB; Check 256 KiB), but up to
//! `--max-concurrent-requests` (1,024) calls may be in flight, and a message is buffered whole
//! before it is decoded, then held while its call waits for the end of the stream (a client
//! decides when that is). 1,024 calls of 1 MiB would hold a gigabyte. So every call of the token
//! service and of Check runs with a charge against one budget per server, [`BUDGET_BYTES`]:
//! - each message's buffer, as soon as the message's 5-byte gRPC prefix says how long it is
//!   ([`Metered`]): tonic reserves that much at that moment, before the bytes arrive;
//! - what its message will take once decoded, as the codec estimates it before decoding
//!   ([`charge`], from `codec.rs` and `authz/request.rs`);
//! - its metadata, by entry, as the call starts;
//!
//! and gives it all back when the call ends. The first [`FREE_BYTES`] of every call are not
//! counted: nearly every real call (a token to introspect or rotate, a Check of a few headers)
//! fits, so the hot path never touches the shared counter, and a flood of large calls that
//! exhausts the budget cannot refuse them. A charge over the budget fails the call at once with
//! RESOURCE_EXHAUSTED and a `retry-after` of one second, like a shed call (`shed.rs`): never an
//! unbounded wait.
//!
//! What it bounds, measured (BENCHMARKS.md, "Memory under hostile requests"; debug build, idle
//! 27 MiB): with 16 clients sending every RPC's worst requests, the peak stays under 66 MiB; with
//! 1,024 such calls in flight, under 170 MiB (without the budget, 1 MiB Introspects alone took
//! 642 MiB in a 5 s run). Past the budget, what a call holds uncharged is its state (tonic's first
//! 8 KiB buffer, HTTP/2's stream), up to [`FREE_BYTES`], and its metadata as far as it is not
//! charged; plus 1 MiB of HTTP/2 receive window per connection. So the peak is about idle +
//! [`BUDGET_BYTES`] + calls in flight × (16 + 12 KiB + metadata) + connections × 1 MiB: lower
//! `--max-concurrent-requests` (or `--max-header-bytes`) for a lower ceiling.
//!
//! What it leaves out: the health and reflection services (their messages are capped at a few
//! KiB in `startup/router.rs`, and a health probe must never be refused for memory), responses (ours are
//! small and built by us), and the work a call hands to a task of its own (`service::detached`),
//! which holds only validated, bounded values.

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use futures_util::future::Either;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};
use tower_layer::Layer;
use tower_service::Service;

/// Charged memory of all calls in flight, together: 16 calls with the largest message fit at once
/// (1 MiB held as bytes and 1 MiB decoded: 2 MiB charged each), or 8 of the heaviest Issues (with
/// 8,192 claim values, 4 MiB each), and it is a quarter of the 128 MiB the server is meant to stay
/// under with 16 clients sending their worst.
pub const BUDGET_BYTES: usize = 32 * 1024 * 1024;
/// What each call may hold before it is charged: an Introspect of the largest access token
/// ratchet mints (8 KiB of claims make about 11 KiB of JWT) with room to spare; a Check of a
/// request with Envoy's usual headers is a few KiB.
pub const FREE_BYTES: usize = 16 * 1024;

/// What one metadata entry of a call holds, estimated high: an entry of an `http::HeaderMap` with
/// its name and value (about 100 bytes for short ones, as measured: 1,024 calls of 360 entries
/// each took 37 MiB more than without). Larger names and values are bounded by
/// `--max-header-bytes` (16 KiB) anyway; the number of entries is what makes metadata weigh more
/// than HTTP/2 counts it (32 bytes per entry). HTTP/2 has decoded it before the call starts: a call
/// refused for it drops it at once.
const METADATA_ENTRY_BYTES: usize = 128;
/// The 5-byte prefix of every gRPC message: a compression flag and the length, big-endian.
const PREFIX_BYTES: usize = 5;

/// The server's budget: bytes charged by the calls in flight.
#[derive(Debug)]
pub struct MemoryBudget {
    charged: AtomicUsize,
    limit: usize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            charged: AtomicUsize::new(0),
            limit,
        }
    }

    /// What the calls in flight hold now.
    pub fn charged(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    fn reserve(&self, bytes: usize) -> bool {
        self.charged
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |charged| {
                charged.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.charged.fetch_sub(bytes, Ordering::AcqRel);
    }
}

tokio::task_local! {
    /// The call this task is serving, if it is charged.
    static CALL: CallCharge;
}

/// One call's account: what is left of its free bytes, and what it holds of the budget. (Public
/// only because [`Budgeted`]'s future names it.)
#[derive(Debug)]
pub struct CallCharge {
    budget: Arc<MemoryBudget>,
    free: Cell<usize>,
    held: Cell<usize>,
}

impl CallCharge {
    fn new(budget: Arc<MemoryBudget>) -> Self {
        Self {
            budget,
            free: Cell::new(FREE_BYTES),
            held: Cell::new(0),
        }
    }

    fn charge(&self, bytes: usize) -> Result<(), Status> {
        let free = self.free.get();
        if bytes <= free {
            self.free.set(free - bytes);
            return Ok(());
        }
        let rest = bytes - free;
        if !self.budget.reserve(rest) {
            return Err(busy());
        }
        self.free.set(0);
        self.held.set(self.held.get() + rest);
        Ok(())
    }
}

impl Drop for CallCharge {
    fn drop(&mut self) {
        self.budget.release(self.held.get());
    }
}

/// Charges `bytes` to the call being served, if it is charged (outside one, e.g. a client
/// decoding an answer, nothing is counted).
///
/// # Errors
/// RESOURCE_EXHAUSTED with `retry-after`: the budget cannot take it.
pub fn charge(bytes: usize) -> Result<(), Status> {
    CALL.try_with(|call| call.charge(bytes)).unwrap_or(Ok(()))
}

fn busy() -> Status {
    crate::telemetry::metrics::shed(crate::telemetry::metrics::Shed::Memory);
    let mut metadata = MetadataMap::new();
    metadata.insert("retry-after", MetadataValue::from_static("1"));
    Status::with_metadata(
        Code::ResourceExhausted,
        "server busy: too much request data in flight; retry after a pause",
        metadata,
    )
}

/// A request body whose messages are charged as their prefixes arrive.
pub struct Metered {
    body: Body,
    /// The service's message limit: a longer message is refused by tonic as soon as it reads the
    /// prefix (RESOURCE_EXHAUSTED, `message_limit.rs`), so it is not charged (nor refused as "busy").
    limit: usize,
    framing: Framing,
}

/// Where the body is in gRPC's framing (the length-prefixed messages of the gRPC over HTTP/2
/// spec): reading a prefix (its bytes so far), or inside a message (the bytes left of it).
enum Framing {
    Prefix { seen: usize, length: [u8; 4] },
    Message { left: usize },
}

impl Metered {
    fn new(body: Body, limit: usize) -> Self {
        Self {
            body,
            limit,
            framing: Framing::prefix(),
        }
    }

    /// Follows the framing through `data`, charging each message whose prefix completes. Work is
    /// per message and per frame, not per byte.
    fn on_data(&mut self, mut data: &[u8]) -> Result<(), Status> {
        while !data.is_empty() {
            match &mut self.framing {
                Framing::Message { left } => {
                    let n = (*left).min(data.len());
                    *left -= n;
                    data = &data[n..];
                    if *left == 0 {
                        self.framing = Framing::prefix();
                    }
                }
                // The usual case: a whole prefix at the start of a frame.
                Framing::Prefix { seen: 0, .. }
                    if let Some((prefix, rest)) = data.split_first_chunk::<PREFIX_BYTES>() =>
                {
                    data = rest;
                    let [_compression, length @ ..] = *prefix;
                    self.message(length)?;
                }
                Framing::Prefix { seen, length } => {
                    let (&byte, rest) = data.split_first().unwrap_or((&0, &[]));
                    data = rest;
                    // Byte 0 is the compression flag.
                    if let Some(slot) = seen.checked_sub(1).and_then(|i| length.get_mut(i)) {
                        *slot = byte;
                    }
                    *seen += 1;
                    if *seen == PREFIX_BYTES {
                        let length = *length;
                        self.message(length)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A message of `length` (big-endian) bytes starts: charged whole, now.
    fn message(&mut self, length: [u8; 4]) -> Result<(), Status> {
        let len = usize::try_from(u32::from_be_bytes(length)).unwrap_or(usize::MAX);
        if len <= self.limit {
            charge(PREFIX_BYTES + len)?;
        }
        self.framing = if len == 0 {
            Framing::prefix()
        } else {
            Framing::Message { left: len }
        };
        Ok(())
    }
}

impl Framing {
    fn prefix() -> Self {
        Self::Prefix {
            seen: 0,
            length: [0; 4],
        }
    }
}

impl HttpBody for Metered {
    type Data = prost::bytes::Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Status>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(busy) = self.on_data(data)
        {
            return Poll::Ready(Some(Err(busy)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Runs the calls of the services it meters against one budget; see the module docs.
#[derive(Debug, Clone)]
pub struct BudgetLayer {
    budget: Arc<MemoryBudget>,
    /// Path prefix (`/package.Service/`) and message limit of each service metered.
    services: &'static [(&'static str, usize)],
}

impl BudgetLayer {
    pub fn new(budget: Arc<MemoryBudget>, services: &'static [(&'static str, usize)]) -> Self {
        Self { budget, services }
    }
}

impl<S> Layer<S> for BudgetLayer {
    type Service = Budgeted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Budgeted {
            inner,
            budget: self.budget.clone(),
            services: self.services,
        }
    }
}

/// See [`BudgetLayer`].
#[derive(Debug, Clone)]
pub struct Budgeted<S> {
    inner: S,
    budget: Arc<MemoryBudget>,
    services: &'static [(&'static str, usize)],
}

type Refused<R, E> = std::future::Ready<Result<R, E>>;

impl<S, ResBody> Service<http::Request<Body>> for Budgeted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<
        S::Future,
        Either<Refused<S::Response, S::Error>, tokio::task::futures::TaskLocalFuture<CallCharge, S::Future>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let Some(&(_, limit)) = self.services.iter().find(|(prefix, _)| path.starts_with(prefix)) else {
            return Either::Left(self.inner.call(request));
        };
        let call = CallCharge::new(self.budget.clone());
        // Its metadata, decoded already, by entry (see [`METADATA_ENTRY_BYTES`]).
        if let Err(busy) = call.charge(request.headers().len() * METADATA_ENTRY_BYTES) {
            return Either::Right(Either::Left(std::future::ready(Ok(busy.into_http()))));
        }
        // The inner services only start reading the body once polled: inside the scope.
        let request = request.map(|body| Body::new(Metered::new(body, limit)));
        Either::Right(Either::Right(CALL.scope(call, self.inner.call(request))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn free_bytes_then_the_budget_then_refusal_and_everything_back_at_the_end() {
        let budget = Arc::new(MemoryBudget::new(100));
        let first = CALL.scope(CallCharge::new(budget.clone()), async {
            charge(FREE_BYTES).unwrap(); // free
            assert_eq!(budget.charged(), 0);
            charge(60).unwrap();
            assert_eq!(budget.charged(), 60);
            let second = CALL.scope(CallCharge::new(budget.clone()), async {
                charge(FREE_BYTES + 40).unwrap();
                let refused = charge(1).unwrap_err();
                assert_eq!(refused.code(), Code::ResourceExhausted);
                assert_eq!(refused.metadata().get("retry-after").unwrap(), "1");
            });
            second.await;
            assert_eq!(budget.charged(), 60, "the second call gave back its 40");
        });
        first.await;
        assert_eq!(budget.charged(), 0);
        // Outside a call nothing is counted.
        charge(usize::MAX).unwrap();
    }

    /// Two messages' worth of gRPC framing: prefixes declaring `first` and `second` bytes.
    fn framed(first: u32, second: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend(first.to_be_bytes());
        bytes.extend(vec![b'a'; first as usize]);
        bytes.push(0);
        bytes.extend(second.to_be_bytes());
        bytes.extend(vec![b'b'; second as usize]);
        bytes
    }

    #[tokio::test]
    async fn a_message_is_charged_whole_as_its_prefix_completes_however_the_bytes_are_split() {
        let (first, second) = (FREE_BYTES as u32, 1000);
        let bytes = framed(first, second);
        for split in [1, 3, 5, 6, 4000, bytes.len()] {
            let budget = Arc::new(MemoryBudget::new(1 << 20));
            CALL.scope(CallCharge::new(budget.clone()), async {
                let mut metered = Metered::new(Body::empty(), 1 << 20);
                let mut charged = Vec::new();
                for chunk in bytes.chunks(split) {
                    metered.on_data(chunk).unwrap();
                    charged.push(budget.charged());
                }
                // The first message took the free bytes and 5 more; the second is charged whole
                // the moment its prefix is in, before its bytes.
                assert_eq!(budget.charged(), 2 * PREFIX_BYTES + second as usize, "split {split}");
                // Charged at once, not as the second message's bytes trickle in.
                let at_prefix = charged.iter().position(|c| *c > PREFIX_BYTES).unwrap();
                assert!(
                    charged[at_prefix..].iter().all(|c| *c == charged[at_prefix]),
                    "split {split}"
                );
                assert!(
                    matches!(metered.framing, Framing::Prefix { seen: 0, .. }),
                    "split {split}"
                );
            })
            .await;
        }
        // A message over the service's limit is tonic's to refuse, not the budget's.
        let budget = Arc::new(MemoryBudget::new(10));
        CALL.scope(CallCharge::new(budget.clone()), async {
            let mut metered = Metered::new(Body::empty(), 100);
            metered.on_data(&[0, 0, 0x10, 0, 0]).unwrap();
            assert_eq!(budget.charged(), 0);
        })
        .await;
    }
}
