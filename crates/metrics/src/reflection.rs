//! Reflection-word frequency: how often a model's completions say "wait", "verify", "check"… per 1 000
//! words, the emergent behaviour DeepSeek-R1 tracked (docs/DESIGN.md §1).
//!
//! Words are maximal runs of alphanumeric characters or `_` (regex `\w+`), so matching is on word
//! boundaries: "Wait," counts, "waiting" and "checkpoint" do not, and "don't" is two words. Matching ignores
//! ASCII case. The frequency is reflection words per 1 000 words of all the text pooled.

/// The reflection words of docs/DESIGN.md §1, in its order.
pub const REFLECTION_WORDS: [&str; 10] =
    ["wait", "mistake", "however", "but", "retry", "error", "verify", "wrong", "evaluate", "check"];

/// Word and reflection-word counts of some text; merge counts to pool several completions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReflectionCounts {
    /// All words seen.
    pub words: u64,
    /// Occurrences of each of [`REFLECTION_WORDS`], same order.
    pub hits: [u64; REFLECTION_WORDS.len()],
}

impl ReflectionCounts {
    /// Counts the words and reflection words of `text`.
    pub fn of(text: &str) -> Self {
        let mut counts = ReflectionCounts::default();
        for word in words(text) {
            counts.words += 1;
            if let Some(i) = REFLECTION_WORDS.iter().position(|w| w.eq_ignore_ascii_case(word)) {
                counts.hits[i] += 1;
            }
        }
        counts
    }

    /// Adds another text's counts to these.
    pub fn merge(&mut self, other: &ReflectionCounts) {
        self.words += other.words;
        for (mine, theirs) in self.hits.iter_mut().zip(other.hits) {
            *mine += theirs;
        }
    }

    /// Total reflection words.
    pub fn total(&self) -> u64 {
        self.hits.iter().sum()
    }

    /// Reflection words per 1 000 words; 0 when there are no words.
    pub fn per_thousand_words(&self) -> f64 {
        if self.words == 0 {
            return 0.0;
        }
        self.total() as f64 * 1000.0 / self.words as f64
    }

    /// (word, count) pairs in [`REFLECTION_WORDS`] order.
    pub fn by_word(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        REFLECTION_WORDS.iter().copied().zip(self.hits.iter().copied())
    }
}

/// Reflection words per 1 000 words over all `texts` pooled (not a mean of per-text rates, so long
/// completions weigh by their length); 0 when there are no words.
pub fn reflection_frequency<S: AsRef<str>>(texts: &[S]) -> f64 {
    let mut counts = ReflectionCounts::default();
    for text in texts {
        counts.merge(&ReflectionCounts::of(text.as_ref()));
    }
    counts.per_thousand_words()
}

/// The words of `text`: maximal runs of alphanumeric characters or `_`.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_boundaries_and_case() {
        let c = ReflectionCounts::of("Wait, WAIT! waiting... checkpoint; but-why? BUT_not (verify)");
        // Words: Wait WAIT waiting checkpoint but why BUT_not verify = 8.
        assert_eq!(c.words, 8);
        assert_eq!(c.total(), 4, "{c:?}");
        let hits: Vec<_> = c.by_word().filter(|(_, n)| *n > 0).collect();
        assert_eq!(hits, [("wait", 2), ("but", 1), ("verify", 1)]);
    }

    #[test]
    fn every_listed_word_counts_and_rate_is_per_thousand() {
        let text = REFLECTION_WORDS.join(" ").to_uppercase();
        let c = ReflectionCounts::of(&text);
        assert_eq!((c.words, c.total()), (10, 10));
        assert_eq!(c.per_thousand_words(), 1000.0);
        let filler = "x ".repeat(1998);
        assert_eq!(reflection_frequency(&[filler.as_str(), "wait, however"]), 1.0);
    }

    #[test]
    fn pooling_weighs_by_length_and_empty_is_zero() {
        let long = format!("{} wait", "word ".repeat(99));
        // 1 hit in 100 words and 1 hit in 1 word: pooled 2/101, not the mean of 10 and 1000 per mille.
        let f = reflection_frequency(&[long.as_str(), "Check"]);
        assert!((f - 2000.0 / 101.0).abs() < 1e-9);
        assert_eq!(reflection_frequency::<&str>(&[]), 0.0);
        assert_eq!(reflection_frequency(&["", "  ,;  "]), 0.0);
    }

    #[test]
    fn non_ascii_text_is_split_on_unicode_boundaries() {
        let c = ReflectionCounts::of("Attendez—wait… 等等 however");
        assert_eq!(c.words, 4);
        assert_eq!(c.total(), 2);
    }
}
