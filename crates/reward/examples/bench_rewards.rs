//! Speed bench (not CI): math-equal answers/s on a JSONL of `{"gold", "pred"}` pairs, and sandbox
//! runs/s of a trivial program. Driven by `bench/reward/run.sh`.
//!
//! Usage: `bench_rewards PAIRS.jsonl [SANDBOX_RUNS]` → prints one JSON object.

use aha_reward::code::sandbox::{run_python, Limits, Status};
use aha_reward::math::math_equal;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: bench_rewards PAIRS.jsonl [SANDBOX_RUNS]")?;
    let runs: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(50);
    let pairs: Vec<(String, String)> = std::fs::read_to_string(path)?
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok((v["gold"].as_str().unwrap_or("").to_string(), v["pred"].as_str().unwrap_or("").to_string()))
        })
        .collect::<Result<_, serde_json::Error>>()?;
    let t = Instant::now();
    let equal = pairs.iter().filter(|(g, p)| math_equal(g, p).as_bool() == Some(true)).count();
    let math_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut ok = 0;
    for _ in 0..runs {
        ok += usize::from(run_python("print(1)", &[], b"", &Limits::default()).status == Status::Ok);
    }
    let sandbox_s = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "pairs": pairs.len(),
            "equal": equal,
            "math_equal_seconds": math_s,
            "math_equal_per_s": pairs.len() as f64 / math_s,
            "sandbox_runs": runs,
            "sandbox_ok": ok,
            "sandbox_seconds": sandbox_s,
            "sandbox_runs_per_s": runs as f64 / sandbox_s,
        })
    );
    Ok(())
}
