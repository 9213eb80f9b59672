//! Helpers shared by the `aha` CLI tests: running the built binary, and making a tiny random
//! model with `aha init`. Each test file includes this with `mod common;` and uses what it needs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The built `aha` binary.
pub const AHA: &str = env!("CARGO_BIN_EXE_aha");

/// `aha ARGS`, whatever its exit status.
pub fn aha(args: &[&str]) -> Output {
    Command::new(AHA).args(args).output().unwrap()
}

/// `aha ARGS`, which must succeed.
pub fn ok(args: &[&str]) -> Output {
    let out = aha(args);
    assert!(out.status.success(), "aha {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `aha ARGS`, which must fail; its stderr.
pub fn err(args: &[&str]) -> String {
    let out = aha(args);
    assert!(!out.status.success(), "aha {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `aha init --out OUT --layers 1 --hidden-size 32 EXTRA…`: a tiny random model, which must be
/// made.
pub fn init_tiny(out: &Path, extra: &[&str]) {
    let mut args = vec!["init", "--out", out.to_str().unwrap(), "--layers", "1", "--hidden-size", "32"];
    args.extend_from_slice(extra);
    ok(&args);
}

/// `init_tiny` with a 64-wide MLP at `DIR/model`; that path.
pub fn init_model(dir: &Path) -> PathBuf {
    let model = dir.join("model");
    init_tiny(&model, &["--intermediate-size", "64"]);
    model
}

/// The small arithmetic task of the pipeline tests.
pub const TASK: &str = "{ name = \"arithmetic\", min_operands = 2, max_operands = 3, max_value = 3 }";

/// A recipe's head: its output directory, a tiny `[init]` model and an `[eval]` of `limit`
/// questions of [`TASK`] (`extra`: more `[eval]` lines, each ending in a newline).
pub fn recipe_head(out: &Path, limit: usize, extra: &str) -> String {
    format!(
        "\noutput_dir = {out:?}\n[init]\nhidden_size = 32\nintermediate_size = 64\nmax_position_embeddings = 96\n\
         [eval]\n{extra}data = {{ task = {TASK}, limit = {limit}, template = \"raw\" }}\n\
         sampling = {{ k = 2, max_new_tokens = 8 }}\n"
    )
}

/// The pipeline tests' GRPO stage `rl` on 20 problems of [`TASK`], rewarded for accuracy and for
/// language consistency (which varies between a tiny model's samples, so the policy moves);
/// `grpo` and `run` are the fields of those tables.
pub fn rl_stage(grpo: &str, learning_rate: f64, run: &str) -> String {
    format!(
        "\n[[stages]]\nname = \"rl\"\nkind = \"grpo\"\ndata = {{ task = {TASK}, task_size = 20, template = \"raw\" }}\n\
         grpo = {{ {grpo} }}\noptim = {{ learning_rate = {learning_rate} }}\nrun = {{ {run} }}\n\
         [[stages.rewards]]\nname = \"accuracy\"\nkind = \"numeric\"\n\
         [[stages.rewards]]\nname = \"language\"\nkind = \"language\"\n"
    )
}

/// The pipeline tests' cold-start stage `cold`: SFT on 40 teacher traces of [`TASK`] with half
/// the steps slipped (`teacher_extra`: more teacher fields, each starting with ", "; `sft`: the
/// `[sft]` table's fields).
pub fn cold_stage(teacher_extra: &str, sft: &str) -> String {
    format!(
        "\n[[stages]]\nname = \"cold\"\nkind = \"sft\"\n\
         teacher = {{ task = {TASK}, size = 40, slip_rate = 0.5{teacher_extra} }}\n\
         data = {{ template = \"raw\" }}\nsft = {{ {sft} }}\noptim = {{ learning_rate = 1e-3 }}\n\
         run = {{ progress = false }}\n"
    )
}
