//! `Metrics`: the named scalars of one training step, and the standard metric names (docs/DESIGN.md §2).

use std::collections::BTreeMap;

/// Standard metric names, TRL's where they exist (docs/DESIGN.md §2). Trainers use these constants so that
/// `metrics.jsonl`, TensorBoard and `aha report` agree on spelling.
pub mod names {
    /// Mean total (weighted) reward over the step's samples.
    pub const REWARD: &str = "reward";
    /// Standard deviation of the total reward.
    pub const REWARD_STD: &str = "reward_std";
    /// Fraction of groups whose rewards all equal each other (zero advantage).
    pub const FRAC_REWARD_ZERO_STD: &str = "frac_reward_zero_std";
    /// Fraction of samples judged correct by the task's verifier (plotted as training accuracy).
    pub const ACCURACY: &str = "accuracy";
    /// Mean completion length in tokens.
    pub const COMPLETION_MEAN_LENGTH: &str = "completions/mean_length";
    /// Shortest completion in tokens.
    pub const COMPLETION_MIN_LENGTH: &str = "completions/min_length";
    /// Longest completion in tokens.
    pub const COMPLETION_MAX_LENGTH: &str = "completions/max_length";
    /// Fraction of completions cut off at the length limit.
    pub const COMPLETION_CLIPPED_RATIO: &str = "completions/clipped_ratio";
    /// Reflection words per 1 000 words of the step's completions (docs/DESIGN.md §1 word list).
    pub const REFLECTION_PER_1K_WORDS: &str = "completions/reflection_per_1k_words";
    /// Mean k3 KL estimate to the reference model.
    pub const KL: &str = "kl";
    /// Mean per-token entropy of the policy.
    pub const ENTROPY: &str = "entropy";
    /// Fraction of tokens clipped at the low end of the ratio range.
    pub const CLIP_RATIO_LOW_MEAN: &str = "clip_ratio/low_mean";
    /// Fraction of tokens clipped at the high end of the ratio range.
    pub const CLIP_RATIO_HIGH_MEAN: &str = "clip_ratio/high_mean";
    /// Fraction of tokens clipped at either end.
    pub const CLIP_RATIO_REGION_MEAN: &str = "clip_ratio/region_mean";
    /// The training loss.
    pub const LOSS: &str = "loss";
    /// Gradient norm before clipping.
    pub const GRAD_NORM: &str = "grad_norm";
    /// Learning rate used for the step.
    pub const LR: &str = "lr";
    /// Generated plus trained tokens per second of wall time.
    pub const TOKENS_PER_S: &str = "tokens_per_s";
    /// Wall time of the step in seconds.
    pub const STEP_TIME: &str = "step_time";

    /// `rewards/<name>/mean`: the mean of one named reward function.
    pub fn reward_mean(name: &str) -> String {
        format!("rewards/{name}/mean")
    }

    /// `rewards/<name>/std`: the standard deviation of one named reward function.
    pub fn reward_std(name: &str) -> String {
        format!("rewards/{name}/std")
    }
}

/// The named scalar values of one step, kept sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    values: BTreeMap<String, f64>,
}

impl Metrics {
    /// An empty set of metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, replacing any earlier value; returns `self` for chaining.
    pub fn set(&mut self, name: impl Into<String>, value: f64) -> &mut Self {
        self.values.insert(name.into(), value);
        self
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.values.get(name).copied()
    }

    /// (name, value) pairs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// How many metrics are set.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no metric is set.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl<S: Into<String>> FromIterator<(S, f64)> for Metrics {
    fn from_iter<I: IntoIterator<Item = (S, f64)>>(iter: I) -> Self {
        Metrics { values: iter.into_iter().map(|(k, v)| (k.into(), v)).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_order() {
        let mut m = Metrics::new();
        m.set("loss", 1.0).set("kl", 0.5).set("loss", 2.0);
        assert_eq!(m.get("loss"), Some(2.0));
        assert_eq!(m.get("nope"), None);
        let names: Vec<&str> = m.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["kl", "loss"]);
        assert_eq!(names::reward_mean("format"), "rewards/format/mean");
    }
}
