//! The `[exec]` table of a training config and the flags over it: the plan a run uses is the one
//! its metrics header and resolved config record, a flag beats the file, and a bad value is an
//! error naming the file and the field before anything trains.

mod common;

use std::path::Path;
use std::process::Output;

use common::{aha, init_tiny};
use serde_json::Value;

fn sft_config(model: &Path, out: &Path, exec: &str) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/sft-arithmetic.jsonl");
    format!(
        "model = {model:?}\noutput_dir = {out:?}\n{exec}\n[data]\npath = {data:?}\n\
         [sft]\nmax_steps = 1\nbatch_size = 2\n[run]\nprogress = false\n"
    )
}

/// Runs `aha sft` with `exec` (TOML lines) and `flags`; the run's metrics header.
fn sft(dir: &Path, name: &str, exec: &str, flags: &[&str]) -> (Output, Option<Value>) {
    let out = dir.join(name);
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, sft_config(&dir.join("model"), &out, exec)).unwrap();
    let mut args = vec!["sft", "--config", cfg.to_str().unwrap()];
    args.extend_from_slice(flags);
    let o = aha(&args);
    let header = std::fs::read_to_string(out.join("metrics.jsonl"))
        .ok()
        .and_then(|t| t.lines().next().map(|l| serde_json::from_str::<Value>(l).unwrap()));
    (o, header)
}

#[test]
fn exec_table_and_flags_choose_the_plan_of_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = dir.join("model");
    init_tiny(&model, &["--heads", "2"]);

    let (o, header) = sft(dir, "composite", "[exec]\nbackend = \"composite\"", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let header = header.unwrap();
    assert_eq!(header["run"]["exec"], serde_json::json!({"backend": "composite", "device": "cpu", "dtype": "f32"}));
    let resolved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("composite/aha_config.json")).unwrap()).unwrap();
    assert_eq!(resolved["exec"]["backend"], "composite", "the resolved config records the request");

    let (o, header) = sft(dir, "flag", "[exec]\nbackend = \"composite\"", &["--backend", "cpu-autograd"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(header.unwrap()["run"]["exec"]["backend"], "cpu-autograd", "the flag beats the file");

    let (o, header) = sft(dir, "bad", "[exec]\ndevice = \"tpu\"", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && header.is_none(), "{err}");
    assert!(err.contains("bad.toml") && err.contains("unknown device `tpu`"), "{err}");

    let (o, _) = sft(dir, "typo", "[exec]\ndevise = \"cpu\"", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("devise"), "{err}");
}
