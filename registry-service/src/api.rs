//! gRPC handlers. Each one is thin: read the caller, turn the request into
//! validated domain values, call the store, turn the result back.

pub mod agents;
pub mod keys;
pub mod providers;
pub mod runtime;

use crate::crypto::Crypto;
use crate::error::Error;
use crate::store::Store;
use prost_types::FieldMask;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The database pool (and SQLite's write committer).
    pub db: Store,
    /// The crypto-service client.
    pub crypto: Crypto,
}

/// The update-mask paths to apply: `None` for a full replace (`*`), else
/// the listed paths, or `fields_set` when no mask was sent. Unknown paths
/// are INVALID_ARGUMENT.
pub fn mask_paths(
    mask: Option<&FieldMask>,
    fields_set: impl FnOnce() -> Vec<String>,
    is_known: impl Fn(&str) -> bool,
) -> Result<Option<Vec<String>>, Error> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Ok(Some(fields_set()));
    };
    if mask.paths.iter().any(|p| p == "*") {
        if mask.paths.len() > 1 {
            return Err(Error::bad_field("update_mask", "`*` must be the only path"));
        }
        return Ok(None);
    }
    let unknown: Vec<&String> = mask.paths.iter().filter(|p| !is_known(p)).collect();
    if !unknown.is_empty() {
        let listed: Vec<&str> = unknown.iter().map(|p| p.as_str()).collect();
        return Err(Error::bad_field(
            "update_mask",
            format!("unknown or output-only paths: {}", listed.join(", ")),
        ));
    }
    Ok(Some(mask.paths.clone()))
}

/// Checks that a required id field is present. An id no resource can
/// have (it holds a NUL) is simply not found.
pub fn require_id(field: &str, id: &str) -> Result<(), Error> {
    if id.trim().is_empty() {
        return Err(Error::bad_field(field, "is required"));
    }
    if id.contains('\0') {
        return Err(Error::NotFound {
            kind: "resource",
            id: id.replace('\0', "\\0"),
        });
    }
    Ok(())
}

/// Checks a version number field.
pub fn require_version(field: &str, number: i64) -> Result<(), Error> {
    if number < 1 {
        return Err(Error::bad_field(field, "must be 1 or more"));
    }
    Ok(())
}

/// Checks both version numbers of a diff, one violation per bad field.
pub fn require_versions(from: i64, to: i64) -> Result<(), Error> {
    let mut violations = crate::error::Violations::default();
    for (field, number) in [("from_version", from), ("to_version", to)] {
        if number < 1 {
            violations.add(field, "must be 1 or more");
        }
    }
    violations.finish(())
}

/// The `version_number` to resume before, from a page token.
pub fn version_cursor(after: Option<String>) -> Result<Option<i64>, Error> {
    after
        .map(|key| {
            key.parse()
                .map_err(|_| Error::bad_field("page_token", "is not a page token of this request"))
        })
        .transpose()
}
