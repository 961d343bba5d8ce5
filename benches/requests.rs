//! What bounding a request's memory costs on the hot path (issue 20): Check's bounded decoding
//! against envoy-types' full one, the IssueRequest scan, and a call through the request memory
//! budget's layer against the same call without it; the same for the layer that answers calls at
//! the shutdown's cut. `cargo bench --bench requests`.

#![allow(clippy::unwrap_used)] // a benchmark that fails should panic

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::ext_authz::v3::pb as envoy;
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, attribute_context};
use http_body::{Body as _, Frame};
use prost::Message;
use prost::bytes::Bytes;
use ratchet::grpc::authz::request::CheckRequest;
use ratchet::grpc::budget::{BudgetLayer, FREE_BYTES, MemoryBudget};
use ratchet::grpc::codec::Bounded;
use ratchet::grpc::cut::CutLayer;
use ratchet::grpc::pb;
use ratchet::shutdown::Stages;
use tonic::body::Body;
use tower_layer::Layer as _;
use tower_service::Service as _;

fn peer(ip: &str, principal: &str) -> attribute_context::Peer {
    attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(8443)),
                ..Default::default()
            })),
        }),
        principal: principal.into(),
        ..Default::default()
    }
}

/// A Check as a sidecar sends it for a browser's request: both peers, 16 headers, a bearer
/// token of about 700 bytes, the route's two extensions.
fn typical_check() -> Vec<u8> {
    let token = format!("Bearer eyJ{}", "a".repeat(700));
    let mut headers: Vec<(String, String)> = [
        (":authority", "orders.example.com"),
        (":method", "GET"),
        (":path", "/v1/orders?page=2"),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
        ),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "6f1c0e6e-6a2b-4a8e-9c0b-2b6f1a3d9e10"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
        ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("cookie", "session=abc; theme=dark; consent=yes"),
        ("origin", "https://app.example.com"),
        ("referer", "https://app.example.com/orders"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    headers.push(("authorization".into(), token));
    envoy::CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("10.0.0.7", "spiffe://td/ns/web/sa/frontend")),
            destination: Some(peer("10.0.0.9", "spiffe://td/ns/orders/sa/orders")),
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: "1234567890".into(),
                    method: "GET".into(),
                    headers: headers.into_iter().collect(),
                    path: "/v1/orders?page=2".into(),
                    host: "orders.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/2".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [
                ("ratchet.required_scopes", "orders:read"),
                ("ratchet.audience", "orders"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Default::default()
        }),
    }
    .encode_to_vec()
}

fn check_decoding(c: &mut Criterion) {
    let bytes = typical_check();
    c.bench_function("check_request/decode_envoy_types", |b| {
        b.iter(|| envoy::CheckRequest::decode(bytes.as_slice()).unwrap())
    });
    c.bench_function("check_request/decode_bounded", |b| {
        b.iter(|| CheckRequest::decode(bytes.as_slice()).unwrap())
    });
}

fn issue_scan(c: &mut Criterion) {
    let typical = pb::IssueRequest {
        subject: "user-1234567890".into(),
        scopes: vec!["orders:read".into(), "orders:write".into(), "profile".into()],
        audiences: vec!["orders".into()],
        client_id: "web".into(),
        claims: Some(prost_types::Struct {
            fields: [(
                "tenant".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("acme".into())),
                },
            )]
            .into(),
        }),
    }
    .encode_to_vec();
    c.bench_function("issue_request/scan_typical", |b| {
        b.iter(|| pb::IssueRequest::decoded_bytes(&typical).unwrap())
    });
    c.bench_function("issue_request/decode_typical", |b| {
        b.iter(|| pb::IssueRequest::decode(typical.as_slice()).unwrap())
    });
}

/// A request body of one DATA frame.
struct OneFrame(Option<Bytes>);

impl http_body::Body for OneFrame {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|data| Ok(Frame::data(data))))
    }
}

/// An Introspect call's body: the gRPC prefix and a 1 KiB message.
fn introspect_body() -> Body {
    let mut bytes = vec![0, 0, 0, 4, 0];
    bytes.extend(vec![b'a'; 1024]);
    Body::new(OneFrame(Some(bytes.into())))
}

/// Reads the whole body, as tonic does, and answers.
async fn read_all(request: http::Request<Body>) -> Result<http::Response<Body>, Infallible> {
    let mut body = request.into_body();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        std::hint::black_box(frame.unwrap());
    }
    Ok(http::Response::new(Body::empty()))
}

fn budget_layer(c: &mut Criterion) {
    static SERVICES: [(&str, usize); 1] = [("/ratchet.v1.TokenService/", 1 << 20)];
    // Within the free bytes, as nearly every real call: no shared counter touched.
    const { assert!(1029 < FREE_BYTES) };
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let request = || {
        http::Request::builder()
            .uri("/ratchet.v1.TokenService/Introspect")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(introspect_body())
            .unwrap()
    };
    let mut bare = tower::service_fn(read_all);
    c.bench_function("budget/introspect_call_without", |b| {
        b.iter(|| runtime.block_on(bare.call(request())).unwrap())
    });
    let budget = Arc::new(MemoryBudget::new(32 << 20));
    let mut budgeted = BudgetLayer::new(budget, &SERVICES).layer(tower::service_fn(read_all));
    c.bench_function("budget/introspect_call_with", |b| {
        b.iter(|| runtime.block_on(budgeted.call(request())).unwrap())
    });
}

/// What answering calls at the shutdown's cut (`grpc::cut`) costs every call while serving: the
/// same call through the layer and without it.
fn cut_layer(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let request = || {
        http::Request::builder()
            .uri("/ratchet.v1.TokenService/Rotate")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(introspect_body())
            .unwrap()
    };
    let mut bare = tower::service_fn(read_all);
    c.bench_function("cut/rotate_call_without", |b| {
        b.iter(|| runtime.block_on(bare.call(request())).unwrap())
    });
    let stages = Stages::default();
    let mut cut = CutLayer::new(stages.watch()).layer(tower::service_fn(read_all));
    c.bench_function("cut/rotate_call_with", |b| {
        b.iter(|| runtime.block_on(cut.call(request())).unwrap())
    });
}

criterion_group!(benches, check_decoding, issue_scan, budget_layer, cut_layer);
criterion_main!(benches);
