//! The strict format reward: exactly one non-empty `<think>…</think>` followed by exactly one
//! non-empty `<answer>…</answer>` and nothing but whitespace around them.
//!
//! ```
//! use aha_reward::format::is_well_formed;
//! assert!(is_well_formed("<think>a</think>\n<answer>1</answer>", false));
//! assert!(!is_well_formed("<think>a</think><answer>1</answer>.", false));
//! ```

use crate::registry::Reward;
use crate::sample::{Sample, Score};

/// 1.0 for a well-formed completion, else 0.0.
pub struct FormatReward {
    /// The prompt already opened `<think>`: the completion must not open it again.
    pub think_in_prompt: bool,
}

impl Reward for FormatReward {
    fn score(&self, sample: &Sample) -> Score {
        Score::from_bool(is_well_formed(&sample.completion, self.think_in_prompt))
    }
}

/// Soft shaping: 0.25 per R1 tag that occurs exactly once.
pub struct TagCountReward;

impl Reward for TagCountReward {
    fn score(&self, sample: &Sample) -> Score {
        let tags = ["<think>", "</think>", "<answer>", "</answer>"];
        Score::Value(tags.iter().filter(|t| sample.completion.matches(*t).count() == 1).count() as f64 * 0.25)
    }
}

/// Whether `completion` has the strict R1 format (see the module docs).
pub fn is_well_formed(completion: &str, think_in_prompt: bool) -> bool {
    let tags = ["<think>", "</think>", "<answer>", "</answer>"];
    let expected_opens = usize::from(!think_in_prompt);
    let counts: Vec<usize> = tags.iter().map(|t| completion.matches(t).count()).collect();
    if counts != [expected_opens, 1, 1, 1] {
        return false;
    }
    let rest = completion.trim_start();
    let rest = if think_in_prompt {
        rest
    } else {
        match rest.strip_prefix("<think>") {
            Some(r) => r,
            None => return false,
        }
    };
    let Some((thought, after)) = rest.split_once("</think>") else {
        return false;
    };
    let Some(after) = after.trim_start().strip_prefix("<answer>") else {
        return false;
    };
    let Some((answer, tail)) = after.split_once("</answer>") else {
        return false;
    };
    !thought.trim().is_empty() && !answer.trim().is_empty() && tail.trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::{is_well_formed, TagCountReward};
    use crate::sample::{Sample, Score};
    use crate::Reward;

    #[test]
    fn tag_count_gives_a_quarter_per_tag_seen_exactly_once() {
        let score = |c: &str| match TagCountReward.score(&Sample::new(c, "")) {
            Score::Value(v) => v,
            Score::Unscorable { reason } => panic!("unscorable: {reason}"),
        };
        assert_eq!(score("plain text"), 0.0);
        assert_eq!(score("<answer>4</answer>"), 0.5);
        assert_eq!(score("<think>a</think><answer>4</answer>"), 1.0);
        assert_eq!(score("<think>a</think><answer>4</answer><answer>5</answer>"), 0.5);
    }

    #[test]
    fn strict_cases() {
        assert!(is_well_formed("<think>r</think><answer>4</answer>\n", false));
        assert!(is_well_formed("r</think> <answer>4</answer>", true));
        for bad in [
            "<think></think><answer>4</answer>",
            "<think>r</think><answer> </answer>",
            "<think>r</think><answer>4</answer>x",
            "<think>r</think><answer>4</answer><answer>5</answer>",
            "<think>r</think><think>s</think><answer>4</answer>",
            "<think></think>a",
            "x<think>r</think><answer>4</answer>",
            "<think>r</think>x<answer>4</answer>",
            "<think>r</think><answer>4",
        ] {
            assert!(!is_well_formed(bad, false), "{bad}");
        }
    }
}
