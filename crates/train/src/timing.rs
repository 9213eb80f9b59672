//! Wall-clock time per phase of a GRPO step (rollout, rewards, reference log-probs, loss
//! forward, backward, optimiser), for benchmarks and the `time/*` metrics.
//!
//! The trainer wraps each phase in [`measure`]; [`GrpoTrainer::step`](crate::grpo::GrpoTrainer::step)
//! resets the accumulator when a step begins and drains it into the step's metrics when it
//! ends. The accumulator is thread-local (a step runs on one thread; parallel tests do not see
//! each other's times) and costs one `Instant::now()` pair per phase.

use std::cell::RefCell;
use std::time::Instant;

/// A phase of a GRPO step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Prefill + decoding + sampling of every completion (`rollout`).
    Rollout,
    /// Detokenising completions and scoring them, plus group advantages.
    Rewards,
    /// No-grad forwards for π_ref (β > 0) and π_old (μ > 1 or several minibatches).
    NoGradLogps,
    /// Policy forward with grad, the loss and its statistics (entropy included).
    LossForward,
    /// `loss.backward()` and gradient accumulation.
    Backward,
    /// Gradient norm, clipping and the AdamW update.
    Optimizer,
    /// Data parallel: the collectives (sample all-gather, gradient and scalar all-reduces),
    /// including the wait for slower ranks. 0 in one process.
    Collective,
}

impl Phase {
    /// Every phase, in step order.
    pub const ALL: [Phase; 7] = [
        Phase::Rollout,
        Phase::Rewards,
        Phase::NoGradLogps,
        Phase::LossForward,
        Phase::Backward,
        Phase::Optimizer,
        Phase::Collective,
    ];

    /// The metric name, `time/<phase>_s`.
    pub fn metric(self) -> &'static str {
        match self {
            Phase::Rollout => "time/rollout_s",
            Phase::Rewards => "time/rewards_s",
            Phase::NoGradLogps => "time/nograd_logps_s",
            Phase::LossForward => "time/loss_forward_s",
            Phase::Backward => "time/backward_s",
            Phase::Optimizer => "time/optimizer_s",
            Phase::Collective => "time/collective_s",
        }
    }
}

thread_local! {
    static TOTALS: RefCell<[f64; 7]> = const { RefCell::new([0.0; 7]) };
}

/// Runs `f`, adding its wall time to `phase`.
pub fn measure<T>(phase: Phase, f: impl FnOnce() -> T) -> T {
    let t0 = Instant::now();
    let out = f();
    let dt = t0.elapsed().as_secs_f64();
    TOTALS.with(|t| t.borrow_mut()[phase as usize] += dt);
    out
}

/// Zeroes every phase.
pub fn reset() {
    TOTALS.with(|t| *t.borrow_mut() = [0.0; 7]);
}

/// Every phase's accumulated seconds since the last [`reset`], then zeroes them.
pub fn take() -> Vec<(Phase, f64)> {
    TOTALS.with(|t| {
        let totals = std::mem::take(&mut *t.borrow_mut());
        Phase::ALL.iter().map(|&p| (p, totals[p as usize])).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulates_per_phase_and_resets() {
        reset();
        measure(Phase::Backward, || std::thread::sleep(std::time::Duration::from_millis(5)));
        measure(Phase::Backward, || std::thread::sleep(std::time::Duration::from_millis(5)));
        let v = measure(Phase::Rollout, || 7);
        assert_eq!(v, 7);
        let times = take();
        let get = |p: Phase| times.iter().find(|(q, _)| *q == p).map(|(_, s)| *s).unwrap();
        assert!(get(Phase::Backward) >= 0.010, "{times:?}");
        assert!(get(Phase::Rollout) < get(Phase::Backward));
        assert_eq!(get(Phase::Optimizer), 0.0);
        assert!(take().iter().all(|(_, s)| *s == 0.0), "take zeroes");
    }
}
