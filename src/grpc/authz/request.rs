//! The part of Envoy's `CheckRequest` that Check reads, decoded within bounds.
//!
//! Why not envoy-types' `CheckRequest`: decoding it builds all that Envoy may send (both peers'
//! addresses, labels and certificates, the route's and the filters' metadata as nested `Struct`s,
//! the body) and every header, however many: 8.4 million empty headers in a 16 MiB Check made one
//! call take 600 MB. These types hold only what `Check` reads, under the same field names and
//! numbers (Envoy's external_auth.proto, attribute_context.proto, base.proto); every other field
//! is skipped by prost without being kept, and the lists stop growing at their bounds:
//! - headers, in the `headers` map or the `header_map` list: [`MAX_HEADERS`] + 1 are kept, the
//!   rest skipped, so that a request with more is still told apart and denied (`invalid_request`);
//! - `context_extensions`: [`MAX_CONTEXT_EXTENSIONS`]; a route with more is refused with
//!   RESOURCE_EXHAUSTED (a route sets them: no real one has more than a handful).
//!
//! The service's codec (`CheckCodec`, in `wire.rs` beside the answer it encodes) decodes with
//! these, then charges the request budget (`grpc::budget`) with what the decoded request holds.
//! Skipping is also cheaper than decoding: a Check no longer pays for the parts of Envoy's
//! request it never looked at.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, hash_map, message, skip_field, string};
use prost::{DecodeError, Message};

use super::MAX_HEADERS;

/// Most `context_extensions` entries read. Envoy and Istio let a route set them; ratchet reads
/// two, and a route with hundreds is a mistake.
pub const MAX_CONTEXT_EXTENSIONS: usize = 256;

/// `envoy.service.auth.v3.CheckRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`: the request and the route's extensions.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct AttributeContext {
    pub request: Option<Request>,
    pub context_extensions: HashMap<String, String>,
    /// More than [`MAX_CONTEXT_EXTENSIONS`] were sent; those past it were skipped.
    pub too_many_extensions: bool,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`: its headers, either way Envoy sends them.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct HttpRequest {
    pub headers: HashMap<String, String>,
    pub header_map: Option<HeaderMap>,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct HeaderMap {
    pub headers: Vec<HeaderValue>,
}

// Field numbers, from Envoy's protos.
const ATTRIBUTES_REQUEST: u32 = 4;
const ATTRIBUTES_CONTEXT_EXTENSIONS: u32 = 10;
const HTTP_HEADERS: u32 = 3;
const HTTP_HEADER_MAP: u32 = 13;
const HEADER_MAP_HEADERS: u32 = 1;

/// Encodes a `map<string, string>` field (only tests encode these types).
fn encode_strings(tag: u32, map: &HashMap<String, String>, buf: &mut impl BufMut) {
    hash_map::encode(
        string::encode,
        string::encoded_len,
        string::encode,
        string::encoded_len,
        tag,
        map,
        buf,
    );
}

fn strings_len(tag: u32, map: &HashMap<String, String>) -> usize {
    hash_map::encoded_len(string::encoded_len, string::encoded_len, tag, map)
}

impl Message for AttributeContext {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(request) = &self.request {
            message::encode(ATTRIBUTES_REQUEST, request, buf);
        }
        encode_strings(ATTRIBUTES_CONTEXT_EXTENSIONS, &self.context_extensions, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            ATTRIBUTES_REQUEST => message::merge(wire_type, self.request.get_or_insert_default(), buf, ctx),
            ATTRIBUTES_CONTEXT_EXTENSIONS if self.context_extensions.len() < MAX_CONTEXT_EXTENSIONS => {
                hash_map::merge(string::merge, string::merge, &mut self.context_extensions, buf, ctx)
            }
            ATTRIBUTES_CONTEXT_EXTENSIONS => {
                self.too_many_extensions = true;
                skip_field(wire_type, tag, buf, ctx)
            }
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        self.request
            .as_ref()
            .map_or(0, |request| message::encoded_len(ATTRIBUTES_REQUEST, request))
            + strings_len(ATTRIBUTES_CONTEXT_EXTENSIONS, &self.context_extensions)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Message for HttpRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_strings(HTTP_HEADERS, &self.headers, buf);
        if let Some(map) = &self.header_map {
            message::encode(HTTP_HEADER_MAP, map, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            // One past the bound is kept: `Check` must see that there were too many.
            HTTP_HEADERS if self.headers.len() <= MAX_HEADERS => {
                hash_map::merge(string::merge, string::merge, &mut self.headers, buf, ctx)
            }
            HTTP_HEADER_MAP => message::merge(wire_type, self.header_map.get_or_insert_default(), buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        strings_len(HTTP_HEADERS, &self.headers)
            + self
                .header_map
                .as_ref()
                .map_or(0, |map| message::encoded_len(HTTP_HEADER_MAP, map))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

impl Message for HeaderMap {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        message::encode_repeated(HEADER_MAP_HEADERS, &self.headers, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            HEADER_MAP_HEADERS if self.headers.len() <= MAX_HEADERS => {
                message::merge_repeated(wire_type, &mut self.headers, buf, ctx)
            }
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        message::encoded_len_repeated(HEADER_MAP_HEADERS, &self.headers)
    }

    fn clear(&mut self) {
        self.headers.clear();
    }
}

impl CheckRequest {
    /// Memory the decoded request holds besides the bytes of its strings (counted by the caller
    /// as the message's size): every table slot and list entry, strings' headers included.
    pub(super) fn overhead_bytes(&self) -> usize {
        let map = |map: &HashMap<String, String>| map.capacity() * (size_of::<(String, String)>() + 1);
        let Some(attributes) = &self.attributes else {
            return 0;
        };
        let http = attributes.request.as_ref().and_then(|request| request.http.as_ref());
        map(&attributes.context_extensions)
            + http.map_or(0, |http| {
                map(&http.headers)
                    + http
                        .header_map
                        .as_ref()
                        .map_or(0, |list| list.headers.capacity() * size_of::<HeaderValue>())
            })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::ext_authz::v3::pb as envoy;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext as EnvoyAttributes, attribute_context};

    use super::*;

    fn pairs(n: usize, prefix: &str) -> HashMap<String, String> {
        (0..n).map(|i| (format!("{prefix}{i}"), format!("v{i}"))).collect()
    }

    fn envoy_request(headers: HashMap<String, String>, list: Vec<core::HeaderValue>, extensions: usize) -> Vec<u8> {
        envoy::CheckRequest {
            attributes: Some(EnvoyAttributes {
                source: Some(attribute_context::Peer {
                    principal: "spiffe://td/ns/a/sa/b".into(),
                    labels: pairs(5, "label"),
                    ..Default::default()
                }),
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        method: "GET".into(),
                        path: "/orders".into(),
                        headers,
                        header_map: (!list.is_empty()).then_some(core::HeaderMap { headers: list }),
                        body: "ignored".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: pairs(extensions, "ratchet.x"),
                ..Default::default()
            }),
        }
        .encode_to_vec()
    }

    #[test]
    fn what_check_reads_decodes_as_envoy_types_decodes_it_and_the_rest_is_skipped() {
        let headers = pairs(20, "x-h");
        let list: Vec<core::HeaderValue> = (0..3)
            .map(|i| core::HeaderValue {
                key: format!("k{i}"),
                raw_value: vec![b'v', 0xff],
                ..Default::default()
            })
            .collect();
        let bytes = envoy_request(headers.clone(), list.clone(), 2);
        let ours = CheckRequest::decode(bytes.as_slice()).unwrap();
        let attributes = ours.attributes.unwrap();
        assert_eq!(attributes.context_extensions, pairs(2, "ratchet.x"));
        assert!(!attributes.too_many_extensions);
        let http = attributes.request.unwrap().http.unwrap();
        assert_eq!(http.headers, headers);
        assert_eq!(http.header_map.unwrap().headers, list);
    }

    #[test]
    fn headers_stop_one_past_the_bound_and_extensions_at_theirs() {
        let many = MAX_HEADERS + 500;
        let list = vec![core::HeaderValue::default(); many];
        let bytes = envoy_request(pairs(many, "x-h"), list, MAX_CONTEXT_EXTENSIONS + 1);
        let ours = CheckRequest::decode(bytes.as_slice()).unwrap();
        let attributes = ours.attributes.as_ref().unwrap();
        assert!(attributes.too_many_extensions);
        assert_eq!(attributes.context_extensions.len(), MAX_CONTEXT_EXTENSIONS);
        let http = attributes.request.as_ref().unwrap().http.as_ref().unwrap();
        assert_eq!(http.headers.len(), MAX_HEADERS + 1);
        assert_eq!(http.header_map.as_ref().unwrap().headers.len(), MAX_HEADERS + 1);
        assert!(ours.overhead_bytes() < 256 * 1024, "{}", ours.overhead_bytes());
    }
}
