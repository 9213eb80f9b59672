//! SFT datasets: chat JSONL (`messages`) or prompt/completion JSONL, turned into
//! [`SftExample`]s (prompt tokens without loss, completion tokens with loss).
//!
//! A chat row trains on its **final assistant message only**: everything before it (system,
//! user and earlier assistant turns) is context. The split is made on the rendered text:
//! the prompt is the conversation without the last message plus the generation prompt, the
//! completion is the rest of the fully rendered conversation (so the template's end-of-turn
//! token is trained on). A prompt/completion row templates the prompt like GRPO prompts and
//! appends the tokenizer's first EOS id to the completion.

use std::path::Path;

use aha_model::{AhaTokenizer, ChatMessage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::data::Skipped;
use crate::error::{Result, TrainError};
use crate::sft::SftExample;
use crate::template::PromptTemplate;

/// Which JSONL columns an SFT row uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftColumns {
    /// Chat column: a list of `{role, content}` (default `messages`). Rows holding it are chat rows.
    pub messages: String,
    /// Prompt column of prompt/completion rows (default `prompt`).
    pub prompt: String,
    /// Completion column of prompt/completion rows (default `completion`).
    pub completion: String,
}

impl Default for SftColumns {
    fn default() -> Self {
        Self { messages: "messages".into(), prompt: "prompt".into(), completion: "completion".into() }
    }
}

/// One SFT row before tokenisation.
#[derive(Debug, Clone, PartialEq)]
pub enum SftRow {
    /// A conversation whose last message is the assistant's target.
    Chat(Vec<ChatMessage>),
    /// A question and its target answer.
    PromptCompletion {
        /// The question (templated at tokenisation).
        prompt: String,
        /// The target text.
        completion: String,
    },
}

/// Reads an SFT JSONL file; malformed rows are skipped and reported with their line numbers.
pub fn read_sft_jsonl(path: &Path, cols: &SftColumns) -> Result<(Vec<SftRow>, Skipped)> {
    crate::data::read_jsonl_rows(path, |line| parse_sft_row(line, cols))
}

fn parse_sft_row(line: &str, cols: &SftColumns) -> std::result::Result<SftRow, String> {
    let mut obj: Map<String, Value> = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    if let Some(messages) = obj.remove(&cols.messages) {
        let messages: Vec<ChatMessage> = serde_json::from_value(messages)
            .map_err(|e| format!("column `{}` is not a list of {{role, content}}: {e}", cols.messages))?;
        return match messages.last() {
            Some(m) if m.role == "assistant" => Ok(SftRow::Chat(messages)),
            _ => Err(format!("column `{}` must end with an assistant message", cols.messages)),
        };
    }
    let mut take = |key: &str| match obj.remove(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("column `{key}` is empty")),
        Some(other) => Err(format!("column `{key}` is not a string: {other}")),
        None => Err(format!("missing column `{key}` (and no `{}`)", cols.messages)),
    };
    let prompt = take(&cols.prompt)?;
    let completion = take(&cols.completion)?;
    Ok(SftRow::PromptCompletion { prompt, completion })
}

/// Tokenises a row into prompt (no loss) and completion (loss) ids.
pub fn to_example(row: &SftRow, tokenizer: &AhaTokenizer, template: PromptTemplate) -> Result<SftExample> {
    match row {
        SftRow::Chat(messages) => chat_example(messages, tokenizer),
        SftRow::PromptCompletion { prompt, completion } => {
            let prompt_ids = tokenizer.encode(&template.render(tokenizer, prompt)?, false)?;
            let mut completion_ids = tokenizer.encode(completion, false)?;
            let eos = tokenizer.eos_token_ids().first().copied();
            completion_ids.extend(eos);
            Ok(SftExample { prompt_ids, completion_ids })
        }
    }
}

fn chat_example(messages: &[ChatMessage], tokenizer: &AhaTokenizer) -> Result<SftExample> {
    let (_, context) = messages.split_last().ok_or_else(|| TrainError::Other("empty conversation".into()))?;
    let prompt = tokenizer.apply_chat_template(context, true)?;
    let full = tokenizer.apply_chat_template(messages, false)?;
    let completion = full.strip_prefix(&prompt).ok_or_else(|| {
        TrainError::Other("the chat template does not render the conversation as an extension of its prefix".into())
    })?;
    Ok(SftExample {
        prompt_ids: tokenizer.encode(&prompt, false)?,
        completion_ids: tokenizer.encode(completion, false)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_both_kinds_and_bad_rows_with_line_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.jsonl");
        let text = concat!(
            "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":\"yo\"}]}\n",
            "{\"prompt\":\"a\",\"completion\":\"b\"}\n",
            "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n",
            "nope\n",
            "{\"prompt\":\"a\"}\n",
        );
        std::fs::write(&p, text).unwrap();
        let (rows, skipped) = read_sft_jsonl(&p, &SftColumns::default()).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(matches!(rows[0], SftRow::Chat(ref m) if m.len() == 2));
        assert_eq!(rows[1], SftRow::PromptCompletion { prompt: "a".into(), completion: "b".into() });
        let lines: Vec<usize> = skipped.0.iter().map(|s| s.0).collect();
        assert_eq!(lines, vec![3, 4, 5]);
        assert!(skipped.0[0].1.contains("assistant"));
    }

    #[test]
    fn chat_rows_train_on_the_final_assistant_message_only() {
        let dir = tempfile::tempdir().unwrap();
        let lm = aha_model::init_tiny(dir.path(), &aha_model::TinySpec::default(), 0).unwrap();
        let tok = &lm.tokenizer;
        let messages = vec![
            ChatMessage::new("user", "q1"),
            ChatMessage::new("assistant", "first reply"),
            ChatMessage::new("user", "q2"),
            ChatMessage::new("assistant", "final reply"),
        ];
        let ex = to_example(&SftRow::Chat(messages), tok, PromptTemplate::Raw).unwrap();
        let prompt = tok.decode(&ex.prompt_ids, false).unwrap();
        let completion = tok.decode(&ex.completion_ids, false).unwrap();
        assert!(prompt.contains("first reply") && prompt.contains("q2"), "{prompt}");
        assert!(completion.starts_with("final reply"), "{completion}");
        assert!(!completion.contains("q2") && !completion.contains("first reply"));
        let pc = SftRow::PromptCompletion { prompt: "p".into(), completion: "c".into() };
        let ex = to_example(&pc, tok, PromptTemplate::Raw).unwrap();
        assert_eq!(ex.completion_ids.last(), tok.eos_token_ids().first(), "EOS closes a completion");
    }
}
