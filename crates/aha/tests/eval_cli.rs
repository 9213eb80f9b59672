//! `aha eval`, `aha sample` and `aha filter` end to end on a tiny random model made by
//! `aha init`: the eval record's fields and their consistency with the per-sample file,
//! determinism under a seed and independence from the decoding batch size, the per-task
//! breakdown, and a filtered, mixed SFT file that `aha sft` trains on.

mod common;

use std::path::Path;

use common::{aha, init_tiny, ok};
use serde_json::Value;

fn jsonl(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn tiny_model(dir: &Path) -> String {
    let model = dir.join("model");
    let m = model.to_str().unwrap().to_string();
    init_tiny(&model, &["--intermediate-size", "64", "--seed", "3"]);
    m
}

const SAMPLING: [&str; 8] = ["--k", "4", "--max-new-tokens", "6", "--template", "raw", "--temperature", "1.0"];

#[test]
fn eval_writes_a_consistent_record_and_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let out_a = tmp.path().join("a");
    let run = |out: &Path, batch: &str| {
        let mut args = vec!["eval", "--model", &model, "--task", "arithmetic", "--limit", "5"];
        args.extend(SAMPLING);
        args.extend(["--batch-prompts", batch, "--pass-at", "1,3,4", "--out", out.to_str().unwrap()]);
        String::from_utf8(ok(&args).stdout).unwrap()
    };
    let table = run(&out_a, "2");
    for row in ["| pass@1 |", "| cons@4 |", "| pass@3 |", "| median completion tokens |", "| format rate |"] {
        assert!(table.contains(row), "{row} missing:\n{table}");
    }
    let record: Value = serde_json::from_str(&std::fs::read_to_string(out_a.join("eval.json")).unwrap()).unwrap();
    let samples = jsonl(&out_a.join("samples.jsonl"));
    assert_eq!((record["questions"].as_u64(), record["k"].as_u64(), samples.len()), (Some(5), Some(4), 20));
    let keys: Vec<&String> = record["pass_at_k"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["1", "3", "4"]);
    for s in &samples {
        for key in
            ["prompt", "answer", "completion", "extracted", "rewards", "correct", "well_formed", "completion_tokens"]
        {
            assert!(s.get(key).is_some(), "sample lacks {key}: {s}");
        }
        assert!(s["rewards"].get("accuracy").is_some() && s["rewards"].get("format").is_some(), "{s}");
    }
    let correct = samples.iter().filter(|s| s["correct"] == true).count() as f64;
    assert!((record["pass_at_1"].as_f64().unwrap() - correct / 20.0).abs() < 1e-12);
    let tokens: f64 = samples.iter().map(|s| s["completion_tokens"].as_f64().unwrap()).sum();
    assert!((record["mean_completion_tokens"].as_f64().unwrap() - tokens / 20.0).abs() < 1e-9);
    assert!(samples.iter().all(|s| s["completion_tokens"].as_u64().unwrap() <= 6));

    // Same seed, another batch size: the same samples.
    let out_b = tmp.path().join("b");
    run(&out_b, "5");
    assert_eq!(jsonl(&out_b.join("samples.jsonl")), samples);
    assert_eq!(std::fs::read(out_b.join("eval.json")).unwrap(), std::fs::read(out_a.join("eval.json")).unwrap());
}

#[test]
fn eval_breaks_down_by_task_column() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let data = tmp.path().join("q.jsonl");
    let rows = [("What is 1+1?", "2", "easy"), ("What is 2+2?", "4", "easy"), ("What is 9*9?", "81", "hard")];
    let text: String = rows
        .iter()
        .map(|(q, a, t)| format!("{}\n", serde_json::json!({"question": q, "answer": a, "task": t})))
        .collect();
    std::fs::write(&data, text).unwrap();
    let out = tmp.path().join("out");
    let mut args = vec!["eval", "--model", &model, "--data", data.to_str().unwrap(), "--prompt-column", "question"];
    args.extend(SAMPLING);
    args.extend(["--out", out.to_str().unwrap()]);
    let table = String::from_utf8(ok(&args).stdout).unwrap();
    let record: Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(record["per_task"]["easy"]["questions"], 2);
    assert_eq!(record["per_task"]["hard"]["questions"], 1);
    assert!(table.contains("| easy | 2 |"), "{table}");
    let bad = aha(&["eval", "--model", &model, "--data", data.to_str().unwrap(), "--k", "2", "--pass-at", "4"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("pass_at 4"));
}

#[test]
fn sample_filter_mix_then_sft() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = tiny_model(dir);
    let samples = dir.join("samples.jsonl");
    let mut args = vec!["sample", "--model", &model, "--task", "{ name = \"arithmetic\", max_value = 3 }"];
    args.extend(["--limit", "3", "--out", samples.to_str().unwrap()]);
    args.extend(SAMPLING);
    ok(&args);
    let records = jsonl(&samples);
    assert_eq!(records.len(), 12);
    assert!(records.iter().all(|r| r["reward"].is_number() && r["rewards"]["accuracy"].is_number()), "{records:?}");

    // A random model is never right: the default filter keeps nothing and says why.
    let sft = dir.join("sft.jsonl");
    let out = ok(&["filter", "--input", samples.to_str().unwrap(), "--out", sft.to_str().unwrap()]);
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(report.contains("| kept | 0 |") && report.contains("| dropped: incorrect | 12 |"), "{report}");

    // Keeping everything but capping at 2 per prompt keeps 6; the mix adds round(0.5 × 6) = 3.
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/sft-arithmetic.jsonl");
    let mix = format!("{}:0.5", other.display());
    let filter = |out: &Path| {
        let args = [
            "filter",
            "--input",
            samples.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--keep-incorrect",
            "--keep-malformed",
            "--keep-duplicates",
            "--cap",
            "2",
            "--mix",
            &mix,
            "--seed",
            "4",
        ];
        String::from_utf8(ok(&args).stdout).unwrap()
    };
    let report = filter(&sft);
    assert!(report.contains("| kept | 6 |") && report.contains("| dropped: over the per-prompt cap | 6 |"), "{report}");
    let rows = jsonl(&sft);
    assert_eq!(rows.len(), 9, "{report}");
    let completions: Vec<&Value> = records.iter().map(|r| &r["completion"]).collect();
    let from_samples = rows.iter().filter(|r| completions.contains(&&r["messages"][1]["content"])).count();
    assert_eq!(from_samples, 6);
    let again = dir.join("sft2.jsonl");
    filter(&again);
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&sft).unwrap(), "same seed, same file");

    // `aha sft` reads the result.
    let toml = dir.join("sft.toml");
    let run = dir.join("sft-run");
    std::fs::write(
        &toml,
        format!(
            "model = {model:?}\noutput_dir = {run:?}\n[data]\npath = {sft:?}\n[sft]\nmax_steps = 1\nbatch_size = 4\n\
             [optim]\nlearning_rate = 1e-3\n[run]\nprogress = false\n"
        ),
    )
    .unwrap();
    ok(&["sft", "--config", toml.to_str().unwrap()]);
    assert!(run.join("metrics.jsonl").exists());
}

#[test]
fn eval_extract_free_reads_free_text_and_bad_values_name_the_flag() {
    use aha_reward::extract::AnswerExtraction;
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let run = |extract: Option<&str>, out: &Path| {
        let mut args = vec!["eval", "--model", &model, "--task", "arithmetic", "--limit", "4", "--k", "4"];
        args.extend(["--max-new-tokens", "24", "--template", "raw", "--temperature", "1.0"]);
        if let Some(mode) = extract {
            args.extend(["--extract", mode]);
        }
        args.extend(["--out", out.to_str().unwrap()]);
        let table = String::from_utf8(ok(&args).stdout).unwrap();
        let record: Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
        (table, record, jsonl(&out.join("samples.jsonl")))
    };
    let (table, record, samples) = run(Some("free"), &tmp.path().join("free"));
    for row in ["| format rate |", "| answer extraction | free |", "| extraction rate |"] {
        assert!(table.contains(row), "{row} missing:\n{table}");
    }
    assert_eq!(record["extraction"], "free");
    let extracted = samples.iter().filter(|s| s["extracted"].is_string()).count();
    assert!(extracted > 0, "random bytes hold digits: free extraction finds some");
    assert_eq!(record["extraction_rate"].as_f64(), Some(extracted as f64 / samples.len() as f64));
    for s in &samples {
        let free = AnswerExtraction::Free.extract(s["completion"].as_str().unwrap());
        assert_eq!(s["extracted"].as_str(), free.as_deref(), "{s}");
    }

    // The default is the strict R1 reading: a random model has no answer block.
    let (table, record, samples) = run(None, &tmp.path().join("r1"));
    assert!(table.contains("| answer extraction | r1 |"), "{table}");
    assert_eq!((record["extraction"].as_str(), record["extraction_rate"].as_f64()), (Some("r1"), Some(0.0)));
    assert!(samples.iter().all(|s| s["extracted"].is_null()));

    for cmd in ["eval", "sample"] {
        let bad = aha(&[cmd, "--model", &model, "--task", "arithmetic", "--extract", "loose"]);
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(!bad.status.success() && err.contains("--extract") && err.contains("loose"), "{err}");
        assert!(err.contains("`r1` or `free`"), "{err}");
    }
}
