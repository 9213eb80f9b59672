//! `aha init` → `aha rm make-data` → `aha rm train` → `aha rm score` end to end on a tiny model,
//! through the built binary: the Hugging Face sequence-classification layout of the result,
//! held-out figures computed on exactly the held-out rows (a held-out file of mirrored pairs
//! must score accuracy (n − ties) / 2n whatever the model), and `aha rm score` agreeing with
//! the report. A GRPO run with `kind = "model"` checks the reward is logged only in its window.

mod common;

use std::path::Path;

use common::{aha, init_tiny, ok};
use serde_json::Value;

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The step lines of a run's `metrics.jsonl` (after the run header, which names the plan).
fn step_rows(path: &Path) -> Vec<Value> {
    let lines = rows(path);
    assert!(lines[0]["run"]["exec"]["device"] == "cpu", "no run header: {}", lines[0]);
    lines.into_iter().filter(|v| v.get("step").is_some()).collect()
}

fn write_rows(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn config(model: &Path, out: &Path, objective: &str, data: &Path, eval: Option<&Path>) -> String {
    let eval = eval.map(|p| format!("eval_path = {p:?}\n")).unwrap_or_default();
    format!(
        "model = {model:?}\noutput_dir = {out:?}\nseed = 1\nobjective = \"{objective}\"\n\
         [data]\npath = {data:?}\n{eval}test_percent = 20\ntemplate = \"raw\"\n\
         [train]\nmax_steps = 4\nbatch_size = 4\nmicro_batch_size = 2\neval_every = 2\nprogress = false\n\
         [optim]\nlearning_rate = 1e-3\n"
    )
}

fn init(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("base");
    init_tiny(&model, &["--intermediate-size", "64"]);
    model
}

#[test]
fn pairwise_training_writes_an_hf_reward_model_and_evaluates_the_held_out_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = init(tmp.path());
    let data = tmp.path().join("helpful.jsonl");
    ok(&["rm", "make-data", "--kind", "helpful", "--n", "60", "--seed", "2", "--out", data.to_str().unwrap()]);
    let all = rows(&data);
    assert_eq!(all.len(), 60);
    // The held-out file: 8 pairs and their mirrors (chosen and rejected swapped).
    let mut held: Vec<Value> = all[..8].to_vec();
    for r in &all[..8] {
        let mut m = r.clone();
        m["chosen"] = r["rejected"].clone();
        m["rejected"] = r["chosen"].clone();
        held.push(m);
    }
    let held_path = tmp.path().join("held.jsonl");
    write_rows(&held_path, &held);
    let out = tmp.path().join("run");
    let cfg = tmp.path().join("rm.toml");
    std::fs::write(&cfg, config(&model, &out, "pairwise", &data, Some(&held_path))).unwrap();
    ok(&["rm", "train", "--config", cfg.to_str().unwrap()]);

    let report = json(&out.join("report.json"));
    assert_eq!(report["train_rows"], 60, "with eval_path every data row trains");
    assert_eq!(report["eval_rows"], 16);
    let evals = report["evals"].as_array().unwrap();
    assert_eq!(evals.iter().map(|e| e["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 4]);
    let last = &evals[1];
    let (n, ties, acc) =
        (last["n"].as_f64().unwrap(), last["ties"].as_f64().unwrap(), last["accuracy"].as_f64().unwrap());
    assert_eq!(n, 16.0);
    assert!((acc * n - (n - ties) / 2.0).abs() < 1e-9, "mirrored pairs: accuracy {acc}, ties {ties}");

    let final_dir = out.join("final");
    let cfg_json = json(&final_dir.join("config.json"));
    assert_eq!(cfg_json["architectures"][0], "Qwen2ForSequenceClassification");
    assert_eq!(cfg_json["num_labels"], 1);
    assert!(cfg_json["pad_token_id"].is_u64());
    assert_eq!(json(&final_dir.join("reward_model.json"))["template"], "raw");
    let st = candle_core::safetensors::load(final_dir.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(st["score.weight"].dims(), &[1, 32]);
    assert!(!st.contains_key("lm_head.weight") && st.contains_key("model.embed_tokens.weight"));
    let metrics = step_rows(&out.join("metrics.jsonl"));
    assert_eq!(metrics.len(), 4);
    assert!(metrics[1].get("eval/accuracy").is_some());

    // `aha rm score` on the held-out file reproduces the report's accuracy.
    let scored_path = tmp.path().join("scored.jsonl");
    ok(&[
        "rm",
        "score",
        "--model",
        final_dir.to_str().unwrap(),
        "--data",
        held_path.to_str().unwrap(),
        "--out",
        scored_path.to_str().unwrap(),
    ]);
    let scored = rows(&scored_path);
    assert_eq!(scored.len(), 16);
    let right =
        scored.iter().filter(|r| r["score_chosen"].as_f64().unwrap() > r["score_rejected"].as_f64().unwrap()).count();
    assert!((right as f64 / 16.0 - acc).abs() < 1e-9, "score: {right}/16, report {acc}");
}

#[test]
fn pointwise_training_reports_a_confusion_matrix_of_the_hash_held_out_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let model = init(tmp.path());
    let data = tmp.path().join("safety.jsonl");
    ok(&["rm", "make-data", "--kind", "safety", "--n", "80", "--seed", "3", "--out", data.to_str().unwrap()]);
    let out = tmp.path().join("run");
    let cfg = tmp.path().join("rm.toml");
    std::fs::write(&cfg, config(&model, &out, "pointwise", &data, None)).unwrap();
    ok(&["rm", "train", "--config", cfg.to_str().unwrap()]);
    let report = json(&out.join("report.json"));
    let (train, eval) = (report["train_rows"].as_u64().unwrap(), report["eval_rows"].as_u64().unwrap());
    assert_eq!(train + eval, 80);
    assert!(eval > 0 && eval < 40, "about 20% of prompts held out, got {eval}");
    let c = &report["evals"][1]["confusion"];
    let count = |k: &str| c[k].as_u64().unwrap();
    assert_eq!(count("tp") + count("fp") + count("tn") + count("fn_"), eval);
    // The held-out rows are the ones whose prompt hashes into the test split; their labels
    // must match the confusion matrix's positives.
    let positives = rows(&data)
        .iter()
        .filter(|r| aha_train_split_is_test(r["prompt"].as_str().unwrap(), 20) && r["label"] == 1)
        .count() as u64;
    assert_eq!(count("tp") + count("fn_"), positives);
}

/// The documented split rule (FNV-1a 64 of the prompt, mod 100, below the percentage), written
/// out here independently of the library.
fn aha_train_split_is_test(prompt: &str, pct: u64) -> bool {
    let h = prompt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    h % 100 < pct
}

#[test]
fn grpo_calls_a_model_reward_only_in_its_last_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let model = init(tmp.path());
    let data = tmp.path().join("helpful.jsonl");
    ok(&["rm", "make-data", "--kind", "helpful", "--n", "20", "--out", data.to_str().unwrap()]);
    let rm_run = tmp.path().join("rm");
    let cfg = tmp.path().join("rm.toml");
    std::fs::write(&cfg, config(&model, &rm_run, "pairwise", &data, None).replace("max_steps = 4", "max_steps = 1"))
        .unwrap();
    ok(&["rm", "train", "--config", cfg.to_str().unwrap()]);
    let run = tmp.path().join("grpo");
    let grpo = format!(
        "model = {model:?}\noutput_dir = {run:?}\nseed = 3\n\
         [data]\ntask = {{ name = \"arithmetic\" }}\ntask_size = 20\ntemplate = \"raw\"\n\
         [grpo]\nmax_steps = 3\nprompts_per_step = 2\ngroup_size = 2\nmax_completion_length = 8\n\
         [[rewards]]\nkind = \"format\"\n\
         [[rewards]]\nkind = \"model\"\nname = \"helpful\"\npath = {:?}\nweight = 0.5\nlast_steps = 1\ntransform = \"sigmoid\"\n\
         [run]\nprogress = false\n",
        rm_run.join("final")
    );
    let gcfg = tmp.path().join("grpo.toml");
    std::fs::write(&gcfg, grpo).unwrap();
    ok(&["grpo", "--config", gcfg.to_str().unwrap()]);
    let lines: Vec<Value> = step_rows(&run.join("metrics.jsonl"));
    assert_eq!(lines.len(), 3);
    for (i, m) in lines.iter().enumerate() {
        let last = i == 2;
        assert_eq!(m["rewards/helpful/active"], if last { 1.0 } else { 0.0 }, "step {}", i + 1);
        assert_eq!(m.get("rewards/helpful/mean").is_some(), last, "step {}: {m}", i + 1);
    }
    let mean = lines[2]["rewards/helpful/mean"].as_f64().unwrap();
    assert!(mean > 0.0 && mean < 1.0, "sigmoid scores lie in (0, 1): {mean}");
}

#[test]
fn lora_reward_model_trains_adapters_and_the_head_and_saves_merged() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, data) = (init(tmp.path()), tmp.path().join("helpful.jsonl"));
    ok(&["rm", "make-data", "--kind", "helpful", "--n", "40", "--seed", "2", "--out", data.to_str().unwrap()]);
    let (out, cfg) = (tmp.path().join("run"), tmp.path().join("rm.toml"));
    std::fs::write(&cfg, config(&model, &out, "pairwise", &data, None) + "[lora]\nr = 4\nalpha = 8\n").unwrap();
    ok(&["rm", "train", "--config", cfg.to_str().unwrap()]);
    let load = |p: &Path| candle_core::safetensors::load(p, &candle_core::Device::Cpu).unwrap();
    let (base, fin) = (load(&model.join("model.safetensors")), load(&out.join("final/model.safetensors")));
    assert!(fin.keys().all(|k| !k.contains("lora_")), "final/ must be a plain (merged) classifier");
    assert!(fin.contains_key("score.weight"));
    let same = |k: &str| (&base[k] - &fin[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!(same("model.embed_tokens.weight"), 0.0, "the frozen embeddings must not move");
    assert!(same("model.layers.0.mlp.down_proj.weight") > 0.0, "the trained adapter is merged into its projection");
    // Bad LoRA input names the field and the file.
    std::fs::write(&cfg, config(&model, &tmp.path().join("bad"), "pairwise", &data, None) + "[lora]\nr = 0\n").unwrap();
    let out = aha(&["rm", "train", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("lora.r"), "{err}");
}
