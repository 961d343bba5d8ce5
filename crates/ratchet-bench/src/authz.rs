//! The ext_authz Check client, as light as Envoy is to ratchet: Envoy encodes its `CheckRequest`
//! and reads the `CheckResponse` in C++ on its own cores, so the load generator should not spend
//! the shared CPU building and walking Envoy's message trees on every call.
//!
//! The request is encoded once (every call checks the same token with the same headers) and sent
//! as those bytes; the answer is decoded only as far as the verdict: the `google.rpc.Status` and
//! whether an `ok_response` is there, skipping the identity headers and the metadata (the API
//! tests check those). The server's side of a Check is untouched: it decodes the full request
//! and encodes the full answer.

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::google::rpc;
use http::uri::PathAndQuery;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, skip_field};
use tonic::{Request, Status};

use crate::h2::Connection;

/// A message already encoded.
#[derive(Debug, Clone, Default)]
pub struct Encoded(Bytes);

impl Encoded {
    pub fn new(request: &CheckRequest) -> Self {
        Self(request.encode_to_vec().into())
    }
}

impl Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// Never decoded: only sent.
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

/// A `CheckResponse` read only as far as its verdict (field numbers as in Envoy's
/// external_auth.proto; every other field is skipped).
#[derive(Clone, PartialEq, Message)]
pub struct Verdict {
    #[prost(message, optional, tag = "1")]
    pub status: Option<rpc::Status>,
    /// `ok_response`, left encoded: present only in an allow.
    #[prost(bytes = "bytes", optional, tag = "3")]
    pub ok_response: Option<Bytes>,
}

#[derive(Clone)]
pub struct AuthzClient {
    grpc: tonic::client::Grpc<Connection>,
}

impl AuthzClient {
    pub fn new(connection: Connection, origin: http::Uri) -> Self {
        Self {
            grpc: tonic::client::Grpc::with_origin(connection, origin),
        }
    }

    pub async fn check(&mut self, request: Encoded) -> Result<Verdict, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|error| Status::unavailable(format!("connection: {error}")))?;
        let path = PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check");
        let codec = tonic_prost::ProstCodec::<Encoded, Verdict>::default();
        Ok(self.grpc.unary(Request::new(request), path, codec).await?.into_inner())
    }
}
