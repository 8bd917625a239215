//! A CrewAI agent's configuration: what a version snapshot holds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::params::{self, ModelParams};
use super::{check_f64, check_i32, check_length, check_required_text};
use crate::error::{Error, Violations};

/// Defaults of the platform this registry replaces (see agent.proto).
pub const DEFAULT_ALLOW_DELEGATION: bool = true;
/// CrewAI `verbose` default.
pub const DEFAULT_VERBOSE: bool = false;
/// CrewAI `cache` default.
pub const DEFAULT_CACHE: bool = true;
/// `max_iter` default.
pub const DEFAULT_MAX_ITER: i32 = 15;
/// CrewAI `allow_code_execution` default.
pub const DEFAULT_ALLOW_CODE_EXECUTION: bool = false;
/// CrewAI `respect_context_window` default.
pub const DEFAULT_RESPECT_CONTEXT_WINDOW: bool = true;
/// CrewAI `max_retry_limit` default.
pub const DEFAULT_MAX_RETRY_LIMIT: i32 = 2;
/// CrewAI `use_system_prompt` default.
pub const DEFAULT_USE_SYSTEM_PROMPT: bool = true;
/// CrewAI `date_format` default (ISO 8601 date).
pub const DEFAULT_DATE_FORMAT: &str = "%Y-%m-%d";

/// The most JSON one tool's configuration, or the embedder's, may hold
/// (serialized).
pub const MAX_JSON_BYTES: usize = 16 * 1024;
/// The deepest nesting of that JSON.
pub const MAX_JSON_DEPTH: usize = 16;
/// The most a whole configuration may hold, as stored (JSON). Each field
/// has its own limit, but together they reached the message size limit:
/// every version stores a snapshot and a diff, so a 200 KiB configuration
/// updated a few times made 2 MiB version rows and 7.7 MB history pages.
pub const MAX_CONFIGURATION_BYTES: usize = 64 * 1024;

/// How CrewAI runs code the agent writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CodeExecutionMode {
    /// In a Docker container.
    #[default]
    Safe,
    /// Directly on the runtime's host.
    Unsafe,
}

impl CodeExecutionMode {
    fn is_safe(&self) -> bool {
        *self == Self::Safe
    }
}

// The fields added after the first snapshots were written are left out of a
// snapshot while they hold their defaults, so older snapshots and newer ones
// diff only by what was changed.
fn is_false(value: &bool) -> bool {
    !*value
}

fn is_true(value: &bool) -> bool {
    *value
}

fn default_use_system_prompt() -> bool {
    DEFAULT_USE_SYSTEM_PROMPT
}

fn default_date_format() -> String {
    DEFAULT_DATE_FORMAT.to_owned()
}

fn is_default_date_format(format: &String) -> bool {
    format == DEFAULT_DATE_FORMAT
}

/// Every configurable field of an agent, with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub name: String,
    pub role: String,
    pub goal: String,
    /// Left out of the stored form when empty, like every string and list
    /// whose emptiness means "not set": a diff then shows it ADDED when it
    /// is set and REMOVED when it is cleared (the presence rule of
    /// `FieldChange` in common.proto).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backstory: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_provider_id: Option<String>,
    /// The provider's label the agent follows (`provider@label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_provider_label: Option<String>,
    /// The provider version the agent is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_provider_version: Option<i64>,
    /// Always serialized (even empty), so diffs name nested fields.
    #[serde(default)]
    pub llm_overrides: ModelParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    pub allow_delegation: bool,
    pub verbose: bool,
    pub cache: bool,
    pub max_iter: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rpm: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_execution_time: Option<i32>,
    pub allow_code_execution: bool,
    pub respect_context_window: bool,
    pub max_retry_limit: i32,
    /// Tool name → its settings (a JSON object each).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tool_config: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_calling_llm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_template: Option<String>,
    #[serde(default = "default_use_system_prompt", skip_serializing_if = "is_true")]
    pub use_system_prompt: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub memory: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub reasoning: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reasoning_attempts: Option<i32>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub multimodal: bool,
    #[serde(default, skip_serializing_if = "CodeExecutionMode::is_safe")]
    pub code_execution_mode: CodeExecutionMode,
    #[serde(default, skip_serializing_if = "is_false")]
    pub inject_date: bool,
    #[serde(
        default = "default_date_format",
        skip_serializing_if = "is_default_date_format"
    )]
    pub date_format: String,
    /// A JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedder: Option<Value>,
}

/// The most tools an agent may list.
pub const MAX_TOOLS: usize = 64;

/// Update-mask paths of an agent's configuration (besides
/// `llm_overrides.<field>`).
pub const FIELDS: &[&str] = &[
    "name",
    "role",
    "goal",
    "backstory",
    "tools",
    "llm_provider_id",
    "llm_provider_label",
    "llm_provider_version",
    "llm_overrides",
    "temperature",
    "allow_delegation",
    "verbose",
    "cache",
    "max_iter",
    "max_rpm",
    "max_execution_time",
    "allow_code_execution",
    "respect_context_window",
    "max_retry_limit",
    "tool_config",
    "function_calling_llm",
    "system_template",
    "prompt_template",
    "response_template",
    "use_system_prompt",
    "memory",
    "reasoning",
    "max_reasoning_attempts",
    "multimodal",
    "code_execution_mode",
    "inject_date",
    "date_format",
    "embedder",
];

impl super::Snapshot for AgentSpec {
    const KIND: &'static str = "agent";
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            role: String::new(),
            goal: String::new(),
            backstory: String::new(),
            tools: Vec::new(),
            llm_provider_id: None,
            llm_provider_label: None,
            llm_provider_version: None,
            llm_overrides: ModelParams::default(),
            temperature: None,
            allow_delegation: DEFAULT_ALLOW_DELEGATION,
            verbose: DEFAULT_VERBOSE,
            cache: DEFAULT_CACHE,
            max_iter: DEFAULT_MAX_ITER,
            max_rpm: None,
            max_execution_time: None,
            allow_code_execution: DEFAULT_ALLOW_CODE_EXECUTION,
            respect_context_window: DEFAULT_RESPECT_CONTEXT_WINDOW,
            max_retry_limit: DEFAULT_MAX_RETRY_LIMIT,
            tool_config: BTreeMap::new(),
            function_calling_llm: None,
            system_template: None,
            prompt_template: None,
            response_template: None,
            use_system_prompt: DEFAULT_USE_SYSTEM_PROMPT,
            memory: false,
            reasoning: false,
            max_reasoning_attempts: None,
            multimodal: false,
            code_execution_mode: CodeExecutionMode::Safe,
            inject_date: false,
            date_format: default_date_format(),
            embedder: None,
        }
    }
}

impl AgentSpec {
    /// Copies the field a mask path names from `source`; `false` for an
    /// unknown path.
    pub fn copy_field(&mut self, source: &Self, path: &str) -> bool {
        if let Some(param) = path.strip_prefix("llm_overrides.") {
            return self.llm_overrides.copy_field(&source.llm_overrides, param);
        }
        match path {
            "name" => self.name.clone_from(&source.name),
            "role" => self.role.clone_from(&source.role),
            "goal" => self.goal.clone_from(&source.goal),
            "backstory" => self.backstory.clone_from(&source.backstory),
            "tools" => self.tools.clone_from(&source.tools),
            "llm_provider_id" => self.llm_provider_id.clone_from(&source.llm_provider_id),
            "llm_provider_label" => self
                .llm_provider_label
                .clone_from(&source.llm_provider_label),
            "llm_provider_version" => self.llm_provider_version = source.llm_provider_version,
            "llm_overrides" => self.llm_overrides.clone_from(&source.llm_overrides),
            "temperature" => self.temperature = source.temperature,
            "allow_delegation" => self.allow_delegation = source.allow_delegation,
            "verbose" => self.verbose = source.verbose,
            "cache" => self.cache = source.cache,
            "max_iter" => self.max_iter = source.max_iter,
            "max_rpm" => self.max_rpm = source.max_rpm,
            "max_execution_time" => self.max_execution_time = source.max_execution_time,
            "allow_code_execution" => self.allow_code_execution = source.allow_code_execution,
            "respect_context_window" => {
                self.respect_context_window = source.respect_context_window;
            }
            "max_retry_limit" => self.max_retry_limit = source.max_retry_limit,
            "tool_config" => self.tool_config.clone_from(&source.tool_config),
            "function_calling_llm" => {
                self.function_calling_llm
                    .clone_from(&source.function_calling_llm);
            }
            "system_template" => self.system_template.clone_from(&source.system_template),
            "prompt_template" => self.prompt_template.clone_from(&source.prompt_template),
            "response_template" => self.response_template.clone_from(&source.response_template),
            "use_system_prompt" => self.use_system_prompt = source.use_system_prompt,
            "memory" => self.memory = source.memory,
            "reasoning" => self.reasoning = source.reasoning,
            "max_reasoning_attempts" => {
                self.max_reasoning_attempts = source.max_reasoning_attempts;
            }
            "multimodal" => self.multimodal = source.multimodal,
            "code_execution_mode" => self.code_execution_mode = source.code_execution_mode,
            "inject_date" => self.inject_date = source.inject_date,
            "date_format" => self.date_format.clone_from(&source.date_format),
            "embedder" => self.embedder.clone_from(&source.embedder),
            _ => return false,
        }
        true
    }

    /// `self` when every field is valid, else one violation per bad field
    /// (paths under `agent.`).
    pub fn validated(self) -> Result<Self, Error> {
        let mut v = Violations::default();
        check_required_text(&mut v, "agent.name", &self.name, 200);
        check_required_text(&mut v, "agent.role", &self.role, 2000);
        check_required_text(&mut v, "agent.goal", &self.goal, 2000);
        check_length(&mut v, "agent.backstory", &self.backstory, 10_000);
        self.check_tools(&mut v);
        if let Some(id) = &self.llm_provider_id
            && uuid::Uuid::try_parse(id).is_err()
        {
            v.add("agent.llm_provider_id", "must be a provider id (a UUID)");
        }
        self.check_provider_reference(&mut v);
        self.llm_overrides.validate("agent.llm_overrides", &mut v);
        if let Some(t) = self.temperature {
            check_f64(&mut v, "agent.temperature", t, 0.0, 2.0);
        }
        check_i32(&mut v, "agent.max_iter", self.max_iter, 1, 1000);
        if let Some(rpm) = self.max_rpm {
            check_i32(&mut v, "agent.max_rpm", rpm, 1, 100_000);
        }
        if let Some(seconds) = self.max_execution_time {
            check_i32(&mut v, "agent.max_execution_time", seconds, 1, 86_400);
        }
        check_i32(
            &mut v,
            "agent.max_retry_limit",
            self.max_retry_limit,
            0,
            100,
        );
        self.check_crewai_settings(&mut v);
        if v.is_empty() {
            // Only when every field is within its own limit: the total is
            // bounded then, and a field too long is named as that.
            self.check_size(&mut v);
        }
        v.finish(self)
    }

    /// The whole configuration within [`MAX_CONFIGURATION_BYTES`].
    fn check_size(&self, v: &mut Violations) {
        let size = serde_json::to_vec(self).map_or(0, |json| json.len());
        if size > MAX_CONFIGURATION_BYTES {
            v.add(
                "agent",
                format!(
                    "its configuration must be at most {MAX_CONFIGURATION_BYTES} bytes of JSON \
                     (got {size}): the largest parts are tool_config, embedder and the templates"
                ),
            );
        }
    }

    /// The provider's label or version: at most one, only with a provider;
    /// one violation per bad field.
    fn check_provider_reference(&self, v: &mut Violations) {
        let (label, version) = (&self.llm_provider_label, self.llm_provider_version);
        if self.llm_provider_id.is_none() {
            let without_provider = "needs llm_provider_id (a label or version of which provider?)";
            if label.is_some() {
                v.add("agent.llm_provider_label", without_provider);
            }
            if version.is_some() {
                v.add("agent.llm_provider_version", without_provider);
            }
            return;
        }
        if let Some(label) = label
            && let Err(problem) = super::label::check_name(label)
        {
            v.add("agent.llm_provider_label", problem);
        }
        if version.is_some_and(|n| n < 1) {
            v.add("agent.llm_provider_version", "must be 1 or more");
        } else if label.is_some() && version.is_some() {
            v.add(
                "agent.llm_provider_version",
                "must not be set together with llm_provider_label (at most one of the two)",
            );
        }
    }

    /// About how many bytes the settings beyond the platform's own take on
    /// the heap (for the recent-agents cache's weight).
    pub fn crewai_settings_bytes(&self) -> usize {
        let texts = [
            &self.function_calling_llm,
            &self.system_template,
            &self.prompt_template,
            &self.response_template,
        ];
        let json = |value: &Value| value.to_string().len() * 2;
        texts
            .iter()
            .filter_map(|t| t.as_ref())
            .map(String::len)
            .sum::<usize>()
            + self.date_format.len()
            + self.embedder.as_ref().map_or(0, json)
            + self
                .tool_config
                .iter()
                .map(|(tool, settings)| tool.len() + json(settings))
                .sum::<usize>()
    }

    /// The templates, reasoning, date and JSON settings.
    fn check_crewai_settings(&self, v: &mut Violations) {
        if let Some(model) = &self.function_calling_llm {
            check_required_text(v, "agent.function_calling_llm", model, 200);
        }
        let templates = [
            ("agent.system_template", &self.system_template),
            ("agent.prompt_template", &self.prompt_template),
            ("agent.response_template", &self.response_template),
        ];
        for (field, template) in templates {
            if let Some(template) = template {
                check_length(v, field, template, 10_000);
            }
        }
        if let Some(attempts) = self.max_reasoning_attempts {
            check_i32(v, "agent.max_reasoning_attempts", attempts, 1, 100);
        }
        check_required_text(v, "agent.date_format", &self.date_format, 64);
        if let Some(embedder) = &self.embedder {
            check_json(v, "agent.embedder", embedder);
        }
        for (tool, settings) in &self.tool_config {
            let field = format!("agent.tool_config[{tool:?}]");
            if !self.tools.contains(tool) {
                v.add(
                    field.clone(),
                    "names a tool the agent does not list in tools",
                );
            }
            check_json(v, &field, settings);
        }
    }

    fn check_tools(&self, v: &mut Violations) {
        if self.tools.len() > MAX_TOOLS {
            // Reported alone: the items of a list this long are not looked at.
            v.add(
                "agent.tools",
                format!(
                    "must hold at most {MAX_TOOLS} tools (got {})",
                    self.tools.len()
                ),
            );
            return;
        }
        let mut seen = std::collections::HashSet::with_capacity(self.tools.len());
        for (index, tool) in self.tools.iter().enumerate() {
            let field = format!("agent.tools[{index}]");
            check_required_text(v, &field, tool, 200);
            if !seen.insert(tool.as_str()) && !tool.trim().is_empty() {
                v.add(field, "is listed twice");
            }
        }
    }
}

/// Checks a JSON setting: an object, at most [`MAX_JSON_BYTES`] serialized
/// and [`MAX_JSON_DEPTH`] levels deep.
fn check_json(v: &mut Violations, field: &str, value: &Value) {
    if !value.is_object() {
        v.add(field, "must be a JSON object");
        return;
    }
    if depth(value) > MAX_JSON_DEPTH {
        v.add(field, format!("must nest at most {MAX_JSON_DEPTH} levels"));
        return;
    }
    let text = value.to_string();
    if text.len() > MAX_JSON_BYTES {
        v.add(
            field,
            format!("must be at most {MAX_JSON_BYTES} bytes of JSON"),
        );
    } else if text.contains("\\u0000") {
        // PostgreSQL's jsonb cannot hold a NUL character.
        v.add(field, "must not contain NUL characters");
    }
}

/// How deeply `value` nests (a scalar is 0 levels deep).
fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Whether `path` names an agent field an update mask may carry.
pub fn is_mask_path(path: &str) -> bool {
    FIELDS.contains(&path)
        || path
            .strip_prefix("llm_overrides.")
            .is_some_and(|param| params::FIELDS.contains(&param))
}
