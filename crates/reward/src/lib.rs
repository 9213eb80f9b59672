//! aha-reward: verifiable rewards with no tensor dependency.
//!
//! The trainer builds a [`Registry`] once from the `[[rewards]]` tables of its config and calls
//! [`Registry::score_batch`] on every batch of completions:
//!
//! ```
//! use aha_reward::{Registry, RewardsConfig, Sample};
//!
//! let config = RewardsConfig::from_toml_str(r#"
//!     [[rewards]]
//!     kind = "math"
//!     weight = 1.0
//!     [[rewards]]
//!     kind = "format"
//!     weight = 0.2
//! "#).unwrap();
//! let registry = Registry::build(&config).unwrap();
//! let samples = vec![Sample::new("<think>2+2</think><answer>\\boxed{4}</answer>", "4")];
//! let scored = registry.score_batch(&samples).unwrap();
//! assert_eq!(scored[0].rewards["math"], Some(1.0));
//! assert_eq!(scored[0].reward, Some(1.2));
//! ```
//!
//! Semantics (docs/DESIGN.md §3):
//! - A [`Sample`] is one completion with its gold `answer` and optional task fields (`numbers`,
//!   `target`, `tests`, ...) kept as a JSON map, exactly the shape of one line of
//!   `aha reward score`'s input.
//! - Each reward returns a [`Score`]: a value or `Unscorable { reason }` (input it cannot judge, such as
//!   a missing task field, an unparseable gold answer or a sandbox outage).
//! - A panic while scoring one sample is caught: that sample is unscorable for that reward and the panic
//!   is counted; more than [`RewardsConfig::max_panics`] panics in the registry's life abort with
//!   [`RewardError::TooManyPanics`] (a bug must not be silently trained on).
//! - The weighted total [`ScoredSample::reward`] sums `weight × score` over the scorable rewards; it is
//!   `None` when every reward is unscorable (the trainer leaves such a sample out of its group).
//!
//! Modules: [`extract`] (answer extraction), [`math`] (math equivalence), [`format`],
//! [`language`], [`tasks`] (Countdown, exact match, numeric), [`code`] (the sandboxed code reward;
//! it needs Linux, Landlock and seccomp, plus root or unprivileged user namespaces, and refuses
//! otherwise), [`choice`] (multiple-choice extraction).
//! Policy differences from outside references are listed in `CONFORMANCE.md`.

pub mod choice;
pub mod code;
pub mod config;
pub mod error;
pub mod extract;
pub mod format;
pub mod language;
pub mod math;
pub mod registry;
pub mod sample;
pub mod tasks;

pub use config::{RewardKind, RewardSpec, RewardsConfig};
pub use error::RewardError;
pub use registry::{Registry, Reward};
pub use sample::{Sample, Score, ScoredSample};
