//! `aha init`, `aha generate` and `aha convert` end to end on a tiny model made on the spot.

use std::path::Path;
use std::process::Command;

fn aha(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_aha")).args(args).output().unwrap();
    assert!(out.status.success(), "aha {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

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
    aha(&[
        "init",
        "--out",
        m,
        "--arch",
        "qwen3",
        "--layers",
        "1",
        "--hidden-size",
        "32",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--seed",
        "5",
    ]);
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        assert!(Path::new(m).join(f).is_file(), "{f} missing");
    }
    let refuse = Command::new(env!("CARGO_BIN_EXE_aha")).args(["init", "--out", m]).output().unwrap();
    assert!(!refuse.status.success(), "init must not overwrite without --force");

    let gen = |seed: &str| {
        let out = aha(&[
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
    aha(&["convert", "--model", m, "--out", copy.to_str().unwrap()]);
    let original = std::fs::read(Path::new(m).join("model.safetensors")).unwrap();
    assert_eq!(std::fs::read(copy.join("model.safetensors")).unwrap(), original);
    let _ = std::fs::remove_dir_all(&root);
}
