//! Validated inputs of the use cases: what a request must satisfy before the domain sees it.
//!
//! Each type checks its own rules once, at the edge, and names the offending field when it
//! refuses (the transport turns that into INVALID_ARGUMENT). Past this point every value is known
//! to be within our limits.

use std::fmt;

use serde_json::{Map, Value};

/// Defined below the use cases so that the store can name them too; the use cases' inputs speak
/// of them, so they are at home here as well.
use crate::domain::{FamilyId, FieldError};

/// Longest subject, client id, scope or audience, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Most scopes, and most audiences, one family may carry.
pub const MAX_LIST_LEN: usize = 64;
/// Largest extra-claims object, serialised as JSON.
pub const MAX_CLAIMS_BYTES: usize = 8 * 1024;
/// Longest token accepted by Rotate, Revoke and Introspect. Our access tokens are well under
/// this even with 8 KiB of claims; anything longer is refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Claims a caller may not supply in `claims`: those the server sets itself, and every other
/// name RFC 9068, RFC 8693 or OpenID Connect gives a meaning to. A verifier that trusts our
/// signature would believe an `act` (acting party), `cnf` (key binding), `acr`/`amr`/`auth_time`
/// (how strongly and when the user authenticated) or `azp` (authorised party) that the caller
/// merely made up.
pub const RESERVED_CLAIMS: [&str; 21] = [
    // Set by us: the RFC 7519 registered claims, RFC 9068 §2.2's client_id and scope, and sid
    // (the family id).
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "client_id",
    "scope",
    "sid",
    // RFC 9068 §2.2.1 authentication information (from OpenID Connect Core §2).
    "auth_time",
    "acr",
    "amr",
    // OpenID Connect Core §2 and §3.1.3.6, §3.3.2.11: ID token claims that bind a token to a
    // client, a request or another token.
    "azp",
    "nonce",
    "at_hash",
    "c_hash",
    // RFC 7800 §3.1: proof-of-possession key binding.
    "cnf",
    // RFC 8693 §4.1, §4.4: delegation chains.
    "act",
    "may_act",
    // The JWT type belongs in the header (RFC 9068 §2.1); a claim of that name only confuses.
    "typ",
];

fn bounded(field: &str, value: String, allow_empty: bool) -> Result<String, FieldError> {
    if value.is_empty() && !allow_empty {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_NAME_BYTES} bytes, got {}", value.len()),
        ));
    }
    no_control_characters(field, &value)?;
    Ok(value)
}

/// What no text that is stored or signed may hold: a control character (general category Cc:
/// C0, DEL and C1, U+0085 NEL among them), a line or paragraph separator (Zl, Zp), or a
/// noncharacter. PostgreSQL refuses NUL in `text` and `jsonb`; the rest forge lines in logs and
/// in whatever an upstream prints (issue 20: U+0085 passed the old C0-only rule).
fn is_unprintable(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory as _};
    if c.is_ascii() {
        // The common case, without the table lookup.
        return c.is_ascii_control();
    }
    matches!(
        c.general_category(),
        G::Control | G::LineSeparator | G::ParagraphSeparator
    ) || is_noncharacter(c)
}

/// [`is_unprintable`], and format characters (Cf): bidi overrides (U+202E turns `alice` into
/// what reads as another name in a log or an upstream's page), zero-width spaces and joiners
/// (two names that look the same and are not). No *name* needs one (subject, client id, scope,
/// audience, claim name: identifiers that policies, logs and upstreams compare and show). Claim
/// string *values* may hold them: they are free text (a display name in a right-to-left script,
/// an emoji sequence joined by U+200D), signed into the token and never compared by ratchet.
fn is_forbidden_in_name(c: char) -> bool {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory as _};
    is_unprintable(c) || (!c.is_ascii() && c.general_category() == G::Format)
}

/// Unicode's 66 noncharacters (Unicode §23.7): U+FDD0..=U+FDEF, and the last two code points of
/// every plane. Reserved for a program's internal use, never for interchange.
fn is_noncharacter(c: char) -> bool {
    let c = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE
}

const NAME_RULE: &str = "must not contain control or format characters, line or paragraph separators, or noncharacters";
const TEXT_RULE: &str = "must not contain control characters, line or paragraph separators, or noncharacters";

fn no_control_characters(field: &str, value: &str) -> Result<(), FieldError> {
    if value.chars().any(is_forbidden_in_name) {
        return Err(FieldError::new(field, NAME_RULE));
    }
    Ok(())
}

/// `parent.name` as a field path for an error message. What no name may hold is escaped (`\0`,
/// `\u{1b}`, `\u{202e}`): the caller's bytes must not travel raw into our answer or logs.
pub fn claim_path(parent: &str, name: &str) -> String {
    let mut path = String::with_capacity(parent.len() + 1 + name.len());
    path.push_str(parent);
    path.push('.');
    for c in name.chars() {
        if c.is_ascii_control() {
            path.extend(c.escape_debug());
        } else if is_forbidden_in_name(c) {
            // `escape_debug` leaves some format characters (U+200D) as they are.
            path.extend(c.escape_unicode());
        } else {
            path.push(c);
        }
    }
    path
}

/// Who a family's tokens are about (`sub`): 1..=255 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject(String);

impl Subject {
    /// # Errors
    /// Empty, longer than [`MAX_NAME_BYTES`], or holding a control character.
    pub fn parse(value: String) -> Result<Self, FieldError> {
        bounded("subject", value, false).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The OAuth client of a family (`client_id`): 0..=255 bytes, empty meaning none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientId(String);

impl ClientId {
    /// # Errors
    /// Longer than [`MAX_NAME_BYTES`], or holding a control character.
    pub fn parse(value: String) -> Result<Self, FieldError> {
        bounded("client_id", value, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Granted scopes, deduplicated, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes(Vec<String>);

impl Scopes {
    /// Each scope must be an RFC 6749 §3.3 scope-token (printable ASCII but space, `"` and `\`),
    /// because the access token joins them with spaces.
    ///
    /// # Errors
    /// More than [`MAX_LIST_LEN`] scopes, or a scope that is empty, too long or has a character
    /// outside the scope-token set.
    pub fn parse(values: Vec<String>) -> Result<Self, FieldError> {
        if values.len() > MAX_LIST_LEN {
            return Err(FieldError::new(
                "scopes",
                format!("at most {MAX_LIST_LEN} scopes, got {}", values.len()),
            ));
        }
        let mut scopes: Vec<String> = Vec::with_capacity(values.len());
        for (i, scope) in values.into_iter().enumerate() {
            let field = format!("scopes[{i}]");
            let scope = bounded(&field, scope, false)?;
            if !scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
            {
                return Err(FieldError::new(
                    field,
                    "must be printable ASCII without spaces, '\"' or '\\' (RFC 6749 scope-token)",
                ));
            }
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(Self(scopes))
    }

    /// Scopes read back from storage, already validated when they were issued.
    pub fn from_stored(values: Vec<String>) -> Self {
        Self(values)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The `scope` claim: space-separated.
    pub fn to_claim(&self) -> String {
        self.0.join(" ")
    }
}

/// Intended recipients (`aud`); never empty once resolved against the default audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audiences(Vec<String>);

impl Audiences {
    /// `values`, or `[default]` when there are none.
    ///
    /// # Errors
    /// More than [`MAX_LIST_LEN`] audiences, or one that is empty, too long or holds a control
    /// character.
    pub fn parse(values: Vec<String>, default: &str) -> Result<Self, FieldError> {
        if values.len() > MAX_LIST_LEN {
            return Err(FieldError::new(
                "audiences",
                format!("at most {MAX_LIST_LEN} audiences, got {}", values.len()),
            ));
        }
        if values.is_empty() {
            return Ok(Self(vec![default.to_owned()]));
        }
        let mut audiences: Vec<String> = Vec::with_capacity(values.len());
        for (i, audience) in values.into_iter().enumerate() {
            let audience = bounded(&format!("audiences[{i}]"), audience, false)?;
            if !audiences.contains(&audience) {
                audiences.push(audience);
            }
        }
        Ok(Self(audiences))
    }

    pub fn from_stored(values: Vec<String>) -> Self {
        Self(values)
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Extra claims for every access token of a family: a JSON object of at most
/// [`MAX_CLAIMS_BYTES`] that names no [`RESERVED_CLAIMS`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExtraClaims(Map<String, Value>);

impl ExtraClaims {
    /// # Errors
    /// A reserved claim name, a control character in any name or string value at any depth, or
    /// more than [`MAX_CLAIMS_BYTES`] of JSON.
    pub fn parse(claims: Map<String, Value>) -> Result<Self, FieldError> {
        if let Some(name) = claims.keys().find(|name| RESERVED_CLAIMS.contains(&name.as_str())) {
            return Err(FieldError::new(
                format!("claims.{name}"),
                "is set by the server and may not be supplied",
            ));
        }
        no_control_characters_in_object(&ClaimPath::Root, &claims)?;
        if json_size(&claims, MAX_CLAIMS_BYTES).is_none() {
            return Err(FieldError::new(
                "claims",
                format!("must be at most {MAX_CLAIMS_BYTES} bytes as JSON"),
            ));
        }
        Ok(Self(claims))
    }

    pub fn from_stored(claims: Map<String, Value>) -> Self {
        Self(claims)
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// Where a value sits in the claims, made into a string (with [`claim_path`]) only for an error.
/// Formatting every value's path up front costs the sum of all the paths' lengths, which long
/// names nested deep make quadratic: one 1 MiB request of 32 levels of 32 KiB names over a list
/// of 8,000 values meant gigabytes of copying.
#[derive(Debug, Clone, Copy)]
pub enum ClaimPath<'a> {
    /// The claims object itself, `claims`.
    Root,
    Member(&'a ClaimPath<'a>, &'a str),
    Index(&'a ClaimPath<'a>, usize),
}

impl ClaimPath<'_> {
    /// `claims.org.teams[2]`.
    pub fn render(&self) -> String {
        match self {
            Self::Root => "claims".to_owned(),
            Self::Member(parent, name) => claim_path(&parent.render(), name),
            Self::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

fn no_control_characters_in_object(path: &ClaimPath<'_>, object: &Map<String, Value>) -> Result<(), FieldError> {
    for (name, value) in object {
        let path = ClaimPath::Member(path, name);
        if name.chars().any(is_forbidden_in_name) {
            return Err(FieldError::new(path.render(), format!("name {NAME_RULE}")));
        }
        no_control_characters_in_value(&path, value)?;
    }
    Ok(())
}

/// Depth is bounded by the transport: no request with claims nested more than 32 deep is
/// decoded (`grpc::codec`).
fn no_control_characters_in_value(path: &ClaimPath<'_>, value: &Value) -> Result<(), FieldError> {
    match value {
        Value::String(s) if s.chars().any(is_unprintable) => Err(FieldError::new(path.render(), TEXT_RULE)),
        Value::String(_) => Ok(()),
        Value::Array(values) => values
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| no_control_characters_in_value(&ClaimPath::Index(path, i), v)),
        Value::Object(object) => no_control_characters_in_object(path, object),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Bytes written, up to a limit: measures JSON without keeping it, and stops as soon as it is
/// over (a 1 MiB claim would otherwise be serialised whole, twice its size with escapes, only to
/// be refused).
struct SizeUpTo {
    written: usize,
    limit: usize,
}

impl std::io::Write for SizeUpTo {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.written += bytes.len();
        if self.written > self.limit {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The size of `claims` as JSON, or `None` when it is over `limit`.
fn json_size(claims: &Map<String, Value>, limit: usize) -> Option<usize> {
    let mut size = SizeUpTo { written: 0, limit };
    serde_json::to_writer(&mut size, claims).ok().map(|()| size.written)
}

/// What Issue was asked for, validated.
#[derive(Debug, Clone)]
pub struct IssueParams {
    pub subject: Subject,
    pub scopes: Scopes,
    pub audiences: Audiences,
    pub client_id: ClientId,
    pub claims: ExtraClaims,
}

/// A token presented to Rotate, Revoke or Introspect, checked only for size: what kind of token
/// it is, and whether it is ours, is the domain's business.
#[derive(Clone)]
pub struct PresentedToken(String);

impl PresentedToken {
    /// # Errors
    /// Empty, or longer than [`MAX_TOKEN_BYTES`].
    pub fn parse(field: &str, value: String) -> Result<Self, FieldError> {
        if value.is_empty() {
            return Err(FieldError::new(field, "must not be empty"));
        }
        if value.len() > MAX_TOKEN_BYTES {
            return Err(FieldError::new(
                field,
                format!("must be at most {MAX_TOKEN_BYTES} bytes, got {}", value.len()),
            ));
        }
        Ok(Self(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Never print a token, not even in debug output.
impl fmt::Debug for PresentedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PresentedToken({} bytes)", self.0.len())
    }
}

/// What Revoke acts on.
#[derive(Debug, Clone)]
pub enum RevokeTarget {
    Token(PresentedToken),
    Family(FamilyId),
    Subject(Subject),
}

// The tests are in a file of their own, so that this one holds only what the module does.
#[cfg(test)]
mod tests;
