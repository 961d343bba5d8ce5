//! The only place where errors become `tonic::Status`.
//!
//! Token failures carry a `google.rpc.ErrorInfo` (domain `ratchet`) whose reason a client can
//! switch on. Internal errors leave with an opaque message and a short error id that is also
//! logged, so an operator can find the cause without the caller seeing it.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::domain::FieldError;
use crate::issuer::Error;
use crate::policy::limits::{RateLimited, retry_after_seconds};
use crate::policy::{Refusal, Unauthenticated};

/// `google.rpc.ErrorInfo.domain` of our errors.
pub const ERROR_DOMAIN: &str = "ratchet";

/// Machine-readable reasons, in `google.rpc.ErrorInfo.reason`.
pub mod reason {
    pub const TOKEN_INVALID: &str = "TOKEN_INVALID";
    pub const TOKEN_EXPIRED: &str = "TOKEN_EXPIRED";
    pub const TOKEN_REVOKED: &str = "TOKEN_REVOKED";
    pub const TOKEN_REUSED: &str = "TOKEN_REUSED";
    /// Not a token failure: storage stopped answering after a write was sent (DEADLINE_EXCEEDED).
    pub const OUTCOME_UNKNOWN: &str = "OUTCOME_UNKNOWN";
    /// UNAUTHENTICATED: the call's credentials name no caller of the policy.
    pub const CALLER_UNKNOWN: &str = "CALLER_UNKNOWN";
    /// PERMISSION_DENIED: the caller may not call this RPC, issue this audience, scope or claim,
    /// or act for this subject or client id (metadata `caller`, `refused`:
    /// rpc/audience/scope/claim/subject/client_id, `name`).
    pub const NOT_ALLOWED: &str = "NOT_ALLOWED";
    /// RESOURCE_EXHAUSTED: over a rate limit (metadata `limit`: caller or rotate); nothing was
    /// done. A `google.rpc.RetryInfo` detail and `retry-after` metadata say when to retry.
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
}

fn token_failure(reason: &str, message: &str) -> Status {
    Status::with_error_details(
        Code::Unauthenticated,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, std::collections::HashMap::<String, String>::new()),
    )
}

impl From<FieldError> for Status {
    fn from(error: FieldError) -> Self {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation(error.field.clone(), error.problem.clone());
        Status::with_error_details(Code::InvalidArgument, error.to_string(), details)
    }
}

/// A call still in flight when the shutdown grace ended (`grpc::cut`): a `write` may or may not
/// have taken effect (DEADLINE_EXCEEDED, OUTCOME_UNKNOWN, as [`Error::OutcomeUnknown`]); anything
/// else did nothing, and may be retried on another replica (UNAVAILABLE).
pub fn cut_at_shutdown(write: bool) -> Status {
    if write {
        Status::with_error_details(
            Code::DeadlineExceeded,
            "server shut down mid-call: the request may or may not have taken effect",
            ErrorDetails::with_error_info(
                reason::OUTCOME_UNKNOWN,
                ERROR_DOMAIN,
                std::collections::HashMap::<String, String>::new(),
            ),
        )
    } else {
        Status::unavailable("server shutting down, nothing was done: retry with backoff")
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        match error {
            Error::InvalidArgument(field) => field.into(),
            Error::TokenInvalid => token_failure(reason::TOKEN_INVALID, "refresh token is invalid"),
            Error::TokenExpired => token_failure(reason::TOKEN_EXPIRED, "refresh token has expired"),
            Error::TokenRevoked => token_failure(reason::TOKEN_REVOKED, "refresh token has been revoked"),
            Error::TokenReused { .. } => token_failure(
                reason::TOKEN_REUSED,
                "refresh token was already used; the session has been revoked",
            ),
            Error::RotateLimited { retry_after, .. } => RateLimited {
                what: "rotate",
                retry_after,
            }
            .into(),
            Error::Unavailable(source) => {
                tracing::warn!(error = %source, cause = ?std::error::Error::source(&source), "storage unavailable");
                Status::unavailable("storage temporarily unavailable, nothing was done: retry with backoff")
            }
            // gRPC's DEADLINE_EXCEEDED: "for operations that change the state of the system, this
            // error may be returned even if the operation has completed successfully".
            Error::OutcomeUnknown(source) => {
                tracing::error!(error = %source, cause = ?std::error::Error::source(&source), "storage stopped answering mid-write: outcome unknown");
                Status::with_error_details(
                    Code::DeadlineExceeded,
                    "storage stopped answering: the request may or may not have taken effect",
                    ErrorDetails::with_error_info(
                        reason::OUTCOME_UNKNOWN,
                        ERROR_DOMAIN,
                        std::collections::HashMap::<String, String>::new(),
                    ),
                )
            }
            Error::Internal(source) => {
                let id = error_id();
                tracing::error!(error_id = %id, error = %source, cause = ?source.source(), "internal error");
                internal(&id)
            }
        }
    }
}

impl From<Unauthenticated> for Status {
    fn from(error: Unauthenticated) -> Self {
        Status::with_error_details(
            Code::Unauthenticated,
            error.to_string(),
            ErrorDetails::with_error_info(
                reason::CALLER_UNKNOWN,
                ERROR_DOMAIN,
                std::collections::HashMap::<String, String>::new(),
            ),
        )
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        let metadata = [
            ("caller".to_owned(), refusal.caller.clone()),
            ("refused".to_owned(), refusal.refused.kind().to_owned()),
            ("name".to_owned(), refusal.refused.name().to_owned()),
        ];
        Status::with_error_details(
            Code::PermissionDenied,
            refusal.to_string(),
            ErrorDetails::with_error_info(reason::NOT_ALLOWED, ERROR_DOMAIN, metadata),
        )
    }
}

impl From<RateLimited> for Status {
    fn from(limited: RateLimited) -> Self {
        let mut details = ErrorDetails::with_retry_info(Some(limited.retry_after));
        details.set_error_info(
            reason::RATE_LIMITED,
            ERROR_DOMAIN,
            [("limit".to_owned(), limited.what.to_owned())],
        );
        let mut status = Status::with_error_details(Code::ResourceExhausted, limited.to_string(), details);
        // Clients that do not read details still see when to come back (seconds, rounded up).
        status
            .metadata_mut()
            .insert("retry-after", retry_after_seconds(limited.retry_after).into());
        status
    }
}

/// A short random id that ties an opaque INTERNAL answer to the log line holding its cause.
pub(crate) fn error_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// The INTERNAL answer for a failure logged under `id`; the caller learns nothing else.
pub(crate) fn internal(id: &str) -> Status {
    Status::internal(format!("internal error (id {id})"))
}
