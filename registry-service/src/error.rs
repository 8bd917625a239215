//! The registry's one error type and its one mapping to `tonic::Status`.
//!
//! Client-facing messages name fields, ids and reasons; database and
//! transport details are logged here and reach the client only as a generic
//! INTERNAL or UNAVAILABLE message.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `ErrorInfo.domain` of every error the registry returns.
pub const ERROR_DOMAIN: &str = "registry.agentregistry.dev";

/// Everything that can go wrong in registry-service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Request fields are invalid.
    #[error("invalid request: {}", describe(.0))]
    BadRequest(Vec<FieldViolation>),
    /// The resource does not exist in the caller's tenant.
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// `agent`, `provider`, `agent version` …
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// A resource with this name exists in the tenant.
    #[error("{kind} named {name:?} already exists")]
    AlreadyExists {
        /// `agent` or `provider`.
        kind: &'static str,
        /// The name taken.
        name: String,
    },
    /// The name is taken by a deleted resource of the tenant (soft
    /// delete keeps its name until it is purged).
    #[error(
        "{kind} named {name:?} already exists: the deleted {kind} {id:?} holds the name until \
         it is purged; undelete it, or have an admin purge it, to use the name"
    )]
    NameHeldByDeleted {
        /// `agent` or `provider`.
        kind: &'static str,
        /// The name taken.
        name: String,
        /// The deleted resource's id.
        id: String,
    },
    /// The etag (of a resource, or of a label's target) is stale.
    #[error("{0}")]
    Aborted(String),
    /// Concurrent writers of the same resource won every attempt of a
    /// locking write; nothing was written, and the call may be retried.
    #[error("{0}")]
    Contended(String),
    /// Another call with the same request id (AIP-155) is being written
    /// and its answer is not readable yet; retryable.
    #[error(
        "another call with this request_id is in progress (on this or another replica); \
         retry with the same request_id to get its answer"
    )]
    RequestInProgress,
    /// The system is not in a state that allows the call.
    #[error("{message}")]
    FailedPrecondition {
        /// `ErrorInfo.reason`, e.g. `PROVIDER_IN_USE`.
        reason: &'static str,
        /// What is wrong, for a human.
        message: String,
    },
    /// The caller's roles do not grant the method.
    #[error("{}", denial(.required))]
    PermissionDenied {
        /// The full gRPC method path asked for.
        method: String,
        /// The roles that would grant it (none for an unknown method).
        required: Vec<&'static str>,
    },
    /// The label is protected by the tenant's label policy and the caller
    /// is not an admin.
    #[error(
        "label {label:?} is protected in this tenant: only an admin may set, move or delete it"
    )]
    LabelProtected {
        /// The protected label.
        label: String,
    },
    /// The caller is not authenticated.
    #[error("{0}")]
    Unauthenticated(String),
    /// A dependency (database, crypto-service) is unreachable; retryable.
    #[error("{dependency} unavailable")]
    Unavailable {
        /// `database` or `crypto-service`.
        dependency: &'static str,
        /// Logged, never sent.
        detail: String,
    },
    /// A revision outside what is kept (a watch from before the oldest
    /// kept change, or after the newest).
    #[error("{0}")]
    OutOfRange(String),
    /// A server-wide bound was reached (open watch streams), or a watch
    /// fell too far behind; retryable.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's tenant called more often than its rate
    /// (`REGISTRY_TENANT_CALLS_PER_MINUTE`) allows; retryable after
    /// `retry_after`.
    #[error(
        "this tenant's call rate is used up (at most {per_minute} calls a minute, {burst} at \
         once, on this replica); retry after the delay in RetryInfo"
    )]
    TenantRateLimited {
        per_minute: u32,
        burst: u32,
        retry_after: std::time::Duration,
    },
    /// This server is shutting down; retryable (on another replica, or
    /// once it is back).
    #[error("{0}")]
    ShuttingDown(String),
    /// A bug or an unexpected dependency answer; logged, sent generically.
    #[error("internal error: {0}")]
    Internal(String),
    /// A setting is missing or malformed; raised only at start-up.
    #[error("{setting}: {problem}")]
    Config {
        /// The flag or environment variable at fault.
        setting: String,
        /// What is wrong (never a secret value).
        problem: String,
    },
}

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Dotted path, e.g. `agent.llm_overrides.temperature`.
    pub field: String,
    /// What is wrong.
    pub description: String,
}

impl Error {
    /// A single-violation [`Error::BadRequest`].
    pub fn bad_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::BadRequest(vec![FieldViolation {
            field: field.into(),
            description: description.into(),
        }])
    }

    /// A start-up configuration error.
    pub fn config(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Config {
            setting: setting.into(),
            problem: problem.into(),
        }
    }

    /// The outcome of two independent checks of one request: both checks'
    /// field violations in one BadRequest when both find some; otherwise the
    /// first failure, else the second result.
    pub fn both<T>(first: Result<(), Self>, second: Result<T, Self>) -> Result<T, Self> {
        match (first, second) {
            (Ok(()), second) => second,
            (Err(Self::BadRequest(mut first)), Err(Self::BadRequest(second))) => {
                first.extend(second);
                Err(Self::BadRequest(first))
            }
            (Err(error), _) => Err(error),
        }
    }

    /// A failed precondition with a machine-readable reason.
    pub fn precondition(reason: &'static str, message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            reason,
            message: message.into(),
        }
    }
}

/// Collects field violations while validating a request.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records that `field` is invalid.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// `Ok(value)` when nothing was recorded, else the violations.
    pub fn finish<T>(self, value: T) -> Result<T, Error> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Error::BadRequest(self.0))
        }
    }

    /// Whether nothing was recorded so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How long a client should wait before retrying an UNAVAILABLE call
/// (`RetryInfo.retry_delay`): long enough for a restarted dependency or a
/// database failover to take a breath, short enough not to stall callers.
pub const RETRY_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Violations listed in a status's message; the rest are in its details.
const VIOLATIONS_IN_MESSAGE: usize = 3;
/// Violations carried in a status's details; more would overflow the
/// HTTP/2 header block clients accept (16 KiB by default).
const VIOLATIONS_IN_DETAILS: usize = 100;

fn describe(violations: &[FieldViolation]) -> String {
    let mut text = violations
        .iter()
        .take(VIOLATIONS_IN_MESSAGE)
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ");
    if violations.len() > VIOLATIONS_IN_MESSAGE {
        text.push_str(&format!(
            " (and {} more)",
            violations.len() - VIOLATIONS_IN_MESSAGE
        ));
    }
    text
}

fn denial(required: &[&str]) -> String {
    if required.is_empty() {
        "this method is not open to any role".to_owned()
    } else {
        format!(
            "this method needs one of the roles: {}",
            required.join(", ")
        )
    }
}

fn info(reason: &str, metadata: Vec<(&str, String)>) -> ErrorDetails {
    ErrorDetails::with_error_info(
        reason,
        ERROR_DOMAIN,
        metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<std::collections::HashMap<_, _>>(),
    )
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::BadRequest(violations) => {
                let mut details = ErrorDetails::new();
                let omitted = violations.len().saturating_sub(VIOLATIONS_IN_DETAILS);
                for v in violations.into_iter().take(VIOLATIONS_IN_DETAILS) {
                    details.add_bad_request_violation(v.field, v.description);
                }
                let metadata: std::collections::HashMap<String, String> = (omitted > 0)
                    .then(|| ("omitted_violations".to_owned(), omitted.to_string()))
                    .into_iter()
                    .collect();
                details.set_error_info("INVALID_FIELD", ERROR_DOMAIN, metadata);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound { kind, id } => {
                let mut details = info(
                    "NOT_FOUND",
                    vec![("kind", kind.to_owned()), ("id", id.clone())],
                );
                details.set_resource_info(kind, id, "", "not found in the caller's tenant");
                Status::with_error_details(Code::NotFound, message, details)
            }
            Error::AlreadyExists { kind, name } => {
                let mut details = info(
                    "NAME_TAKEN",
                    vec![("kind", kind.to_owned()), ("name", name.clone())],
                );
                details.set_resource_info(
                    kind,
                    name,
                    "",
                    "the name is taken in the caller's tenant",
                );
                Status::with_error_details(Code::AlreadyExists, message, details)
            }
            Error::NameHeldByDeleted { kind, name, id } => {
                let mut details = info(
                    "NAME_HELD_BY_DELETED",
                    vec![
                        ("kind", kind.to_owned()),
                        ("name", name.clone()),
                        ("id", id.clone()),
                    ],
                );
                details.set_resource_info(
                    kind,
                    name,
                    "",
                    "the name is held by a deleted resource until it is purged",
                );
                Status::with_error_details(Code::AlreadyExists, message, details)
            }
            Error::Aborted(_) => {
                Status::with_error_details(Code::Aborted, message, info("ETAG_MISMATCH", vec![]))
            }
            Error::Contended(_) => {
                Status::with_error_details(Code::Aborted, message, info("WRITE_CONTENDED", vec![]))
            }
            Error::RequestInProgress => {
                let mut details = info("REQUEST_IN_PROGRESS", vec![]);
                details.set_retry_info(Some(RETRY_DELAY));
                Status::with_error_details(Code::Aborted, message, details)
            }
            Error::FailedPrecondition { reason, message } => {
                let mut details = info(reason, vec![]);
                details.add_precondition_failure_violation(reason, ERROR_DOMAIN, message.clone());
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            Error::PermissionDenied { method, required } => Status::with_error_details(
                Code::PermissionDenied,
                message,
                info(
                    "MISSING_ROLE",
                    vec![("method", method), ("required_roles", required.join(","))],
                ),
            ),
            Error::LabelProtected { label } => Status::with_error_details(
                Code::PermissionDenied,
                message,
                info("LABEL_PROTECTED", vec![("label", label)]),
            ),
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::Unavailable { dependency, detail } => {
                tracing::warn!(dependency, %detail, "dependency unavailable");
                let mut details = info(
                    "DEPENDENCY_UNAVAILABLE",
                    vec![("dependency", dependency.to_owned())],
                );
                details.set_retry_info(Some(RETRY_DELAY));
                Status::with_error_details(
                    Code::Unavailable,
                    format!("{dependency} unavailable; retry later"),
                    details,
                )
            }
            Error::OutOfRange(_) => Status::with_error_details(
                Code::OutOfRange,
                message,
                info("REVISION_OUT_OF_RANGE", vec![]),
            ),
            Error::ResourceExhausted(_) => {
                let mut details = info("RESOURCE_EXHAUSTED", vec![]);
                details.set_retry_info(Some(RETRY_DELAY));
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            Error::TenantRateLimited { retry_after, .. } => {
                let mut details = info("TENANT_RATE_LIMITED", vec![]);
                details.set_retry_info(Some(retry_after));
                details.add_quota_failure_violation(
                    "tenant",
                    "calls a minute per tenant (REGISTRY_TENANT_CALLS_PER_MINUTE)",
                );
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            Error::ShuttingDown(_) => {
                let mut details = info("SHUTTING_DOWN", vec![]);
                details.set_retry_info(Some(RETRY_DELAY));
                Status::with_error_details(Code::Unavailable, message, details)
            }
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Status::internal("internal error")
            }
            Error::Config { .. } => {
                tracing::error!(error = %message, "configuration error at run time");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    /// The reason a status's ErrorInfo gives, and its code.
    fn answered(error: Error) -> (Code, String) {
        let status = Status::from(error);
        let reason = status.get_details_error_info().map(|info| info.reason);
        (status.code(), reason.unwrap_or_default())
    }

    /// ABORTED says which of its two causes it is (common.proto): a stale
    /// etag is read again, a lost race is simply retried.
    #[test]
    fn aborted_names_a_stale_etag_apart_from_a_contended_write() {
        let stale = crate::store::stale_etag("agent", 7);
        assert_eq!(answered(stale), (Code::Aborted, "ETAG_MISMATCH".to_owned()));
        let contended = Error::Contended("too many concurrent writers".to_owned());
        assert_eq!(
            answered(contended),
            (Code::Aborted, "WRITE_CONTENDED".to_owned())
        );
    }
}
