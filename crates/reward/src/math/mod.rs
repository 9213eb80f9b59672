//! Math-answer equivalence in the class of Hugging Face's math-verify, bounded in time and memory.
//!
//! ```
//! use aha_reward::math::{math_equal, Verdict};
//! assert_eq!(math_equal("\\frac{1}{2}", "The answer is $0.5$."), Verdict::Equal);
//! assert_eq!(math_equal("x > 1", "(1, \\infty)"), Verdict::Equal);
//! assert_eq!(math_equal("(1, \\infty)", "x > 1"), Verdict::NotEqual);
//! assert_eq!(math_equal("2", "\\boxed{1,2,3}"), Verdict::NotEqual);
//! ```
//!
//! Pipeline: [`find`] picks the answer in each text (last `\boxed{}`, else the latest math span or
//! plain number), [`normalize`] rewrites a few spellings, [`lexer`] and [`parser`] build an AST,
//! [`compare`] decides with the budgeted [`eval`]. Bounds: an extracted answer longer than
//! [`MathOptions::max_answer_chars`] is not parsed; nesting deeper than [`parser::MAX_DEPTH`] fails to
//! parse; evaluation has a node budget ([`MathOptions::ops_budget`]), a rational size cap and a
//! factorial cap. When a bound is hit the verdict is [`Verdict::Undecided`].
//!
//! Policies (documented differences from math-verify are in `CONFORMANCE.md`): the comparison is
//! asymmetric like math-verify's: a gold relation `x > 1` accepts the interval `(1, \infty)` but a gold
//! interval does not accept a relation unless [`MathOptions::allow_set_relation_comp`]; a gold
//! `x = v` accepts `v` only when `x` is variable-like (no digits), while a predicted equation always
//! contributes its last part.

pub mod compare;
pub mod eval;
pub mod find;
pub mod lexer;
pub mod normalize;
pub mod parser;
pub mod simplify;

use crate::extract::AnswerExtraction;
use crate::registry::Reward;
use crate::sample::{Sample, Score};
use compare::Cmp;
use eval::Budget;
use parser::Node;

/// Options of the comparison.
#[derive(Debug, Clone)]
pub struct MathOptions {
    /// Decimal digits of tolerance when a decimal literal is involved (default 6).
    pub precision: u32,
    /// Let a gold interval accept a relation (`[-2, 7]` vs `-2 ≤ x ≤ 7`); default false.
    pub allow_set_relation_comp: bool,
    /// Longest extracted answer that is parsed, in characters (default 2000).
    pub max_answer_chars: usize,
    /// Evaluation node budget per comparison (default 200 000).
    pub ops_budget: u64,
}

impl Default for MathOptions {
    fn default() -> Self {
        MathOptions { precision: 6, allow_set_relation_comp: false, max_answer_chars: 2000, ops_budget: 200_000 }
    }
}

/// The verdict of one comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Equivalent.
    Equal,
    /// Not equivalent (including: no answer found in `pred`).
    NotEqual,
    /// A bound was hit while deciding (the reason says which).
    Undecided(String),
    /// The gold answer could not be parsed.
    BadGold(String),
}

impl Verdict {
    /// `Some(true/false)` when decided.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Verdict::Equal => Some(true),
            Verdict::NotEqual => Some(false),
            _ => None,
        }
    }
}

/// [`math_equal_with`] under default options.
pub fn math_equal(gold: &str, pred: &str) -> Verdict {
    math_equal_with(gold, pred, &MathOptions::default())
}

/// Whether the answer in `pred` (a whole text is fine) is equivalent to the answer in `gold`.
pub fn math_equal_with(gold: &str, pred: &str, opts: &MathOptions) -> Verdict {
    let golds = match parse_answer(gold, opts) {
        Ok(nodes) => nodes,
        Err(why) => return Verdict::BadGold(why),
    };
    let preds = match parse_answer(pred, opts) {
        Ok(nodes) => nodes,
        Err(why) if why.starts_with("too long") => return Verdict::Undecided(why),
        Err(_) => return Verdict::NotEqual,
    };
    let (g, p) = (&golds[0], &preds[0]);
    if g.1 == p.1 {
        return Verdict::Equal;
    }
    let mut cmp = Cmp { opts, budget: Budget { ops: opts.ops_budget } };
    match cmp.equal(&g.0, &p.0) {
        Ok(true) => Verdict::Equal,
        Ok(false) => Verdict::NotEqual,
        Err(u) => Verdict::Undecided(u.0),
    }
}

/// The parsed answers found in `text` (best first) with their normalised source strings.
pub fn parse_answer(text: &str, opts: &MathOptions) -> Result<Vec<(Node, String)>, String> {
    let mut last_err = String::from("no answer found");
    for cand in find::candidates(text).into_iter().take(8) {
        if cand.chars().count() > opts.max_answer_chars {
            last_err = format!("too long: answer of {} bytes", cand.len());
            continue;
        }
        let norm = normalize::normalize(&cand);
        let parsed = lexer::lex(&norm).map_err(|e| e.0).and_then(|t| parser::parse(t).map_err(|e| e.0));
        match parsed {
            Ok(node) => return Ok(vec![(node, norm.split_whitespace().collect())]),
            Err(e) => last_err = e,
        }
    }
    Err(last_err)
}

/// The math accuracy reward: 1 when the final answer (see [`crate::extract`], under the run's
/// [`AnswerExtraction`]) is equivalent to the gold answer, else 0. Policy: no answer, or an answer that exhausts the budget, scores 0 (the policy
/// is responsible for a judgeable answer); an unparseable gold answer is unscorable.
pub struct MathReward {
    opts: MathOptions,
}

impl MathReward {
    /// A math reward with the given decimal precision.
    pub fn new(precision: u32) -> Self {
        MathReward { opts: MathOptions { precision, ..MathOptions::default() } }
    }
}

impl Reward for MathReward {
    fn score(&self, sample: &Sample) -> Score {
        self.score_with(sample, AnswerExtraction::R1)
    }

    fn score_with(&self, sample: &Sample, extraction: AnswerExtraction) -> Score {
        let Ok(answer) = extraction.final_answer(&sample.completion) else {
            return Score::Value(0.0);
        };
        match math_equal_with(&sample.answer, &answer, &self.opts) {
            Verdict::Equal => Score::Value(1.0),
            Verdict::NotEqual | Verdict::Undecided(_) => Score::Value(0.0),
            Verdict::BadGold(why) => Score::unscorable(format!("gold answer: {why}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(g: &str, p: &str) -> bool {
        math_equal(g, p) == Verdict::Equal
    }

    #[test]
    fn numbers_fractions_percent() {
        assert!(eq("7425000", "7,425,000"));
        assert!(eq("\\frac{1}{2}", "0.5"));
        assert!(eq("10/9", "\\dfrac{10}{9}"));
        assert!(eq("28\\%", "28"));
        assert!(!eq("0.28", "28"));
        assert!(!eq("7425000", "7425001"));
        assert!(!eq("1000000", "1000000.5"));
        assert!(eq("\\frac{1}{3}", "0.3333333"));
        assert!(!eq("\\frac{1}{3}", "0.33"));
    }

    #[test]
    fn radicals_pi_units_equations() {
        assert!(eq("2\\sqrt{2}", "\\sqrt{8}"));
        assert!(eq("\\frac{9}{4}\\pi", "\\frac94\\pi"));
        assert!(eq("15", "15\\text{ cm}^2"));
        assert!(eq("11", "x = 11"));
        assert!(!eq("7 = 11a+c", "11a+c"));
        assert!(eq("\\tan^2(y)+1", "\\sec^2(y)"));
    }

    #[test]
    fn structures() {
        assert!(eq("\\{1,2\\}", "\\{2,1\\}"));
        assert!(!eq("(1,2)", "(2,1)"));
        assert!(eq("[0,1)", "[0, 1)"));
        assert!(!eq("[0,1)", "(0,1)"));
        assert!(eq("1 \\pm \\sqrt{2}", "\\{1+\\sqrt2, 1-\\sqrt2\\}"));
        assert!(!eq("\\pm 2", "2"));
        assert!(eq("x < 1", "-x > -1"));
        assert!(!eq("x < 1", "x > -1"));
        assert!(eq("x \\geq 5", "[5, \\infty)"));
        assert!(!eq("[5, \\infty)", "x \\geq 5"));
    }

    #[test]
    fn bounds_give_undecided_not_hangs() {
        assert!(matches!(math_equal("1", "9^{9^{9}}"), Verdict::Undecided(_) | Verdict::NotEqual));
        assert!(matches!(math_equal("1", "(10^6)!"), Verdict::Undecided(_)));
        assert!(matches!(math_equal("(10^6)!", "1"), Verdict::Undecided(_)));
        assert!(matches!(math_equal("((", "1"), Verdict::BadGold(_)));
    }
}
