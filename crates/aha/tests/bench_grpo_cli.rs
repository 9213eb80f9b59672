//! Smoke test of `aha bench grpo` (the TRL GRPO mirror) on the spec's committed artifacts: two
//! steps with a random-init config A and a reference model (β 0.001, the path with every phase),
//! and the generate-only mode; the JSON has every figure the comparison script reads, with finite
//! values in range. (β 0 differs only by the missing reference; the smoke runs of
//! `bench/trl_grpo.sh` cover it.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trl_grpo")
}

fn bench(extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_aha"))
        .args(["bench", "grpo", "--artifacts"])
        .arg(fixtures())
        .arg("--json")
        .arg(&json)
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("random init of config A"), "{stdout}");
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn finite(v: &serde_json::Value, path: &str) -> f64 {
    let x = v.pointer(path).and_then(serde_json::Value::as_f64);
    assert!(x.is_some_and(f64::is_finite), "{path} is not a finite number in {v}");
    x.unwrap()
}

fn check_train(v: &serde_json::Value, beta: f64) {
    assert_eq!(v["beta"].as_f64(), Some(beta));
    assert_eq!(v["ref_model_loaded"].as_bool(), Some(beta > 0.0));
    let steps = v["per_step"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for key in [
        "step_s",
        "generate_s",
        "nograd_logps_fwd_s",
        "rewards_s",
        "loss_forward_s",
        "backward_s",
        "optimizer_s",
        "optimizer_and_other_s",
    ] {
        let median = finite(v, &format!("/{key}/median"));
        assert!(median >= 0.0 || key == "optimizer_and_other_s", "{key} = {median}");
        for s in steps {
            finite(s, &format!("/{key}"));
        }
    }
    let step = finite(v, "/step_s/median");
    let parts = ["generate_s", "loss_forward_s", "backward_s"].map(|k| finite(v, &format!("/{k}/median")));
    assert!(parts.iter().all(|&p| p > 0.0 && p < step), "phases {parts:?} vs step {step}");
    let ref_s = finite(v, "/nograd_logps_fwd_s/median");
    assert_eq!(ref_s > 1e-3, beta > 0.0, "a reference forward runs iff beta > 0 ({ref_s} s)");
    for s in steps {
        let tokens = s["completion_tokens"].as_u64().unwrap();
        assert!((64..=64 * 64).contains(&tokens), "completion tokens {tokens}");
        assert!(finite(s, "/grad_norm") >= 0.0 && finite(s, "/lr") > 0.0);
    }
    let lr: Vec<f64> = steps.iter().map(|s| finite(s, "/lr")).collect();
    assert!((lr[0] - 1e-5).abs() < 1e-12 && (lr[1] - 0.5e-5).abs() < 1e-12, "linear decay over 2 steps: {lr:?}");
    assert!(finite(v, "/completion_tokens_per_s_train") > 0.0);
    assert!(finite(v, "/peak_rss_mib") > 1.0);
}

#[test]
fn two_grpo_steps_with_a_reference_model() {
    check_train(&bench(&["--steps", "2", "--beta", "0.001"]), 0.001);
}

#[test]
fn generate_only_decodes_64_rows_of_64_tokens() {
    let v = bench(&["--generate-only", "--gen-repeats", "1"]);
    assert_eq!(v["new_tokens_per_call"].as_u64(), Some(64 * 64));
    assert_eq!(v["call_times_s"].as_array().map(Vec::len), Some(1));
    assert!(finite(&v, "/tokens_per_s_median") > 0.0);
}
