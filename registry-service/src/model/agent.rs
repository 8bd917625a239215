//! A CrewAI agent's configuration: what a version snapshot holds.

use serde::{Deserialize, Serialize};

use super::params::{self, ModelParams};
use super::{check_f64, check_i32, check_length, check_required_text};
use crate::error::{Error, Violations};
use proto::v1 as pb;

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

/// Every configurable field of an agent, with defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSpec {
    pub name: String,
    pub role: String,
    pub goal: String,
    #[serde(default)]
    pub backstory: String,
    #[serde(default)]
    pub tools: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_provider_id: Option<String>,
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
}

/// The most tools an agent may list.
pub const MAX_TOOLS: usize = 64;

/// Refuses an agent message whose repeated fields hold more items than any
/// valid agent can, before anything iterates over them or copies them: the
/// item checks, duplicate checks and mask merges after this are bounded.
pub fn check_counts(input: &pb::Agent) -> Result<(), Error> {
    let mut v = Violations::default();
    if input.tools.len() > MAX_TOOLS {
        v.add(
            "agent.tools",
            format!(
                "must hold at most {MAX_TOOLS} tools (got {})",
                input.tools.len()
            ),
        );
    }
    params::check_counts(input.llm_overrides.as_ref(), "agent.llm_overrides", &mut v);
    v.finish(())
}

/// Update-mask paths of an agent's configuration (besides
/// `llm_overrides.<field>`).
pub const FIELDS: &[&str] = &[
    "name",
    "role",
    "goal",
    "backstory",
    "tools",
    "llm_provider_id",
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
        }
    }
}

impl AgentSpec {
    /// A new agent from a create request (or an update with mask `*`).
    pub fn from_proto(input: &pb::Agent) -> Result<Self, Error> {
        let mut spec = Self::default();
        for field in FIELDS {
            spec.apply(input, field);
        }
        spec.validated()
    }

    /// The fields a request without an update mask sets: every optional
    /// field present, every non-empty string, list and message.
    pub fn fields_set(input: &pb::Agent) -> Vec<String> {
        let set = [
            ("name", !input.name.is_empty()),
            ("role", !input.role.is_empty()),
            ("goal", !input.goal.is_empty()),
            ("backstory", !input.backstory.is_empty()),
            ("tools", !input.tools.is_empty()),
            ("llm_provider_id", input.llm_provider_id.is_some()),
            ("llm_overrides", input.llm_overrides.is_some()),
            ("temperature", input.temperature.is_some()),
            ("allow_delegation", input.allow_delegation.is_some()),
            ("verbose", input.verbose.is_some()),
            ("cache", input.cache.is_some()),
            ("max_iter", input.max_iter.is_some()),
            ("max_rpm", input.max_rpm.is_some()),
            ("max_execution_time", input.max_execution_time.is_some()),
            ("allow_code_execution", input.allow_code_execution.is_some()),
            (
                "respect_context_window",
                input.respect_context_window.is_some(),
            ),
            ("max_retry_limit", input.max_retry_limit.is_some()),
        ];
        set.into_iter()
            .filter(|(_, present)| *present)
            .map(|(name, _)| name.to_owned())
            .collect()
    }

    /// Copies one update-mask path from `input`; an unset value resets the
    /// field to its default. `false` for an unknown path.
    pub fn apply(&mut self, input: &pb::Agent, path: &str) -> bool {
        let overrides = ModelParams::from_proto(input.llm_overrides.clone());
        self.apply_from(input, &overrides, path)
    }

    /// Copies every update-mask path in `paths` from `input` (the message's
    /// overrides converted once, not once per path).
    pub fn apply_all(&mut self, input: &pb::Agent, paths: &[String]) {
        let overrides = ModelParams::from_proto(input.llm_overrides.clone());
        for path in paths {
            self.apply_from(input, &overrides, path);
        }
    }

    fn apply_from(&mut self, input: &pb::Agent, overrides: &ModelParams, path: &str) -> bool {
        if let Some(param) = path.strip_prefix("llm_overrides.") {
            return self.llm_overrides.copy_field(overrides, param);
        }
        match path {
            "name" => self.name = input.name.clone(),
            "role" => self.role = input.role.clone(),
            "goal" => self.goal = input.goal.clone(),
            "backstory" => self.backstory = input.backstory.clone(),
            "tools" => self.tools = input.tools.clone(),
            "llm_provider_id" => {
                self.llm_provider_id = input.llm_provider_id.clone().filter(|id| !id.is_empty());
            }
            "llm_overrides" => self.llm_overrides = overrides.clone(),
            "temperature" => self.temperature = input.temperature,
            "allow_delegation" => {
                self.allow_delegation = input.allow_delegation.unwrap_or(DEFAULT_ALLOW_DELEGATION);
            }
            "verbose" => self.verbose = input.verbose.unwrap_or(DEFAULT_VERBOSE),
            "cache" => self.cache = input.cache.unwrap_or(DEFAULT_CACHE),
            "max_iter" => self.max_iter = input.max_iter.unwrap_or(DEFAULT_MAX_ITER),
            "max_rpm" => self.max_rpm = input.max_rpm,
            "max_execution_time" => self.max_execution_time = input.max_execution_time,
            "allow_code_execution" => {
                self.allow_code_execution = input
                    .allow_code_execution
                    .unwrap_or(DEFAULT_ALLOW_CODE_EXECUTION);
            }
            "respect_context_window" => {
                self.respect_context_window = input
                    .respect_context_window
                    .unwrap_or(DEFAULT_RESPECT_CONTEXT_WINDOW);
            }
            "max_retry_limit" => {
                self.max_retry_limit = input.max_retry_limit.unwrap_or(DEFAULT_MAX_RETRY_LIMIT);
            }
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
        v.finish(self)
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

    /// The message form, without resource metadata.
    pub fn to_proto(&self) -> pb::Agent {
        pb::Agent {
            name: self.name.clone(),
            role: self.role.clone(),
            goal: self.goal.clone(),
            backstory: self.backstory.clone(),
            tools: self.tools.clone(),
            llm_provider_id: self.llm_provider_id.clone(),
            llm_overrides: (!self.llm_overrides.is_empty()).then(|| self.llm_overrides.to_proto()),
            temperature: self.temperature,
            allow_delegation: Some(self.allow_delegation),
            verbose: Some(self.verbose),
            cache: Some(self.cache),
            max_iter: Some(self.max_iter),
            max_rpm: self.max_rpm,
            max_execution_time: self.max_execution_time,
            allow_code_execution: Some(self.allow_code_execution),
            respect_context_window: Some(self.respect_context_window),
            max_retry_limit: Some(self.max_retry_limit),
            ..Default::default()
        }
    }
}

/// Whether `path` names an agent field an update mask may carry.
pub fn is_mask_path(path: &str) -> bool {
    FIELDS.contains(&path)
        || path
            .strip_prefix("llm_overrides.")
            .is_some_and(|param| params::FIELDS.contains(&param))
}
