//! The self-describing ciphertext string: `arc1.<key_version>.<payload>`.
//!
//! `payload` is unpadded base64url of `nonce (12 bytes) ‖ ciphertext ‖ tag
//! (16 bytes)`. The header `arc1.<key_version>.` is authenticated as part of
//! the AES-GCM associated data, so a stored value cannot be relabelled with
//! another key version. Parsing is strict: one spelling per value (no
//! leading zeros, no padding, canonical base64), so every altered byte is
//! either rejected here or fails authentication.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The format tag that starts every ciphertext this service writes.
pub const FORMAT_TAG: &str = "arc1";
/// Bytes of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Bytes of an AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;

/// A parsed ciphertext string, borrowing the header from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `arc1.<key_version>.`, exactly as it appeared.
    pub header: &'a str,
    /// The key version that sealed the payload.
    pub key_version: u32,
    /// The nonce the payload was sealed with.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the tag.
    pub sealed: Vec<u8>,
}

/// Why a string is not a ciphertext; the text is safe to show callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The string does not start with a known format tag.
    #[error("not an arc1 ciphertext")]
    UnknownFormat,
    /// The key version is not a canonical positive decimal number.
    #[error("malformed key version")]
    BadKeyVersion,
    /// The payload is not canonical unpadded base64url.
    #[error("payload is not base64url")]
    BadEncoding,
    /// The payload is too short to hold a nonce and a tag.
    #[error("payload is truncated")]
    Truncated,
}

/// The header for `key_version`, which is also the first part of the AAD.
pub fn header(key_version: u32) -> String {
    format!("{FORMAT_TAG}.{key_version}.")
}

/// Formats a sealed payload as a ciphertext string.
pub fn format(key_version: u32, nonce: &[u8; NONCE_LEN], sealed: &[u8]) -> String {
    let mut payload = Vec::with_capacity(NONCE_LEN + sealed.len());
    payload.extend_from_slice(nonce);
    payload.extend_from_slice(sealed);
    let mut out = header(key_version);
    URL_SAFE_NO_PAD.encode_string(&payload, &mut out);
    out
}

/// Parses a ciphertext string without decrypting it.
pub fn parse(text: &str) -> Result<Envelope<'_>, ParseError> {
    let rest = text
        .strip_prefix(FORMAT_TAG)
        .and_then(|rest| rest.strip_prefix('.'))
        .ok_or(ParseError::UnknownFormat)?;
    let (version_text, payload_text) = rest.split_once('.').ok_or(ParseError::BadKeyVersion)?;
    let key_version = parse_version(version_text)?;
    let header = &text[..FORMAT_TAG.len() + 1 + version_text.len() + 1];
    let payload = URL_SAFE_NO_PAD
        .decode(payload_text)
        .map_err(|_| ParseError::BadEncoding)?;
    if payload.len() < NONCE_LEN + TAG_LEN {
        return Err(ParseError::Truncated);
    }
    let (nonce, sealed) = payload.split_at(NONCE_LEN);
    let mut nonce_bytes = [0u8; NONCE_LEN];
    nonce_bytes.copy_from_slice(nonce);
    Ok(Envelope {
        header,
        key_version,
        nonce: nonce_bytes,
        sealed: sealed.to_vec(),
    })
}

/// Reads the key version without decoding the payload.
pub fn key_version_of(text: &str) -> Result<u32, ParseError> {
    parse(text).map(|envelope| envelope.key_version)
}

fn parse_version(text: &str) -> Result<u32, ParseError> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && !text.starts_with('0');
    if !canonical {
        return Err(ParseError::BadKeyVersion);
    }
    text.parse().map_err(|_| ParseError::BadKeyVersion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_then_parse_gives_the_parts_back() {
        let nonce = [7u8; NONCE_LEN];
        let sealed = vec![1u8; 40];
        let text = format(12, &nonce, &sealed);
        assert!(text.starts_with("arc1.12."));
        let envelope = parse(&text).expect("parses");
        assert_eq!(envelope.header, "arc1.12.");
        assert_eq!(envelope.key_version, 12);
        assert_eq!(envelope.nonce, nonce);
        assert_eq!(envelope.sealed, sealed);
    }

    #[test]
    fn non_canonical_spellings_are_rejected() {
        let good = format(1, &[0; NONCE_LEN], &[0; TAG_LEN + 4]);
        let payload = good.trim_start_matches("arc1.1.");
        for bad in [
            format!("arc2.1.{payload}"),
            format!("arc1.01.{payload}"),
            format!("arc1.0.{payload}"),
            format!("arc1.+1.{payload}"),
            format!("arc1..{payload}"),
            format!("arc1.1.{payload}="),
            format!("arc1.1.{payload}!"),
            "arc1.1.AAAA".to_owned(),
            "arc1.99999999999.AAAA".to_owned(),
            String::new(),
        ] {
            assert!(parse(&bad).is_err(), "accepted {bad:?}");
        }
    }
}
