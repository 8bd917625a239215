//! Hash chains over stored history (tamper evidence): every version row,
//! label move and sealed audit event carries `hash = SHA-256(prev ‖ content)`,
//! hex-encoded, where `prev` is its predecessor's hash (empty for the first
//! link) and `content` the row's canonical encoding.
//!
//! The canonical encoding of a row is a JSON array of its fields in a fixed
//! order ([`Link`]), written with no whitespace, object keys sorted by
//! their UTF-8 bytes, strings escaped as `serde_json` escapes them, numbers
//! as `serde_json` prints them, times as RFC 3339 in UTC to the microsecond
//! (`2026-12-07T10:00:00.123456Z`). The hash input is the predecessor's hex
//! hash, one byte `0x0A`, then the encoding. A stored JSON value (a
//! configuration, a diff, audit details) is encoded from what the database
//! returns, so both databases hash the same bytes.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// One row's content, field by field in its chain's fixed order.
#[derive(Debug, Default)]
pub struct Link(Vec<Value>);

impl Link {
    /// An empty row.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a text field.
    #[must_use]
    pub fn text(mut self, text: &str) -> Self {
        self.0.push(Value::String(text.to_owned()));
        self
    }

    /// Appends an optional text field (`null` when absent).
    #[must_use]
    pub fn optional(mut self, text: Option<&str>) -> Self {
        self.0
            .push(text.map_or(Value::Null, |t| Value::String(t.to_owned())));
        self
    }

    /// Appends a number field.
    #[must_use]
    pub fn number(mut self, number: i64) -> Self {
        self.0.push(Value::from(number));
        self
    }

    /// Appends a time field.
    #[must_use]
    pub fn time(mut self, time: DateTime<Utc>) -> Self {
        let text = time.to_rfc3339_opts(SecondsFormat::Micros, true);
        self.0.push(Value::String(text));
        self
    }

    /// Appends a JSON field.
    #[must_use]
    pub fn json(mut self, value: &Value) -> Self {
        self.0.push(value.clone());
        self
    }

    /// The hash of this row after the row whose hash is `prev` (`""` for
    /// the first link).
    pub fn hash_after(&self, prev: &str) -> String {
        let mut encoded = String::new();
        canonical(&Value::Array(self.0.clone()), &mut encoded);
        let mut hasher = Sha256::new();
        hasher.update(prev.as_bytes());
        hasher.update(b"\n");
        hasher.update(encoded.as_bytes());
        hex::encode(hasher.finalize())
    }
}

/// Writes `value` in the canonical encoding (see the module documentation).
pub fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            let mut sorted: Vec<(&String, &Value)> = fields.iter().collect();
            sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// A configuration as its version row's hash covers it: the provider key's
/// ciphertext (`api_key`), which the rewrap job re-encrypts in place, is
/// replaced by a marker; its revision (`api_key_revision`) stays covered.
pub fn hashed_configuration(configuration: &Value) -> Value {
    let mut hashed = configuration.clone();
    if let Some(key) = hashed.get_mut("api_key")
        && key.is_string()
    {
        *key = Value::String("***encrypted***".to_owned());
    }
    hashed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_and_nothing_else_moves() {
        let value = serde_json::json!({"b": [1, {"z": null, "a": "x"}], "a": 0.7});
        let mut out = String::new();
        canonical(&value, &mut out);
        assert_eq!(out, r#"{"a":0.7,"b":[1,{"a":"x","z":null}]}"#);
    }

    #[test]
    fn a_hash_depends_on_its_predecessor_and_every_field() {
        let row = Link::new().text("t").number(1);
        let first = row.hash_after("");
        assert_eq!(first.len(), 64);
        assert_ne!(first, row.hash_after(&first));
        assert_ne!(first, Link::new().text("t").number(2).hash_after(""));
    }

    #[test]
    fn a_ciphertext_is_not_hashed_but_its_revision_is() {
        let one = serde_json::json!({"api_key": "arc1.1.x", "api_key_revision": 2});
        let rewrapped = serde_json::json!({"api_key": "arc1.2.y", "api_key_revision": 2});
        assert_eq!(hashed_configuration(&one), hashed_configuration(&rewrapped));
    }
}
