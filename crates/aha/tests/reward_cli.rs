//! End-to-end checks of the reward subcommands' contracts: `aha reward score`, `aha math-equal`,
//! `aha sandbox run` (the last needs root; skipped with a note otherwise, failing when `CI` is set).

use serde_json::Value;
use std::process::Command;

fn aha() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aha"))
}

fn tmp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("aha-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn reward_score_adds_rewards() {
    let config = tmp(
        "rewards.toml",
        "[[rewards]]\nkind = \"math\"\n[[rewards]]\nkind = \"format\"\nweight = 0.5\n[[rewards]]\nkind = \"countdown\"\n",
    );
    let input = tmp(
        "in.jsonl",
        concat!(
            r#"{"completion": "<think>r</think><answer>\\boxed{4}</answer>", "answer": "4", "id": 1}"#,
            "\n",
            r#"{"completion": "<think>r</think><answer>(25-5)*4+3</answer>", "answer": "", "numbers": [3,4,5,25], "target": 83}"#,
            "\n"
        ),
    );
    let output = input.with_file_name("out.jsonl");
    let st = aha()
        .args(["reward", "score", "--config"])
        .arg(&config)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()
        .unwrap();
    assert!(st.success());
    let out = lines(&output);
    assert_eq!(out[0]["id"], 1);
    assert_eq!(out[0]["rewards"]["math"], 1.0);
    assert_eq!(out[0]["rewards"]["countdown"], Value::Null);
    assert!(out[0]["unscorable"]["countdown"].is_string());
    assert_eq!(out[0]["reward"], 1.5);
    assert_eq!(out[1]["rewards"]["countdown"], 1.0);
}

#[test]
fn math_equal_marks_pairs() {
    let input = tmp(
        "pairs.jsonl",
        concat!(
            r#"{"gold": "\\frac{1}{2}", "pred": "so it is $0.5$"}"#,
            "\n",
            r#"{"gold": "2", "pred": "\\boxed{1,2,3}"}"#,
            "\n",
            r#"{"gold": "(10^6)!", "pred": "1"}"#,
            "\n"
        ),
    );
    let out = aha().args(["math-equal", "--input"]).arg(&input).output().unwrap();
    assert!(out.status.success());
    let rows: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows[0]["equal"], true);
    assert_eq!(rows[1]["equal"], false);
    assert_eq!(rows[2]["equal"], Value::Null);
}

#[test]
fn sandbox_run_reports_json() {
    let program = tmp("prog.py", "import sys\nprint(sys.stdin.read()[::-1])\n");
    let stdin = tmp("stdin.txt", "abc");
    let out = aha()
        .args(["sandbox", "run", "--lang", "python"])
        .arg(&program)
        .arg("--stdin")
        .arg(&stdin)
        .args(["--timeout-s", "5", "--memory-mb", "512"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    if v["status"] == "refused" {
        assert!(std::env::var_os("CI").is_none(), "sandbox refused in CI: {v}");
        eprintln!("note: sandbox refused here: {}", v["refused"]);
        return;
    }
    assert_eq!(v["status"], "ok", "{v}");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["stdout"].as_str().unwrap().trim(), "cba");
    assert!(v["wall_ms"].is_u64());
}
