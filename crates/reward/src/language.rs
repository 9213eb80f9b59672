//! The R1 language-consistency reward: the fraction of the chain of thought's words that are in the
//! target language.
//!
//! Words: a run of Latin letters (with inner apostrophes or hyphens) is one English word; each Han
//! ideograph is one Chinese word (Chinese is not space-separated, and R1 counts characters); a run
//! of letters of any other script is one foreign word. Digits, punctuation and LaTeX commands
//! (`\frac`) are ignored. No words at all scores 0.
//!
//! ```
//! use aha_reward::language::{consistency, Language};
//! assert_eq!(consistency("let me check 这个", Language::En), 0.6);
//! ```

use crate::extract::thought;
use crate::registry::Reward;
use crate::sample::{Sample, Score};
use serde::{Deserialize, Serialize};

/// A target language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    /// English (Latin-script words).
    #[default]
    En,
    /// Chinese (Han ideographs).
    Zh,
}

/// Scores the chain of thought (before `</think>`; the whole completion when there is none).
pub struct LanguageReward {
    /// The target language.
    pub language: Language,
}

impl Reward for LanguageReward {
    fn score(&self, sample: &Sample) -> Score {
        let text = thought(&sample.completion).unwrap_or(&sample.completion);
        Score::Value(consistency(text, self.language))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Script {
    Latin,
    Han,
    Other,
}

fn script_of(c: char) -> Option<Script> {
    let cp = c as u32;
    if c.is_ascii_alphabetic() || (0xC0..=0x24F).contains(&cp) && c.is_alphabetic() {
        Some(Script::Latin)
    } else if (0x4E00..=0x9FFF).contains(&cp)
        || (0x3400..=0x4DBF).contains(&cp)
        || (0x20000..=0x2A6DF).contains(&cp)
        || (0xF900..=0xFAFF).contains(&cp)
    {
        Some(Script::Han)
    } else if c.is_alphabetic() {
        Some(Script::Other)
    } else {
        None
    }
}

/// Counts (target-language words, all words) in `text`.
pub fn count_words(text: &str, language: Language) -> (usize, usize) {
    let target = match language {
        Language::En => Script::Latin,
        Language::Zh => Script::Han,
    };
    let (mut hits, mut total) = (0usize, 0usize);
    let mut current: Option<Script> = None;
    let mut in_command = false;
    for c in text.chars() {
        let script = script_of(c);
        if in_command && script == Some(Script::Latin) {
            continue;
        }
        in_command = c == '\\';
        let starts_word = match (script, current) {
            (Some(Script::Han), _) => true,
            (Some(s), Some(prev)) => s != prev,
            (Some(_), None) => true,
            (None, _) => false,
        };
        let joiner = (c == '\'' || c == '-') && current == Some(Script::Latin);
        if starts_word {
            total += 1;
            hits += usize::from(script == Some(target));
        }
        if !joiner {
            current = script;
        }
    }
    (hits, total)
}

/// Fraction of the words of `text` in `language` (0 when there are no words).
pub fn consistency(text: &str, language: Language) -> f64 {
    let (hits, total) = count_words(text, language);
    if total == 0 {
        0.0
    } else {
        hits as f64 / total as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn english_and_chinese() {
        assert_eq!(consistency("Wait, let's re-check it.", Language::En), 1.0);
        assert_eq!(consistency("我们来计算", Language::Zh), 1.0);
        assert_eq!(consistency("我们 compute 2+2", Language::Zh), 2.0 / 3.0);
        assert_eq!(consistency("\\frac{1}{2} 一半", Language::Zh), 1.0);
        assert_eq!(consistency("Привет world", Language::En), 0.5);
        assert_eq!(consistency("123 + 4", Language::En), 0.0);
    }
}
