//! The gRPC listener's router in one place: the server's HTTP/2 settings, the layers every call
//! passes through in their order, and the services behind them. Leaves out the connections
//! themselves (accepting, TLS, caps and timeouts: [`crate::transport`]).

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;

use crate::config::Settings;
use crate::grpc::TokenServiceImpl;
use crate::grpc::access::AccessLayer;
use crate::grpc::authz::{self, AuthorizationImpl, AuthorizationService};
use crate::grpc::budget::{self, BudgetLayer, MemoryBudget};
use crate::grpc::call::CallLayer;
use crate::grpc::cut::CutLayer;
use crate::grpc::message_limit::MessageLimitLayer;
use crate::grpc::panic::CatchPanicLayer;
use crate::grpc::pb::{self, token_service_server::TokenServiceServer};
use crate::grpc::shed::ShedLayer;
use crate::shutdown::StageWatch;
use crate::store::RuntimeStore;
use crate::transport::accept::Conn;
use crate::transport::idle::ActivityLayer;
use crate::transport::{self, PeerIdentityLayer};

/// Largest request accepted. Far above any valid request (8 KiB of claims plus 128 names of
/// 255 bytes), so that oversized *fields* reach validation and get a named INVALID_ARGUMENT.
/// Bigger requests get RESOURCE_EXHAUSTED ([`MessageLimitLayer`]). What a request may decode to
/// is bounded apart (`grpc::codec`), and what all calls in flight hold together (`grpc::budget`).
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// The services whose calls are charged to the request memory budget (`grpc::budget`), with
/// their message limits.
const METERED: [(&str, usize); 2] = [
    ("/ratchet.v1.TokenService/", MAX_REQUEST_BYTES),
    ("/envoy.service.auth.v3.Authorization/", authz::MAX_CHECK_BYTES),
];
/// Largest health or reflection request: a service, file or symbol name, far under this. These
/// calls are not charged to the request budget (a health probe must never be refused for
/// memory), so their own limit is what bounds them.
const MAX_HEALTH_REQUEST_BYTES: usize = 4 * 1024;
/// Longest any RPC may run, whatever the client's deadline; see [`request_timeout`].
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// tonic has no "never" for a connection's age; a century is.
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Longest any RPC may run: enough for a write to wait for a connection, run, and have a lost
/// answer resolved (each bounded by the store's timeout; see `store::postgres::run`), so that
/// the server's own limit never cuts a write short of its outcome.
pub(super) fn request_timeout(db_timeout: Duration) -> Duration {
    (db_timeout * 4 + Duration::from_secs(5)).max(MIN_REQUEST_TIMEOUT)
}

/// What the gRPC listener serves.
pub(super) struct Services {
    pub(super) tokens: TokenServiceImpl<RuntimeStore>,
    /// Envoy's ext_authz Check, on the same issuer (and caches) as the token service.
    pub(super) authorization: AuthorizationImpl<RuntimeStore>,
    pub(super) health: HealthReporter,
    /// Where a stop has got: health `Watch` streams end at the drain, calls in flight are
    /// answered at the cut.
    pub(super) stage: StageWatch,
}

/// Serves `services` on the connections from `incoming` until `shutdown` resolves, then drains
/// them (see [`transport::serve::grpc`]).
///
/// # Errors
/// The reflection services cannot be built.
pub(super) async fn serve(
    settings: &Settings,
    request_timeout: Duration,
    services: Services,
    incoming: impl Stream<Item = io::Result<Conn>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let limits = &settings.limits;
    let access = &settings.access;
    let health = crate::grpc::health::service(services.health, limits.max_health_watches, services.stage.clone())
        .max_decoding_message_size(MAX_HEALTH_REQUEST_BYTES);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?
        .max_decoding_message_size(MAX_HEALTH_REQUEST_BYTES);
    // grpcurl and older tools still ask the v1alpha service.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?
        .max_decoding_message_size(MAX_HEALTH_REQUEST_BYTES);
    let tokens = TokenServiceServer::new(services.tokens).max_decoding_message_size(MAX_REQUEST_BYTES);
    // Its own, smaller limit: a Check is a request's headers (see `authz::MAX_CHECK_BYTES`).
    // Not in reflection: envoy-types ships no descriptor set.
    let authorization = AuthorizationService::new(services.authorization, authz::MAX_CHECK_BYTES);
    let router = Server::builder()
        .timeout(request_timeout)
        .max_concurrent_streams(limits.max_streams_per_connection)
        .http2_max_header_list_size(limits.max_header_bytes)
        .http2_keepalive_interval(
            (!limits.http2_keepalive_interval.is_zero()).then_some(limits.http2_keepalive_interval),
        )
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout))
        .max_connection_age(if limits.max_connection_age.is_zero() {
            NEVER
        } else {
            limits.max_connection_age
        })
        // Outermost: a call is in flight (the connection not idle) until its answer is sent.
        .layer(ActivityLayer)
        // Next: every answer below, even a panic's, a shed call's or a cut one's, carries the
        // call's request id and is counted, and every line logged below carries the call's context.
        .layer(CallLayer)
        // Every call, whatever the layers below do with it, is answered at the shutdown's cut.
        .layer(CutLayer::new(services.stage))
        .layer(CatchPanicLayer)
        .layer(ShedLayer::new(limits.max_concurrent_requests))
        // Inside the shedding: only calls let in are charged.
        .layer(BudgetLayer::new(
            Arc::new(MemoryBudget::new(budget::BUDGET_BYTES)),
            &METERED,
        ))
        .layer(MessageLimitLayer)
        .layer(PeerIdentityLayer::new(
            settings.transport.trust_xfcc,
            settings.transport.probe.clone(),
        ))
        // Reads the caller's `PeerIdentity` from the extensions: whatever puts it there
        // (the TLS/XFCC layer) must be added before this line, i.e. outside it.
        .layer(AccessLayer::new(access.policy.clone()))
        .add_service(health)
        .add_optional_service(access.reflection.then_some(reflection_v1))
        .add_optional_service(access.reflection.then_some(reflection_v1alpha))
        .add_service(tokens)
        .add_service(authorization);
    let connection_limits = transport::serve::GrpcLimits {
        max_connections: limits.max_connections,
        first_request_timeout: limits.first_request_timeout,
        idle_timeout: (!limits.idle_timeout.is_zero()).then_some(limits.idle_timeout),
    };
    transport::serve::grpc(router, incoming, connection_limits, shutdown).await;
    Ok(())
}
