//! Conformance against math-verify's own test suite (`tests/fixtures/math_verify_cases.jsonl`):
//! prints the agreement per test family and every disagreement, and asserts ≥ 95 % agreement over
//! the cases that carry a gold/pred pair or a choice-extraction config.

use aha_reward::choice::extract_choice;
use aha_reward::math::{math_equal_with, MathOptions, Verdict};
use serde_json::Value;
use std::collections::BTreeMap;

fn fixture() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/math_verify_cases.jsonl");
    std::fs::read_to_string(path).expect("conformance fixture is committed")
}

/// Our verdict as math-verify's expected value, or `None` when the case is not applicable.
fn ours(params: &Value) -> Option<(Value, Value)> {
    if let Some(config) = params.get("config").and_then(Value::as_str) {
        let pred = params["pred"].as_str()?;
        let options: Vec<&str> =
            ["A", "B", "C", "D", "U"].into_iter().filter(|o| config.contains(&format!("'{o}'"))).collect();
        let lowercase = config.contains("lowercase=True");
        let got = match extract_choice(pred, &options, lowercase) {
            Some((norm, orig)) => serde_json::json!([norm, orig]),
            None => serde_json::json!([]),
        };
        return Some((got, params["expected"].clone()));
    }
    let gold = params.get("gold")?.as_str()?;
    let pred = params.get("pred")?.as_str()?;
    let expected = match params.get("expected") {
        Some(Value::Null) | None => params.get("result")?.clone(),
        Some(v) => v.clone(),
    };
    let mut opts = MathOptions::default();
    if let Some(p) = params.get("precision").and_then(Value::as_u64) {
        opts.precision = p as u32;
    }
    if let Some(b) = params.get("allow_set_relation_comp").and_then(Value::as_bool) {
        opts.allow_set_relation_comp = b;
    }
    let got = i64::from(math_equal_with(gold, pred, &opts) == Verdict::Equal);
    Some((serde_json::json!(got), expected))
}

#[test]
fn math_verify_conformance() {
    let mut by_family: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let (mut agree, mut total, mut not_applicable) = (0, 0, 0);
    for (i, line) in fixture().lines().enumerate() {
        let case: Value = serde_json::from_str(line).expect("valid JSON line");
        let family = format!("{}::{}", case["file"].as_str().unwrap_or(""), case["test"].as_str().unwrap_or(""));
        let Some((got, expected)) = ours(&case["params"]) else {
            not_applicable += 1;
            println!("N/A  #{i} {family} (no gold/pred pair)");
            continue;
        };
        let entry = by_family.entry(family.clone()).or_default();
        entry.1 += 1;
        total += 1;
        if got == expected {
            entry.0 += 1;
            agree += 1;
        } else {
            let p = &case["params"];
            let short = |v: &Value| v.as_str().unwrap_or("").chars().take(90).collect::<String>();
            println!(
                "DIFF #{i} {family}: got {got} expected {expected}\n     gold={:?}\n     pred={:?}",
                short(&p["gold"]),
                short(&p["pred"])
            );
        }
    }
    for (family, (a, t)) in &by_family {
        println!("{a:>3}/{t:<3} {family}");
    }
    let rate = agree as f64 / total as f64;
    println!("agreement {agree}/{total} = {:.1}% ({not_applicable} cases not applicable)", 100.0 * rate);
    assert!(rate >= 0.95, "agreement {:.1}% below 95%", 100.0 * rate);
}
