//! Domain types: validated agent and provider configurations, independent of
//! prost. Handlers convert requests into these (collecting one field
//! violation per bad field) and back; storage keeps them as JSON snapshots.

pub mod agent;
pub mod label;
pub mod params;
pub mod provider;
pub mod version;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Violations};

/// A configuration kept as a JSON snapshot (in version rows, and in a
/// row's `config` column).
pub trait Snapshot: Serialize + DeserializeOwned {
    /// The kind's name in errors.
    const KIND: &'static str;

    /// The snapshot stored in a version row.
    fn to_json(&self) -> Value {
        // A struct of strings, numbers, bools and lists always serializes.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Reads a stored snapshot, straight from the borrowed tree.
    fn from_json(value: &Value) -> Result<Self, Error> {
        Self::deserialize(value)
            .map_err(|e| Error::Internal(format!("unreadable {} snapshot: {e}", Self::KIND)))
    }
}

/// Checks a required text field: not blank, at most `max` characters.
pub(crate) fn check_required_text(v: &mut Violations, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        v.add(field, "is required");
    } else {
        check_length(v, field, value, max);
    }
}

/// Checks an optional text field's length, and that it holds no NUL
/// character (PostgreSQL text cannot store one).
pub(crate) fn check_length(v: &mut Violations, field: &str, value: &str, max: usize) {
    let length = value.chars().count();
    if length > max {
        v.add(
            field,
            format!("must be at most {max} characters (got {length})"),
        );
    } else if value.contains('\0') {
        v.add(field, "must not contain NUL characters");
    }
}

/// Checks that a number is finite and within `min..=max`.
pub(crate) fn check_f64(v: &mut Violations, field: &str, value: f64, min: f64, max: f64) {
    if !value.is_finite() || value < min || value > max {
        v.add(field, format!("must be between {min} and {max}"));
    }
}

/// Checks that an integer is within `min..=max`.
pub(crate) fn check_i32(v: &mut Violations, field: &str, value: i32, min: i32, max: i32) {
    if value < min || value > max {
        v.add(field, format!("must be between {min} and {max}"));
    }
}

/// Joins a field path: `prefix.name`, or `name` when the prefix is empty.
pub(crate) fn path(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}
