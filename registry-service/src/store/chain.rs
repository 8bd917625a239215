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

/// One row's content, field by field in its chain's fixed order, kept as
/// its canonical encoding: each field is encoded as it is appended, so no
/// value is copied to be hashed.
pub struct Link {
    /// The encoding so far: `[` and the fields appended, comma-separated.
    encoded: Vec<u8>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Link")
            .field(&String::from_utf8_lossy(&self.encoded))
            .finish()
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

impl Link {
    /// An empty row.
    pub fn new() -> Self {
        Self {
            encoded: b"[".to_vec(),
        }
    }

    /// Starts the next field.
    fn field(&mut self) -> &mut Vec<u8> {
        if self.encoded.len() > 1 {
            self.encoded.push(b',');
        }
        &mut self.encoded
    }

    /// Appends a text field.
    #[must_use]
    pub fn text(mut self, text: &str) -> Self {
        encode_scalar(text, self.field());
        self
    }

    /// Appends an optional text field (`null` when absent).
    #[must_use]
    pub fn optional(mut self, text: Option<&str>) -> Self {
        encode_scalar(&text, self.field());
        self
    }

    /// Appends a number field.
    #[must_use]
    pub fn number(mut self, number: i64) -> Self {
        encode_scalar(&number, self.field());
        self
    }

    /// Appends a time field.
    #[must_use]
    pub fn time(mut self, time: DateTime<Utc>) -> Self {
        let text = time.to_rfc3339_opts(SecondsFormat::Micros, true);
        encode_scalar(&text, self.field());
        self
    }

    /// Appends a JSON field.
    #[must_use]
    pub fn json(mut self, value: &Value) -> Self {
        encode(value, None, self.field());
        self
    }

    /// Appends a configuration as its version row's hash covers it: the
    /// provider key's ciphertext (`api_key`), which the rewrap job
    /// re-encrypts in place, is replaced by a marker; its revision
    /// (`api_key_revision`) stays covered.
    #[must_use]
    pub fn configuration(mut self, configuration: &Value) -> Self {
        encode(configuration, Some(("api_key", KEY_MARKER)), self.field());
        self
    }

    /// The hash of this row after the row whose hash is `prev` (`""` for
    /// the first link).
    pub fn hash_after(&self, prev: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(prev.as_bytes());
        hasher.update(b"\n");
        hasher.update(&self.encoded);
        hasher.update(b"]");
        hex::encode(hasher.finalize())
    }
}

/// What a configuration's hash covers in place of a provider key's
/// ciphertext.
const KEY_MARKER: &str = "***encrypted***";

/// Writes `value` canonically into `out`; with `masked`, a top-level string
/// member of that name is written as the given marker instead.
fn encode(value: &Value, masked: Option<(&str, &str)>, out: &mut Vec<u8>) {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                encode(item, None, out);
            }
            out.push(b']');
        }
        Value::Object(fields) => {
            let mut sorted: Vec<(&String, &Value)> = fields.iter().collect();
            sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                encode_scalar(key, out);
                out.push(b':');
                match masked {
                    Some((name, marker)) if key.as_str() == name && item.is_string() => {
                        encode_scalar(marker, out);
                    }
                    _ => encode(item, None, out),
                }
            }
            out.push(b'}');
        }
        scalar => encode_scalar(scalar, out),
    }
}

/// Writes a string, number, boolean or null as `serde_json` prints it.
fn encode_scalar<T: serde::Serialize + ?Sized>(scalar: &T, out: &mut Vec<u8>) {
    // Writing a scalar into a Vec cannot fail: serde_json fails only on a
    // map with non-string keys or a failing writer.
    let _ = serde_json::to_writer(out, scalar);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a link hashes after its predecessor's hash and `\n`.
    fn encoding(link: &Link) -> String {
        let mut encoded = String::from_utf8(link.encoded.clone()).expect("UTF-8");
        encoded.push(']');
        encoded
    }

    #[test]
    fn keys_are_sorted_and_nothing_else_moves() {
        let value = serde_json::json!({"b": [1, {"z": null, "a": "x"}], "a": 0.7});
        let link = Link::new().json(&value);
        assert_eq!(encoding(&link), r#"[{"a":0.7,"b":[1,{"a":"x","z":null}]}]"#);
    }

    #[test]
    fn every_field_kind_is_encoded_as_the_module_says() {
        let time = DateTime::parse_from_rfc3339("2026-12-07T10:00:00.123456789Z")
            .expect("time")
            .with_timezone(&Utc);
        let link = Link::new()
            .text("tab\there \"quoted\" é")
            .optional(None)
            .optional(Some("x"))
            .number(-42)
            .time(time)
            .json(&serde_json::json!([true, null, 1.5, {"é": "\u{1}"}]));
        assert_eq!(
            encoding(&link),
            r#"["tab\there \"quoted\" é",null,"x",-42,"2026-12-07T10:00:00.123456Z",[true,null,1.5,{"é":"\u0001"}]]"#
        );
        let hash = link.hash_after("prev");
        let expected = Sha256::digest(format!("prev\n{}", encoding(&link)).as_bytes());
        assert_eq!(hash, hex::encode(expected));
    }

    #[test]
    fn a_hash_depends_on_its_predecessor_and_every_field() {
        let row = Link::new().text("t").number(1);
        let first = row.hash_after("");
        assert_eq!(first.len(), 64);
        assert_ne!(first, row.hash_after(&first));
        assert_ne!(first, Link::new().text("t").number(2).hash_after(""));
    }

    /// A fixed row and its hash, computed outside this code (Python's
    /// `json.dumps(row, ensure_ascii=False, separators=(",", ":"),
    /// sort_keys=True)`, then SHA-256 of `"abc\n" + encoding`): chains
    /// already stored verify only while this encoding stays as it is.
    /// Only the configuration's top-level `api_key` is masked, and keys
    /// sort by bytes (`Z` before `a`).
    #[test]
    fn a_stored_chain_keeps_its_hash() {
        let time = DateTime::parse_from_rfc3339("2026-12-07T10:00:00.123456Z")
            .expect("time")
            .with_timezone(&Utc);
        let configuration = serde_json::json!({
            "name": "n",
            "api_key": "arc1.1.x",
            "api_key_revision": 2,
            "nested": {"api_key": "stays", "b": [1, 2.5, null, true]},
            "Z": "upper",
        });
        let link = Link::new()
            .text("tab\there \"q\" é🤖")
            .optional(None)
            .number(-42)
            .time(time)
            .configuration(&configuration);
        assert_eq!(
            link.hash_after("abc"),
            "a3bf5c9afa36789d98637ba28b81007a05073d32f4af44c89ce0b471bd3e2c47"
        );
    }

    #[test]
    fn a_ciphertext_is_not_hashed_but_its_revision_is() {
        let one = serde_json::json!({"api_key": "arc1.1.x", "api_key_revision": 2});
        let rewrapped = serde_json::json!({"api_key": "arc1.2.y", "api_key_revision": 2});
        let hash = |configuration: &Value| Link::new().configuration(configuration).hash_after("");
        assert_eq!(hash(&one), hash(&rewrapped));
        let other_revision = serde_json::json!({"api_key": "arc1.1.x", "api_key_revision": 3});
        assert_ne!(hash(&one), hash(&other_revision));
        let link = Link::new().configuration(&one);
        assert_eq!(
            encoding(&link),
            r#"[{"api_key":"***encrypted***","api_key_revision":2}]"#
        );
    }
}
