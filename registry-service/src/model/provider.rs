//! An LLM provider's configuration: what a version snapshot holds. The API
//! key is held only as crypto-service ciphertext.

use serde::{Deserialize, Serialize};

use super::Snapshot;
use super::params::{self, ModelParams};
use super::version::{self, Change};
use super::{check_length, check_required_text};
use crate::error::{Error, Violations};

/// What diffs show instead of a key whose revision is unknown (stored
/// before revisions were kept).
pub const ENCRYPTED_MARKER: &str = "***encrypted***";

/// What diffs show instead of a key: its revision, never its ciphertext.
pub fn encrypted_marker(revision: Option<i64>) -> String {
    match revision {
        Some(revision) => format!("***encrypted, revision {revision}***"),
        None => ENCRYPTED_MARKER.to_owned(),
    }
}

/// The provider kinds, stored by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    AzureOpenai,
    Google,
    Bedrock,
    Ollama,
    OpenaiCompatible,
    Mistral,
    Cohere,
    Groq,
}

impl ProviderKind {
    /// Every kind's stored name, as a list filter names them.
    pub const STORED_NAMES: [&'static str; 10] = [
        Self::Openai.as_str(),
        Self::Anthropic.as_str(),
        Self::AzureOpenai.as_str(),
        Self::Google.as_str(),
        Self::Bedrock.as_str(),
        Self::Ollama.as_str(),
        Self::OpenaiCompatible.as_str(),
        Self::Mistral.as_str(),
        Self::Cohere.as_str(),
        Self::Groq.as_str(),
    ];

    /// The stored name (`OPENAI`, `AZURE_OPENAI` …).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "OPENAI",
            Self::Anthropic => "ANTHROPIC",
            Self::AzureOpenai => "AZURE_OPENAI",
            Self::Google => "GOOGLE",
            Self::Bedrock => "BEDROCK",
            Self::Ollama => "OLLAMA",
            Self::OpenaiCompatible => "OPENAI_COMPATIBLE",
            Self::Mistral => "MISTRAL",
            Self::Cohere => "COHERE",
            Self::Groq => "GROQ",
        }
    }
}

/// Every configurable field of a provider. `api_key` is ciphertext.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderSpec {
    pub name: String,
    pub provider_type: ProviderKind,
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Always serialized (even empty), so diffs name nested fields.
    #[serde(default)]
    pub default_parameters: ModelParams,
    pub is_default: bool,
    /// crypto-service ciphertext of the key; never plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    /// The key's credential revision (1, 2 … per provider). `None` with a
    /// key: a new key the store numbers as it writes it (or one stored
    /// before revisions were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_revision: Option<i64>,
}

/// The host a provider's `base_url` sends to (lower-case, without port or
/// trailing dot), or what makes the URL unusable: it must be http(s), name
/// a host, give a port of 1–65535 if any, and carry no user information —
/// a password there would be shown to every viewer of the provider (a
/// credential belongs in `api_key`, which is encrypted), and
/// `https://trusted.example@other.example/` sends to `other.example`.
pub fn base_url_host(url: &str) -> Result<String, &'static str> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Err("must be an http:// or https:// URL");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(
            "must not carry user information (it would be shown to every viewer): \
             send the credential as api_key",
        );
    }
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, after)) if after.is_empty() || after.starts_with(':') => {
                (host, after.strip_prefix(':'))
            }
            _ => return Err("has a malformed IPv6 address"),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return Err("must name a host");
    }
    // An empty port means the scheme's own.
    match port {
        Some(port) if !port.is_empty() && port.parse::<u16>().map_or(true, |p| p == 0) => {
            Err("has a port outside 1–65535")
        }
        _ => Ok(host),
    }
}

/// Update-mask paths of a provider (besides `default_parameters.<field>`).
pub const FIELDS: &[&str] = &[
    "name",
    "provider_type",
    "model_name",
    "base_url",
    "api_version",
    "default_parameters",
    "is_default",
    "api_key",
];

/// A provider request after validation: the spec without its key, and the
/// plaintext key to encrypt, if one was sent.
#[derive(Clone)]
pub struct ProviderInput {
    pub spec: ProviderSpec,
    /// `Some("")` clears the key; `None` keeps it.
    pub new_api_key: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for ProviderInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderInput")
            .field("spec", &self.spec)
            .field(
                "new_api_key",
                &self.new_api_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The snapshot keeps the key as ciphertext.
impl super::Snapshot for ProviderSpec {
    const KIND: &'static str = "provider";
}

impl ProviderSpec {
    /// A provider with nothing set (what a create fills in).
    pub fn blank() -> Self {
        Self {
            name: String::new(),
            provider_type: ProviderKind::Openai,
            model_name: String::new(),
            base_url: None,
            api_version: None,
            default_parameters: ModelParams::default(),
            is_default: false,
            api_key: None,
            api_key_revision: None,
        }
    }

    /// Copies the field a mask path names from `source` (not the key,
    /// which only a write sets); `false` for an unknown path.
    pub fn copy_field(&mut self, source: &Self, path: &str) -> bool {
        if let Some(param) = path.strip_prefix("default_parameters.") {
            return self
                .default_parameters
                .copy_field(&source.default_parameters, param);
        }
        match path {
            "name" => self.name.clone_from(&source.name),
            "provider_type" => self.provider_type = source.provider_type,
            "model_name" => self.model_name.clone_from(&source.model_name),
            "base_url" => self.base_url.clone_from(&source.base_url),
            "api_version" => self.api_version.clone_from(&source.api_version),
            "default_parameters" => {
                self.default_parameters
                    .clone_from(&source.default_parameters);
            }
            "is_default" => self.is_default = source.is_default,
            _ => return false,
        }
        true
    }

    /// `self` when every field is valid (and `api_key`, the plaintext key
    /// sent with it, is not too long), else one violation per bad field
    /// (paths under `provider.`) added to `v`.
    pub fn validated(self, mut v: Violations, api_key: &str) -> Result<Self, Error> {
        check_required_text(&mut v, "provider.name", &self.name, 200);
        check_required_text(&mut v, "provider.model_name", &self.model_name, 200);
        check_length(&mut v, "provider.api_key", api_key, 4096);
        if let Some(url) = &self.base_url {
            check_length(&mut v, "provider.base_url", url, 2048);
            if let Err(problem) = base_url_host(url) {
                v.add("provider.base_url", problem);
            }
        }
        let needs_base_url = matches!(
            self.provider_type,
            ProviderKind::AzureOpenai | ProviderKind::OpenaiCompatible
        );
        if needs_base_url && self.base_url.is_none() {
            v.add("provider.base_url", "is required for this provider type");
        }
        match (&self.api_version, self.provider_type) {
            (None, ProviderKind::AzureOpenai) => {
                v.add("provider.api_version", "is required for AZURE_OPENAI");
            }
            (Some(_), kind) if kind != ProviderKind::AzureOpenai => {
                v.add("provider.api_version", "applies only to AZURE_OPENAI");
            }
            (Some(version), _) => check_length(&mut v, "provider.api_version", version, 64),
            (None, _) => {}
        }
        if self.default_parameters.model_name.is_some() {
            v.add(
                "provider.default_parameters.model_name",
                "must be unset: the provider's model_name holds it",
            );
        }
        self.default_parameters
            .validate("provider.default_parameters", &mut v);
        v.finish(self)
    }

    /// The changes from `old` to `new`, never with a ciphertext in them: a
    /// key appears as its revision ([`encrypted_marker`]), and keys of the
    /// same revision count as unchanged (a rewrap re-encrypts each copy of
    /// a key on its own, so their ciphertexts differ).
    pub fn diff(old: &Self, new: &Self) -> Vec<Change> {
        let mut changes = version::diff_bounded(&old.to_json(), &new.to_json());
        let same_key = old.api_key.is_some()
            && new.api_key.is_some()
            && old.api_key_revision.is_some()
            && old.api_key_revision == new.api_key_revision;
        changes.retain(|change| {
            change.path != "api_key_revision" && !(same_key && change.path == "api_key")
        });
        for change in changes.iter_mut().filter(|c| c.path == "api_key") {
            if change.old.is_some() {
                change.old = Some(encrypted_marker(old.api_key_revision).into());
            }
            if change.new.is_some() {
                change.new = Some(encrypted_marker(new.api_key_revision).into());
            }
        }
        changes
    }
}

/// Whether `path` names a provider field an update mask may carry.
pub fn is_mask_path(path: &str) -> bool {
    FIELDS.contains(&path)
        || path
            .strip_prefix("default_parameters.")
            .is_some_and(|param| params::FIELDS.contains(&param) && param != "model_name")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key(ciphertext: &str, revision: Option<i64>) -> ProviderSpec {
        ProviderSpec {
            name: "p".into(),
            model_name: "m".into(),
            api_key: Some(ciphertext.into()),
            api_key_revision: revision,
            ..ProviderSpec::blank()
        }
    }

    #[test]
    fn a_key_appears_in_diffs_as_its_revision_never_its_ciphertext() {
        let changes = ProviderSpec::diff(
            &with_key("arc1.1.aaa", Some(2)),
            &with_key("arc1.1.bbb", Some(1)),
        );
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].path, "api_key");
        assert_eq!(changes[0].old, Some("***encrypted, revision 2***".into()));
        assert_eq!(changes[0].new, Some("***encrypted, revision 1***".into()));
        // Rewrapped copies of one revision are the same key.
        let rewrapped = ProviderSpec::diff(
            &with_key("arc1.1.aaa", Some(3)),
            &with_key("arc1.2.ccc", Some(3)),
        );
        assert!(rewrapped.is_empty(), "{rewrapped:?}");
        // Keys stored before revisions were kept.
        let legacy = ProviderSpec::diff(&with_key("arc1.1.a", None), &with_key("arc1.1.b", None));
        assert_eq!(legacy[0].old, Some(ENCRYPTED_MARKER.into()));
        assert_eq!(legacy[0].new, Some(ENCRYPTED_MARKER.into()));
    }

    #[test]
    fn a_base_url_names_a_host_without_user_information() {
        for (fine, host) in [
            ("https://api.example.com/v1", "api.example.com"),
            ("http://127.0.0.1:8080", "127.0.0.1"),
            ("https://[::1]:8443/openai", "::1"),
            ("https://Example.COM.:/v1", "example.com"),
            ("https://example.com?api-version=1", "example.com"),
        ] {
            assert_eq!(base_url_host(fine).as_deref(), Ok(host), "{fine}");
        }
        for (bad, problem) in [
            ("ftp://example.com", "http:// or https://"),
            ("https://admin:secret@example.com/v1", "user information"),
            ("https://trusted.example@other.example/", "user information"),
            ("https:///v1", "name a host"),
            ("https://:443", "name a host"),
            ("https://./", "name a host"),
            ("https://[::1", "IPv6"),
            ("https://[::1]x", "IPv6"),
            ("http://[::1]:99999", "port"),
            ("http://example.com:0", "port"),
            ("http://example.com:https", "port"),
        ] {
            let found = base_url_host(bad).err().unwrap_or_default();
            assert!(found.contains(problem), "{bad}: {found:?}");
        }
    }
}
