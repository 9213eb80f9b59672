//! Countdown: combine the given numbers with `+ - * /` and parentheses to reach the target, using
//! every number exactly once. Arithmetic is exact (rationals), so `8 / 3 * 3` is exactly 8 and
//! no float rounding can make a wrong expression pass.
//!
//! Task fields: `numbers` (array of integers) and `target` (integer). The answer is the extracted
//! final answer (see [`crate::extract`]); a trailing `= target` is allowed. Policy: the expression
//! may use only the given numbers (no concatenation, no other literals; a unary minus is allowed, as
//! reasoning-gym's own solutions use it); division by
//! zero or a malformed expression scores 0; missing or malformed task fields are unscorable.
//!
//! ```
//! use aha_reward::tasks::countdown::check;
//! assert_eq!(check("(25 - 5) * 4 + 3", &[3, 4, 5, 25], 83), Ok(true));
//! assert_eq!(check("25 * 4 - 5 * 3", &[3, 4, 5, 25], 83), Ok(false));
//! ```

use crate::extract::AnswerExtraction;
use crate::registry::Reward;
use crate::sample::{Sample, Score};
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::Zero;

/// The Countdown verifier.
pub struct CountdownReward;

impl Reward for CountdownReward {
    fn score(&self, sample: &Sample) -> Score {
        self.score_with(sample, AnswerExtraction::R1)
    }

    fn score_with(&self, sample: &Sample, extraction: AnswerExtraction) -> Score {
        let Some(numbers) = int_list(sample.field("numbers")) else {
            return Score::unscorable("missing or malformed `numbers`");
        };
        let Some(target) = sample.field("target").and_then(|v| v.as_i64()) else {
            return Score::unscorable("missing or malformed `target`");
        };
        let Ok(answer) = extraction.final_answer(&sample.completion) else {
            return Score::Value(0.0);
        };
        Score::from_bool(check(&answer, &numbers, target) == Ok(true))
    }
}

fn int_list(value: Option<&serde_json::Value>) -> Option<Vec<i64>> {
    value?.as_array()?.iter().map(|v| v.as_i64()).collect()
}

/// Why an expression is not a valid Countdown answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// A character or token that is not allowed.
    Syntax(String),
    /// The numbers used are not exactly the given ones.
    WrongNumbers,
    /// Division by zero.
    DivisionByZero,
}

/// Whether `expr` uses every number once and evaluates exactly to `target`.
pub fn check(expr: &str, numbers: &[i64], target: i64) -> Result<bool, Invalid> {
    let expr = strip_target(expr, target);
    if expr.len() > 1000 {
        return Err(Invalid::Syntax("expression too long".into()));
    }
    let tokens = tokenize(expr)?;
    let mut used: Vec<i64> = tokens.iter().filter_map(|t| t.number()).collect();
    let mut given = numbers.to_vec();
    used.sort_unstable();
    given.sort_unstable();
    if used != given {
        return Err(Invalid::WrongNumbers);
    }
    let mut parser = Parser { tokens: &tokens, pos: 0 };
    let value = parser.expr(0)?;
    if parser.pos != tokens.len() {
        return Err(Invalid::Syntax("trailing tokens".into()));
    }
    Ok(value == BigRational::from_integer(BigInt::from(target)))
}

fn strip_target(expr: &str, target: i64) -> &str {
    let expr = expr.trim().trim_start_matches('$').trim_end_matches('$').trim();
    match expr.rsplit_once('=') {
        Some((lhs, rhs)) if rhs.trim() == target.to_string() => lhs.trim(),
        _ => expr,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(i64),
    Op(char),
    Open,
    Close,
}

impl Tok {
    fn number(&self) -> Option<i64> {
        match self {
            Tok::Num(n) => Some(*n),
            _ => None,
        }
    }
}

fn tokenize(expr: &str) -> Result<Vec<Tok>, Invalid> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {}
            '0'..='9' => {
                let mut n: i64 = c as i64 - '0' as i64;
                while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(d as i64))
                        .ok_or_else(|| Invalid::Syntax("number too large".into()))?;
                    chars.next();
                }
                out.push(Tok::Num(n));
            }
            '+' | '-' | '*' | '/' => out.push(Tok::Op(c)),
            '×' | 'x' => out.push(Tok::Op('*')),
            '÷' => out.push(Tok::Op('/')),
            '(' | '[' => out.push(Tok::Open),
            ')' | ']' => out.push(Tok::Close),
            other => return Err(Invalid::Syntax(format!("unexpected {other:?}"))),
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: &'a [Tok],
    pos: usize,
}

impl Parser<'_> {
    /// Precedence climbing; `depth` bounds recursion.
    fn expr(&mut self, depth: usize) -> Result<BigRational, Invalid> {
        let mut acc = self.term(depth)?;
        while let Some(Tok::Op(op @ ('+' | '-'))) = self.tokens.get(self.pos) {
            self.pos += 1;
            let rhs = self.term(depth)?;
            acc = if *op == '+' { acc + rhs } else { acc - rhs };
        }
        Ok(acc)
    }

    fn term(&mut self, depth: usize) -> Result<BigRational, Invalid> {
        let mut acc = self.atom(depth)?;
        while let Some(Tok::Op(op @ ('*' | '/'))) = self.tokens.get(self.pos) {
            self.pos += 1;
            let rhs = self.atom(depth)?;
            if *op == '*' {
                acc *= rhs;
            } else if rhs.is_zero() {
                return Err(Invalid::DivisionByZero);
            } else {
                acc /= rhs;
            }
        }
        Ok(acc)
    }

    fn atom(&mut self, depth: usize) -> Result<BigRational, Invalid> {
        if depth > 64 {
            return Err(Invalid::Syntax("nesting too deep".into()));
        }
        match self.tokens.get(self.pos) {
            Some(Tok::Op('-')) => {
                self.pos += 1;
                Ok(-self.atom(depth + 1)?)
            }
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(BigRational::from_integer(BigInt::from(*n)))
            }
            Some(Tok::Open) => {
                self.pos += 1;
                let v = self.expr(depth + 1)?;
                if self.tokens.get(self.pos) != Some(&Tok::Close) {
                    return Err(Invalid::Syntax("unbalanced parentheses".into()));
                }
                self.pos += 1;
                Ok(v)
            }
            _ => Err(Invalid::Syntax("expected a number or '('".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_arithmetic_and_number_use() {
        assert_eq!(check("8 / 3 * 3", &[8, 3, 3], 8), Ok(true));
        assert_eq!(check("(6 - 4) * 7 = 14", &[4, 6, 7], 14), Ok(true));
        assert_eq!(check("6 * 7", &[4, 6, 7], 42), Err(Invalid::WrongNumbers));
        assert_eq!(check("6 * 7 * 4 / 4", &[4, 6, 7], 42), Err(Invalid::WrongNumbers));
        assert_eq!(check("67 - 4", &[4, 6, 7], 63), Err(Invalid::WrongNumbers));
        assert_eq!(check("4 / (7 - 7)", &[4, 7, 7], 1), Err(Invalid::DivisionByZero));
        assert_eq!(check("-4 + 6 + 7", &[4, 6, 7], 9), Ok(true));
        assert!(check("4 + + 6", &[4, 6], 10).is_err());
        assert!(check("2 ** 3", &[2, 3], 8).is_err());
    }

    #[test]
    fn reward_reads_fields() {
        let s = Sample::new("<think>t</think><answer>\\boxed{(25-5)*4+3}</answer>", "")
            .with_field("numbers", serde_json::json!([3, 4, 5, 25]))
            .with_field("target", serde_json::json!(83));
        assert_eq!(CountdownReward.score(&s), Score::Value(1.0));
        let bad = Sample::new("x", "");
        assert!(matches!(CountdownReward.score(&bad), Score::Unscorable { .. }));
    }
}
