//! Typed rewards config: which rewards to build, with which weights and options.
//!
//! ```toml
//! max_panics = 16          # optional; default 16
//! [[rewards]]
//! kind = "math"            # math | format | language | countdown | exact_match | numeric | code
//! weight = 1.0
//! [[rewards]]
//! kind = "language"
//! name = "lang_zh"         # optional; defaults to the kind
//! language = "zh"
//! weight = 0.1
//! ```

use crate::error::RewardError;
use crate::language::Language;
use serde::{Deserialize, Serialize};

/// The whole `[[rewards]]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardsConfig {
    /// Rewards to build, in order; only these are built.
    pub rewards: Vec<RewardSpec>,
    /// Panics tolerated over the registry's life before scoring aborts (default 16).
    #[serde(default = "default_max_panics")]
    pub max_panics: usize,
}

fn default_max_panics() -> usize {
    16
}

impl RewardsConfig {
    /// Parses a TOML document holding `[[rewards]]` tables.
    pub fn from_toml_str(text: &str) -> Result<Self, RewardError> {
        let config: RewardsConfig = toml::from_str(text).map_err(|e| RewardError::Config(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks names are unique and weights finite.
    pub fn validate(&self) -> Result<(), RewardError> {
        let mut seen = std::collections::BTreeSet::new();
        for spec in &self.rewards {
            if !spec.weight.is_finite() {
                return Err(RewardError::Config(format!("{}: weight is not finite", spec.name())));
            }
            if !seen.insert(spec.name()) {
                return Err(RewardError::Config(format!("duplicate reward name {}", spec.name())));
            }
        }
        if self.rewards.is_empty() {
            return Err(RewardError::Config("no [[rewards]] given".into()));
        }
        Ok(())
    }
}

/// One reward: its kind (with options), weight and optional name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardSpec {
    /// Name used in outputs (`rewards/<name>`); defaults to the kind's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Weight in the total (default 1.0).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// What to build.
    #[serde(flatten)]
    pub kind: RewardKind,
}

fn default_weight() -> f64 {
    1.0
}

impl RewardSpec {
    /// The reward's name: `name` if given, else the kind's name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.kind.kind_name().to_string())
    }
}

/// The reward kinds and their options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RewardKind {
    /// Math equivalence of the extracted answer with the gold answer (1 or 0).
    Math {
        /// Decimal digits for the numeric tolerance when a decimal is involved (default 6).
        #[serde(default = "default_precision")]
        precision: u32,
    },
    /// Strict `<think>…</think><answer>…</answer>` format (1 or 0).
    Format {
        /// The prompt already opened `<think>`: the completion starts inside it (default false).
        #[serde(default)]
        think_in_prompt: bool,
    },
    /// Soft format shaping for models that have not learned the format yet: 0.25 for each of
    /// `<think>`, `</think>`, `<answer>`, `</answer>` that occurs exactly once (0 to 1). Worth
    /// a small weight next to the strict `format` reward, never instead of it.
    TagCount,
    /// Fraction of the chain-of-thought's words in the target language.
    Language {
        /// Target language (`en` or `zh`; default `en`).
        #[serde(default)]
        language: Language,
    },
    /// Countdown: use every number of `numbers` exactly once to reach `target` (1 or 0).
    Countdown,
    /// Exact match of the extracted answer with the gold (whitespace and case normalised).
    ExactMatch {
        /// Compare case-sensitively (default false).
        #[serde(default)]
        case_sensitive: bool,
    },
    /// Numeric answer within an absolute tolerance of the gold (default 0: exact).
    Numeric {
        /// Absolute tolerance (default 0.0).
        #[serde(default)]
        tolerance: f64,
    },
    /// Python program (the extracted answer, or the last fenced code block) run against the
    /// sample's `tests` in the sandbox: 1 when every test passes, else 0.
    Code {
        /// Wall-clock limit per run in seconds (default 10).
        #[serde(default = "default_code_timeout")]
        timeout_s: f64,
        /// Address-space limit in MiB (default 1024).
        #[serde(default = "default_code_memory")]
        memory_mb: u64,
    },
}

fn default_precision() -> u32 {
    6
}
fn default_code_timeout() -> f64 {
    10.0
}
fn default_code_memory() -> u64 {
    1024
}

impl RewardKind {
    /// The kind's name as written in config.
    pub fn kind_name(&self) -> &'static str {
        match self {
            RewardKind::Math { .. } => "math",
            RewardKind::Format { .. } => "format",
            RewardKind::TagCount => "tag_count",
            RewardKind::Language { .. } => "language",
            RewardKind::Countdown => "countdown",
            RewardKind::ExactMatch { .. } => "exact_match",
            RewardKind::Numeric { .. } => "numeric",
            RewardKind::Code { .. } => "code",
        }
    }
}
