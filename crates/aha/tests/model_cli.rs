//! `aha init`, `aha generate` and `aha convert` end to end on a tiny model made on the spot.

mod common;

use std::path::Path;

use common::{aha, init_tiny, ok};

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("aha-model-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn init_generate_convert() {
    let root = dir();
    let model = root.join("tiny");
    let m = model.to_str().unwrap();
    init_tiny(&model, &["--arch", "qwen3", "--heads", "2", "--kv-heads", "1", "--seed", "5"]);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(Path::new(m).join(f).is_file(), "{f} missing");
    }
    let refuse = aha(&["init", "--out", m]);
    assert!(!refuse.status.success(), "init must not overwrite without --force");

    let gen = |seed: &str| {
        let out = ok(&[
            "generate",
            "--model",
            m,
            "--prompt",
            "2+2?",
            "--max-new-tokens",
            "8",
            "--seed",
            seed,
            "--temperature",
            "1.0",
        ]);
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
    };
    let (a, stats) = gen("1");
    assert!(stats.contains("prompt tokens"), "{stats}");
    assert_eq!(gen("1").0, a, "same seed, same text");

    let copy = root.join("copy");
    ok(&["convert", "--model", m, "--out", copy.to_str().unwrap()]);
    let original = std::fs::read(Path::new(m).join("model.safetensors")).unwrap();
    assert_eq!(std::fs::read(copy.join("model.safetensors")).unwrap(), original);
    let _ = std::fs::remove_dir_all(&root);
}

/// `--device`, `--dtype` and `--backend` reach the model: every backend that applies samples the
/// same text greedily, one that does not apply and CUDA in a CPU build are errors naming the flag.
#[test]
fn exec_flags_choose_the_backend_or_say_why_not() {
    let root = tempfile::tempdir().unwrap();
    let m = root.path().join("tiny");
    let m = m.to_str().unwrap();
    init_tiny(Path::new(m), &["--heads", "2", "--kv-heads", "1"]);
    let gen = |extra: &[&str]| {
        let mut args = vec!["generate", "--model", m, "--prompt", "1+2", "--max-new-tokens", "6", "--temperature", "0"];
        args.extend_from_slice(extra);
        aha(&args)
    };
    let text = |o: &std::process::Output| (String::from_utf8_lossy(&o.stdout).to_string(), o.status.success());
    let auto = gen(&[]);
    assert!(String::from_utf8_lossy(&auto.stderr).contains("backend cpu-handwritten on cpu, f32"));
    for backend in ["cpu-autograd", "composite"] {
        let o = gen(&["--backend", backend]);
        assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("backend {backend} on cpu")));
        assert_eq!(text(&o), text(&auto), "greedy text on {backend}");
    }
    let f64_run = gen(&["--dtype", "f64"]);
    assert!(String::from_utf8_lossy(&f64_run.stderr).contains("backend composite on cpu, f64"));
    let bf16 = gen(&["--dtype", "bf16"]);
    assert!(bf16.status.success() && String::from_utf8_lossy(&bf16.stderr).contains("backend composite on cpu, bf16"));

    let refused = gen(&["--dtype", "bf16", "--backend", "cpu-handwritten"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("--backend") && err.contains("bf16"), "{err}");
    let bad = gen(&["--device", "tpu"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("expected cpu, cuda or cuda:N"));
    if !cfg!(feature = "cuda") {
        let cuda = gen(&["--device", "cuda"]);
        let err = String::from_utf8_lossy(&cuda.stderr);
        assert!(!cuda.status.success() && err.contains("--device") && err.contains("--features cuda"), "{err}");
    }
}
