//! Reward hacks that must score 0, and denial-of-service inputs that must
//! return in bounded time without affecting the rest of the batch.

use aha_reward::math::{math_equal, Verdict};
use aha_reward::{Registry, RewardsConfig, Sample};
use std::time::{Duration, Instant};

fn registry() -> Registry {
    let cfg =
        RewardsConfig::from_toml_str("[[rewards]]\nkind = \"math\"\n[[rewards]]\nkind = \"format\"\nweight = 0.5\n")
            .unwrap();
    Registry::build(&cfg).unwrap()
}

fn wrap(answer: &str) -> String {
    format!("<think>reasoning</think><answer>{answer}</answer>")
}

#[test]
fn hacks_score_zero() {
    let reg = registry();
    let cases: Vec<(&str, String, &str)> = vec![
        ("boxed only in think", "<think>\\boxed{2}</think>".into(), "2"),
        ("boxed only in think + empty answer", "<think>\\boxed{2}</think><answer></answer>".into(), "2"),
        ("boxed list", wrap("\\boxed{1,2,3}"), "2"),
        ("or-list", wrap("1 or 2 or 3"), "2"),
        ("boxes joined by or", wrap("\\boxed{1} or \\boxed{2} or \\boxed{3}"), "2"),
        ("empty answer", wrap(""), "2"),
        ("empty think then text", "<think></think>a".into(), "a"),
        ("junk after answer", format!("{}junk 2", wrap("2")), "2"),
        ("duplicated answer tags", "<think>r</think><answer>1</answer><answer>2</answer>".into(), "2"),
        ("duplicated think tags", "<think>r</think><think>s</think><answer>2</answer>".into(), "2"),
        ("every option", wrap("A, B, C, D"), "B"),
        ("every option as set", wrap("\\{1, 2, 3, 4\\}"), "3"),
        ("all options with and", wrap("\\boxed{1} and \\boxed{2} and \\boxed{3}"), "2"),
    ];
    let samples: Vec<Sample> = cases.iter().map(|(_, c, g)| Sample::new(c.clone(), *g)).collect();
    let scored = reg.score_batch(&samples).unwrap();
    for ((name, _, _), s) in cases.iter().zip(&scored) {
        assert_eq!(s.rewards["math"], Some(0.0), "math reward for hack {name}");
        if *name != "boxed list"
            && *name != "or-list"
            && !name.starts_with("every")
            && !name.starts_with("all")
            && *name != "boxes joined by or"
        {
            assert_eq!(s.rewards["format"], Some(0.0), "format reward for hack {name}");
        }
    }
    // The honest answer still scores.
    let ok = reg.score_batch(&[Sample::new(wrap("\\boxed{2}"), "2")]).unwrap();
    assert_eq!(ok[0].reward, Some(1.5));
}

fn dos_inputs() -> Vec<(&'static str, String)> {
    vec![
        ("9^{9^{9}}", "9^{9^{9}}".to_string()),
        ("(10^6)!", "(10^6)!".to_string()),
        ("10^{(5^{5^{5}})}", "10^{(5^{5^{5}})}".to_string()),
        ("100k nested braces", format!("\\boxed{{{}1{}}}", "{".repeat(100_000), "}".repeat(100_000))),
        ("100k open braces", "{".repeat(100_000)),
        ("100k nested parens", format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000))),
        ("1 MB answer", "1+".repeat(500_000) + "1"),
        ("1 MB prose", "word ".repeat(200_000)),
        ("10k boxes", "\\boxed{1} ".repeat(10_000)),
        ("huge factorial chain", "((((9!)!)!)!)!".to_string()),
        ("huge power tower x", "x^{x^{x^{x^{x^{x^{99999}}}}}}".to_string()),
        ("1000-digit number", "9".repeat(1000)),
    ]
}

#[test]
fn dos_inputs_are_bounded() {
    let mut worst = (Duration::ZERO, "");
    for (name, input) in dos_inputs() {
        for (gold, pred) in [("2", input.as_str()), (input.as_str(), "2"), (input.as_str(), input.as_str())] {
            let t = Instant::now();
            let verdict = math_equal(gold, pred);
            let dt = t.elapsed();
            if dt > worst.0 {
                worst = (dt, name);
            }
            assert!(dt < Duration::from_secs(2), "{name} took {dt:?}");
            if gold == "2" {
                assert_ne!(verdict, Verdict::Equal, "{name}");
            }
        }
    }
    println!("worst DoS case: {} in {:?}", worst.1, worst.0);
}

#[test]
fn dos_does_not_affect_the_batch() {
    let reg = registry();
    let mut samples: Vec<Sample> = dos_inputs().into_iter().map(|(_, s)| Sample::new(wrap(&s), "2")).collect();
    samples.push(Sample::new(wrap("\\boxed{\\frac{4}{2}}"), "2"));
    let t = Instant::now();
    let scored = reg.score_batch(&samples).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10));
    let last = scored.last().unwrap();
    assert_eq!(last.rewards["math"], Some(1.0));
    assert!(scored[..scored.len() - 1].iter().all(|s| s.rewards["math"] == Some(0.0)));
    assert_eq!(reg.panics(), 0);
}

/// Random token soup (a fixed-seed generator) never panics and stays fast.
#[test]
fn random_latex_never_panics() {
    const PIECES: &[&str] = &[
        "\\frac",
        "\\sqrt",
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        "\\{",
        "\\}",
        "\\left",
        "\\right",
        "1",
        "23",
        "0.5",
        ",",
        ";",
        "=",
        "<",
        "\\le",
        "\\pm",
        "\\cup",
        "\\in",
        "x",
        "y",
        "f(",
        "^",
        "_",
        "!",
        "%",
        "|",
        "&",
        "\\\\",
        "\\text{",
        "and",
        "$",
        "\\boxed{",
        "\\begin{pmatrix}",
        "\\end{pmatrix}",
        "\\infty",
        "\\pi",
        "-",
        "+",
        "*",
        "/",
        ":",
        " ",
        "é",
        "\\sin",
        "^{",
        "\\approx",
        "\\,",
        ",\\!",
        "{,}",
        ".",
    ];
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start = Instant::now();
    for _ in 0..20_000 {
        let len = (next() % 24) as usize;
        let s: String = (0..len).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
        let t: String = (0..(next() % 12) as usize).map(|_| PIECES[(next() % PIECES.len() as u64) as usize]).collect();
        let _ = math_equal(&s, &t);
        let _ = math_equal(&t, &s);
        let _ = aha_reward::extract::final_answer(&s);
    }
    println!("20 000 random pairs in {:?}", start.elapsed());
    assert!(start.elapsed() < Duration::from_secs(60));
}
