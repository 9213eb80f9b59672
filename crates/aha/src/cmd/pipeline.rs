//! `aha pipeline RECIPE.toml [--resume] [--unset KEY]… [--set KEY=VALUE]… [--until STAGE]`:
//! runs a recipe's stages in order (see `recipes/tiny.toml`, `recipes/smollm2.toml`,
//! `recipes/r1.toml` and [`crate::pipeline`]).
//!
//! The recipe is parsed and every stage's config checked before anything runs. Before that,
//! `--unset` removes values or tables (`--unset stages.rl.lora`: full fine-tuning instead of
//! LoRA), then `--set` overrides values (`--set model=runs/tiny-model`,
//! `--set stages.rl-reasoning.grpo.max_steps=1`).

use std::path::PathBuf;

use anyhow::Result;

use crate::exec_args::ExecArgs;
use crate::pipeline::recipe::Recipe;
use crate::pipeline::run::{run as run_pipeline, Options};

/// Arguments of `aha pipeline`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The recipe (TOML).
    pub recipe: PathBuf,
    /// Skip the stages already done and continue an interrupted one from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Override a recipe value: `KEY.PATH=VALUE` (a TOML value), `stages.<name>.…` for a stage.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Remove a recipe value or table before the `--set`s apply: `stages.<name>.lora` trains
    /// every weight of that stage instead of LoRA adapters.
    #[arg(long = "unset", value_name = "KEY")]
    pub unset: Vec<String>,
    /// Stop after this stage.
    #[arg(long)]
    pub until: Option<String>,
    /// Only parse and check the recipe, then print its stages.
    #[arg(long)]
    pub check: bool,
    /// Device, dtype and backend of every stage (over the recipe's `[exec]`).
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// Runs `aha pipeline`.
pub fn run(args: Args) -> Result<()> {
    let mut recipe = Recipe::load(&args.recipe, &args.unset, &args.set)?;
    recipe.exec = args.exec.over(recipe.exec);
    if args.check {
        for s in &recipe.stages {
            let from = s.from.map_or_else(|| "base".to_string(), |i| recipe.stages[i].name.clone());
            println!("{:02} {:<20} {:?} from {from} → {}", s.index + 1, s.name, s.kind, s.dir.display());
        }
        println!("{}: {} stage(s), valid", args.recipe.display(), recipe.stages.len());
        return Ok(());
    }
    run_pipeline(&recipe, &Options { resume: args.resume, until: args.until })?;
    Ok(())
}
