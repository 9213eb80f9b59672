//! Group-relative advantages (docs/DESIGN.md §2): each sample's reward relative to its group.
//!
//! `A_i = (r_i − mean(r)) / (std(r) + 1e-4)`, std Bessel-corrected as in TRL. A sample whose
//! every reward was unscorable (`None`) is left out of its group's statistics and gets A = 0;
//! an all-equal group gives exactly 0; a group of one gives 0.

use crate::config::ScaleRewards;

/// Added to the standard deviation before dividing (TRL's constant).
pub const STD_EPS: f64 = 1e-4;

/// Mean and Bessel-corrected standard deviation of the scored values (std 0 for fewer than 2).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, var.sqrt())
}

/// Advantages for consecutive groups of `group_size` rewards (`None` = unscorable).
///
/// Returns one advantage per reward, in order. Panics never; a trailing partial group is
/// treated as a group of its own size.
pub fn group_advantages(rewards: &[Option<f64>], group_size: usize, scale: ScaleRewards) -> Vec<f64> {
    let scored: Vec<f64> = rewards.iter().flatten().copied().collect();
    let batch_std = mean_std(&scored).1;
    rewards.chunks(group_size.max(1)).flat_map(|group| group_advantage(group, scale, batch_std)).collect()
}

fn group_advantage(group: &[Option<f64>], scale: ScaleRewards, batch_std: f64) -> Vec<f64> {
    let scored: Vec<f64> = group.iter().flatten().copied().collect();
    let (mean, std) = mean_std(&scored);
    let all_equal = scored.windows(2).all(|w| w[0] == w[1]);
    if scored.len() < 2 || all_equal {
        return vec![0.0; group.len()];
    }
    let denom = match scale {
        ScaleRewards::Group => std + STD_EPS,
        ScaleRewards::Batch => batch_std + STD_EPS,
        ScaleRewards::None => 1.0,
    };
    group.iter().map(|r| r.map_or(0.0, |r| (r - mean) / denom)).collect()
}

/// Whether a group's scored rewards all share one value (zero std): such groups carry no
/// learning signal and are what dynamic sampling drops.
pub fn is_zero_std(group: &[Option<f64>]) -> bool {
    let scored: Vec<f64> = group.iter().flatten().copied().collect();
    scored.windows(2).all(|w| w[0] == w[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_trl_formula() {
        let r = [Some(1.0), Some(0.0), Some(0.0), Some(1.0)];
        let a = group_advantages(&r, 4, ScaleRewards::Group);
        let std = (4.0f64 * 0.25 / 3.0).sqrt();
        assert!((a[0] - 0.5 / (std + STD_EPS)).abs() < 1e-12);
        assert!((a[1] + 0.5 / (std + STD_EPS)).abs() < 1e-12);
    }

    #[test]
    fn equal_group_and_singletons_are_exactly_zero() {
        let a = group_advantages(&[Some(0.7); 4], 4, ScaleRewards::Group);
        assert!(a.iter().all(|&x| x == 0.0));
        let a = group_advantages(&[Some(1.0), Some(0.0)], 1, ScaleRewards::Group);
        assert_eq!(a, vec![0.0, 0.0]);
    }

    #[test]
    fn unscorable_samples_are_excluded_and_zero() {
        let a = group_advantages(&[Some(1.0), None, Some(0.0)], 3, ScaleRewards::None);
        assert_eq!(a, vec![0.5, 0.0, -0.5]);
    }

    #[test]
    fn batch_scaling_uses_batch_std() {
        let r = [Some(1.0), Some(0.0), Some(2.0), Some(2.0)];
        let a = group_advantages(&r, 2, ScaleRewards::Batch);
        let (_, bs) = mean_std(&[1.0, 0.0, 2.0, 2.0]);
        assert!((a[0] - 0.5 / (bs + STD_EPS)).abs() < 1e-12);
        assert_eq!(&a[2..], &[0.0, 0.0]);
    }
}
