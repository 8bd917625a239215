//! The API edge: proto messages into domain values and back, and nowhere
//! else (`model/` and `store/` know no prost type). A request becomes a
//! *draft* (every field converted, unset optional fields at their
//! defaults), a mask copies fields from the draft onto the current spec
//! (`model/`, domain to domain), and validation reports one violation per
//! bad field. Every conversion destructures its message or its spec, so a
//! field added to either breaks the build here until it is handled.

use proto::v1 as pb;

use crate::error::{Error, Violations};
use crate::model::agent::{self, AgentSpec, CodeExecutionMode};
use crate::model::params::{self, ModelParams};
use crate::model::path;
use crate::model::provider::{self, ProviderInput, ProviderKind, ProviderSpec};
use crate::model::version::{Action, Change, ChangeKind};
use crate::store::changes::{ChangeAction, ChangeRecord, ResourceKind};
use crate::store::labels::{LabelRecord, MoveRecord, Policy};
use crate::watch::Event;

/// Records a violation under `prefix` when `message` holds more stop
/// sequences than any valid parameters can, before anything iterates over
/// them or copies them.
fn check_stop_count(message: Option<&pb::ModelParameters>, prefix: &str, v: &mut Violations) {
    if let Some(message) = message
        && message.stop.len() > params::MAX_STOP
    {
        v.add(
            path(prefix, "stop"),
            format!(
                "must hold at most {} sequences (got {})",
                params::MAX_STOP,
                message.stop.len()
            ),
        );
    }
}

impl From<Option<pb::ModelParameters>> for ModelParams {
    /// The domain form of a message (not yet validated).
    fn from(message: Option<pb::ModelParameters>) -> Self {
        let Some(pb::ModelParameters {
            model_name,
            temperature,
            max_tokens,
            top_p,
            frequency_penalty,
            presence_penalty,
            timeout_seconds,
            stop,
        }) = message
        else {
            return Self::default();
        };
        Self {
            model_name,
            temperature,
            max_tokens,
            top_p,
            frequency_penalty,
            presence_penalty,
            timeout_seconds,
            stop,
        }
    }
}

impl From<ModelParams> for pb::ModelParameters {
    fn from(params: ModelParams) -> Self {
        let ModelParams {
            model_name,
            temperature,
            max_tokens,
            top_p,
            frequency_penalty,
            presence_penalty,
            timeout_seconds,
            stop,
        } = params;
        Self {
            model_name,
            temperature,
            max_tokens,
            top_p,
            frequency_penalty,
            presence_penalty,
            timeout_seconds,
            stop,
        }
    }
}

/// Each field of a message and whether a request without an update mask
/// sets it (names allocated only when asked for).
struct FieldsSet<const N: usize>([(&'static str, bool); N]);

impl<const N: usize> FieldsSet<N> {
    /// The names of the fields set, in message order.
    fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, present)| *present)
            .map(|(name, _)| (*name).to_owned())
            .collect()
    }
}

/// Parameters as a message field: unset when empty.
fn params_message(params: &ModelParams) -> Option<pb::ModelParameters> {
    (!params.is_empty()).then(|| params.clone().into())
}

/// Refuses an agent message whose repeated fields hold more items than any
/// valid agent can, before anything iterates over them or copies them: the
/// item checks, duplicate checks and mask merges after this are bounded.
/// Also what the conversion to a spec would lose: numbers JSON cannot
/// hold, an enum value this registry does not know.
pub fn check_agent_counts(input: &pb::Agent) -> Result<(), Error> {
    let mut v = Violations::default();
    if input.tools.len() > agent::MAX_TOOLS {
        v.add(
            "agent.tools",
            format!(
                "must hold at most {} tools (got {})",
                agent::MAX_TOOLS,
                input.tools.len()
            ),
        );
    }
    if input.tool_config.len() > agent::MAX_TOOLS {
        v.add(
            "agent.tool_config",
            format!(
                "must hold at most {} tools (got {})",
                agent::MAX_TOOLS,
                input.tool_config.len()
            ),
        );
    } else {
        for (tool, settings) in &input.tool_config {
            check_finite(settings, &format!("agent.tool_config[{tool:?}]"), &mut v);
        }
    }
    if let Some(embedder) = &input.embedder {
        check_finite(embedder, "agent.embedder", &mut v);
    }
    let overrides = input.llm_overrides.as_ref();
    check_stop_count(overrides, "agent.llm_overrides", &mut v);
    // Read as SAFE otherwise: a value from a newer client must not be
    // stored as something it did not say.
    if pb::CodeExecutionMode::try_from(input.code_execution_mode).is_err() {
        v.add(
            "agent.code_execution_mode",
            format!("must be a known mode (got {})", input.code_execution_mode),
        );
    }
    v.finish(())
}

/// Records a violation under `field` when `settings` holds a number JSON
/// cannot (NaN or an infinity): it could not be stored as it was sent. The
/// walk is bounded by the message size limit and prost's nesting limit.
fn check_finite(settings: &prost_types::Struct, field: &str, v: &mut Violations) {
    fn finite(value: &prost_types::Value) -> bool {
        use prost_types::value::Kind;
        match &value.kind {
            Some(Kind::NumberValue(n)) => n.is_finite(),
            Some(Kind::StructValue(s)) => s.fields.values().all(finite),
            Some(Kind::ListValue(l)) => l.values.iter().all(finite),
            _ => true,
        }
    }
    if !settings.fields.values().all(finite) {
        v.add(field, "must hold only finite numbers");
    }
}

/// A `google.protobuf.Struct` as a JSON object (numbers JSON cannot hold
/// become null; [`check_agent_counts`] refuses them first).
fn struct_json(settings: prost_types::Struct) -> serde_json::Value {
    fn element(item: prost_types::Value) -> serde_json::Value {
        use prost_types::value::Kind;
        use serde_json::Value;
        match item.kind {
            None | Some(Kind::NullValue(_)) => Value::Null,
            Some(Kind::BoolValue(b)) => Value::Bool(b),
            Some(Kind::NumberValue(n)) => {
                serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
            }
            Some(Kind::StringValue(s)) => Value::String(s),
            Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(element).collect()),
            Some(Kind::StructValue(s)) => struct_json(s),
        }
    }
    serde_json::Value::Object(
        settings
            .fields
            .into_iter()
            .map(|(k, v)| (k, element(v)))
            .collect(),
    )
}

/// A JSON object as a `google.protobuf.Struct` (a stored setting is always
/// an object).
pub fn json_struct(value: &serde_json::Value) -> prost_types::Struct {
    match json(value).kind {
        Some(prost_types::value::Kind::StructValue(settings)) => settings,
        _ => prost_types::Struct::default(),
    }
}

/// Refuses a provider message whose repeated fields hold more items than
/// any valid provider can, before anything iterates over them.
pub fn check_provider_counts(input: &pb::Provider) -> Result<(), Error> {
    let mut v = Violations::default();
    let defaults = input.default_parameters.as_ref();
    check_stop_count(defaults, "provider.default_parameters", &mut v);
    v.finish(())
}

impl AgentSpec {
    /// Every configuration field of `input`, unset ones at their defaults
    /// (not yet validated), and the fields a request without an update mask
    /// sets: every optional field present, every non-empty string, list and
    /// message.
    fn draft_and_fields_set(input: &pb::Agent) -> (Self, FieldsSet<33>) {
        let pb::Agent {
            // Resource metadata: the store sets it.
            id: _,
            version: _,
            etag: _,
            create_time: _,
            update_time: _,
            created_by: _,
            updated_by: _,
            labels: _,
            delete_time: _,
            purge_time: _,
            // Output only: a dry run's answer.
            validated_diff: _,
            name,
            role,
            goal,
            backstory,
            tools,
            llm_provider_id,
            llm_provider_label,
            llm_provider_version,
            llm_overrides,
            temperature,
            allow_delegation,
            verbose,
            cache,
            max_iter,
            max_rpm,
            max_execution_time,
            allow_code_execution,
            respect_context_window,
            max_retry_limit,
            tool_config,
            function_calling_llm,
            system_template,
            prompt_template,
            response_template,
            use_system_prompt,
            memory,
            reasoning,
            max_reasoning_attempts,
            multimodal,
            code_execution_mode,
            inject_date,
            date_format,
            embedder,
        } = input.clone();
        let set = [
            ("name", !name.is_empty()),
            ("role", !role.is_empty()),
            ("goal", !goal.is_empty()),
            ("backstory", !backstory.is_empty()),
            ("tools", !tools.is_empty()),
            ("llm_provider_id", llm_provider_id.is_some()),
            ("llm_provider_label", !llm_provider_label.is_empty()),
            ("llm_provider_version", llm_provider_version.is_some()),
            ("llm_overrides", llm_overrides.is_some()),
            ("temperature", temperature.is_some()),
            ("allow_delegation", allow_delegation.is_some()),
            ("verbose", verbose.is_some()),
            ("cache", cache.is_some()),
            ("max_iter", max_iter.is_some()),
            ("max_rpm", max_rpm.is_some()),
            ("max_execution_time", max_execution_time.is_some()),
            ("allow_code_execution", allow_code_execution.is_some()),
            ("respect_context_window", respect_context_window.is_some()),
            ("max_retry_limit", max_retry_limit.is_some()),
            ("tool_config", !tool_config.is_empty()),
            ("function_calling_llm", function_calling_llm.is_some()),
            ("system_template", system_template.is_some()),
            ("prompt_template", prompt_template.is_some()),
            ("response_template", response_template.is_some()),
            ("use_system_prompt", use_system_prompt.is_some()),
            ("memory", memory.is_some()),
            ("reasoning", reasoning.is_some()),
            ("max_reasoning_attempts", max_reasoning_attempts.is_some()),
            ("multimodal", multimodal.is_some()),
            ("code_execution_mode", code_execution_mode != 0),
            ("inject_date", inject_date.is_some()),
            ("date_format", date_format.is_some()),
            ("embedder", embedder.is_some()),
        ];
        let fields_set = FieldsSet(set);
        let code_execution_mode = match pb::CodeExecutionMode::try_from(code_execution_mode) {
            Ok(pb::CodeExecutionMode::Unsafe) => CodeExecutionMode::Unsafe,
            _ => CodeExecutionMode::Safe,
        };
        let draft = Self {
            name,
            role,
            goal,
            backstory,
            tools,
            llm_provider_id: llm_provider_id.filter(|id| !id.is_empty()),
            llm_provider_label: Some(llm_provider_label).filter(|label| !label.is_empty()),
            llm_provider_version,
            llm_overrides: llm_overrides.into(),
            temperature,
            allow_delegation: allow_delegation.unwrap_or(agent::DEFAULT_ALLOW_DELEGATION),
            verbose: verbose.unwrap_or(agent::DEFAULT_VERBOSE),
            cache: cache.unwrap_or(agent::DEFAULT_CACHE),
            max_iter: max_iter.unwrap_or(agent::DEFAULT_MAX_ITER),
            max_rpm,
            max_execution_time,
            allow_code_execution: allow_code_execution
                .unwrap_or(agent::DEFAULT_ALLOW_CODE_EXECUTION),
            respect_context_window: respect_context_window
                .unwrap_or(agent::DEFAULT_RESPECT_CONTEXT_WINDOW),
            max_retry_limit: max_retry_limit.unwrap_or(agent::DEFAULT_MAX_RETRY_LIMIT),
            tool_config: tool_config
                .into_iter()
                .map(|(tool, settings)| (tool, struct_json(settings)))
                .collect(),
            function_calling_llm,
            system_template,
            prompt_template,
            response_template,
            use_system_prompt: use_system_prompt.unwrap_or(agent::DEFAULT_USE_SYSTEM_PROMPT),
            memory: memory.unwrap_or_default(),
            reasoning: reasoning.unwrap_or_default(),
            max_reasoning_attempts,
            multimodal: multimodal.unwrap_or_default(),
            code_execution_mode,
            inject_date: inject_date.unwrap_or_default(),
            date_format: date_format.unwrap_or_else(|| agent::DEFAULT_DATE_FORMAT.to_owned()),
            embedder: embedder.map(struct_json),
        };
        (draft, fields_set)
    }

    /// Every configuration field of `input`, unset ones at their defaults
    /// (not yet validated).
    pub fn draft(input: &pb::Agent) -> Self {
        Self::draft_and_fields_set(input).0
    }

    /// A new agent from a create request (or an update with mask `*`).
    pub fn from_proto(input: &pb::Agent) -> Result<Self, Error> {
        Self::draft(input).validated()
    }

    /// The fields a request without an update mask sets.
    pub fn fields_set(input: &pb::Agent) -> Vec<String> {
        Self::draft_and_fields_set(input).1.names()
    }

    /// Copies one update-mask path from `input`; an unset value resets the
    /// field to its default. `false` for an unknown path.
    pub fn apply(&mut self, input: &pb::Agent, path: &str) -> bool {
        self.copy_field(&Self::draft(input), path)
    }

    /// Copies every update-mask path in `paths` from `input` (converted
    /// once, not once per path).
    pub fn apply_all(&mut self, input: &pb::Agent, paths: &[String]) {
        let draft = Self::draft(input);
        for path in paths {
            self.copy_field(&draft, path);
        }
    }

    /// The message form, without resource metadata.
    pub fn to_proto(&self) -> pb::Agent {
        let Self {
            name,
            role,
            goal,
            backstory,
            tools,
            llm_provider_id,
            llm_provider_label,
            llm_provider_version,
            llm_overrides,
            temperature,
            allow_delegation,
            verbose,
            cache,
            max_iter,
            max_rpm,
            max_execution_time,
            allow_code_execution,
            respect_context_window,
            max_retry_limit,
            tool_config,
            function_calling_llm,
            system_template,
            prompt_template,
            response_template,
            use_system_prompt,
            memory,
            reasoning,
            max_reasoning_attempts,
            multimodal,
            code_execution_mode,
            inject_date,
            date_format,
            embedder,
        } = self.clone();
        pb::Agent {
            id: String::new(),
            version: 0,
            etag: String::new(),
            create_time: None,
            update_time: None,
            created_by: String::new(),
            updated_by: String::new(),
            labels: Default::default(),
            delete_time: None,
            purge_time: None,
            name,
            role,
            goal,
            backstory,
            tools,
            llm_provider_id,
            llm_provider_label: llm_provider_label.unwrap_or_default(),
            llm_provider_version,
            llm_overrides: params_message(&llm_overrides),
            temperature,
            allow_delegation: Some(allow_delegation),
            verbose: Some(verbose),
            cache: Some(cache),
            max_iter: Some(max_iter),
            max_rpm,
            max_execution_time,
            allow_code_execution: Some(allow_code_execution),
            respect_context_window: Some(respect_context_window),
            max_retry_limit: Some(max_retry_limit),
            tool_config: tool_config
                .iter()
                .map(|(tool, settings)| (tool.clone(), json_struct(settings)))
                .collect(),
            function_calling_llm,
            system_template,
            prompt_template,
            response_template,
            use_system_prompt: Some(use_system_prompt),
            memory: Some(memory),
            reasoning: Some(reasoning),
            max_reasoning_attempts,
            multimodal: Some(multimodal),
            code_execution_mode: match code_execution_mode {
                CodeExecutionMode::Safe => pb::CodeExecutionMode::Safe,
                CodeExecutionMode::Unsafe => pb::CodeExecutionMode::Unsafe,
            }
            .into(),
            inject_date: Some(inject_date),
            date_format: Some(date_format),
            embedder: embedder.as_ref().map(json_struct),
            validated_diff: Vec::new(),
        }
    }
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
}

/// A provider request converted: its fields as a spec, whether its
/// `provider_type` names a kind (the spec holds a stand-in when not), and
/// the plaintext key it carries.
struct ProviderDraft {
    spec: ProviderSpec,
    /// The fields a request without an update mask sets.
    fields_set: FieldsSet<8>,
    known_type: bool,
    api_key: zeroize::Zeroizing<String>,
}

impl ProviderDraft {
    fn of(input: &pb::Provider) -> Self {
        let pb::Provider {
            id: _,
            version: _,
            etag: _,
            create_time: _,
            update_time: _,
            created_by: _,
            updated_by: _,
            // Output only: the store keeps the key's state and the labels;
            // a dry run's answer.
            validated_diff: _,
            api_key_set: _,
            api_key_revision: _,
            labels: _,
            delete_time: _,
            purge_time: _,
            name,
            provider_type,
            model_name,
            base_url,
            api_version,
            default_parameters,
            is_default,
            api_key,
        } = input.clone();
        let set = [
            ("name", !name.is_empty()),
            ("provider_type", provider_type != 0),
            ("model_name", !model_name.is_empty()),
            ("base_url", !base_url.is_empty()),
            ("api_version", api_version.is_some()),
            ("default_parameters", default_parameters.is_some()),
            ("is_default", is_default),
            ("api_key", !api_key.is_empty()),
        ];
        let kind = ProviderKind::from_proto(provider_type);
        Self {
            fields_set: FieldsSet(set),
            spec: ProviderSpec {
                name,
                provider_type: kind.unwrap_or(ProviderKind::Openai),
                model_name,
                base_url: Some(base_url).filter(|url| !url.is_empty()),
                api_version: api_version.filter(|v| !v.is_empty()),
                default_parameters: default_parameters.into(),
                is_default,
                api_key: None,
                api_key_revision: None,
            },
            known_type: kind.is_some(),
            api_key: zeroize::Zeroizing::new(api_key),
        }
    }

    /// Copies the mask path `path` onto `spec` (`api_key` is the caller's
    /// to handle); an unknown provider type is a violation once named.
    fn copy_onto(&self, spec: &mut ProviderSpec, path: &str, v: &mut Violations) {
        if path == "provider_type" && !self.known_type {
            v.add(
                "provider.provider_type",
                "must be a known provider type other than UNSPECIFIED",
            );
        } else {
            spec.copy_field(&self.spec, path);
        }
    }

    /// `spec` validated, with the key sent.
    fn finish(
        &self,
        spec: ProviderSpec,
        v: Violations,
        new_api_key: Option<zeroize::Zeroizing<String>>,
    ) -> Result<ProviderInput, Error> {
        spec.validated(v, &self.api_key)
            .map(|spec| ProviderInput { spec, new_api_key })
    }
}

impl ProviderSpec {
    /// A create request (or an update with mask `*`).
    pub fn from_proto(input: &pb::Provider) -> Result<ProviderInput, Error> {
        let draft = ProviderDraft::of(input);
        let mut spec = ProviderSpec::blank();
        let mut v = Violations::default();
        for field in provider::FIELDS.iter().filter(|f| **f != "api_key") {
            draft.copy_onto(&mut spec, field, &mut v);
        }
        let new_api_key = (!draft.api_key.is_empty()).then(|| draft.api_key.clone());
        draft.finish(spec, v, new_api_key)
    }

    /// Applies update-mask `paths` from `input` to `self`. The key changes
    /// only when `api_key` is named (empty clears it) or, with mask `*` or
    /// none, when a non-empty key is sent.
    pub fn updated(&self, input: &pb::Provider, paths: &[String]) -> Result<ProviderInput, Error> {
        let draft = ProviderDraft::of(input);
        let mut spec = self.clone();
        let mut v = Violations::default();
        let mut new_api_key = None;
        for path in paths {
            if path == "api_key" {
                new_api_key = Some(draft.api_key.clone());
            } else {
                draft.copy_onto(&mut spec, path, &mut v);
            }
        }
        draft.finish(spec, v, new_api_key)
    }

    /// The non-empty key an update with mask `paths` (`None`: a full
    /// replace) sets, as [`ProviderSpec::updated`] and
    /// [`ProviderSpec::from_proto`] take it; `None` when it sets none.
    pub fn key_set_by<'a>(input: &'a pb::Provider, paths: Option<&[String]>) -> Option<&'a str> {
        let taken = paths.is_none_or(|paths| paths.iter().any(|path| path == "api_key"));
        (taken && !input.api_key.is_empty()).then_some(input.api_key.as_str())
    }

    /// The fields a request without an update mask sets.
    pub fn fields_set(input: &pb::Provider) -> Vec<String> {
        ProviderDraft::of(input).fields_set.names()
    }

    /// The message form, without resource metadata; never carries the key.
    pub fn to_proto(&self) -> pb::Provider {
        let Self {
            name,
            provider_type,
            model_name,
            base_url,
            api_version,
            default_parameters,
            is_default,
            api_key,
            api_key_revision,
        } = self.clone();
        pb::Provider {
            id: String::new(),
            version: 0,
            etag: String::new(),
            create_time: None,
            update_time: None,
            created_by: String::new(),
            updated_by: String::new(),
            name,
            provider_type: provider_type.to_proto().into(),
            model_name,
            base_url: base_url.unwrap_or_default(),
            api_version,
            default_parameters: params_message(&default_parameters),
            is_default,
            api_key: String::new(),
            api_key_set: api_key.is_some(),
            api_key_revision: api_key.and(api_key_revision).unwrap_or(0),
            labels: Default::default(),
            delete_time: None,
            purge_time: None,
            validated_diff: Vec::new(),
        }
    }
}

/// The message form of an action.
pub fn action(action: Action) -> pb::VersionAction {
    match action {
        Action::Create => pb::VersionAction::Create,
        Action::Update => pb::VersionAction::Update,
        Action::Rollback => pb::VersionAction::Rollback,
        Action::Delete => pb::VersionAction::Delete,
        Action::Undelete => pb::VersionAction::Undelete,
    }
}

/// The message form of a change.
pub fn change(change: &Change) -> pb::FieldChange {
    let Change {
        path,
        kind,
        old,
        new,
    } = change;
    pb::FieldChange {
        path: path.clone(),
        kind: match kind {
            ChangeKind::Added => pb::ChangeKind::Added,
            ChangeKind::Modified => pb::ChangeKind::Modified,
            ChangeKind::Removed => pb::ChangeKind::Removed,
        }
        .into(),
        old_value: old.as_ref().map(json),
        new_value: new.as_ref().map(json),
    }
}

/// A JSON value as `google.protobuf.Value`.
pub fn json(value: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(json).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(prost_types::Struct {
            fields: fields.iter().map(|(k, v)| (k.clone(), json(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

/// The most kinds a WatchChanges request may name (each kind once).
const MAX_WATCH_KINDS: usize = 8;

/// A WatchChanges request as the feed takes it: the revision to replay
/// after (`None`: from now) and the kinds asked for (empty: all).
pub fn watch_request(
    request: &pb::WatchChangesRequest,
) -> Result<(Option<i64>, Vec<ResourceKind>), Error> {
    let pb::WatchChangesRequest {
        after_revision,
        kinds,
    } = request;
    let mut violations = Violations::default();
    if after_revision.is_some_and(|after| after < 0) {
        violations.add("after_revision", "must not be negative");
    }
    if kinds.len() > MAX_WATCH_KINDS {
        violations.add(
            "kinds",
            format!(
                "must name at most {MAX_WATCH_KINDS} kinds (got {})",
                kinds.len()
            ),
        );
        return violations.finish((None, Vec::new()));
    }
    let mut wanted = Vec::with_capacity(kinds.len());
    for (i, kind) in kinds.iter().enumerate() {
        let kind = match pb::ResourceKind::try_from(*kind) {
            Ok(pb::ResourceKind::Agent) => ResourceKind::Agent,
            Ok(pb::ResourceKind::Provider) => ResourceKind::Provider,
            Ok(pb::ResourceKind::Unspecified) | Err(_) => {
                violations.add(format!("kinds[{i}]"), "is not a resource kind");
                continue;
            }
        };
        if wanted.contains(&kind) {
            violations.add(format!("kinds[{i}]"), "is named twice");
        } else {
            wanted.push(kind);
        }
    }
    violations.finish((*after_revision, wanted))
}

/// The message of one event of a watch.
pub fn watch_event(event: Event) -> pb::Change {
    let change = match event {
        Event::Synced(revision) => {
            return pb::Change {
                revision,
                action: pb::ChangeAction::Synced.into(),
                ..pb::Change::default()
            };
        }
        Event::Change(change) => change,
    };
    let ChangeRecord {
        revision,
        kind,
        resource_id,
        version_number,
        label,
        action,
        commit_time,
        changed_by,
    } = &*change;
    pb::Change {
        revision: *revision,
        kind: match kind {
            ResourceKind::Agent => pb::ResourceKind::Agent,
            ResourceKind::Provider => pb::ResourceKind::Provider,
        }
        .into(),
        resource_id: resource_id.clone(),
        version_number: *version_number,
        label: label.clone().unwrap_or_default(),
        action: match action {
            ChangeAction::Create => pb::ChangeAction::Create,
            ChangeAction::Update => pb::ChangeAction::Update,
            ChangeAction::Rollback => pb::ChangeAction::Rollback,
            ChangeAction::Delete => pb::ChangeAction::Delete,
            ChangeAction::LabelSet => pb::ChangeAction::LabelSet,
            ChangeAction::LabelDelete => pb::ChangeAction::LabelDelete,
            ChangeAction::Undelete => pb::ChangeAction::Undelete,
            ChangeAction::Purge => pb::ChangeAction::Purge,
        }
        .into(),
        commit_time: Some(super::timestamp(*commit_time)),
        changed_by: changed_by.clone(),
    }
}

/// The message form of a label.
pub fn label(record: LabelRecord) -> pb::Label {
    let LabelRecord {
        label,
        version_number,
        update_time,
        updated_by,
    } = record;
    pb::Label {
        label,
        version_number,
        update_time: Some(super::timestamp(update_time)),
        updated_by,
    }
}

/// The message form of a label's move.
pub fn label_move(record: MoveRecord) -> pb::LabelMove {
    let MoveRecord {
        id: _,
        label,
        from_version,
        to_version,
        actor,
        move_time,
        reason,
    } = record;
    pb::LabelMove {
        label,
        from_version,
        to_version,
        actor,
        move_time: Some(super::timestamp(move_time)),
        reason,
    }
}

/// The message form of a tenant's label policy.
pub fn label_policy(policy: Policy) -> pb::LabelPolicy {
    let Policy {
        protected_labels,
        updated,
    } = policy;
    let (update_time, updated_by) = match updated {
        Some((time, by)) => (Some(super::timestamp(time)), by),
        None => (None, String::new()),
    };
    pb::LabelPolicy {
        protected_labels,
        update_time,
        updated_by,
    }
}
