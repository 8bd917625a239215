//! gRPC handlers. Each one is thin: read the caller, turn the request into
//! validated domain values, call the store, turn the result back.

pub mod agents;
pub mod keys;
pub mod providers;
pub mod runtime;

use crate::crypto::Crypto;
use crate::destinations::Destinations;
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
    /// Where provider keys may be sent.
    pub destinations: std::sync::Arc<Destinations>,
}

/// The most paths an update mask may hold: every field of the largest kind
/// (with each model parameter named on its own) fits several times over.
pub const MAX_MASK_PATHS: usize = 64;

/// The longest mask path quoted back in an error message.
const QUOTED_PATH_CHARS: usize = 64;

/// The update-mask paths to apply: `None` for a full replace (`*`), else
/// the listed paths once each in the order given, or `fields_set` when no
/// mask was sent. More than [`MAX_MASK_PATHS`] paths, or unknown paths, are
/// INVALID_ARGUMENT; the count is checked before any path is looked at.
pub fn mask_paths(
    mask: Option<&FieldMask>,
    fields_set: impl FnOnce() -> Vec<String>,
    is_known: impl Fn(&str) -> bool,
) -> Result<Option<Vec<String>>, Error> {
    let Some(mask) = mask.filter(|m| !m.paths.is_empty()) else {
        return Ok(Some(fields_set()));
    };
    if mask.paths.len() > MAX_MASK_PATHS {
        return Err(Error::bad_field(
            "update_mask",
            format!(
                "must hold at most {MAX_MASK_PATHS} paths (got {})",
                mask.paths.len()
            ),
        ));
    }
    if mask.paths.iter().any(|p| p == "*") {
        if mask.paths.len() > 1 {
            return Err(Error::bad_field("update_mask", "`*` must be the only path"));
        }
        return Ok(None);
    }
    let unknown: Vec<String> = mask
        .paths
        .iter()
        .filter(|p| !is_known(p))
        .map(|p| quoted(p))
        .collect();
    if !unknown.is_empty() {
        return Err(Error::bad_field(
            "update_mask",
            format!("unknown or output-only paths: {}", unknown.join(", ")),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(mask.paths.len());
    Ok(Some(
        mask.paths
            .iter()
            .filter(|p| seen.insert(p.as_str()))
            .cloned()
            .collect(),
    ))
}

/// A path as an error message shows it: at most [`QUOTED_PATH_CHARS`]
/// characters.
fn quoted(path: &str) -> String {
    match path.char_indices().nth(QUOTED_PATH_CHARS) {
        Some((end, _)) => format!("{}…", &path[..end]),
        None => path.to_owned(),
    }
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
