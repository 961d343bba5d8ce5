//! A handler that panics: the caller gets INTERNAL with an error id, the connection lives on.
//!
//! Our service cannot be made to panic on demand, so these tests serve a health service that
//! panics for one request, behind the same layer `startup` puts around the real server.
//!
//! Where it runs: on no database at all; the panicking service is a health service, not the store.

use std::sync::atomic::Ordering;

use ratchet::grpc::panic::CatchPanicLayer;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::support::counting_channel;

/// Panics when asked about the service "panic"; everything else is SERVING.
struct Panicky;

#[tonic::async_trait]
impl Health for Panicky {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        assert_ne!(request.get_ref().service, "panic", "a bug in a handler");
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        }))
    }

    type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not needed here"))
    }
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_with_an_error_id_and_the_connection_lives_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .layer(CatchPanicLayer)
            .add_service(HealthServer::new(Panicky))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = stopped.await;
            }),
    );
    let (channel, opened) = counting_channel(addr).await;
    let mut client = HealthClient::new(channel);

    let status = tokio::time::timeout(std::time::Duration::from_secs(5), client.check(check("panic")))
        .await
        .expect("a panic must not leave the call hanging")
        .unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    let id = status
        .message()
        .strip_prefix("internal error (id ")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no error id in {:?}", status.message()));
    assert!(id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id:?}");

    let answer = client.check(check("")).await.unwrap().into_inner();
    assert_eq!(answer.status, i32::from(ServingStatus::Serving));
    assert_eq!(
        opened.load(Ordering::SeqCst),
        1,
        "the panic must not cost the connection"
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
