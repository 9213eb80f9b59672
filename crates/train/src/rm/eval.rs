//! Held-out evaluation of a reward model: pairwise accuracy (the chosen response scores
//! strictly higher; ties count as wrong and are reported), or for labelled responses the
//! confusion matrix at threshold 0.5 on σ(score) (score ≥ 0), with precision, recall and F1 of
//! the positive label, and accuracy. A per-`kind` breakdown shows which categories the model
//! gets right.

use std::collections::BTreeMap;

use aha_metrics::Metrics;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::rm::data::RmRows;
use crate::rm::model::RewardModel;

/// One tokenised row.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// A preference pair.
    Pair {
        /// Prompt + chosen response ids.
        chosen: Vec<u32>,
        /// Prompt + rejected response ids.
        rejected: Vec<u32>,
        /// The row's category.
        kind: Option<String>,
    },
    /// A labelled response.
    Point {
        /// Prompt + response ids.
        ids: Vec<u32>,
        /// Positive label.
        label: bool,
        /// The row's category.
        kind: Option<String>,
    },
}

impl Example {
    /// Tokenises rows with the model's template, dropping (and counting) those longer than `limit`.
    pub fn encode_all(rm: &RewardModel, rows: &RmRows, limit: usize) -> Result<(Vec<Example>, usize)> {
        let mut out = Vec::with_capacity(rows.len());
        let mut too_long = 0;
        match rows {
            RmRows::Pairs(rows) => {
                for r in rows {
                    let chosen = rm.encode(&r.prompt, &r.chosen)?;
                    let rejected = rm.encode(&r.prompt, &r.rejected)?;
                    if chosen.len().max(rejected.len()) > limit {
                        too_long += 1;
                    } else {
                        out.push(Example::Pair { chosen, rejected, kind: r.kind.clone() });
                    }
                }
            }
            RmRows::Points(rows) => {
                for r in rows {
                    let ids = rm.encode(&r.prompt, &r.response)?;
                    if ids.len() > limit {
                        too_long += 1;
                    } else {
                        out.push(Example::Point { ids, label: r.label, kind: r.kind.clone() });
                    }
                }
            }
        }
        Ok((out, too_long))
    }

    fn kind(&self) -> &str {
        match self {
            Example::Pair { kind, .. } | Example::Point { kind, .. } => kind.as_deref().unwrap_or("-"),
        }
    }
}

/// Accuracy within one category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindStats {
    /// Rows of the category.
    pub n: usize,
    /// Fraction right.
    pub accuracy: f64,
}

/// Confusion matrix of labelled responses at score ≥ 0 (σ ≥ 0.5) ⇒ positive.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Confusion {
    /// Positive rows predicted positive.
    pub tp: usize,
    /// Negative rows predicted positive.
    pub fp: usize,
    /// Negative rows predicted negative.
    pub tn: usize,
    /// Positive rows predicted negative.
    pub fn_: usize,
    /// tp / (tp + fp) (0 when nothing is predicted positive).
    pub precision: f64,
    /// tp / (tp + fn) (0 without positive rows).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Recall of the negative label: tn / (tn + fp).
    pub negative_recall: f64,
}

impl Confusion {
    /// Fills the ratios from the counts.
    pub fn from_counts(tp: usize, fp: usize, tn: usize, fn_: usize) -> Self {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let precision = ratio(tp, tp + fp);
        let recall = ratio(tp, tp + fn_);
        let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
        Self { tp, fp, tn, fn_, precision, recall, f1, negative_recall: ratio(tn, tn + fp) }
    }
}

/// A held-out evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldOut {
    /// The optimiser step it was taken after.
    pub step: usize,
    /// Rows evaluated.
    pub n: usize,
    /// Fraction right (pairs ranked correctly, or labels predicted).
    pub accuracy: f64,
    /// Pairs whose two scores are equal (counted wrong).
    pub ties: usize,
    /// Mean of r_chosen − r_rejected (pairs) or of the score (labelled rows).
    pub mean_margin: f64,
    /// The confusion matrix (labelled rows only).
    pub confusion: Option<Confusion>,
    /// Accuracy per `kind`.
    pub by_kind: BTreeMap<String, KindStats>,
}

impl HeldOut {
    /// Adds `eval/*` metrics.
    pub fn log_into(&self, m: &mut Metrics) {
        m.set("eval/accuracy", self.accuracy);
        m.set("eval/mean_margin", self.mean_margin);
        if let Some(c) = &self.confusion {
            m.set("eval/precision", c.precision);
            m.set("eval/recall", c.recall);
            m.set("eval/f1", c.f1);
            m.set("eval/negative_recall", c.negative_recall);
        }
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let mut s = format!("held-out @ step {}: accuracy {:.3} over {} rows", self.step, self.accuracy, self.n);
        if let Some(c) = &self.confusion {
            s += &format!(
                ", precision {:.3}, recall {:.3}, F1 {:.3} (tp {} fp {} tn {} fn {})",
                c.precision, c.recall, c.f1, c.tp, c.fp, c.tn, c.fn_
            );
        }
        if self.by_kind.len() > 1 {
            let kinds: Vec<String> =
                self.by_kind.iter().map(|(k, v)| format!("{k} {:.2} (n={})", v.accuracy, v.n)).collect();
            s += &format!("; by kind: {}", kinds.join(", "));
        }
        s
    }
}

/// Scores every held-out example (no graph) and computes the figures.
pub fn evaluate(rm: &RewardModel, examples: &[Example], batch_size: usize, step: usize) -> Result<HeldOut> {
    let mut seqs: Vec<Vec<u32>> = Vec::new();
    for e in examples {
        match e {
            Example::Pair { chosen, rejected, .. } => {
                seqs.push(chosen.clone());
                seqs.push(rejected.clone());
            }
            Example::Point { ids, .. } => seqs.push(ids.clone()),
        }
    }
    let scores = rm.score_ids(&seqs, batch_size)?;
    let score = |i: usize| scores[i].unwrap_or(f32::NAN) as f64;
    let mut right = vec![false; examples.len()];
    let (mut ties, mut margin_sum) = (0, 0.0);
    let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
    let mut offset = 0;
    for (i, e) in examples.iter().enumerate() {
        match e {
            Example::Pair { .. } => {
                let d = score(offset) - score(offset + 1);
                offset += 2;
                ties += usize::from(d == 0.0);
                right[i] = d > 0.0;
                margin_sum += d;
            }
            Example::Point { label, .. } => {
                let s = score(offset);
                offset += 1;
                let positive = s >= 0.0;
                match (positive, *label) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, false) => tn += 1,
                    (false, true) => fn_ += 1,
                }
                right[i] = positive == *label;
                margin_sum += s;
            }
        }
    }
    let n = examples.len();
    let confusion =
        matches!(examples.first(), Some(Example::Point { .. })).then(|| Confusion::from_counts(tp, fp, tn, fn_));
    let mut kinds: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (e, ok) in examples.iter().zip(&right) {
        let k = kinds.entry(e.kind().to_string()).or_default();
        k.0 += 1;
        k.1 += usize::from(*ok);
    }
    let by_kind =
        kinds.into_iter().map(|(k, (n, ok))| (k, KindStats { n, accuracy: ok as f64 / n.max(1) as f64 })).collect();
    Ok(HeldOut {
        step,
        n,
        accuracy: right.iter().filter(|&&r| r).count() as f64 / n.max(1) as f64,
        ties,
        mean_margin: margin_sum / n.max(1) as f64,
        confusion,
        by_kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_ratios_follow_their_definitions() {
        let c = Confusion::from_counts(8, 2, 5, 4);
        assert!((c.precision - 0.8).abs() < 1e-12);
        assert!((c.recall - 8.0 / 12.0).abs() < 1e-12);
        assert!((c.f1 - 2.0 * 0.8 * (8.0 / 12.0) / (0.8 + 8.0 / 12.0)).abs() < 1e-12);
        assert!((c.negative_recall - 5.0 / 7.0).abs() < 1e-12);
        let none = Confusion::from_counts(0, 0, 3, 0);
        assert_eq!((none.precision, none.recall, none.f1), (0.0, 0.0, 0.0));
    }
}
