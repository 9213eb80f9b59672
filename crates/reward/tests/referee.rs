//! reasoning-gym as an outside referee: aha's verdicts on the committed dump
//! `tests/fixtures/reasoning_gym.jsonl` (made by `scripts/reasoning-gym-referee.sh`) against
//! reasoning-gym's `score_answer` (correct = score 1.0). Countdown uses aha's Countdown verifier,
//! basic arithmetic aha's numeric verifier. Prints the agreement rate and every disagreement by
//! kind; the expected disagreements are the deliberate policies listed in `CONFORMANCE.md`.

use aha_reward::tasks::countdown::check;
use aha_reward::tasks::exact::parse_decimal;
use serde_json::Value;
use std::collections::BTreeMap;

/// Candidate kinds where aha deliberately accepts what reasoning-gym rejects (CONFORMANCE.md).
const POLICY_KINDS: &[&str] = &["right_with_target", "right_float", "right_spaces"];

fn ours(row: &Value) -> bool {
    let cand = row["candidate"].as_str().unwrap_or("");
    match row["task"].as_str() {
        Some("countdown") => {
            let numbers: Vec<i64> = row["numbers"].as_array().unwrap().iter().filter_map(Value::as_i64).collect();
            check(cand, &numbers, row["target"].as_i64().unwrap()) == Ok(true)
        }
        _ => match (parse_decimal(row["gold"].as_str().unwrap()), parse_decimal(cand)) {
            (Some(g), Some(p)) => g == p,
            _ => false,
        },
    }
}

#[test]
fn agrees_with_reasoning_gym() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/reasoning_gym.jsonl");
    let text = std::fs::read_to_string(path).expect("committed fixture");
    let mut by_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let (mut agree, mut total, mut unexplained) = (0, 0, Vec::new());
    for line in text.lines() {
        let row: Value = serde_json::from_str(line).expect("valid JSON");
        let kind = format!("{}/{}", row["task"].as_str().unwrap(), row["kind"].as_str().unwrap());
        let same = ours(&row) == row["rg_correct"].as_bool().unwrap();
        let e = by_kind.entry(kind.clone()).or_default();
        e.1 += 1;
        total += 1;
        if same {
            e.0 += 1;
            agree += 1;
        } else if !POLICY_KINDS.iter().any(|k| kind.ends_with(k)) {
            unexplained.push(format!("{kind}: {:?}", row["candidate"]));
        }
    }
    for (kind, (a, t)) in &by_kind {
        println!("{a:>3}/{t:<3} {kind}");
    }
    println!("agreement with reasoning-gym: {agree}/{total} = {:.1}%", 100.0 * agree as f64 / total as f64);
    assert!(total >= 300);
    assert!(unexplained.is_empty(), "unexplained disagreements: {unexplained:#?}");
}
