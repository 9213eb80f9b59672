//! Prompt templates: how a dataset's question becomes the text the model continues.
//!
//! `chat` uses the model's own chat template (one user message, generation prompt added),
//! `r1_zero` is the plain template of the DeepSeek-R1 paper (Table 1) for base models, and
//! `raw` passes the question through unchanged.

use aha_model::{AhaTokenizer, ChatMessage};
use serde::{Deserialize, Serialize};

use crate::data::PromptRow;
use crate::error::{Result, TrainError};

/// The R1-Zero template of the paper; `{prompt}` is replaced by the question.
pub const R1_ZERO_TEMPLATE: &str = "A conversation between User and Assistant. The user asks a question, and the \
Assistant solves it. The assistant first thinks about the reasoning process in the mind and then provides the user \
with the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, \
respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:";

/// How a question is turned into prompt text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PromptTemplate {
    /// The model's chat template: the question is the user message, with the generation prompt (default).
    #[default]
    Chat,
    /// The DeepSeek-R1-Zero plain template ([`R1_ZERO_TEMPLATE`]).
    R1Zero,
    /// The question as is.
    Raw,
}

impl PromptTemplate {
    /// The prompt text for `question`.
    pub fn render(self, tokenizer: &AhaTokenizer, question: &str) -> Result<String> {
        match self {
            PromptTemplate::Chat => Ok(tokenizer.apply_chat_template(&[ChatMessage::new("user", question)], true)?),
            PromptTemplate::R1Zero => Ok(R1_ZERO_TEMPLATE.replace("{prompt}", question)),
            PromptTemplate::Raw => Ok(question.to_string()),
        }
    }
}

/// Prompts templated and tokenised once, aligned with their rows.
#[derive(Debug, Clone, Default)]
pub struct EncodedPrompts {
    /// The rows kept.
    pub rows: Vec<PromptRow>,
    /// Their prompt token ids, in the same order.
    pub ids: Vec<Vec<u32>>,
    /// Rows dropped because their prompt exceeded the token limit.
    pub too_long: usize,
}

/// Templates and tokenises every row, dropping (and counting) prompts longer than `max_tokens`.
/// It is an error when no prompt fits.
pub fn encode_prompts(
    rows: Vec<PromptRow>,
    tokenizer: &AhaTokenizer,
    template: PromptTemplate,
    max_tokens: usize,
) -> Result<EncodedPrompts> {
    let mut out = EncodedPrompts::default();
    let total = rows.len();
    for row in rows {
        let ids = tokenizer.encode(&template.render(tokenizer, &row.prompt)?, false)?;
        if ids.len() > max_tokens {
            out.too_long += 1;
            continue;
        }
        out.rows.push(row);
        out.ids.push(ids);
    }
    if out.rows.is_empty() {
        return Err(TrainError::Config(format!(
            "all {total} prompts exceed the prompt budget of {max_tokens} tokens \
             (max_position_embeddings − max completion length)"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r1_zero_places_the_question_once_at_the_end() {
        let t = R1_ZERO_TEMPLATE.replace("{prompt}", "Compute 1+2");
        assert!(t.starts_with("A conversation between User and Assistant."));
        assert!(t.ends_with("User: Compute 1+2. Assistant:"));
        assert_eq!(t.matches("Compute 1+2").count(), 1);
    }
}
