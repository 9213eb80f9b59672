//! Exact-match and numeric verifiers on the extracted final answer.
//!
//! Exact match compares after trimming, collapsing whitespace, dropping one trailing period and
//! (by default) lower-casing. Numeric parses both sides as decimal numbers (thousands commas, a
//! leading `$` and a trailing `%` are dropped) exactly as rationals, then compares within an
//! absolute tolerance (default 0: exactly equal). A gold answer that is not a number is unscorable.

use crate::extract::AnswerExtraction;
use crate::registry::Reward;
use crate::sample::{Sample, Score};
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{Signed, ToPrimitive};

/// Exact string match (normalised).
pub struct ExactMatchReward {
    /// Compare case-sensitively.
    pub case_sensitive: bool,
}

impl Reward for ExactMatchReward {
    fn score(&self, sample: &Sample) -> Score {
        self.score_with(sample, AnswerExtraction::R1)
    }

    fn score_with(&self, sample: &Sample, extraction: AnswerExtraction) -> Score {
        let Ok(answer) = extraction.final_answer(&sample.completion) else {
            return Score::Value(0.0);
        };
        let norm = |s: &str| {
            let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
            let s = s.strip_suffix('.').unwrap_or(&s).to_string();
            if self.case_sensitive {
                s
            } else {
                s.to_lowercase()
            }
        };
        Score::from_bool(norm(&answer) == norm(&sample.answer))
    }
}

/// Numeric answer within a tolerance.
pub struct NumericReward {
    /// Absolute tolerance.
    pub tolerance: f64,
}

impl Reward for NumericReward {
    fn score(&self, sample: &Sample) -> Score {
        self.score_with(sample, AnswerExtraction::R1)
    }

    fn score_with(&self, sample: &Sample, extraction: AnswerExtraction) -> Score {
        let Some(gold) = parse_decimal(&sample.answer) else {
            return Score::unscorable("gold answer is not a number");
        };
        let Ok(answer) = extraction.final_answer(&sample.completion) else {
            return Score::Value(0.0);
        };
        let Some(pred) = parse_decimal(&answer) else {
            return Score::Value(0.0);
        };
        let diff = (gold - pred).abs().to_f64().unwrap_or(f64::INFINITY);
        Score::from_bool(diff <= self.tolerance)
    }
}

/// Parses `-1,234.5`, `$3`, `45%` (as 45), `.5` exactly; `None` for anything else.
pub fn parse_decimal(text: &str) -> Option<BigRational> {
    let t = text.trim().trim_start_matches('$').trim_end_matches('%').trim();
    let (neg, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let t = t.replace(',', "");
    let (int, frac) = t.split_once('.').unwrap_or((&t, ""));
    if int.is_empty() && frac.is_empty() || t.len() > 400 {
        return None;
    }
    if !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits: BigInt = format!("{int}{frac}").parse().ok()?;
    let scale = BigInt::from(10u32).pow(frac.len() as u32);
    let value = BigRational::new(digits, scale);
    Some(if neg { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(a: &str) -> String {
        format!("<think>t</think><answer>{a}</answer>")
    }

    #[test]
    fn numeric_and_exact() {
        let r = NumericReward { tolerance: 0.0 };
        assert_eq!(r.score(&Sample::new(wrap("1,234.50"), "1234.5")), Score::Value(1.0));
        assert_eq!(r.score(&Sample::new(wrap("1234.51"), "1234.5")), Score::Value(0.0));
        assert!(matches!(r.score(&Sample::new(wrap("1"), "one")), Score::Unscorable { .. }));
        let e = ExactMatchReward { case_sensitive: false };
        assert_eq!(e.score(&Sample::new(wrap(" Paris. "), "paris")), Score::Value(1.0));
        assert_eq!(e.score(&Sample::new(wrap("Lyon"), "paris")), Score::Value(0.0));
    }
}
