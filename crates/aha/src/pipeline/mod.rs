//! `aha pipeline`: the R1 recipe as ordered, resumable stages (sft, grpo, sample, rm, eval)
//! chained through checkpoint directories.
//!
//! - [`recipe`]: the TOML recipe, `--set` overrides, links between stages, validation of
//!   every stage before anything runs.
//! - [`run`]: the stages in order, done markers, resume, the evaluation after each stage.
//! - [`report`]: the eval table and the final `report.md` / `report.json`.

pub mod recipe;
pub mod report;
pub mod run;
