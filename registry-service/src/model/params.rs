//! Model (generation) parameters: a provider's defaults and an agent's
//! overrides share this shape and these ranges.

use serde::{Deserialize, Serialize};

use super::{check_f64, check_i32, check_length, check_required_text, path};
use crate::error::Violations;

/// Generation parameters; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// The most stop sequences a set of parameters may hold.
pub const MAX_STOP: usize = 16;

/// The names of [`ModelParams`] fields, as update masks spell them.
pub const FIELDS: &[&str] = &[
    "model_name",
    "temperature",
    "max_tokens",
    "top_p",
    "frequency_penalty",
    "presence_penalty",
    "timeout_seconds",
    "stop",
];

impl ModelParams {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Records a violation under `prefix` for every out-of-range field.
    pub fn validate(&self, prefix: &str, v: &mut Violations) {
        if let Some(name) = &self.model_name {
            check_required_text(v, &path(prefix, "model_name"), name, 200);
        }
        if let Some(t) = self.temperature {
            check_f64(v, &path(prefix, "temperature"), t, 0.0, 2.0);
        }
        if let Some(n) = self.max_tokens {
            check_i32(v, &path(prefix, "max_tokens"), n, 1, 1_000_000);
        }
        if let Some(p) = self.top_p {
            check_f64(v, &path(prefix, "top_p"), p, 0.0, 1.0);
        }
        if let Some(p) = self.frequency_penalty {
            check_f64(v, &path(prefix, "frequency_penalty"), p, -2.0, 2.0);
        }
        if let Some(p) = self.presence_penalty {
            check_f64(v, &path(prefix, "presence_penalty"), p, -2.0, 2.0);
        }
        if let Some(s) = self.timeout_seconds {
            check_i32(v, &path(prefix, "timeout_seconds"), s, 1, 3600);
        }
        if self.stop.len() > MAX_STOP {
            // Reported alone: the items of a list this long are not looked at.
            v.add(
                path(prefix, "stop"),
                format!(
                    "must hold at most {MAX_STOP} sequences (got {})",
                    self.stop.len()
                ),
            );
            return;
        }
        for (index, stop) in self.stop.iter().enumerate() {
            let field = format!("{}[{index}]", path(prefix, "stop"));
            if stop.is_empty() {
                v.add(field, "must not be empty");
            } else {
                check_length(v, &field, stop, 200);
            }
        }
    }

    /// `self` with every field that `over` sets replaced by `over`'s value.
    pub fn overlaid_with(&self, over: &Self) -> Self {
        Self {
            model_name: over.model_name.clone().or_else(|| self.model_name.clone()),
            temperature: over.temperature.or(self.temperature),
            max_tokens: over.max_tokens.or(self.max_tokens),
            top_p: over.top_p.or(self.top_p),
            frequency_penalty: over.frequency_penalty.or(self.frequency_penalty),
            presence_penalty: over.presence_penalty.or(self.presence_penalty),
            timeout_seconds: over.timeout_seconds.or(self.timeout_seconds),
            stop: if over.stop.is_empty() {
                self.stop.clone()
            } else {
                over.stop.clone()
            },
        }
    }

    /// Copies the field `name` from `source` (for update masks such as
    /// `llm_overrides.temperature`); `false` when there is no such field.
    pub fn copy_field(&mut self, source: &Self, name: &str) -> bool {
        match name {
            "model_name" => self.model_name = source.model_name.clone(),
            "temperature" => self.temperature = source.temperature,
            "max_tokens" => self.max_tokens = source.max_tokens,
            "top_p" => self.top_p = source.top_p,
            "frequency_penalty" => self.frequency_penalty = source.frequency_penalty,
            "presence_penalty" => self.presence_penalty = source.presence_penalty,
            "timeout_seconds" => self.timeout_seconds = source.timeout_seconds,
            "stop" => self.stop = source.stop.clone(),
            _ => return false,
        }
        true
    }
}
