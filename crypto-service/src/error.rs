//! The crate's one error type and its one mapping to `tonic::Status`.
//!
//! Messages never carry key material, plaintext or ciphertext bytes: only
//! field names, sizes and key version numbers.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "crypto.agentregistry.dev";

/// Everything that can go wrong in crypto-service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more request fields are invalid.
    #[error("invalid request: {}", describe(.0))]
    BadRequest(Vec<FieldViolation>),
    /// A ciphertext failed authentication: altered, wrong associated data or
    /// encrypted under another key with the same version number.
    #[error("{field}: ciphertext does not authenticate")]
    NotAuthentic {
        /// The request field holding the ciphertext.
        field: String,
    },
    /// A ciphertext names a key version the keyring does not hold (never
    /// configured, or retired).
    #[error(
        "{field}: sealed under key version {version}, which is not in this keyring (never \
         configured, or retired): add version {version} back to the keyring (ENCRYPTION_KEYS or \
         ENCRYPTION_KEYRING_FILE, then SIGHUP or restart) to open it, or replace the value"
    )]
    UnknownKeyVersion {
        /// The request field holding the ciphertext.
        field: String,
        /// The version the ciphertext names.
        version: u32,
    },
    /// The active key version cannot be retired.
    #[error("key version {version} is the active version and cannot be retired")]
    KeyVersionActive {
        /// The version asked for.
        version: u32,
    },
    /// No legacy (Fernet) key is configured for imports.
    #[error(
        "no legacy key is configured: set LEGACY_MASTER_SECRET and LEGACY_ENCRYPTION_SALT, or LEGACY_FERNET_KEY"
    )]
    LegacyKeyNotConfigured,
    /// The caller holds no role that may call the method.
    #[error("caller {caller} may not call {method}: it needs {needs}")]
    PermissionDenied {
        /// How the caller was named (`uid:1000`, `dns:…`, `anonymous:…`).
        caller: String,
        /// The method asked for.
        method: String,
        /// The roles (and their settings) that may call it.
        needs: String,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
    /// A setting is missing or malformed; raised only at start-up.
    #[error("{setting}: {problem}")]
    Config {
        /// The flag or environment variable at fault.
        setting: String,
        /// What is wrong with it (never its value).
        problem: String,
    },
    /// The server could not start or stopped with a transport error.
    #[error("server: {0}")]
    Serve(String),
}

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// Path of the field, e.g. `items[2].plaintext`.
    pub field: String,
    /// What is wrong, for a human.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field` described by `description`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl Error {
    /// A single-violation [`Error::BadRequest`].
    pub fn bad_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::BadRequest(vec![FieldViolation::new(field, description)])
    }

    /// A start-up configuration error naming `setting`.
    pub fn config(setting: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Config {
            setting: setting.into(),
            problem: problem.into(),
        }
    }

    /// The same error with every field path placed under `prefix`
    /// (`ciphertext` → `items[3].ciphertext`), for batch items.
    pub fn within(self, prefix: &str) -> Self {
        let nest = |field: String| format!("{prefix}.{field}");
        match self {
            Self::BadRequest(violations) => Self::BadRequest(
                violations
                    .into_iter()
                    .map(|v| FieldViolation::new(nest(v.field), v.description))
                    .collect(),
            ),
            Self::NotAuthentic { field } => Self::NotAuthentic { field: nest(field) },
            Self::UnknownKeyVersion { field, version } => Self::UnknownKeyVersion {
                field: nest(field),
                version,
            },
            other => other,
        }
    }
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::BadRequest(violations) => {
                let mut details = ErrorDetails::new();
                for v in &violations {
                    details.add_bad_request_violation(v.field.clone(), v.description.clone());
                }
                details.set_error_info("INVALID_FIELD", ERROR_DOMAIN, []);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotAuthentic { field } => {
                let mut details = ErrorDetails::with_bad_request_violation(
                    field.clone(),
                    "does not authenticate: altered, wrong associated data, or another key",
                );
                details.set_error_info(
                    "CIPHERTEXT_NOT_AUTHENTIC",
                    ERROR_DOMAIN,
                    [("field".to_owned(), field)],
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::UnknownKeyVersion { field, version } => {
                let details = ErrorDetails::with_error_info(
                    "KEY_VERSION_UNKNOWN",
                    ERROR_DOMAIN,
                    [
                        ("field".to_owned(), field),
                        ("key_version".to_owned(), version.to_string()),
                    ],
                );
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            Error::KeyVersionActive { version } => {
                let details = ErrorDetails::with_error_info(
                    "KEY_VERSION_ACTIVE",
                    ERROR_DOMAIN,
                    [("key_version".to_owned(), version.to_string())],
                );
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            Error::LegacyKeyNotConfigured => {
                let details =
                    ErrorDetails::with_error_info("LEGACY_KEY_NOT_CONFIGURED", ERROR_DOMAIN, []);
                Status::with_error_details(Code::FailedPrecondition, message, details)
            }
            Error::PermissionDenied { caller, method, .. } => {
                let details = ErrorDetails::with_error_info(
                    "CALLER_NOT_ALLOWED",
                    ERROR_DOMAIN,
                    [("caller".to_owned(), caller), ("method".to_owned(), method)],
                );
                Status::with_error_details(Code::PermissionDenied, message, details)
            }
            Error::Random | Error::Config { .. } | Error::Serve(_) => {
                tracing::error!(error = %message, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
