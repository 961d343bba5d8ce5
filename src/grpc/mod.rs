//! The gRPC transport: generated code ([`pb`]), the service ([`service`]), Envoy's external
//! authorization ([`authz`], on Envoy's generated code from `envoy-types`), request parsing and
//! response encoding ([`convert`]), the one mapping of domain errors to `Status` ([`status`]) and
//! the layers around the whole server ([`message_limit`], [`panic`], [`shed`], [`budget`]); what a
//! caller may do ([`access`]; who is calling is the transport's to say,
//! `crate::transport::identity`); the codec that bounds what a request decodes to ([`codec`]); the
//! health service with its `Watch` streams counted ([`health`]).

pub mod access;
pub mod authz;
pub mod budget;
pub mod codec;
pub mod convert;
pub mod health;
pub mod message_limit;
pub mod panic;
pub mod service;
pub mod shed;
pub mod status;

/// Code generated from `proto/ratchet/v1/token.proto`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("ratchet.v1");

    /// Encoded descriptors of our protos, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ratchet_descriptor");
}

pub use authz::AuthorizationImpl;
pub use service::TokenServiceImpl;
