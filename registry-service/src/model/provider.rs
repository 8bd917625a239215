//! An LLM provider's configuration: what a version snapshot holds. The API
//! key is held only as crypto-service ciphertext.

use serde::{Deserialize, Serialize};

use super::Snapshot;
use super::params::{self, ModelParams};
use super::version::{self, Change};
use super::{check_length, check_required_text};
use crate::error::{Error, Violations};
use proto::v1 as pb;

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
    fn from_proto(value: i32) -> Option<Self> {
        use pb::ProviderType as T;
        Some(match T::try_from(value).ok()? {
            T::Unspecified => return None,
            T::Openai => Self::Openai,
            T::Anthropic => Self::Anthropic,
            T::AzureOpenai => Self::AzureOpenai,
            T::Google => Self::Google,
            T::Bedrock => Self::Bedrock,
            T::Ollama => Self::Ollama,
            T::OpenaiCompatible => Self::OpenaiCompatible,
            T::Mistral => Self::Mistral,
            T::Cohere => Self::Cohere,
            T::Groq => Self::Groq,
        })
    }

    fn to_proto(self) -> pb::ProviderType {
        use pb::ProviderType as T;
        match self {
            Self::Openai => T::Openai,
            Self::Anthropic => T::Anthropic,
            Self::AzureOpenai => T::AzureOpenai,
            Self::Google => T::Google,
            Self::Bedrock => T::Bedrock,
            Self::Ollama => T::Ollama,
            Self::OpenaiCompatible => T::OpenaiCompatible,
            Self::Mistral => T::Mistral,
            Self::Cohere => T::Cohere,
            Self::Groq => T::Groq,
        }
    }

    /// The stored name (`OPENAI`, `AZURE_OPENAI` …).
    pub fn as_str(self) -> &'static str {
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

/// Refuses a provider message whose repeated fields hold more items than
/// any valid provider can, before anything iterates over them or copies
/// them.
pub fn check_counts(input: &pb::Provider) -> Result<(), Error> {
    let mut v = Violations::default();
    super::params::check_counts(
        input.default_parameters.as_ref(),
        "provider.default_parameters",
        &mut v,
    );
    v.finish(())
}

/// The snapshot keeps the key as ciphertext.
impl super::Snapshot for ProviderSpec {
    const KIND: &'static str = "provider";
}

impl ProviderSpec {
    fn blank() -> Self {
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

    /// A create request (or an update with mask `*`).
    pub fn from_proto(input: &pb::Provider) -> Result<ProviderInput, Error> {
        let mut spec = Self::blank();
        let mut v = Violations::default();
        let defaults = ModelParams::from_proto(input.default_parameters.clone());
        for field in FIELDS {
            spec.apply(input, &defaults, field, &mut v);
        }
        let new_api_key =
            (!input.api_key.is_empty()).then(|| zeroize::Zeroizing::new(input.api_key.clone()));
        spec.validated(v, input)
            .map(|spec| ProviderInput { spec, new_api_key })
    }

    /// Applies update-mask `paths` from `input` to `self`. The key changes
    /// only when `api_key` is named (empty clears it) or, with mask `*` or
    /// none, when a non-empty key is sent.
    pub fn updated(&self, input: &pb::Provider, paths: &[String]) -> Result<ProviderInput, Error> {
        let mut spec = self.clone();
        let mut v = Violations::default();
        let mut new_api_key = None;
        let defaults = ModelParams::from_proto(input.default_parameters.clone());
        for path in paths {
            if path == "api_key" {
                new_api_key = Some(zeroize::Zeroizing::new(input.api_key.clone()));
            } else {
                spec.apply(input, &defaults, path, &mut v);
            }
        }
        spec.validated(v, input)
            .map(|spec| ProviderInput { spec, new_api_key })
    }

    /// The fields a request without an update mask sets.
    pub fn fields_set(input: &pb::Provider) -> Vec<String> {
        let set = [
            ("name", !input.name.is_empty()),
            ("provider_type", input.provider_type != 0),
            ("model_name", !input.model_name.is_empty()),
            ("base_url", !input.base_url.is_empty()),
            ("api_version", input.api_version.is_some()),
            ("default_parameters", input.default_parameters.is_some()),
            ("is_default", input.is_default),
            ("api_key", !input.api_key.is_empty()),
        ];
        set.into_iter()
            .filter(|(_, present)| *present)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    fn apply(
        &mut self,
        input: &pb::Provider,
        defaults: &ModelParams,
        path: &str,
        v: &mut Violations,
    ) {
        if let Some(param) = path.strip_prefix("default_parameters.") {
            self.default_parameters.copy_field(defaults, param);
            return;
        }
        match path {
            "name" => self.name = input.name.clone(),
            "provider_type" => match ProviderKind::from_proto(input.provider_type) {
                Some(kind) => self.provider_type = kind,
                None => v.add(
                    "provider.provider_type",
                    "must be a known provider type other than UNSPECIFIED",
                ),
            },
            "model_name" => self.model_name = input.model_name.clone(),
            "base_url" => {
                self.base_url = Some(input.base_url.clone()).filter(|url| !url.is_empty())
            }
            "api_version" => self.api_version = input.api_version.clone().filter(|s| !s.is_empty()),
            "default_parameters" => self.default_parameters = defaults.clone(),
            "is_default" => self.is_default = input.is_default,
            _ => {}
        }
    }

    fn validated(self, mut v: Violations, input: &pb::Provider) -> Result<Self, Error> {
        check_required_text(&mut v, "provider.name", &self.name, 200);
        check_required_text(&mut v, "provider.model_name", &self.model_name, 200);
        check_length(&mut v, "provider.api_key", &input.api_key, 4096);
        if let Some(url) = &self.base_url {
            check_length(&mut v, "provider.base_url", url, 2048);
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                v.add("provider.base_url", "must be an http:// or https:// URL");
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
        let mut changes = version::diff(&old.to_json(), &new.to_json());
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

    /// The message form, without resource metadata; never carries the key.
    pub fn to_proto(&self) -> pb::Provider {
        pb::Provider {
            name: self.name.clone(),
            provider_type: self.provider_type.to_proto().into(),
            model_name: self.model_name.clone(),
            base_url: self.base_url.clone().unwrap_or_default(),
            api_version: self.api_version.clone(),
            default_parameters: (!self.default_parameters.is_empty())
                .then(|| self.default_parameters.to_proto()),
            is_default: self.is_default,
            api_key: String::new(),
            api_key_set: self.api_key.is_some(),
            api_key_revision: self
                .api_key
                .as_ref()
                .and(self.api_key_revision)
                .unwrap_or(0),
            ..Default::default()
        }
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
}
