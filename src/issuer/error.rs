//! What can go wrong in a use case, named for what the caller must do.

use crate::domain::{FamilyId, FieldError};
use crate::keys::KeyError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request breaks a rule; nothing was done.
    #[error(transparent)]
    InvalidArgument(#[from] FieldError),
    /// Unknown, malformed or forged token.
    #[error("token is invalid")]
    TokenInvalid,
    /// The refresh token's idle lifetime or its family's absolute lifetime is over.
    #[error("token has expired")]
    TokenExpired,
    /// The token's family was revoked.
    #[error("token has been revoked")]
    TokenRevoked,
    /// A spent refresh token was presented again; its family has been revoked (and that is
    /// committed) before this error is returned.
    #[error("refresh token was already used; its session has been revoked")]
    TokenReused { family: FamilyId },
    /// The family was rotated faster than [`crate::domain::RotateLimit`] allows (on any
    /// replica): nothing was spent; the same token rotates after `retry_after`.
    #[error("rotate rate limit exceeded")]
    RotateLimited {
        family: FamilyId,
        retry_after: std::time::Duration,
    },
    /// Storage is down or overloaded and nothing was done: retry later.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] StoreError),
    /// Storage stopped answering after a write was sent: it may or may not have happened.
    #[error("outcome unknown: storage stopped answering")]
    OutcomeUnknown(#[source] StoreError),
    /// Anything else: a bug or a broken invariant.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) | StoreError::Contention { .. } => Self::Unavailable(error),
            StoreError::OutcomeUnknown(_) => Self::OutcomeUnknown(error),
            // Validation should have refused it; the database is the second line of defence.
            StoreError::InvalidData(source) => {
                tracing::warn!(error = %source, "the database refused a value that validation let through");
                Self::InvalidArgument(FieldError::new(
                    "request",
                    "holds a value the database refuses as invalid",
                ))
            }
            StoreError::Internal(_) => Self::Internal(Box::new(error)),
        }
    }
}

impl From<KeyError> for Error {
    fn from(error: KeyError) -> Self {
        Self::Internal(Box::new(error))
    }
}

impl From<aws_lc_rs::error::Unspecified> for Error {
    fn from(error: aws_lc_rs::error::Unspecified) -> Self {
        Self::Internal(Box::new(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_the_database_refuses_is_invalid_argument_and_only_unknown_outcomes_are_not_unavailable() {
        let refused = Error::from(StoreError::InvalidData("22021".into()));
        assert!(matches!(&refused, Error::InvalidArgument(field) if field.field == "request"));
        assert!(matches!(
            Error::from(StoreError::OutcomeUnknown("lost".into())),
            Error::OutcomeUnknown(_)
        ));
        assert!(matches!(
            Error::from(StoreError::Contention { attempts: 40 }),
            Error::Unavailable(_)
        ));
    }
}
