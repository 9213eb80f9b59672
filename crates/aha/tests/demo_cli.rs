//! Smoke test of the README's main command: `aha demo` with a few steps writes a complete
//! `summary.json`, metrics, eval records and plots. (Whether learning happens at full length is
//! measured by running the demo itself; see README.)

use std::process::Command;

#[test]
fn short_demo_writes_summary_metrics_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let status = Command::new(env!("CARGO_BIN_EXE_aha"))
        .args(["demo", "--out"])
        .arg(&out)
        .args(["--sft-steps", "3", "--grpo-steps", "2", "--eval-questions", "20", "--seed", "7"])
        .status()
        .unwrap();
    assert!(status.success());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    for key in [
        "pass_at_1_before_rl",
        "pass_at_1_after_rl",
        "cons_at_k_before_rl",
        "cons_at_k_after_rl",
        "k",
        "mean_completion_tokens_before_rl",
        "mean_completion_tokens_after_rl",
        "wall_s",
    ] {
        assert!(summary[key].is_number(), "summary.json lacks {key}: {summary}");
    }
    let metrics = std::fs::read_to_string(out.join("grpo/metrics.jsonl")).unwrap();
    let header: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert_eq!(header["run"]["exec"]["backend"], "cpu-handwritten", "{header}");
    assert_eq!(metrics.lines().filter(|l| l.contains("\"step\"")).count(), 2);
    assert!(out.join("grpo/report.png").exists());
    assert!(out.join("grpo/checkpoints/latest").exists());
}
