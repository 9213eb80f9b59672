//! Multiple-choice extraction (math-verify's `StringExtractionConfig`): the chosen option letter in
//! a free-form answer.
//!
//! Policy: an anchored choice ("answer is B", "answer: B") wins; otherwise the first option that
//! stands alone (not inside a word). Returns the normalised option (lower-cased when asked) and the
//! option as written.
//!
//! ```
//! use aha_reward::choice::extract_choice;
//! assert_eq!(extract_choice("The answer is B.", &["A", "B"], true), Some(("b".into(), "B".into())));
//! ```

/// The chosen option in `text`, if any.
pub fn extract_choice(text: &str, options: &[&str], lowercase: bool) -> Option<(String, String)> {
    let standalone = standalone_options(text, options);
    let lower = text.to_lowercase();
    let anchored = ["answer is", "answer:"].iter().find_map(|a| {
        let at = lower.rfind(a)? + a.len();
        standalone.iter().find(|(pos, _)| *pos >= at).map(|(_, o)| *o)
    });
    let chosen = anchored.or_else(|| standalone.first().map(|(_, o)| *o))?;
    let norm = if lowercase { chosen.to_lowercase() } else { chosen.to_string() };
    Some((norm, chosen.to_string()))
}

fn standalone_options<'a>(text: &str, options: &[&'a str]) -> Vec<(usize, &'a str)> {
    let mut out = Vec::new();
    for (pos, _) in text.char_indices() {
        for opt in options {
            if text[pos..].starts_with(opt) {
                let before = text[..pos].chars().next_back();
                let after = text[pos + opt.len()..].chars().next();
                let alone = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
                if alone(before) && alone(after) {
                    out.push((pos, *opt));
                }
            }
        }
    }
    out
}
