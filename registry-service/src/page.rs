//! Page sizes, the bytes a page may hold, and opaque keyset page tokens
//! (AIP-158).
//!
//! A token carries the last key of the page it ended and a fingerprint of
//! the request it belongs to (tenant, method, parent). Reused with other
//! parameters, or in another tenant, it is refused with INVALID_ARGUMENT.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u64 = 10;
/// Largest page; larger requests are clamped.
pub const MAX_PAGE_SIZE: u64 = 100;
/// Encoded bytes past which a page of resources or versions ends early
/// (AIP-158 lets a page hold fewer items than asked): 100 agents of 64 KiB
/// would be a 6.4 MiB answer, past the 4 MiB most gRPC clients receive by
/// default. A page always holds at least one item.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// Cuts `items` (a page's messages, in order) before the first one that
/// takes the page past [`MAX_PAGE_BYTES`], never before the second:
/// answers how many it kept when it cut, `None` when every one fits.
fn cut_to_bytes<T: prost::Message>(items: &mut Vec<T>) -> Option<usize> {
    let mut bytes = 0usize;
    for (index, item) in items.iter().enumerate() {
        bytes = bytes.saturating_add(item.encoded_len());
        if bytes > MAX_PAGE_BYTES && index > 0 {
            items.truncate(index);
            return Some(index);
        }
    }
    None
}

/// Cuts a page's `items` to [`MAX_PAGE_BYTES`] ([`cut_to_bytes`]) and
/// answers the key the next page starts after: when it cut, the `key` of
/// the last record kept (`records` are the page's records, in the order of
/// `items`); else the page's own `next_after`.
pub fn cut_with_next<T: prost::Message, R>(
    items: &mut Vec<T>,
    records: &[R],
    next_after: Option<String>,
    key: impl FnOnce(&R) -> String,
) -> Option<String> {
    match cut_to_bytes(items) {
        // At least one item is kept.
        Some(kept) => records.get(kept - 1).map(key),
        None => next_after,
    }
}

/// The page size to serve for a requested `page_size`.
pub fn size(requested: i32) -> Result<u64, Error> {
    size_or(requested, DEFAULT_PAGE_SIZE)
}

/// [`size`] for a listing whose default page size is `default`.
pub fn size_or(requested: i32, default: u64) -> Result<u64, Error> {
    match requested {
        n if n < 0 => Err(Error::bad_field("page_size", "must not be negative")),
        0 => Ok(default),
        n => Ok(u64::try_from(n).map_or(MAX_PAGE_SIZE, |n| n.min(MAX_PAGE_SIZE))),
    }
}

/// What a page token encodes, and nothing else: a token with another
/// field (or a field twice) is not one this registry wrote, and is refused.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Token {
    /// The last key of the previous page.
    k: String,
    /// Fingerprint of the request scope.
    s: String,
}

/// The scope of a list request: everything but page size and token.
#[derive(Debug, Clone)]
pub struct Scope(String);

impl Scope {
    /// A scope from its parts (tenant, method, parent id …).
    pub fn new(parts: &[&str]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        Self(hex::encode(&hasher.finalize()[..12]))
    }

    /// The token that resumes after `last_key`.
    pub fn token_after(&self, last_key: &str) -> String {
        let token = Token {
            k: last_key.to_owned(),
            s: self.0.clone(),
        };
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
    }

    /// The key to resume after; `None` for the first page.
    pub fn resume_after(&self, page_token: &str) -> Result<Option<String>, Error> {
        if page_token.is_empty() {
            return Ok(None);
        }
        let invalid = || Error::bad_field("page_token", "is not a page token of this request");
        let bytes = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| invalid())?;
        let token: Token = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
        if token.s != self.0 || token.k.contains('\0') {
            return Err(invalid());
        }
        Ok(Some(token.k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(size(0).ok(), Some(10));
        assert_eq!(size(7).ok(), Some(7));
        assert_eq!(size(1000).ok(), Some(100));
        assert!(size(-1).is_err());
    }

    #[test]
    fn a_token_works_only_in_its_own_scope() {
        let scope = Scope::new(&["tenant-a", "ListAgents"]);
        let token = scope.token_after("key-1");
        assert_eq!(
            scope.resume_after(&token).ok().flatten().as_deref(),
            Some("key-1")
        );
        assert!(
            Scope::new(&["tenant-b", "ListAgents"])
                .resume_after(&token)
                .is_err()
        );
        assert!(scope.resume_after("garbage").is_err());
        assert_eq!(scope.resume_after("").ok().flatten(), None);
    }

    /// Found by the `page_token` fuzz target: our own token with one more
    /// field, whose value is not UTF-8 (skipped unread by a lenient
    /// decoder), was accepted.
    #[test]
    fn a_token_with_a_field_of_its_own_is_refused() {
        let scope = Scope::new(&["tenant-a", "ListAgents"]);
        let own = URL_SAFE_NO_PAD
            .decode(scope.token_after("key-1"))
            .expect("base64url");
        let mut grown = own[..own.len() - 1].to_vec();
        grown.extend_from_slice(b",\"x\":\"\xa5\"}");
        assert!(scope.resume_after(&URL_SAFE_NO_PAD.encode(&grown)).is_err());
        let mut twice = own[..own.len() - 1].to_vec();
        twice.extend_from_slice(b",\"k\":\"key-2\"}");
        assert!(scope.resume_after(&URL_SAFE_NO_PAD.encode(&twice)).is_err());
    }

    #[test]
    fn a_page_is_cut_before_the_item_that_takes_it_past_its_bytes() {
        // An Any holding n bytes (and no type URL) encodes in n + 4 here
        // (tag, three-byte length).
        let item = |n: usize| prost_types::Any {
            type_url: String::new(),
            value: vec![7; n],
        };
        let quarter = MAX_PAGE_BYTES / 4 - 4;
        let mut fits = vec![item(quarter); 4];
        assert_eq!(cut_to_bytes(&mut fits), None);
        assert_eq!(fits.len(), 4);
        let mut over = vec![item(quarter); 5];
        assert_eq!(cut_to_bytes(&mut over), Some(4));
        assert_eq!(over.len(), 4);
        // One item larger than the page is still a page of one.
        let mut huge = vec![item(2 * MAX_PAGE_BYTES), item(1)];
        assert_eq!(cut_to_bytes(&mut huge), Some(1));
        assert_eq!(huge.len(), 1);
    }
}
