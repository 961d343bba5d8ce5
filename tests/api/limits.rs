//! Resource limits: what an oversized request gets, and that the connection it came on survives.

use std::sync::atomic::Ordering;

use ratchet::grpc::pb::IssueRequest;
use ratchet::grpc::pb::token_service_client::TokenServiceClient;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tonic::Code;

use crate::helpers::{counting_channel, issue, spawn_app};

/// Claims holding one string claim of `bytes` bytes.
fn claims_of(bytes: usize) -> prost_types::Struct {
    let value = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue("x".repeat(bytes))),
    };
    prost_types::Struct {
        fields: [("blob".to_owned(), value)].into(),
    }
}

#[sqlx::test]
async fn a_request_over_the_size_limit_is_resource_exhausted_and_the_connection_lives_on(
    _pool: PgPoolOptions,
    options: PgConnectOptions,
) {
    let app = spawn_app(options).await;
    let (channel, opened) = counting_channel(app.addr).await;
    let client = TokenServiceClient::new(channel);
    issue(&client, "alice").await;

    let oversized = client
        .clone()
        .issue(IssueRequest {
            subject: "alice".into(),
            claims: Some(claims_of(2 * 1024 * 1024)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(oversized.code(), Code::ResourceExhausted, "{oversized:?}");

    issue(&client, "alice").await;
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "the oversized call must not cost the connection"
    );
    app.stop().await;
}
