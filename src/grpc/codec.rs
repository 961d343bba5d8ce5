//! The token service's codec: prost's, after a look at the request's bytes that bounds what
//! decoding them may allocate, and charges it to the request budget (`budget.rs`) first.
//!
//! Why: protobuf is dense. An empty string in a repeated field is 2 bytes on the wire and a
//! 24-byte `String` in a `Vec` that may have doubled; an empty value in a list of claims is 2
//! bytes and a `Value` of 32, held twice over while it becomes JSON. The message size limit
//! bounds the bytes, not what they turn into: 1 MiB of empty claim values is half a million
//! allocations. So before prost sees a message, [`Bounded::decoded_bytes`] walks its wire bytes
//! (O(bytes), no allocation, and only into the fields that can repeat), refuses one that breaks a
//! bound with RESOURCE_EXHAUSTED naming the field, and says what decoding it will hold.
//!
//! The bounds (IssueRequest's; the other requests are a few strings, which decode to at most
//! their own size): [`MAX_LIST_ENTRIES`] scopes and as many audiences, [`MAX_CLAIM_VALUES`]
//! values in `claims`, nested at most [`MAX_CLAIM_DEPTH`] deep. Each is well above what a valid
//! request can carry, so that a request just over a rule still reaches validation and gets its
//! named INVALID_ARGUMENT (65 scopes: "scopes: at most 64"), and only what cannot be valid is
//! refused unread.
//!
//! `build.rs` points tonic's generated code here (`codec_path`); the generated client uses it
//! too, where nothing is charged. What it leaves out: compression, which the server does not
//! accept.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf as _;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use super::budget;
use super::pb;

/// Most entries in `scopes`, and in `audiences`: 16 times the 64 that are valid.
pub const MAX_LIST_ENTRIES: usize = 1024;
/// Most values (object members and array elements, at any depth) in `claims`: twice what fits
/// in the 8 KiB of JSON claims may take, where every value costs at least 2 bytes (`0,`).
pub const MAX_CLAIM_VALUES: usize = 8192;
/// Deepest nesting of objects and arrays in `claims`, counting the claims object itself. Prost
/// refuses anything much deeper anyway (100 nested messages: 33 levels of objects), as an
/// INTERNAL error.
pub const MAX_CLAIM_DEPTH: usize = 32;
/// Memory one string of a repeated field takes besides its bytes: a `String` in a `Vec` that may
/// have doubled.
const STRING_BYTES: usize = 2 * size_of::<String>();
/// Memory one claim value takes, estimated high: as a `prost_types::Value` in a half-full B-tree
/// node or a doubled `Vec`, then again as a `serde_json::Value` (both are alive while one becomes
/// the other).
const VALUE_BYTES: usize = 256;
/// Deepest nesting of groups (a deprecated wire form nothing of ours uses) prost skips over: its
/// own recursion limit.
const MAX_GROUP_DEPTH: usize = 100;

/// A message type whose encoded form can be judged before it is decoded.
pub trait Bounded {
    /// What decoding `bytes` (a message of this type) will allocate, in bytes.
    ///
    /// # Errors
    /// The bound the message breaks, or that it is not a valid encoding.
    fn decoded_bytes(bytes: &[u8]) -> Result<usize, Refusal>;
}

/// Why a message is not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over a bound: RESOURCE_EXHAUSTED, with what was exceeded.
    Exceeded(&'static str),
    /// Not a protobuf encoding: INTERNAL, as prost's own decode errors are (gRPC's status codes
    /// doc: a message that cannot be parsed).
    Malformed,
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Exceeded(what) => Status::resource_exhausted(format!("request too large: {what}")),
            Refusal::Malformed => Status::internal("failed to decode the request message"),
        }
    }
}

/// A few strings and numbers: at most its own size once decoded. Repeated occurrences of a
/// string field replace one another, and unknown fields are skipped without being kept.
macro_rules! flat {
    ($($message:ty),* $(,)?) => {$(
        impl Bounded for $message {
            fn decoded_bytes(bytes: &[u8]) -> Result<usize, Refusal> {
                Ok(bytes.len())
            }
        }
    )*};
}

flat!(
    pb::RotateRequest,
    pb::RevokeRequest,
    pb::IntrospectRequest,
    pb::ListSessionsRequest,
    pb::GetJwksRequest,
    // Answers, decoded by clients only (and never charged there).
    pb::TokenPair,
    pb::RevokeResponse,
    pb::IntrospectResponse,
    pb::ListSessionsResponse,
    pb::GetJwksResponse,
);

// Field numbers: proto/ratchet/v1/token.proto and google/protobuf/struct.proto.
const ISSUE_SCOPES: u32 = 2;
const ISSUE_AUDIENCES: u32 = 3;
const ISSUE_CLAIMS: u32 = 5;
const STRUCT_FIELDS: u32 = 1;
const ENTRY_VALUE: u32 = 2;
const VALUE_STRUCT: u32 = 5;
const VALUE_LIST: u32 = 6;
const LIST_VALUES: u32 = 1;

impl Bounded for pb::IssueRequest {
    fn decoded_bytes(bytes: &[u8]) -> Result<usize, Refusal> {
        let (mut scopes, mut audiences, mut values) = (0, 0, 0);
        for_each_field(bytes, |tag, payload| match tag {
            ISSUE_SCOPES => count(&mut scopes, MAX_LIST_ENTRIES, "scopes: more than 1024 entries"),
            ISSUE_AUDIENCES => count(&mut audiences, MAX_LIST_ENTRIES, "audiences: more than 1024 entries"),
            ISSUE_CLAIMS => claims_object(payload, 1, &mut values),
            _ => Ok(()),
        })?;
        Ok(bytes.len() + (scopes + audiences) * STRING_BYTES + values * VALUE_BYTES)
    }
}

fn count(counter: &mut usize, max: usize, exceeded: &'static str) -> Result<(), Refusal> {
    *counter += 1;
    if *counter > max {
        return Err(Refusal::Exceeded(exceeded));
    }
    Ok(())
}

const TOO_MANY_VALUES: &str = "claims: more than 8192 values";
const TOO_DEEP: &str = "claims: nested more than 32 deep";

/// A `google.protobuf.Struct` at `depth`.
fn claims_object(bytes: &[u8], depth: usize, values: &mut usize) -> Result<(), Refusal> {
    if depth > MAX_CLAIM_DEPTH {
        return Err(Refusal::Exceeded(TOO_DEEP));
    }
    for_each_field(bytes, |tag, entry| {
        if tag != STRUCT_FIELDS {
            return Ok(());
        }
        // Every entry is a value, even one whose value field is missing (prost makes a default).
        count(values, MAX_CLAIM_VALUES, TOO_MANY_VALUES)?;
        for_each_field(entry, |tag, value| {
            if tag == ENTRY_VALUE {
                claim_value(value, depth, values)
            } else {
                Ok(())
            }
        })
    })
}

/// A `google.protobuf.ListValue` at `depth`.
fn claims_list(bytes: &[u8], depth: usize, values: &mut usize) -> Result<(), Refusal> {
    if depth > MAX_CLAIM_DEPTH {
        return Err(Refusal::Exceeded(TOO_DEEP));
    }
    for_each_field(bytes, |tag, value| {
        if tag != LIST_VALUES {
            return Ok(());
        }
        count(values, MAX_CLAIM_VALUES, TOO_MANY_VALUES)?;
        claim_value(value, depth, values)
    })
}

/// A `google.protobuf.Value` inside a container at `depth`. Counted by its container; only an
/// object or a list inside it can hold more.
fn claim_value(bytes: &[u8], depth: usize, values: &mut usize) -> Result<(), Refusal> {
    for_each_field(bytes, |tag, payload| match tag {
        VALUE_STRUCT => claims_object(payload, depth + 1, values),
        VALUE_LIST => claims_list(payload, depth + 1, values),
        _ => Ok(()),
    })
}

/// Calls `each` with the number and payload of every length-delimited field of the message in
/// `bytes`, and skips every other field, as prost reads them: a varint, 8 or 4 bytes, or a
/// group (skipped whole). Anything prost would refuse to read is [`Refusal::Malformed`]; a field
/// of the wrong wire type for its number is skipped here and refused by prost afterwards.
///
/// # Errors
/// What `each` returns, or [`Refusal::Malformed`].
pub fn for_each_field<'a>(
    mut bytes: &'a [u8],
    mut each: impl FnMut(u32, &'a [u8]) -> Result<(), Refusal>,
) -> Result<(), Refusal> {
    while !bytes.is_empty() {
        let (tag, wire_type) = key(&mut bytes)?;
        match wire_type {
            LENGTH_DELIMITED => {
                let payload = length_delimited(&mut bytes)?;
                each(tag, payload)?;
            }
            _ => skip(&mut bytes, tag, wire_type, 0)?,
        }
    }
    Ok(())
}

const VARINT: u64 = 0;
const SIXTY_FOUR_BIT: u64 = 1;
const LENGTH_DELIMITED: u64 = 2;
const START_GROUP: u64 = 3;
const END_GROUP: u64 = 4;
const THIRTY_TWO_BIT: u64 = 5;

fn varint(bytes: &mut &[u8]) -> Result<u64, Refusal> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or(Refusal::Malformed)?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift.min(63);
        if byte < 0x80 {
            // A tenth byte may only carry the top bit (prost: "invalid varint").
            return if shift == 63 && byte > 1 {
                Err(Refusal::Malformed)
            } else {
                Ok(value)
            };
        }
    }
    Err(Refusal::Malformed)
}

/// A field's number and wire type. Field number 0 does not exist (prost refuses it).
fn key(bytes: &mut &[u8]) -> Result<(u32, u64), Refusal> {
    let key = varint(bytes)?;
    let tag = u32::try_from(key >> 3).map_err(|_| Refusal::Malformed)?;
    if tag == 0 {
        return Err(Refusal::Malformed);
    }
    Ok((tag, key & 7))
}

fn length_delimited<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], Refusal> {
    let len = usize::try_from(varint(bytes)?).map_err(|_| Refusal::Malformed)?;
    let (payload, rest) = bytes.split_at_checked(len).ok_or(Refusal::Malformed)?;
    *bytes = rest;
    Ok(payload)
}

fn advance(bytes: &mut &[u8], n: usize) -> Result<(), Refusal> {
    *bytes = bytes.get(n..).ok_or(Refusal::Malformed)?;
    Ok(())
}

/// Skips one field that is not length-delimited; a group up to its matching end.
fn skip(bytes: &mut &[u8], tag: u32, wire_type: u64, depth: usize) -> Result<(), Refusal> {
    match wire_type {
        VARINT => varint(bytes).map(drop),
        SIXTY_FOUR_BIT => advance(bytes, 8),
        THIRTY_TWO_BIT => advance(bytes, 4),
        LENGTH_DELIMITED => length_delimited(bytes).map(drop),
        START_GROUP if depth < MAX_GROUP_DEPTH => loop {
            let (inner_tag, inner_wire_type) = key(bytes)?;
            if inner_wire_type == END_GROUP {
                return if inner_tag == tag {
                    Ok(())
                } else {
                    Err(Refusal::Malformed)
                };
            }
            skip(bytes, inner_tag, inner_wire_type, depth + 1)?;
        },
        _ => Err(Refusal::Malformed),
    }
}

/// prost's codec (`tonic_prost::ProstCodec`) with [`BoundedDecoder`] for requests.
#[derive(Debug, Clone)]
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Bounded + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(PhantomData)
    }
}

/// Judges, charges, then decodes; see the module docs.
#[derive(Debug, Clone)]
pub struct BoundedDecoder<U>(PhantomData<U>);

impl<U: Message + Default + Bounded> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // tonic hands over the whole message in one contiguous buffer (uncompressed: the server
        // accepts no compression).
        let bytes = buf.chunk();
        if bytes.len() != buf.remaining() {
            return Err(Refusal::Malformed.into());
        }
        budget::charge(U::decoded_bytes(bytes)?)?;
        U::decode(buf)
            .map(Some)
            .map_err(|error| Status::internal(error.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use prost_types::value::Kind;
    use prost_types::{ListValue, Struct, Value};

    use super::*;

    fn list(values: Vec<Value>) -> Value {
        Value {
            kind: Some(Kind::ListValue(ListValue { values })),
        }
    }

    fn object(fields: Vec<(&str, Value)>) -> Value {
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            })),
        }
    }

    fn issue(scopes: usize, claims: Vec<(&str, Value)>) -> Vec<u8> {
        pb::IssueRequest {
            subject: "alice".into(),
            scopes: vec![String::new(); scopes],
            claims: Some(Struct {
                fields: claims.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    /// `{"k": {"k": ... [] }}`: `depth` containers, the innermost a list.
    fn nested(depth: usize) -> Vec<(&'static str, Value)> {
        let mut value = list(vec![]);
        for _ in 2..depth {
            value = object(vec![("k", value)]);
        }
        vec![("k", value)]
    }

    fn decoded_bytes(bytes: &[u8]) -> Result<usize, Refusal> {
        pb::IssueRequest::decoded_bytes(bytes)
    }

    #[test]
    fn issue_requests_are_counted_to_their_bounds_and_refused_past_them() {
        assert!(decoded_bytes(&issue(MAX_LIST_ENTRIES, vec![])).is_ok());
        assert_eq!(
            decoded_bytes(&issue(MAX_LIST_ENTRIES + 1, vec![])),
            Err(Refusal::Exceeded("scopes: more than 1024 entries"))
        );
        let values = |n| vec![("l", list(vec![Value::default(); n - 1]))];
        assert!(decoded_bytes(&issue(0, values(MAX_CLAIM_VALUES))).is_ok());
        assert_eq!(
            decoded_bytes(&issue(0, values(MAX_CLAIM_VALUES + 1))),
            Err(Refusal::Exceeded(TOO_MANY_VALUES))
        );
        assert!(decoded_bytes(&issue(0, nested(MAX_CLAIM_DEPTH))).is_ok());
        assert_eq!(
            decoded_bytes(&issue(0, nested(MAX_CLAIM_DEPTH + 1))),
            Err(Refusal::Exceeded(TOO_DEEP))
        );
    }

    #[test]
    fn the_estimate_grows_with_what_decoding_allocates() {
        let small = decoded_bytes(&issue(1, vec![])).unwrap();
        let scopes = decoded_bytes(&issue(1000, vec![])).unwrap();
        let values = decoded_bytes(&issue(0, vec![("l", list(vec![Value::default(); 999]))])).unwrap();
        assert!(scopes >= small + 999 * STRING_BYTES, "{scopes}");
        assert!(values >= 1000 * VALUE_BYTES, "{values}");
    }

    #[test]
    fn whatever_the_scan_accepts_or_calls_malformed_prost_agrees() {
        // Groups (skipped whole, nested), fixed-width fields and unknown numbers are read past.
        let mut group = vec![0x7b]; // field 15, start group
        group.extend([0x83, 0x01, 0x84, 0x01]); // field 16 start, field 16 end
        group.extend([0x7c]); // field 15 end
        let mut message = group.clone();
        message.extend([0x79, 0, 0, 0, 0, 0, 0, 0, 0, 0x7d, 0, 0, 0, 0]);
        message.extend(issue(2, vec![]));
        assert!(decoded_bytes(&message).is_ok());
        assert_eq!(pb::IssueRequest::decode(message.as_slice()).unwrap().scopes.len(), 2);

        for malformed in [
            &[0x12, 0x05, b'a'][..],                                           // length past the end
            &[0x80][..],                                                       // truncated varint
            &[0x00, 0x00][..],                                                 // field number 0
            &[0x7b, 0x84, 0x01][..],                                           // group closed by another field's end
            &[0x7e][..],                                                       // wire type 6
            &[0x7c][..],                                                       // an end with no start
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..], // 70-bit varint
        ] {
            assert_eq!(decoded_bytes(malformed), Err(Refusal::Malformed), "{malformed:x?}");
            assert!(pb::IssueRequest::decode(malformed).is_err(), "{malformed:x?}");
        }
    }
}
