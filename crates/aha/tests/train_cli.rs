//! `aha init` → `aha sft` → `aha grpo` (→ `--resume`) end to end on a tiny model, through the
//! built binary: metrics lines, checkpoints with trainer state, resume at the right step, and
//! config errors that name the field.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn aha(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aha")).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> Output {
    let out = aha(args);
    assert!(out.status.success(), "aha {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn metrics(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Each (re)start of a run writes a header line naming its execution plan, then step lines.
    assert!(lines[0]["run"]["exec"]["backend"].is_string(), "no run header: {}", lines[0]);
    lines.into_iter().filter(|v| v.get("step").is_some()).collect()
}

fn state(run: &Path) -> (PathBuf, Value) {
    let root = run.join("checkpoints");
    let latest = std::fs::read_to_string(root.join("latest")).unwrap();
    let dir = root.join(latest.trim());
    let text = std::fs::read_to_string(dir.join("trainer_state.json")).unwrap();
    (dir, serde_json::from_str(&text).unwrap())
}

fn sft_config(model: &Path, out: &Path) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/sft-arithmetic.jsonl");
    format!(
        "model = {model:?}\noutput_dir = {out:?}\n[data]\npath = {data:?}\n\
         [sft]\nmax_steps = 2\nbatch_size = 4\nmicro_batch_size = 2\n\
         [optim]\nlearning_rate = 1e-3\n[run]\nprogress = false\n"
    )
}

fn grpo_config(model: &Path, out: &Path, steps: usize) -> String {
    format!(
        "model = {model:?}\noutput_dir = {out:?}\nseed = 3\n\
         [data]\ntask = {{ name = \"arithmetic\" }}\ntask_size = 50\ntemplate = \"raw\"\n\
         [grpo]\nmax_steps = {steps}\nprompts_per_step = 2\ngroup_size = 2\nmax_completion_length = 12\n\
         [grpo.loss]\nbeta = 0.001\n\
         [[rewards]]\nname = \"accuracy\"\nkind = \"numeric\"\n[[rewards]]\nkind = \"format\"\n\
         [run]\nsave_steps = 1\nkeep_last = 5\nprogress = false\n\
         [eval]\nevery_steps = 2\nquestions = 2\n[eval.sampling]\nk = 2\nmax_new_tokens = 12\n"
    )
}

#[test]
fn init_sft_grpo_resume_and_config_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = dir.join("model");
    ok(&[
        "init",
        "--out",
        model.to_str().unwrap(),
        "--layers",
        "1",
        "--hidden-size",
        "32",
        "--intermediate-size",
        "64",
    ]);

    let sft_run = dir.join("sft");
    let sft_toml = dir.join("sft.toml");
    std::fs::write(&sft_toml, sft_config(&model, &sft_run)).unwrap();
    ok(&["sft", "--config", sft_toml.to_str().unwrap()]);
    let lines = metrics(&sft_run);
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
    assert!(lines.iter().all(|l| l["loss"].as_f64().is_some_and(|v| v > 0.0)), "{lines:?}");
    let (sft_ckpt, st) = state(&sft_run);
    assert_eq!(st["step"], 2);
    assert_eq!(st["optimizer_steps"], 2);
    assert_eq!(st["config"]["sft"]["batch_size"], 4);
    assert!(sft_ckpt.join("model.safetensors").exists());

    let grpo_run = dir.join("grpo");
    let grpo_toml = dir.join("grpo.toml");
    std::fs::write(&grpo_toml, grpo_config(&sft_ckpt, &grpo_run, 2)).unwrap();
    ok(&["grpo", "--config", grpo_toml.to_str().unwrap()]);
    let lines = metrics(&grpo_run);
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
    for key in ["reward", "loss", "kl", "grad_norm", "rewards/accuracy/mean", "rewards/format/mean"] {
        assert!(lines.iter().all(|l| l.get(key).is_some()), "missing {key}: {lines:?}");
    }
    let (ckpt, st) = state(&grpo_run);
    assert!(ckpt.ends_with("step-000002"), "{ckpt:?}");
    assert_eq!(st["step"], 2);
    assert_eq!(st["config"]["grpo"]["loss"]["beta"], 0.001);
    assert!(ckpt.join("reference.safetensors").exists(), "β > 0 saves the reference");
    assert!(grpo_run.join("aha_config.json").exists());
    let held_out = std::fs::read_to_string(grpo_run.join("eval_00000002_heldout.json")).unwrap();
    let held_out: Value = serde_json::from_str(&held_out).unwrap();
    for key in ["pass_at_1", "cons_at_k", "pass_at_k", "median_completion_tokens", "format_rate"] {
        assert!(held_out.get(key).is_some(), "held-out eval lacks {key}: {held_out}");
    }

    // Without --resume an existing run is not overwritten.
    let out = aha(&["grpo", "--config", grpo_toml.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    // --resume continues at step 3 with the optimiser state carried over.
    std::fs::write(&grpo_toml, grpo_config(&sft_ckpt, &grpo_run, 3)).unwrap();
    let out = ok(&["grpo", "--config", grpo_toml.to_str().unwrap(), "--resume"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at step 2"));
    let steps: Vec<u64> = metrics(&grpo_run).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![1, 2, 3]);
    let (ckpt, st) = state(&grpo_run);
    assert!(ckpt.ends_with("step-000003"), "{ckpt:?}");
    assert_eq!(st["optimizer_steps"], 3);

    // A misspelt field fails with its name and the file.
    let bad = dir.join("bad.toml");
    let text = grpo_config(&sft_ckpt, &dir.join("bad"), 1).replace("group_size = 2", "group_sise = 2");
    std::fs::write(&bad, text).unwrap();
    let out = aha(&["grpo", "--config", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("group_sise") && err.contains("bad.toml"), "{err}");
    assert!(!dir.join("bad").exists(), "nothing is written for an invalid config");
}
