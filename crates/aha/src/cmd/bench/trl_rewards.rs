//! The two rewards and the text codec of TRL's GRPO benchmark script (`bench_trl.py`), with Python's
//! semantics exactly (the existing `exact_match` and `format` kinds are stricter or normalise, so
//! the benchmark does not use them):
//!
//! - `accuracy_reward`: 1.0 iff the last `re.findall(r"<answer>(.*?)</answer>", DOTALL)` capture,
//!   `.strip()`ped, equals the gold string exactly;
//! - `format_reward`: 1.0 iff `re.match(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", DOTALL)`
//!   matches the completion (empty think/answer bodies and repeated tags allowed, as the regex
//!   allows them).
//!
//! Whitespace is Python's `str.isspace()` (what `\s` and `strip()` use on `str`), which adds the
//! separators U+001C..U+001F to Rust's `char::is_whitespace`. The codec decodes like TRL's
//! `batch_decode(completion_ids, skip_special_tokens=True)` over the ids through the first EOS.

use aha_model::AhaTokenizer;
use aha_reward::{Reward, Sample, Score};
use aha_train::grpo::TextCodec;

const ANSWER_OPEN: &str = "<answer>";
const ANSWER_CLOSE: &str = "</answer>";
const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";

/// Python's `str.isspace()` for one character.
pub fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()` with no argument.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// The captures of `re.findall(r"<answer>(.*?)</answer>", s, re.DOTALL)`: scanning left to
/// right, each `<answer>` takes the text up to the first `</answer>` after it, and the scan
/// resumes after that `</answer>`.
pub fn answer_captures(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(open) = s[pos..].find(ANSWER_OPEN) {
        let body = pos + open + ANSWER_OPEN.len();
        let Some(close) = s[body..].find(ANSWER_CLOSE) else { break };
        out.push(&s[body..body + close]);
        pos = body + close + ANSWER_CLOSE.len();
    }
    out
}

/// TRL bench `accuracy_reward` for one completion.
pub fn accuracy(completion: &str, gold: &str) -> bool {
    answer_captures(completion).last().is_some_and(|a| py_strip(a) == gold)
}

/// Whether `re.match(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", s, re.DOTALL)`
/// matches. The regex holds iff, after leading whitespace, `s` opens with `<think>`, ends (before
/// trailing whitespace) with `</answer>`, and some `</think>` after the opening tag is followed
/// by optional whitespace and an `<answer>` that ends no later than that final `</answer>`
/// begins (the lazy bodies can stretch over any text, tags included).
pub fn format_matches(s: &str) -> bool {
    let body = s.trim_start_matches(py_isspace);
    let Some(rest) = body.strip_prefix(THINK_OPEN) else { return false };
    let Some(inner) = rest.trim_end_matches(py_isspace).strip_suffix(ANSWER_CLOSE) else { return false };
    let mut from = 0;
    while let Some(i) = inner[from..].find(THINK_CLOSE) {
        let after = &inner[from + i + THINK_CLOSE.len()..];
        if after.trim_start_matches(py_isspace).starts_with(ANSWER_OPEN) {
            return true;
        }
        from += i + 1;
    }
    false
}

/// `accuracy_reward` of the TRL bench.
pub struct TrlAccuracy;

impl Reward for TrlAccuracy {
    fn score(&self, sample: &Sample) -> Score {
        Score::from_bool(accuracy(&sample.completion, &sample.answer))
    }
}

/// `format_reward` of the TRL bench.
pub struct TrlFormat;

impl Reward for TrlFormat {
    fn score(&self, sample: &Sample) -> Score {
        Score::from_bool(format_matches(&sample.completion))
    }
}

/// The bench's tokenizer bridge: plain-text prompts without special tokens, completions decoded
/// through the first EOS with special tokens skipped (TRL's `skip_special_tokens=True`).
pub struct TrlCodec<'a>(pub &'a AhaTokenizer);

impl TextCodec for TrlCodec<'_> {
    fn encode(&self, text: &str) -> aha_train::Result<Vec<u32>> {
        Ok(self.0.encode(text, false)?)
    }

    fn decode(&self, ids: &[u32]) -> aha_train::Result<String> {
        let eos = self.0.eos_token_ids();
        let end = ids.iter().position(|id| eos.contains(id)).map_or(ids.len(), |i| i + 1);
        Ok(self.0.decode(&ids[..end], true)?)
    }

    fn eos_ids(&self) -> Vec<u32> {
        self.0.eos_token_ids().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_takes_the_last_answer_stripped() {
        assert!(accuracy("<answer>3</answer> then <answer> 4\n</answer>", "4"));
        assert!(!accuracy("<answer>4</answer><answer>5</answer>", "4"), "the last answer counts");
        assert!(accuracy("<answer>4</answer><answer>5", "4"), "an unclosed answer is not a capture");
        assert!(accuracy("x<answer>\t4 \u{1c}</answer>y", "4"), "Python strips U+001C too");
        assert!(accuracy("<answer>a\nb</answer>", "a\nb"), "DOTALL: the body may span lines");
        assert!(!accuracy("<answer>4.0</answer>", "4"), "no numeric normalisation");
        assert!(!accuracy("<answer>Four</answer>", "four"), "case-sensitive");
        assert!(!accuracy("4", "4"), "no answer tag, no reward");
        assert!(accuracy("<answer></answer>", ""), "an empty gold matches an empty answer");
    }

    #[test]
    fn findall_is_lazy_and_non_overlapping() {
        assert_eq!(answer_captures("<answer><answer>1</answer>2</answer>"), vec!["<answer>1"]);
        assert_eq!(answer_captures("<answer>1</answer><answer>2</answer>"), vec!["1", "2"]);
        assert!(answer_captures("</answer><answer>").is_empty());
    }

    /// Python's verdicts on 800 near-miss and random strings (`scripts/make_trl_reward_cases.py`).
    #[test]
    fn agrees_with_python_re_on_the_dumped_cases() {
        let text = include_str!("../../../tests/fixtures/trl_grpo/reward_cases.jsonl");
        let mut n = 0;
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let (c, gold) = (v["completion"].as_str().unwrap(), v["gold"].as_str().unwrap());
            assert_eq!(accuracy(c, gold), v["accuracy"].as_f64() == Some(1.0), "accuracy of {c:?} vs {gold:?}");
            assert_eq!(format_matches(c), v["format"].as_f64() == Some(1.0), "format of {c:?}");
            n += 1;
        }
        assert!(n > 500, "{n} cases");
    }

    #[test]
    fn format_follows_the_regex() {
        for good in [
            "<think>r</think><answer>4</answer>",
            "  \n<think>r</think>\n <answer>4</answer>\n\n",
            "<think>a\nb</think><answer>c\nd</answer>",
            "<think></think><answer></answer>",
            "<think>r</think><answer>4</answer><answer>5</answer>",
            "<think>r</think>x</think> <answer>4</answer>",
            "<think>r</think><answer>1</answer>junk</answer>",
            "\u{1f}<think>r</think><answer>4</answer>\u{1c}",
        ] {
            assert!(format_matches(good), "{good:?}");
        }
        for bad in [
            "x<think>r</think><answer>4</answer>",
            "<think>r</think><answer>4</answer>.",
            "<think>r</think>x<answer>4</answer>",
            "<think>r<answer>4</answer>",
            "<think>r</think><answer>4",
            "<think></answer>",
            "<think>r</think></answer>",
            "",
        ] {
            assert!(!format_matches(bad), "{bad:?}");
        }
    }
}
