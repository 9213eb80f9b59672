//! Answer extraction from a completion, in linear time on any input.
//!
//! Policy (docs/DESIGN.md §3): the chain of thought ends at the first `</think>`; nothing before it counts.
//! After it there must be exactly one `<answer>…</answer>` block with non-blank content and nothing
//! but whitespace after `</answer>`; otherwise there is no answer (a duplicated or hedged answer
//! block, junk after the block or a completion cut off inside it all score as "no answer"). Inside
//! the block, the last brace-matched `\boxed{…}` wins, else the whole content.
//!
//! That policy is [`AnswerExtraction::R1`], the default. [`AnswerExtraction::Free`] reads the
//! answer the way benchmark harnesses read base and instruct models ([`free`]). Evaluation,
//! sampling and every reward that reads a final answer go through [`AnswerExtraction`], so the
//! choice between the two is made here and nowhere else.
//!
//! Every function here makes a bounded number of passes over its input and never indexes inside a
//! UTF-8 character, so truncated tags and braces cannot panic.

pub mod free;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

const THINK_CLOSE: &str = "</think>";
const ANSWER_OPEN: &str = "<answer>";
const ANSWER_CLOSE: &str = "</answer>";

/// Why no answer could be extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAnswer {
    /// No `</think>` in the completion.
    NoThinkClose,
    /// No complete `<answer>…</answer>` block after `</think>`.
    NoAnswerBlock,
    /// More than one `<think>`, or a think tag or more than one answer tag after `</think>`.
    DuplicateTags,
    /// Something other than whitespace after `</answer>`.
    TrailingJunk,
    /// The answer block is blank.
    Empty,
    /// Free-form extraction found no answer in the text.
    NotFound,
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            NoAnswer::NoThinkClose => "no </think>",
            NoAnswer::NoAnswerBlock => "no complete <answer> block after </think>",
            NoAnswer::DuplicateTags => "duplicated answer tags",
            NoAnswer::TrailingJunk => "text after </answer>",
            NoAnswer::Empty => "empty answer",
            NoAnswer::NotFound => "no answer found in the text",
        };
        f.write_str(s)
    }
}

/// How a completion's final answer is found: the choice evaluation, sampling and the rewards share.
///
/// Written `r1` or `free` in configs and on the command line.
///
/// ```
/// use aha_reward::extract::AnswerExtraction;
/// let base = "Each box holds 4, so 3 boxes hold 12 pens.\nThe answer is: 12";
/// assert_eq!(AnswerExtraction::R1.extract(base), None);
/// assert_eq!(AnswerExtraction::Free.extract(base).as_deref(), Some("12"));
/// assert_eq!("free".parse(), Ok(AnswerExtraction::Free));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerExtraction {
    /// Strict R1 format (the module policy): the single `<answer>` block after `</think>`, its
    /// last `\boxed{}` if any. Default.
    #[default]
    R1,
    /// Free-form text, math-verify style: the last `\boxed{}`, else "the answer is X" /
    /// "answer: X", else a GSM8K `#### X`, else the latest math span, arithmetic expression or
    /// number (see [`free`]); a valid `<answer>` block is read as under `R1`.
    Free,
}

impl AnswerExtraction {
    /// Every mode's name, as written in configs and on the command line.
    pub const NAMES: [&'static str; 2] = ["r1", "free"];

    /// The mode's name: `r1` or `free`.
    pub fn name(self) -> &'static str {
        match self {
            AnswerExtraction::R1 => "r1",
            AnswerExtraction::Free => "free",
        }
    }

    /// The final answer of `completion` under this mode, trimmed and non-empty.
    pub fn final_answer(self, completion: &str) -> Result<Cow<'_, str>, NoAnswer> {
        match self {
            AnswerExtraction::R1 => final_answer(completion).map(Cow::Borrowed),
            AnswerExtraction::Free => free::free_answer(completion).map(Cow::Owned).ok_or(NoAnswer::NotFound),
        }
    }

    /// The final answer as an owned string; `None` when there is none.
    pub fn extract(self, completion: &str) -> Option<String> {
        self.final_answer(completion).ok().map(|a| a.trim().to_string())
    }

    /// The program of a code completion: under `r1` the final answer (its last fenced code block
    /// when it holds one); under `free` the last fenced code block of [`free::answer_region`] (a
    /// valid answer block, else the text after `</think>`, else the whole completion).
    pub fn program(self, completion: &str) -> Option<&str> {
        match self {
            AnswerExtraction::R1 => {
                let answer = final_answer(completion).ok()?;
                Some(last_code_block(answer).unwrap_or(answer))
            }
            AnswerExtraction::Free => last_code_block(free::answer_region(completion)),
        }
    }
}

impl std::fmt::Display for AnswerExtraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AnswerExtraction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "r1" => Ok(AnswerExtraction::R1),
            "free" => Ok(AnswerExtraction::Free),
            other => Err(format!("unknown answer extraction `{other}`: expected `r1` or `free`")),
        }
    }
}

/// The content of the last fenced code block (```` ```python … ``` ````) in `text`.
pub fn last_code_block(text: &str) -> Option<&str> {
    let end = text.rfind("```")?;
    let start = text[..end].rfind("```")?;
    let block = &text[start + 3..end];
    let body = block.split_once('\n').map_or(block, |(_lang, rest)| rest);
    Some(body)
}

/// The content of the single `<answer>` block after `</think>` (see the module policy).
pub fn answer_block(completion: &str) -> Result<&str, NoAnswer> {
    let end = completion.find(THINK_CLOSE).ok_or(NoAnswer::NoThinkClose)?;
    if completion[..end].matches("<think>").count() > 1 {
        return Err(NoAnswer::DuplicateTags);
    }
    answer_block_after(&completion[end + THINK_CLOSE.len()..])
}

/// The content of the single `<answer>` block in `tail` (text after the chain of thought).
pub fn answer_block_after(tail: &str) -> Result<&str, NoAnswer> {
    let open = tail.find(ANSWER_OPEN).ok_or(NoAnswer::NoAnswerBlock)?;
    let body_start = open + ANSWER_OPEN.len();
    let close_rel = tail[body_start..].find(ANSWER_CLOSE).ok_or(NoAnswer::NoAnswerBlock)?;
    let body = &tail[body_start..body_start + close_rel];
    let rest = &tail[body_start + close_rel + ANSWER_CLOSE.len()..];
    let think_again = tail.contains("<think>") || tail.contains(THINK_CLOSE);
    if think_again || tail.matches(ANSWER_OPEN).count() > 1 || tail.matches(ANSWER_CLOSE).count() > 1 {
        return Err(NoAnswer::DuplicateTags);
    }
    if !rest.trim().is_empty() {
        return Err(NoAnswer::TrailingJunk);
    }
    if body.trim().is_empty() {
        return Err(NoAnswer::Empty);
    }
    Ok(body)
}

/// The final answer of a completion: the last `\boxed{}` content inside the answer block, else
/// the whole block, trimmed.
pub fn final_answer(completion: &str) -> Result<&str, NoAnswer> {
    let block = answer_block(completion)?;
    let answer = last_boxed(block).unwrap_or(block).trim();
    if answer.is_empty() {
        return Err(NoAnswer::Empty);
    }
    Ok(answer)
}

/// A brace-matched `\boxed{…}` (or `\fbox{…}`): byte offsets of the command and of its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoxSpan {
    /// Offset of the backslash of `\boxed`.
    pub start: usize,
    /// Offset just after the closing brace.
    pub end: usize,
    /// Offset of the first content byte.
    pub content_start: usize,
    /// Offset of the closing brace.
    pub content_end: usize,
}

/// Every complete, outermost `\boxed{…}`/`\fbox{…}` in `text`, in order. One pass with a brace
/// stack; `\{` and `\}` are literal braces, not groups. Unclosed boxes are ignored.
pub fn boxed_spans(text: &str) -> Vec<BoxSpan> {
    let bytes = text.as_bytes();
    // Per open brace: Some(command start) when the brace opens a box.
    let mut stack: Vec<Option<usize>> = Vec::new();
    let mut spans = Vec::new();
    let mut open_boxes = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                if let Some(len) = box_command_len(&bytes[i..]) {
                    stack.push(Some(i));
                    open_boxes += 1;
                    i += len;
                    continue;
                }
                i += 2;
                continue;
            }
            b'{' => stack.push(None),
            b'}' => {
                if let Some(Some(start)) = stack.pop() {
                    open_boxes -= 1;
                    if open_boxes == 0 {
                        let content_start = start + box_command_len(&bytes[start..]).unwrap_or(0);
                        spans.push(BoxSpan { start, end: i + 1, content_start, content_end: i });
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    spans
}

/// Length of `\boxed{` / `\fbox{` (allowing spaces before the brace) at the start of `bytes`.
fn box_command_len(bytes: &[u8]) -> Option<usize> {
    for cmd in [&b"\\boxed"[..], &b"\\fbox"[..]] {
        if bytes.starts_with(cmd) {
            let mut j = cmd.len();
            while j < bytes.len() && bytes[j] == b' ' {
                j += 1;
            }
            if j < bytes.len() && bytes[j] == b'{' {
                return Some(j + 1);
            }
        }
    }
    None
}

/// The content of the last complete outermost `\boxed{…}` in `text`.
pub fn last_boxed(text: &str) -> Option<&str> {
    boxed_spans(text).last().map(|s| &text[s.content_start..s.content_end])
}

/// The chain of thought: the text before the first `</think>` (after a leading `<think>` if any).
pub fn thought(completion: &str) -> Option<&str> {
    let end = completion.find(THINK_CLOSE)?;
    let head = &completion[..end];
    Some(head.find("<think>").map_or(head, |p| &head[p + "<think>".len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_last_box_in_answer() {
        let c = "<think>\\boxed{1}</think><answer>so \\boxed{2} then \\boxed{\\frac{3}{4}}</answer>";
        assert_eq!(final_answer(c), Ok("\\frac{3}{4}"));
        assert_eq!(final_answer("<think>a</think><answer> 7 </answer>\n"), Ok("7"));
    }

    #[test]
    fn hacks_give_no_answer() {
        assert_eq!(final_answer("<think>\\boxed{2}</think>"), Err(NoAnswer::NoAnswerBlock));
        assert_eq!(final_answer("<think>x</think><answer></answer>"), Err(NoAnswer::Empty));
        assert_eq!(final_answer("<think></think>a"), Err(NoAnswer::NoAnswerBlock));
        assert_eq!(final_answer("<think>x</think><answer>2</answer>junk"), Err(NoAnswer::TrailingJunk));
        assert_eq!(final_answer("<think>x</think><answer>1</answer><answer>2</answer>"), Err(NoAnswer::DuplicateTags));
    }

    #[test]
    fn truncated_input_never_panics() {
        let full = "<think>é\\boxed{ü}</think><answer>\\boxed{\\frac{1}{2}}</answer>";
        for (i, _) in full.char_indices() {
            let _ = final_answer(&full[..i]);
            let _ = boxed_spans(&full[..i]);
        }
        assert_eq!(last_boxed("\\boxed{1} \\boxed{2"), Some("1"));
        assert_eq!(last_boxed("\\boxed{\\{1,2\\}}"), Some("\\{1,2\\}"));
    }

    #[test]
    fn deep_nesting_is_linear() {
        let deep = format!("\\boxed{{{}1{}}}", "{".repeat(100_000), "}".repeat(100_000));
        assert_eq!(last_boxed(&deep).map(str::len), Some(200_001));
    }
}
