//! The gRPC transport: generated code ([`pb`]), the service ([`service`]), Envoy's external
//! authorization ([`authz`], on Envoy's generated code from `envoy-types`), request parsing and
//! response encoding ([`convert`]), the one mapping of domain errors to `Status` ([`status`]) and
//! the layers around the whole server ([`call`]: each call's RPC, request id and span, every call
//! counted and timed; [`message_limit`], [`panic`](mod@panic), [`shed`],
//! [`budget`], [`cut`]: the calls still in flight when the shutdown grace ends); what a
//! caller may do ([`access`]; who is calling is the transport's to say,
//! `crate::transport::identity`); the codec that bounds what a request decodes to ([`codec`]); the
//! health service with its `Watch` streams counted ([`health`]).

pub mod access;
pub mod authz;
pub mod budget;
pub mod call;
pub mod codec;
pub mod convert;
pub mod cut;
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

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::policy::RPC_NAMES;

    /// The policy names a call by its method (`grpc/access.rs`), and grants only names it knows:
    /// an RPC served but missing from [`RPC_NAMES`] could be granted to no caller but `"*"`.
    #[test]
    fn every_rpc_served_is_one_the_policy_can_grant_and_no_other() {
        let descriptors = prost_types::FileDescriptorSet::decode(pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut served: Vec<String> = descriptors
            .file
            .iter()
            .flat_map(|file| &file.service)
            .flat_map(|service| &service.method)
            .map(|method| method.name().to_owned())
            .collect();
        assert!(
            served.contains(&"Issue".to_owned()),
            "the descriptor set holds our service"
        );
        // Envoy's ext_authz, whose path is held to envoy-types' generated client in authz/wire.rs.
        let check = authz::CHECK_PATH.rsplit_once('/').map(|(_, method)| method.to_owned());
        served.extend(check);
        served.sort();
        let mut grantable: Vec<String> = RPC_NAMES.iter().map(|name| (*name).to_owned()).collect();
        grantable.sort();
        assert_eq!(
            served, grantable,
            "policy::RPC_NAMES must list exactly the RPCs served (add a new RPC there)"
        );
    }
}
