//! A progress bar for training loops: step/total, reward, accuracy, mean completion length, KL and ETA.
//!
//! It draws on stderr through `indicatif`, which hides the bar when stderr is not a terminal; in that case
//! (CI logs, `nohup`) a plain status line is printed every ~5 % of the run instead, so logs still show
//! progress.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::{names, Metrics};

const TEMPLATE: &str = "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} · ETA {eta}";

/// A training progress bar.
pub struct TrainProgress {
    bar: ProgressBar,
    total: u64,
    plain_every: u64,
    last_plain: Option<u64>,
}

impl TrainProgress {
    /// A bar for `total_steps` steps, drawn on stderr.
    pub fn new(total_steps: u64) -> Self {
        Self::with_target(total_steps, ProgressDrawTarget::stderr())
    }

    /// A bar that draws nothing and prints no plain lines (tests, quiet mode).
    pub fn hidden(total_steps: u64) -> Self {
        let mut progress = Self::with_target(total_steps, ProgressDrawTarget::hidden());
        progress.plain_every = u64::MAX;
        progress
    }

    fn with_target(total: u64, target: ProgressDrawTarget) -> Self {
        let style = ProgressStyle::with_template(TEMPLATE).unwrap_or_else(|_| ProgressStyle::default_bar());
        let bar = ProgressBar::with_draw_target(Some(total), target).with_style(style);
        if !bar.is_hidden() {
            // Redraws the spinner and ETA between steps; pointless (a wasted thread) when hidden.
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        TrainProgress { bar, total, plain_every: (total / 20).max(1), last_plain: None }
    }

    /// Changes the number of steps, for a loop whose size is known only once it starts.
    pub fn set_length(&mut self, total_steps: u64) {
        self.bar.set_length(total_steps);
        self.total = total_steps;
        if self.plain_every != u64::MAX {
            self.plain_every = (total_steps / 20).max(1);
        }
    }

    /// Moves the bar to `step` (steps done), for example after resuming.
    pub fn set_step(&self, step: u64) {
        self.bar.set_position(step);
    }

    /// Advances the bar by one step.
    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// The current step.
    pub fn step(&self) -> u64 {
        self.bar.position()
    }

    /// Shows the latest step's reward, accuracy, length and KL; when the bar is hidden, prints a plain line
    /// every ~5 % of the run (and at the last step).
    pub fn set_metrics(&mut self, metrics: &Metrics) {
        let message = format_metrics(metrics);
        let step = self.bar.position();
        if self.bar.is_hidden() && self.plain_every != u64::MAX && self.plain_due(step) {
            eprintln!("step {step}/{} {message}", self.total);
            self.last_plain = Some(step);
        }
        self.bar.set_message(message);
    }

    fn plain_due(&self, step: u64) -> bool {
        let fresh = self.last_plain != Some(step);
        fresh && (step.is_multiple_of(self.plain_every) || step == self.total)
    }

    /// Prints a line above the bar without garbling it.
    pub fn println(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            if self.plain_every != u64::MAX {
                eprintln!("{}", line.as_ref());
            }
        } else {
            self.bar.println(line.as_ref());
        }
    }

    /// Leaves the final state on screen.
    pub fn finish(&self) {
        self.bar.finish();
    }
}

impl Drop for TrainProgress {
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.abandon();
        }
    }
}

/// A metric shown in the bar: (metric name, short label, value formatter).
type Field = (&'static str, &'static str, fn(f64) -> String);

/// `reward 0.531 · acc 0.42 · len 123 · kl 1.2e-3`, with only the metrics present.
pub fn format_metrics(metrics: &Metrics) -> String {
    let fields: [Field; 4] = [
        (names::REWARD, "reward", |v| format!("{v:.3}")),
        (names::ACCURACY, "acc", |v| format!("{v:.2}")),
        (names::COMPLETION_MEAN_LENGTH, "len", |v| format!("{v:.0}")),
        (names::KL, "kl", |v| format!("{v:.1e}")),
    ];
    fields
        .iter()
        .filter_map(|(name, label, fmt)| metrics.get(name).map(|v| format!("{label} {}", fmt(v))))
        .collect::<Vec<_>>()
        .join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_shows_present_metrics_in_order() {
        let mut m = Metrics::new();
        m.set(names::KL, 0.00123).set(names::COMPLETION_MEAN_LENGTH, 122.6).set(names::REWARD, 0.5314);
        assert_eq!(format_metrics(&m), "reward 0.531 · len 123 · kl 1.2e-3");
        assert_eq!(format_metrics(&Metrics::new()), "");
    }

    #[test]
    fn hidden_bar_tracks_steps() {
        let mut p = TrainProgress::hidden(10);
        p.set_step(3);
        p.inc();
        p.set_metrics(&Metrics::new());
        p.println("quiet");
        assert_eq!(p.step(), 4);
        p.finish();
    }

    #[test]
    fn plain_lines_every_five_percent() {
        let mut p = TrainProgress::with_target(100, ProgressDrawTarget::hidden());
        assert_eq!(p.plain_every, 5);
        assert!(p.plain_due(5) && p.plain_due(100) && !p.plain_due(6));
        p.last_plain = Some(5);
        assert!(!p.plain_due(5));
        p.set_length(40);
        assert_eq!((p.total, p.plain_every), (40, 2));
    }
}
