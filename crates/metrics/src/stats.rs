//! Small statistics for evaluation: the unbiased pass@k estimator, majority vote (cons@k) with a fixed tie
//! rule, mean and median.

use crate::error::{MetricsError, Result};

/// The unbiased pass@k estimator of Chen et al. (2021): the probability that at least one of k samples
/// drawn without replacement from n, of which c are correct, is correct: `1 − C(n−c, k) / C(n, k)`.
///
/// Computed as `1 − Π_{i=n−c+1}^{n} (1 − k/i)`, which never forms a binomial coefficient and so stays
/// accurate for large n. Requires `1 ≤ k ≤ n` and `c ≤ n`.
pub fn pass_at_k(n: u64, c: u64, k: u64) -> Result<f64> {
    if k == 0 || k > n || c > n {
        return Err(MetricsError::Estimator(format!("pass@k needs 1 <= k <= n and c <= n, got n={n}, c={c}, k={k}")));
    }
    if n - c < k {
        // Every k-subset contains a correct sample.
        return Ok(1.0);
    }
    let miss: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    Ok(1.0 - miss)
}

/// The winner of a majority vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    /// Index (into the voted slice) of the winning answer's first occurrence.
    pub index: usize,
    /// How many answers agreed with it.
    pub count: usize,
}

/// Majority vote over final answers (cons@k): the most frequent answer wins; `None` answers (nothing
/// extracted) do not vote; with no votes at all the result is `None`.
///
/// **Tie rule**: among answers with the same highest count, the one seen first (lowest index) wins. So
/// `[B, A, A, B]` elects B (index 0).
pub fn majority_vote<T: PartialEq>(answers: &[Option<T>]) -> Option<Vote> {
    majority_vote_by(answers, |a, b| a == b)
}

/// Majority vote where `same(a, b)` decides that two answers agree (for example math equivalence, so that
/// `1/2` and `0.5` vote together). Answers are grouped by comparing each with the first member of each
/// group in order of first appearance, and joins the first group it matches; ties follow
/// [`majority_vote`]'s rule (the earliest-seen group wins).
pub fn majority_vote_by<T>(answers: &[Option<T>], mut same: impl FnMut(&T, &T) -> bool) -> Option<Vote> {
    // (index of first member, count), in order of first appearance.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        let Some(answer) = answer else { continue };
        let found = groups.iter_mut().find(|(first, _)| answers[*first].as_ref().is_some_and(|f| same(f, answer)));
        match found {
            Some((_, count)) => *count += 1,
            None => groups.push((i, 1)),
        }
    }
    // Strictly greater replaces, so the earliest of tied groups is kept.
    let mut best: Option<Vote> = None;
    for (index, count) in groups {
        if best.is_none_or(|b| count > b.count) {
            best = Some(Vote { index, count });
        }
    }
    best
}

/// Arithmetic mean; `None` for an empty slice.
pub fn mean(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    Some(values.iter().sum::<f64>() / values.len() as f64)
}

/// Median (the mean of the two middle values for an even count); `None` for an empty slice. NaNs sort
/// last (IEEE total order), so they do not panic but do shift the median.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pass@k by brute force: over every k-subset of n samples (the first c correct), the fraction that
    /// contains a correct one.
    fn pass_at_k_exhaustive(n: u32, c: u32, k: u32) -> f64 {
        let correct_mask = (1u32 << c) - 1;
        let (mut hit, mut total) = (0u32, 0u32);
        for subset in 0u32..(1 << n) {
            if subset.count_ones() == k {
                total += 1;
                hit += u32::from(subset & correct_mask != 0);
            }
        }
        f64::from(hit) / f64::from(total)
    }

    #[test]
    fn pass_at_k_matches_exhaustive_enumeration() {
        for n in 1..=10 {
            for c in 0..=n {
                for k in 1..=n {
                    let want = pass_at_k_exhaustive(n, c, k);
                    let got = pass_at_k(n.into(), c.into(), k.into()).unwrap();
                    assert!((got - want).abs() < 1e-12, "n={n} c={c} k={k}: {got} vs {want}");
                }
            }
        }
    }

    #[test]
    fn pass_at_k_closed_forms_at_large_n() {
        // pass@1 = c/n and, with one correct sample, pass@k = k/n.
        for (n, c) in [(1000, 0), (1000, 1), (1000, 999), (100_000, 12_345)] {
            assert!((pass_at_k(n, c, 1).unwrap() - c as f64 / n as f64).abs() < 1e-12);
        }
        for k in [1, 7, 500, 9_999] {
            assert!((pass_at_k(10_000, 1, k).unwrap() - k as f64 / 10_000.0).abs() < 1e-12);
        }
        let p = pass_at_k(100_000, 50_000, 1_000).unwrap();
        assert!(p.is_finite() && p <= 1.0 && p > 1.0 - 1e-12);
    }

    #[test]
    fn pass_at_k_rejects_nonsense() {
        assert!(pass_at_k(5, 1, 0).is_err());
        assert!(pass_at_k(5, 1, 6).is_err());
        assert!(pass_at_k(5, 6, 1).is_err());
    }

    #[test]
    fn majority_vote_counts_and_skips_missing() {
        let v = majority_vote(&[None, Some("3"), Some("4"), Some("4"), None]).unwrap();
        assert_eq!(v, Vote { index: 2, count: 2 });
        assert_eq!(majority_vote::<&str>(&[None, None]), None);
        assert_eq!(majority_vote::<&str>(&[]), None);
    }

    #[test]
    fn majority_vote_tie_goes_to_the_earliest_seen() {
        let v = majority_vote(&[Some("B"), Some("A"), Some("A"), Some("B")]).unwrap();
        assert_eq!(v, Vote { index: 0, count: 2 });
        let v = majority_vote(&[None, Some("A"), Some("B"), Some("C")]).unwrap();
        assert_eq!(v, Vote { index: 1, count: 1 });
        // A later, larger group still beats an earlier smaller one.
        let v = majority_vote(&[Some(1), Some(2), Some(2)]).unwrap();
        assert_eq!(v, Vote { index: 1, count: 2 });
    }

    #[test]
    fn majority_vote_by_uses_the_equivalence() {
        let as_number = |s: &&str| -> f64 {
            match s.split_once('/') {
                Some((a, b)) => a.parse::<f64>().unwrap() / b.parse::<f64>().unwrap(),
                None => s.parse().unwrap(),
            }
        };
        let answers = [Some("2"), Some("1/2"), Some("0.5"), Some("2")];
        let v = majority_vote_by(&answers, |a, b| as_number(a) == as_number(b)).unwrap();
        // {2, 2} and {1/2, 0.5} tie at two; "2" was seen first.
        assert_eq!(v, Vote { index: 0, count: 2 });
        let answers = [Some("2"), Some("1/2"), Some("0.5")];
        let v = majority_vote_by(&answers, |a, b| as_number(a) == as_number(b)).unwrap();
        assert_eq!(v, Vote { index: 1, count: 2 });
    }

    #[test]
    fn mean_and_median() {
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
