//! The key-use audit: one structured INFO line (target `audit`) for every
//! value crypto-service opens or re-seals on a caller's behalf — each
//! Decrypt, DecryptBatch item, Rewrap item and ImportFernet item, whether
//! it succeeded or not.
//!
//! A line names the caller, the method, the key version, and the tenant,
//! provider and field the associated data binds the value to (the registry
//! writes `agentregistry.v1|tenant=…|provider=…|field=…`). It never holds
//! the plaintext, the ciphertext or the associated data's raw bytes: the
//! three names are taken only when they are short and plainly printable.
//!
//! One use is written at DEBUG instead: a Decrypt that opened the
//! registry's key canary ([`KEY_CANARY_AAD`]), which every registry replica
//! asks for every few seconds to check readiness. The canary is a constant,
//! not a secret, and only a value sealed under exactly that associated data
//! opens with it (a provider key bound to a tenant does not), so no secret
//! leaves quietly this way; a canary that fails to open is still an INFO
//! line, and every call is still counted in `grpc_server_handled_total`.

use crate::identity::Caller;

/// The associated data of the registry's key canary (see
/// `registry-service/src/store/keys.rs`).
pub const KEY_CANARY_AAD: &[u8] = b"agentregistry.v1|key_canary";

/// Longest tenant, provider or field name copied into a line.
const MOST_NAME_CHARS: usize = 128;

/// Where a value is bound, read from its associated data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The tenant, or `-` when the associated data does not name one.
    pub tenant: String,
    /// The provider id, or `-`.
    pub provider: String,
    /// The field, or `-`.
    pub field: String,
}

impl Binding {
    /// Reads the registry's associated data format; anything else gives
    /// `-` for every name (and `(unprintable)` for a name that is not
    /// short, printable text).
    pub fn parse(aad: &[u8]) -> Self {
        let mut binding = Self {
            tenant: "-".to_owned(),
            provider: "-".to_owned(),
            field: "-".to_owned(),
        };
        let Ok(text) = std::str::from_utf8(aad) else {
            return binding;
        };
        let mut parts = text.split('|');
        if parts.next() != Some("agentregistry.v1") {
            return binding;
        }
        for part in parts {
            let Some((key, value)) = part.split_once('=') else {
                continue;
            };
            let slot = match key {
                "tenant" => &mut binding.tenant,
                "provider" => &mut binding.provider,
                "field" => &mut binding.field,
                _ => continue,
            };
            *slot = printable(value);
        }
        binding
    }
}

/// What became of one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Opened (and, for Rewrap and ImportFernet, sealed again).
    Ok,
    /// Refused: malformed, not authentic, or its key version is missing.
    Refused,
}

/// One key use, as the audit line reports it.
#[derive(Debug)]
pub struct KeyUse<'a> {
    /// Who asked.
    pub caller: &'a Caller,
    /// `Decrypt`, `DecryptBatch`, `Rewrap` or `ImportFernet`.
    pub method: &'static str,
    /// The key version that had sealed the value (for ImportFernet: the
    /// one that seals it now); `None` when the ciphertext names none.
    pub key_version: Option<u32>,
    /// For Rewrap and ImportFernet: the version that seals it now.
    pub new_key_version: Option<u32>,
    /// The associated data the caller gave.
    pub associated_data: &'a [u8],
    /// What became of it.
    pub outcome: Outcome,
}

impl KeyUse<'_> {
    /// Whether this is a Decrypt that opened the registry's key canary: a
    /// readiness check, written at DEBUG.
    pub fn is_key_canary(&self) -> bool {
        self.method == "Decrypt"
            && self.outcome == Outcome::Ok
            && self.associated_data == KEY_CANARY_AAD
    }

    /// Writes the line (at DEBUG for the key canary, INFO otherwise).
    pub fn log(&self) {
        let binding = Binding::parse(self.associated_data);
        let version = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let outcome = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
        };
        // The same line at either level (tracing's levels are constants).
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: "audit",
                    $level,
                    caller = %self.caller.identity,
                    method = self.method,
                    key_version = %version(self.key_version),
                    new_key_version = %version(self.new_key_version),
                    tenant = %binding.tenant,
                    provider = %binding.provider,
                    field = %binding.field,
                    outcome,
                    "key use"
                )
            };
        }
        if self.is_key_canary() {
            line!(tracing::Level::DEBUG);
        } else {
            line!(tracing::Level::INFO);
        }
    }
}

fn printable(value: &str) -> String {
    let plain = !value.is_empty()
        && value.len() <= MOST_NAME_CHARS
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@'));
    if plain {
        value.to_owned()
    } else {
        "(unprintable)".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registrys_associated_data_gives_tenant_provider_and_field() {
        let binding = Binding::parse(b"agentregistry.v1|tenant=acme|provider=p-1|field=api_key");
        assert_eq!(
            binding,
            Binding {
                tenant: "acme".to_owned(),
                provider: "p-1".to_owned(),
                field: "api_key".to_owned(),
            }
        );
    }

    #[test]
    fn only_the_key_canary_opened_by_decrypt_is_quiet() {
        let caller = Caller::unknown();
        let key_use = |method, associated_data, outcome| KeyUse {
            caller: &caller,
            method,
            key_version: Some(1),
            new_key_version: None,
            associated_data,
            outcome,
        };
        assert!(key_use("Decrypt", KEY_CANARY_AAD, Outcome::Ok).is_key_canary());
        assert!(!key_use("Decrypt", KEY_CANARY_AAD, Outcome::Refused).is_key_canary());
        assert!(!key_use("DecryptBatch", KEY_CANARY_AAD, Outcome::Ok).is_key_canary());
        assert!(!key_use("Rewrap", KEY_CANARY_AAD, Outcome::Ok).is_key_canary());
        let tenant = b"agentregistry.v1|tenant=acme|provider=p-1|field=api_key";
        assert!(!key_use("Decrypt", tenant, Outcome::Ok).is_key_canary());
        assert!(!key_use("Decrypt", b"agentregistry.v1|key_canary|", Outcome::Ok).is_key_canary());
    }

    #[test]
    fn other_associated_data_gives_nothing_it_should_not() {
        assert_eq!(Binding::parse(b"canary").tenant, "-");
        assert_eq!(Binding::parse(&[0xff, 0xfe]).provider, "-");
        let odd = Binding::parse(b"agentregistry.v1|tenant=a\nforged line|provider=");
        assert_eq!(odd.tenant, "(unprintable)");
        assert_eq!(odd.provider, "(unprintable)");
        assert_eq!(odd.field, "-");
    }
}
