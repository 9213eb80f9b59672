//! `aha init` → `aha sft` → `aha grpo` (→ `--resume`) end to end on a tiny model, through the
//! built binary: metrics lines, checkpoints with trainer state, resume at the right step, and
//! config errors that name the field.

mod common;

use std::path::{Path, PathBuf};

use common::{aha, init_model, ok};
use serde_json::Value;

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
    let model = init_model(dir);

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

/// `aha eval` on 3 arithmetic questions (k 2) for a model (and optional adapter): its eval.json.
fn eval_json(model: &Path, adapter: Option<&Path>, out: &Path) -> Value {
    let mut args = vec![
        "eval".to_string(),
        "--model".into(),
        model.display().to_string(),
        "--task".into(),
        "arithmetic".into(),
        "--template".into(),
        "raw".into(),
        "--limit".into(),
        "3".into(),
        "--k".into(),
        "2".into(),
        "--max-new-tokens".into(),
        "8".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    if let Some(a) = adapter {
        args.extend(["--adapter".to_string(), a.display().to_string()]);
    }
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap()
}

#[test]
fn lora_sft_grpo_resume_merge_and_adapter_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = dir.join("model");
    let m = model.to_str().unwrap();
    ok(&["init", "--out", m, "--layers", "2", "--hidden-size", "32", "--intermediate-size", "64"]);
    let lora = "[lora]\nr = 4\nalpha = 8\ntarget_modules = [\"q_proj\", \"v_proj\", \"down_proj\"]\n";

    // SFT with LoRA: the checkpoint is a PEFT adapter naming its base.
    let sft_run = dir.join("sft");
    let sft_toml = dir.join("sft.toml");
    std::fs::write(&sft_toml, sft_config(&model, &sft_run) + lora).unwrap();
    let out = ok(&["sft", "--config", sft_toml.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("trainable parameters"), "no LoRA summary");
    let (sft_ckpt, _) = state(&sft_run);
    assert!(sft_ckpt.join("adapter_model.safetensors").exists() && !sft_ckpt.join("model.safetensors").exists());
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(sft_ckpt.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["base_model_name_or_path"], m);
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 3);

    // GRPO continuing that adapter (`adapter = ...`), β > 0: no reference copy in checkpoints.
    let grpo_run = dir.join("grpo");
    let grpo_toml = dir.join("grpo.toml");
    let with_adapter = |steps| format!("adapter = {sft_ckpt:?}\n") + &grpo_config(&model, &grpo_run, steps);
    std::fs::write(&grpo_toml, with_adapter(2)).unwrap();
    ok(&["grpo", "--config", grpo_toml.to_str().unwrap()]);
    let (ckpt, _) = state(&grpo_run);
    assert!(ckpt.join("adapter_model.safetensors").exists());
    assert!(!ckpt.join("reference.safetensors").exists(), "a LoRA run's reference is the base: no copy");
    std::fs::write(&grpo_toml, with_adapter(3)).unwrap();
    let out = ok(&["grpo", "--config", grpo_toml.to_str().unwrap(), "--resume"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("at step 2"));
    let (ckpt, st) = state(&grpo_run);
    assert_eq!(st["optimizer_steps"], 3);

    // The adapter evaluates as `--model DIR` (its base named inside), as `--adapter` on the
    // base, and merged into a plain model: the same completions and scores.
    let a = eval_json(&ckpt, None, &dir.join("eval-a"));
    let b = eval_json(&model, Some(&ckpt), &dir.join("eval-b"));
    let merged = dir.join("merged");
    ok(&["merge", "--base", m, "--adapter", ckpt.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(merged.join("model.safetensors").exists() && merged.join("config.json").exists());
    let c = eval_json(&merged, None, &dir.join("eval-c"));
    for key in ["pass_at_1", "mean_completion_tokens"] {
        assert_eq!(a[key], b[key], "{key}");
        assert_eq!(a[key], c[key], "{key}");
    }
    let out = ok(&[
        "generate",
        "--model",
        m,
        "--adapter",
        ckpt.to_str().unwrap(),
        "--prompt",
        "1+1",
        "--max-new-tokens",
        "4",
    ]);
    assert!(out.status.success());

    // Bad LoRA input names the field; continuing an adapter and new adapters at once is refused.
    for (text, want) in [
        ("[lora]\nr = 0\n", "lora.r"),
        ("[lora]\ntarget_modules = [\"qkv_proj\"]\n", "qkv_proj"),
        ("[lora]\nrank = 4\n", "rank"),
    ] {
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, sft_config(&model, &dir.join("bad")) + text).unwrap();
        let out = aha(&["sft", "--config", bad.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(want) && err.contains("bad.toml"), "{want}: {err}");
    }
    std::fs::write(&grpo_toml, with_adapter(3) + lora).unwrap();
    let out = aha(&["grpo", "--config", grpo_toml.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`adapter`"), "{}", String::from_utf8_lossy(&out.stderr));
}
