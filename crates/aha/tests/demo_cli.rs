//! Smoke test of the README's main command: `aha demo` with a few steps writes a complete
//! `summary.json`, metrics, eval records and plots. (Whether learning happens at full length is
//! measured by running the demo itself; see README.)

use std::path::Path;
use std::process::Command;

/// Runs `aha demo --out OUT ARGS…` and returns its summary.json.
fn run_demo(out: &Path, args: &[&str]) -> serde_json::Value {
    let status = Command::new(env!("CARGO_BIN_EXE_aha")).args(["demo", "--out"]).arg(out).args(args).status().unwrap();
    assert!(status.success());
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn short_demo_writes_summary_metrics_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let args = ["--sft-steps", "3", "--grpo-steps", "2", "--eval-questions", "20", "--eval-every", "1", "--seed", "7"];
    let summary = run_demo(&out, &args);
    for key in [
        "pass_at_1_before_rl",
        "pass_at_1_after_rl",
        "cons_at_k_before_rl",
        "cons_at_k_after_rl",
        "k",
        "mean_completion_tokens_before_rl",
        "mean_completion_tokens_after_rl",
        "reflection_per_1k_before_rl",
        "reflection_per_1k_after_rl",
        "check_share_before_rl",
        "check_share_after_rl",
        "self_correction_fixed_share_before_rl",
        "self_correction_fixed_share_after_rl",
        "wall_s",
    ] {
        assert!(summary[key].is_number(), "summary.json lacks {key}: {summary}");
    }
    let metrics = std::fs::read_to_string(out.join("grpo/metrics.jsonl")).unwrap();
    let header: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(header["run"]["exec"]["backend"], "cpu-handwritten", "{header}");
    assert_eq!(metrics.lines().filter(|l| l.contains("\"step\"")).count(), 2);
    assert!(out.join("grpo/report.png").exists());
    // Held-out evaluations: before RL, at step 1 (`--eval-every 1`), after RL; not twice at step 2.
    let evals: Vec<String> = std::fs::read_dir(out.join("grpo"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("eval_"))
        .collect();
    assert_eq!(evals.len(), 3, "{evals:?}");
    assert!(out.join("grpo/checkpoints/latest").exists());
}

#[test]
fn ablation_cold_start_has_no_self_check() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--ablation", "--sft-steps", "2", "--grpo-steps", "1", "--eval-questions", "8", "--seed", "3"];
    let summary = run_demo(&dir.path().join("demo"), &args);
    assert_eq!(summary["ablation"], true, "{summary}");
    assert_eq!(summary["teacher_check_rate"], 0.0, "{summary}");
}
