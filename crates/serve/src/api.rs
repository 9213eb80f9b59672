//! The OpenAI-compatible request and response types of `aha serve`, and the validation that
//! turns a request into an engine [`GenRequest`] (every bad field is a 400 naming it).
//!
//! Extensions beyond OpenAI's API: `top_k`, `min_p`, `stop_token_ids`, `ignore_eos` and
//! `return_tokens_as_token_ids` (as in vLLM); per-choice `token_ids` and a top-level
//! `weight_version` in every response; and `prompt_index_offset` (default 0): sample `s` of
//! prompt `p` draws from the random stream `(seed, prompt_index_offset + p, s)`, the stream the
//! in-process rollout gives that prompt, so with the same seed, weights and sampling parameters
//! the server's samples are identical to `aha_model::rollout`'s.
//!
//! Log-probabilities are those of the sampled tokens under the unmodified model distribution
//! (temperature 1, no truncation), the trainer's `log π_old`. The `top_logprobs` alternatives
//! list only the sampled token itself.

use std::collections::BTreeMap;

use aha_model::{FinishReason, SamplingParams};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::GenRequest;
use crate::error::{parse_json, ApiError, JsonBody};

/// Most samples per prompt (`n`).
pub const MAX_N: usize = 64;
/// Most `logprobs` of a completion request (OpenAI's limit).
pub const MAX_COMPLETION_LOGPROBS: u32 = 5;
/// Most `top_logprobs` of a chat request (OpenAI's limit).
pub const MAX_CHAT_TOP_LOGPROBS: u32 = 20;
/// `max_tokens` of a completion request that gives none (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum StopSpec {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

impl StopSpec {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the request's token usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The fields completions and chat completions share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    /// Samples per prompt (default 1).
    pub n: Option<i64>,
    /// Softmax temperature (default 1; 0 is greedy).
    pub temperature: Option<f32>,
    /// Nucleus threshold in (0, 1].
    pub top_p: Option<f32>,
    /// Keep the `k` most likely tokens (vLLM extension; -1 or 0 disables).
    pub top_k: Option<i64>,
    /// Drop tokens below `min_p` × the top probability (vLLM extension).
    pub min_p: Option<f32>,
    /// Seed of the sample streams (default: random).
    pub seed: Option<u64>,
    /// Stop strings: the text is cut before the first one.
    pub stop: Option<StopSpec>,
    /// Token ids that also end a sample (vLLM extension).
    pub stop_token_ids: Option<Vec<i64>>,
    /// Do not stop at EOS (vLLM extension).
    pub ignore_eos: Option<bool>,
    /// aha extension: stream index of the first prompt (see the module doc).
    pub prompt_index_offset: Option<u64>,
    /// Stream the answer as server-sent events.
    pub stream: Option<bool>,
    /// Options of the stream.
    pub stream_options: Option<StreamOptions>,
    /// Unsupported unless 0.
    pub presence_penalty: Option<f32>,
    /// Unsupported unless 0.
    pub frequency_penalty: Option<f32>,
    /// Unsupported unless 1 (vLLM extension).
    pub repetition_penalty: Option<f32>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// Must be the served model name (when given).
    pub model: Option<String>,
    /// A string, a list of strings, a list of token ids, or a list of lists of token ids.
    #[serde(default)]
    pub prompt: Value,
    /// Most new tokens per sample (default 16).
    pub max_tokens: Option<i64>,
    /// Report the sampled tokens' log-probabilities (0..=5; alternatives are not listed).
    pub logprobs: Option<i64>,
    /// Not supported (400 when true).
    pub echo: Option<bool>,
    /// Not supported unless equal to `n`.
    pub best_of: Option<i64>,
    /// Report tokens as `token_id:N` (vLLM extension).
    pub return_tokens_as_token_ids: Option<bool>,
    /// The shared sampling fields (read from the same JSON object by [`JsonBody::from_json`]).
    #[serde(skip)]
    pub sampling: SamplingFields,
}

/// One message of `messages`: `content` is a string or a list of text parts.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    /// `system`, `user`, `assistant`, `tool`…
    pub role: String,
    /// The text (or OpenAI's `[{"type": "text", "text": …}]` parts).
    #[serde(default)]
    pub content: Value,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// Must be the served model name (when given).
    pub model: Option<String>,
    /// The conversation; rendered with the model's chat template and a generation prompt.
    #[serde(default)]
    pub messages: Vec<ChatMessageIn>,
    /// Most new tokens per sample (default: what fits the context, up to the server limit).
    pub max_tokens: Option<i64>,
    /// OpenAI's newer name for `max_tokens` (wins when both are given).
    pub max_completion_tokens: Option<i64>,
    /// Report the sampled tokens' log-probabilities.
    pub logprobs: Option<bool>,
    /// 0..=20; alternatives list only the sampled token.
    pub top_logprobs: Option<i64>,
    /// Report tokens as `token_id:N` (vLLM extension).
    pub return_tokens_as_token_ids: Option<bool>,
    /// The shared sampling fields (read from the same JSON object by [`JsonBody::from_json`]).
    #[serde(skip)]
    pub sampling: SamplingFields,
}

/// `POST /update_weights_from_disk` (SGLang's body).
#[derive(Debug, Clone, Deserialize)]
pub struct UpdateWeightsRequest {
    /// A full model directory, or a PEFT adapter directory applied to the base `--model`.
    pub model_path: String,
    /// Accepted and ignored (SGLang's field).
    #[serde(default)]
    pub load_format: Option<Value>,
}

impl JsonBody for CompletionRequest {
    fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        // The sampling fields are read on their own (not `flatten`ed) so a wrong type is
        // reported with its field's name.
        Ok(Self { sampling: parse_json(bytes)?, ..parse_json(bytes)? })
    }
}

impl JsonBody for ChatRequest {
    fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        Ok(Self { sampling: parse_json(bytes)?, ..parse_json(bytes)? })
    }
}

impl JsonBody for UpdateWeightsRequest {
    fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        parse_json(bytes)
    }
}

/// What the server's limits allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows of the model's embedding: token ids must be below.
    pub vocab_size: usize,
    /// Prompt + max_tokens must fit.
    pub context_len: usize,
    /// `--max-tokens-limit`.
    pub max_tokens_limit: usize,
    /// `--max-request-rows`: most prompts × `n` in one request.
    pub max_request_rows: usize,
}

/// A prompt before tokenization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptInput {
    /// Text prompts (tokenized with the tokenizer's special tokens).
    Texts(Vec<String>),
    /// Token-id prompts.
    Ids(Vec<Vec<u32>>),
}

/// How a request's output is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutputOptions {
    /// Report log-probabilities; `Some(k)`: the number of alternatives asked for.
    pub logprobs: Option<usize>,
    /// Report tokens as `token_id:N`.
    pub tokens_as_ids: bool,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Send a usage chunk at the end of the stream.
    pub include_usage: bool,
}

/// Reads `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
pub fn parse_prompt(v: &Value) -> Result<PromptInput, ApiError> {
    let bad = |m: &str| ApiError::invalid("prompt", format!("prompt {m}"));
    match v {
        Value::Null => Err(bad("is required")),
        Value::String(s) => Ok(PromptInput::Texts(vec![s.clone()])),
        Value::Array(items) if items.is_empty() => Err(bad("must not be empty")),
        Value::Array(items) => match &items[0] {
            Value::String(_) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .map(PromptInput::Texts)
                .ok_or_else(|| bad("mixes strings with other values")),
            Value::Number(_) => Ok(PromptInput::Ids(vec![token_ids(items, "prompt")?])),
            Value::Array(_) => items
                .iter()
                .map(|i| match i {
                    Value::Array(ids) => token_ids(ids, "prompt"),
                    _ => Err(bad("mixes lists of token ids with other values")),
                })
                .collect::<Result<_, _>>()
                .map(PromptInput::Ids),
            _ => Err(bad("must be a string, a list of strings, a list of token ids, or a list of lists of token ids")),
        },
        _ => Err(bad("must be a string, a list of strings, a list of token ids, or a list of lists of token ids")),
    }
}

/// A list of token ids (non-negative integers that fit u32).
fn token_ids(items: &[Value], param: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .map(|v| {
            v.as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| ApiError::invalid(param, format!("{param}: token id {v} is not a non-negative integer")))
        })
        .collect()
}

/// Reads chat `messages` into the template's messages (text content only).
pub fn parse_messages(messages: &[ChatMessageIn]) -> Result<Vec<aha_model::ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| Ok(aha_model::ChatMessage::new(m.role.clone(), message_text(&m.content, i)?)))
        .collect()
}

/// The text of one message's `content`: a string, null, or a list of `{"type": "text"}` parts.
fn message_text(content: &Value, index: usize) -> Result<String, ApiError> {
    let param = format!("messages[{index}].content");
    let bad = |m: &str| ApiError::invalid(&param, format!("{param} {m}"));
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(t)) => Ok(t),
                _ => Err(bad("parts must be {\"type\": \"text\", \"text\": ...}: only text is supported")),
            })
            .collect::<Result<String, _>>(),
        _ => Err(bad("must be a string or a list of text parts")),
    }
}

/// Checks the model name against the served one.
pub fn check_model(requested: Option<&str>, served: &str) -> Result<(), ApiError> {
    match requested {
        Some(m) if m != served => Err(ApiError::model_not_found(m, served)),
        _ => Ok(()),
    }
}

/// Checks tokenized prompts: at least one, none empty, every id in the vocabulary.
pub fn check_prompts(prompts: &[Vec<u32>], limits: &Limits) -> Result<(), ApiError> {
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    for (i, p) in prompts.iter().enumerate() {
        if p.is_empty() {
            return Err(ApiError::invalid("prompt", format!("prompt {i} is empty")));
        }
        if let Some(id) = p.iter().find(|&&id| id as usize >= limits.vocab_size) {
            let m = format!("prompt {i}: token id {id} is outside the vocabulary (size {})", limits.vocab_size);
            return Err(ApiError::invalid("prompt", m));
        }
    }
    Ok(())
}

/// The default of `max_tokens` when the request gives none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxTokensDefault {
    /// A fixed number, reduced to what fits the context (completions: 16).
    Fixed(usize),
    /// As many as fit the context, up to the server's limit (chat).
    Fill,
}

/// Builds the engine request from checked prompts and the request's fields.
pub fn build_gen(
    prompts: Vec<Vec<u32>>,
    max_tokens: Option<i64>,
    default: MaxTokensDefault,
    f: &SamplingFields,
    limits: &Limits,
) -> Result<GenRequest, ApiError> {
    check_prompts(&prompts, limits)?;
    check_unsupported(f)?;
    let n = check_n(f.n)?;
    if prompts.len() * n > limits.max_request_rows {
        let m = format!(
            "{} prompt(s) × n {n} = {} rows exceeds this server's limit of {} rows per request (--max-request-rows)",
            prompts.len(),
            prompts.len() * n,
            limits.max_request_rows
        );
        return Err(ApiError::invalid("prompt", m));
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let max_tokens = check_max_tokens(max_tokens, default, longest, limits)?;
    Ok(GenRequest {
        prompts,
        n,
        max_tokens,
        sampling: sampling_params(f)?,
        seed: f.seed.unwrap_or_else(rand::random),
        prompt_index_offset: f.prompt_index_offset.unwrap_or(0),
        stop: check_stop(f.stop.clone())?,
        stop_token_ids: check_stop_token_ids(f.stop_token_ids.as_deref(), limits)?,
        ignore_eos: f.ignore_eos.unwrap_or(false),
        stream: f.stream.unwrap_or(false),
    })
}

fn check_unsupported(f: &SamplingFields) -> Result<(), ApiError> {
    let unsupported = |name: &str, v: f32| ApiError::invalid(name, format!("{name} {v} is not supported by aha serve"));
    if let Some(v) = f.presence_penalty.filter(|&v| v != 0.0) {
        return Err(unsupported("presence_penalty", v));
    }
    if let Some(v) = f.frequency_penalty.filter(|&v| v != 0.0) {
        return Err(unsupported("frequency_penalty", v));
    }
    if let Some(v) = f.repetition_penalty.filter(|&v| v != 1.0) {
        return Err(unsupported("repetition_penalty", v));
    }
    Ok(())
}

/// `n` in 1..=[`MAX_N`]. A request of more rows than `--max-batch-rows` is still served: the
/// engine admits it alone.
fn check_n(n: Option<i64>) -> Result<usize, ApiError> {
    let n = n.unwrap_or(1);
    if !(1..=MAX_N as i64).contains(&n) {
        return Err(ApiError::invalid("n", format!("n {n} must be in 1..={MAX_N}")));
    }
    Ok(n as usize)
}

fn check_max_tokens(
    requested: Option<i64>,
    default: MaxTokensDefault,
    longest_prompt: usize,
    limits: &Limits,
) -> Result<usize, ApiError> {
    let room = limits.context_len.saturating_sub(longest_prompt);
    if room == 0 {
        let m = format!("the prompt has {longest_prompt} tokens; the model's context is {}", limits.context_len);
        return Err(ApiError::invalid("prompt", m));
    }
    let Some(max) = requested else {
        return Ok(match default {
            MaxTokensDefault::Fixed(k) => k.min(room).min(limits.max_tokens_limit),
            MaxTokensDefault::Fill => room.min(limits.max_tokens_limit),
        });
    };
    if max < 1 || max as u64 > limits.max_tokens_limit as u64 {
        let m = format!("max_tokens {max} must be in 1..={}", limits.max_tokens_limit);
        return Err(ApiError::invalid("max_tokens", m));
    }
    let max = max as usize;
    if max > room {
        let m = format!(
            "max_tokens {max} + the prompt's {longest_prompt} tokens exceed the model's context of {} tokens",
            limits.context_len
        );
        return Err(ApiError::invalid("max_tokens", m));
    }
    Ok(max)
}

/// The sampling parameters, each range checked (the error names the field).
pub fn sampling_params(f: &SamplingFields) -> Result<SamplingParams, ApiError> {
    let top_k = match f.top_k {
        None | Some(-1) | Some(0) => None,
        Some(k) if k > 0 => Some(k as usize),
        Some(k) => return Err(ApiError::invalid("top_k", format!("top_k {k} must be >= 1 (or -1/0 to disable)"))),
    };
    let p = SamplingParams { temperature: f.temperature.unwrap_or(1.0), top_k, top_p: f.top_p, min_p: f.min_p };
    p.validate().map_err(|e| {
        // The model crate words it as a config error; a request field is what is wrong here.
        let message = match e {
            aha_model::ModelError::InvalidConfig(m) => m.trim_start_matches("sampling: ").to_string(),
            other => other.to_string(),
        };
        let param = ["temperature", "top_k", "top_p", "min_p"].into_iter().find(|k| message.contains(k));
        ApiError::invalid(param.unwrap_or("temperature"), message)
    })?;
    Ok(p)
}

fn check_stop(stop: Option<StopSpec>) -> Result<Vec<String>, ApiError> {
    let stop = stop.map(StopSpec::into_vec).unwrap_or_default();
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    Ok(stop)
}

fn check_stop_token_ids(ids: Option<&[i64]>, limits: &Limits) -> Result<Vec<u32>, ApiError> {
    ids.unwrap_or_default()
        .iter()
        .map(|&id| {
            u32::try_from(id).ok().filter(|&t| (t as usize) < limits.vocab_size).ok_or_else(|| {
                let m =
                    format!("stop_token_ids: {id} is not a token id of the vocabulary (size {})", limits.vocab_size);
                ApiError::invalid("stop_token_ids", m)
            })
        })
        .collect()
}

/// The output options of a completion request (rejects `echo` and `best_of` ≠ n).
pub fn completion_output(req: &CompletionRequest) -> Result<OutputOptions, ApiError> {
    if req.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo is not supported by aha serve"));
    }
    if let Some(b) = req.best_of.filter(|&b| b != req.sampling.n.unwrap_or(1)) {
        return Err(ApiError::invalid(
            "best_of",
            format!("best_of {b} is not supported by aha serve (only best_of = n)"),
        ));
    }
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=MAX_COMPLETION_LOGPROBS as i64).contains(&k) => Some(k as usize),
        Some(k) => {
            let m = format!("logprobs {k} must be in 0..={MAX_COMPLETION_LOGPROBS}");
            return Err(ApiError::invalid("logprobs", m));
        }
    };
    Ok(stream_output(&req.sampling, logprobs, req.return_tokens_as_token_ids))
}

/// The output options of a chat request.
pub fn chat_output(req: &ChatRequest) -> Result<OutputOptions, ApiError> {
    let top = req.top_logprobs.unwrap_or(0);
    if !(0..=MAX_CHAT_TOP_LOGPROBS as i64).contains(&top) {
        let m = format!("top_logprobs {top} must be in 0..={MAX_CHAT_TOP_LOGPROBS}");
        return Err(ApiError::invalid("top_logprobs", m));
    }
    let wants = req.logprobs.unwrap_or(false);
    if top > 0 && !wants {
        return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true"));
    }
    let logprobs = wants.then_some(top as usize);
    Ok(stream_output(&req.sampling, logprobs, req.return_tokens_as_token_ids))
}

fn stream_output(f: &SamplingFields, logprobs: Option<usize>, tokens_as_ids: Option<bool>) -> OutputOptions {
    OutputOptions {
        logprobs,
        tokens_as_ids: tokens_as_ids.unwrap_or(false),
        stream: f.stream.unwrap_or(false),
        include_usage: f.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
    }
}

/// The `max_tokens` of a chat request (`max_completion_tokens` wins).
pub fn chat_max_tokens(req: &ChatRequest) -> Option<i64> {
    req.max_completion_tokens.or(req.max_tokens)
}

// ---------------------------------------------------------------------------------------------
// Output text: stop strings.

/// Byte offset of the earliest stop string in `text`.
pub fn stop_cut(text: &str, stops: &[String]) -> Option<usize> {
    stops.iter().filter_map(|s| text.find(s.as_str())).min()
}

/// How much of `text` can be streamed now: everything before a stop string; while unfinished,
/// all but the tail that could still begin a stop string.
pub fn streamable_len(text: &str, stops: &[String], finished: bool) -> usize {
    if let Some(cut) = stop_cut(text, stops) {
        return cut;
    }
    if finished {
        return text.len();
    }
    let hold = stops.iter().map(String::len).max().unwrap_or(1).saturating_sub(1);
    let mut end = text.len().saturating_sub(hold);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// OpenAI's `finish_reason`: `stop` for EOS or a stop string, `length` for max_tokens.
pub fn finish_reason(reason: FinishReason, cut_by_stop: bool) -> &'static str {
    match reason {
        FinishReason::Length if !cut_by_stop => "length",
        _ => "stop",
    }
}

// ---------------------------------------------------------------------------------------------
// Responses.

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens (each prompt counted once, whatever `n`).
    pub prompt_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
    /// The sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Usage from the two counts.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// OpenAI's completion `logprobs` object (alternatives list only the sampled token).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct CompletionLogprobs {
    /// The tokens' texts (or `token_id:N`).
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f32>,
    /// `{token: logprob}` of the sampled token.
    pub top_logprobs: Vec<BTreeMap<String, f32>>,
    /// Byte offset of each token's text in the completion text.
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// From the tokens' display strings and log-probabilities; `start` is the first token's
    /// text offset.
    pub fn new(tokens: Vec<String>, logprobs: &[f32], with_top: bool, start: usize) -> Self {
        let mut offset = start;
        let text_offset = tokens
            .iter()
            .map(|t| {
                let o = offset;
                offset += t.len();
                o
            })
            .collect();
        let top_logprobs = if with_top {
            tokens.iter().zip(logprobs).map(|(t, &l)| BTreeMap::from([(t.clone(), l)])).collect()
        } else {
            Vec::new()
        };
        Self { tokens, token_logprobs: logprobs.to_vec(), top_logprobs, text_offset }
    }
}

/// One choice of a completion (or a completion chunk).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompletionChoice {
    /// `prompt_index * n + sample_index`.
    pub index: usize,
    /// The completion text (in a chunk: the new text).
    pub text: String,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; null in chunks before the last.
    pub finish_reason: Option<&'static str>,
    /// The generated token ids (in a chunk: the new ones).
    pub token_ids: Vec<u32>,
}

/// `text_completion` response or chunk.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CompletionResponse {
    /// `cmpl-…`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// The choices.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (in a stream: only the usage chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The weight version that generated every choice (in a stream: only the usage chunk, sent
    /// with `stream_options.include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_version: Option<u64>,
}

/// One alternative of a chat token's `top_logprobs`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// The text's UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// One token of a chat choice's `logprobs.content`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// The text's UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The sampled token alone when `top_logprobs` > 0, else empty.
    pub top_logprobs: Vec<TopLogprob>,
}

impl ChatTokenLogprob {
    /// One token's entry.
    pub fn new(token: String, logprob: f32, with_top: bool) -> Self {
        let bytes = token.as_bytes().to_vec();
        let top_logprobs = if with_top {
            vec![TopLogprob { token: token.clone(), logprob, bytes: bytes.clone() }]
        } else {
            Vec::new()
        };
        Self { token, logprob, bytes, top_logprobs }
    }
}

/// A chat choice's `logprobs`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatTokenLogprob>,
}

/// The assistant message of a chat choice.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatMessageOut {
    /// `assistant`.
    pub role: &'static str,
    /// The answer text.
    pub content: String,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatChoice {
    /// `prompt_index * n + sample_index` (the prompt index is always 0 in chat).
    pub index: usize,
    /// The answer.
    pub message: ChatMessageOut,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: &'static str,
    /// The generated token ids.
    pub token_ids: Vec<u32>,
}

/// `chat.completion` response.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatResponse {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// The choices.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
    /// The weight version that generated every choice.
    pub weight_version: u64,
}

/// The `delta` of a chat chunk.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ChatDelta {
    /// `assistant` in each choice's first chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a chat chunk.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatChunkChoice {
    /// The choice index.
    pub index: usize,
    /// What is new.
    pub delta: ChatDelta,
    /// Log-probabilities of the chunk's tokens, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the choice's last chunk.
    pub finish_reason: Option<&'static str>,
    /// The chunk's new token ids.
    pub token_ids: Vec<u32>,
}

/// `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatChunk {
    /// The same for every chunk of a response.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// Choices with news (empty in the usage chunk).
    pub choices: Vec<ChatChunkChoice>,
    /// Token counts (only the usage chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The weight version (only the usage chunk, sent with `stream_options.include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_version: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits { vocab_size: 100, context_len: 64, max_tokens_limit: 32, max_request_rows: 128 };

    fn completion(body: Value) -> CompletionRequest {
        CompletionRequest::from_json(body.to_string().as_bytes()).unwrap()
    }

    fn chat(body: Value) -> ChatRequest {
        ChatRequest::from_json(body.to_string().as_bytes()).unwrap()
    }

    fn gen(body: Value) -> Result<GenRequest, ApiError> {
        let req = completion(body);
        let PromptInput::Ids(prompts) = parse_prompt(&req.prompt)? else { panic!("text prompt") };
        build_gen(prompts, req.max_tokens, MaxTokensDefault::Fixed(16), &req.sampling, &LIMITS)
    }

    fn param_of(r: Result<GenRequest, ApiError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{}", e.message);
        e.param.unwrap()
    }

    #[test]
    fn prompt_forms() {
        assert_eq!(parse_prompt(&json!("hi")).unwrap(), PromptInput::Texts(vec!["hi".into()]));
        assert_eq!(parse_prompt(&json!(["a", "b"])).unwrap(), PromptInput::Texts(vec!["a".into(), "b".into()]));
        assert_eq!(parse_prompt(&json!([1, 2])).unwrap(), PromptInput::Ids(vec![vec![1, 2]]));
        assert_eq!(parse_prompt(&json!([[1], [2, 3]])).unwrap(), PromptInput::Ids(vec![vec![1], vec![2, 3]]));
        for bad in [json!(null), json!([]), json!([1, "a"]), json!(["a", 1]), json!([-1]), json!([1.5]), json!({})] {
            let e = parse_prompt(&bad).unwrap_err();
            assert_eq!(e.param.as_deref(), Some("prompt"), "{bad}");
        }
    }

    #[test]
    fn defaults() {
        let g = gen(json!({"prompt": [1, 2, 3], "seed": 5})).unwrap();
        assert_eq!((g.n, g.max_tokens, g.seed, g.prompt_index_offset), (1, 16, 5, 0));
        assert_eq!(g.sampling, SamplingParams::default());
        assert!(g.stop.is_empty() && g.stop_token_ids.is_empty() && !g.ignore_eos);
    }

    #[test]
    fn fields_pass_through() {
        let g = gen(json!({
            "prompt": [[1], [2]], "n": 3, "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "top_k": 7,
            "min_p": 0.1, "seed": 9, "stop": "x", "stop_token_ids": [4], "ignore_eos": true,
            "prompt_index_offset": 12
        }))
        .unwrap();
        assert_eq!((g.n, g.max_tokens, g.seed, g.prompt_index_offset, g.ignore_eos), (3, 5, 9, 12, true));
        assert_eq!(g.sampling, SamplingParams { temperature: 0.5, top_p: Some(0.9), top_k: Some(7), min_p: Some(0.1) });
        assert_eq!(g.stop, vec!["x".to_string()]);
        assert_eq!(g.stop_token_ids, vec![4]);
        assert_eq!(gen(json!({"prompt": [1], "top_k": -1})).unwrap().sampling.top_k, None);
        // More rows than a batch holds is fine: the engine admits such a request alone.
        assert_eq!(gen(json!({"prompt": [[1], [2]], "n": 64})).unwrap().n, 64);
        // More rows than `--max-request-rows` (128 here) is refused, naming the prompt.
        let e = gen(json!({"prompt": [[1], [2], [3]], "n": 64})).unwrap_err();
        assert_eq!((e.status.as_u16(), e.param.as_deref()), (400, Some("prompt")), "{}", e.message);
        assert_eq!(gen(json!({"prompt": [1], "stop": ["a", "b"]})).unwrap().stop.len(), 2);
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (json!({"prompt": [1], "temperature": -0.1}), "temperature"),
            (json!({"prompt": [1], "top_p": 0.0}), "top_p"),
            (json!({"prompt": [1], "top_p": 1.5}), "top_p"),
            (json!({"prompt": [1], "min_p": 2.0}), "min_p"),
            (json!({"prompt": [1], "top_k": -2}), "top_k"),
            (json!({"prompt": [1], "n": 0}), "n"),
            (json!({"prompt": [1], "n": 65}), "n"),
            (json!({"prompt": [1], "max_tokens": 0}), "max_tokens"),
            (json!({"prompt": [1], "max_tokens": 33}), "max_tokens"),
            (json!({"prompt": [100]}), "prompt"),
            (json!({"prompt": [[1], []]}), "prompt"),
            (json!({"prompt": [1], "stop": [""]}), "stop"),
            (json!({"prompt": [1], "stop_token_ids": [100]}), "stop_token_ids"),
            (json!({"prompt": [1], "stop_token_ids": [-1]}), "stop_token_ids"),
            (json!({"prompt": [1], "presence_penalty": 0.5}), "presence_penalty"),
        ];
        for (body, param) in &cases {
            assert_eq!(param_of(gen(body.clone())), *param, "{body}");
        }
    }

    #[test]
    fn context_bounds_max_tokens() {
        let long: Vec<u32> = vec![1; 60];
        assert_eq!(gen(json!({"prompt": long.clone(), "max_tokens": 4})).unwrap().max_tokens, 4);
        assert_eq!(param_of(gen(json!({"prompt": long.clone(), "max_tokens": 5}))), "max_tokens");
        // The default shrinks to what fits.
        assert_eq!(gen(json!({"prompt": long})).unwrap().max_tokens, 4);
        assert_eq!(param_of(gen(json!({"prompt": vec![1; 64]}))), "prompt");
        let fill = build_gen(vec![vec![1; 10]], None, MaxTokensDefault::Fill, &SamplingFields::default(), &LIMITS);
        assert_eq!(fill.unwrap().max_tokens, 32);
    }

    #[test]
    fn completion_output_options() {
        let out = completion_output(&completion(
            json!({"prompt": "x", "logprobs": 2, "stream": true, "stream_options": {"include_usage": true}}),
        ))
        .unwrap();
        assert_eq!(out, OutputOptions { logprobs: Some(2), tokens_as_ids: false, stream: true, include_usage: true });
        let e = completion_output(&completion(json!({"prompt": "x", "echo": true}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("echo"));
        assert!(e.message.contains("not supported"));
        let e = completion_output(&completion(json!({"prompt": "x", "logprobs": 6}))).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logprobs"));
        assert!(completion_output(&completion(json!({"prompt": "x", "best_of": 2}))).is_err());
        assert!(completion_output(&completion(json!({"prompt": "x", "best_of": 2, "n": 2}))).is_ok());
    }

    #[test]
    fn chat_request_parsing() {
        let req = chat(json!({
            "model": "m", "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "max_tokens": 3, "max_completion_tokens": 4, "logprobs": true, "top_logprobs": 1
        }));
        let msgs = parse_messages(&req.messages).unwrap();
        assert_eq!(msgs[0], aha_model::ChatMessage::new("system", "be brief"));
        assert_eq!(msgs[1].content, "ab");
        assert_eq!(chat_max_tokens(&req), Some(4));
        assert_eq!(chat_output(&req).unwrap().logprobs, Some(1));
        assert!(parse_messages(&[]).is_err());
        let image = ChatMessageIn { role: "user".into(), content: json!([{"type": "image_url"}]) };
        assert_eq!(parse_messages(&[image]).unwrap_err().param.as_deref(), Some("messages[0].content"));
        let top_without = chat(json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}));
        assert_eq!(chat_output(&top_without).unwrap_err().param.as_deref(), Some("top_logprobs"));
    }

    #[test]
    fn model_name_check() {
        assert!(check_model(None, "m").is_ok());
        assert!(check_model(Some("m"), "m").is_ok());
        assert_eq!(check_model(Some("x"), "m").unwrap_err().status, axum::http::StatusCode::NOT_FOUND);
    }

    #[test]
    fn stop_strings_cut_and_hold_back() {
        let stops = vec!["END".to_string(), "##".to_string()];
        assert_eq!(stop_cut("abc##dEND", &stops), Some(3));
        assert_eq!(stop_cut("abc", &stops), None);
        assert_eq!(streamable_len("abcE", &stops, false), 2);
        assert_eq!(streamable_len("abcE", &stops, true), 4);
        assert_eq!(streamable_len("abEND", &stops, false), 2);
        assert_eq!(streamable_len("abc", &[], false), 3);
        assert_eq!(streamable_len("aé", &["xyz".to_string()], false), 1);
        assert_eq!(finish_reason(FinishReason::Length, false), "length");
        assert_eq!(finish_reason(FinishReason::Length, true), "stop");
        assert_eq!(finish_reason(FinishReason::Eos, false), "stop");
        assert_eq!(finish_reason(FinishReason::Stop, false), "stop");
    }

    #[test]
    fn logprob_objects() {
        let lp = CompletionLogprobs::new(vec!["ab".into(), "c".into()], &[-0.5, -1.0], true, 3);
        assert_eq!(lp.text_offset, vec![3, 5]);
        assert_eq!(lp.top_logprobs[1]["c"], -1.0);
        let v = serde_json::to_value(ChatTokenLogprob::new("hi".into(), -0.25, false)).unwrap();
        assert_eq!(v, json!({"token": "hi", "logprob": -0.25, "bytes": [104, 105], "top_logprobs": []}));
    }

    #[test]
    fn wrong_types_are_serde_errors() {
        for (body, param) in [
            (r#"{"prompt": "x", "n": "two"}"#, "n"),
            (r#"{"prompt": "x", "max_tokens": 1.5}"#, "max_tokens"),
            (r#"{"prompt": "x", "stop": 3}"#, "stop"),
            (r#"{"prompt": "x", "stream_options": {"include_usage": 1}}"#, "stream_options.include_usage"),
        ] {
            let e = CompletionRequest::from_json(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
            assert_eq!(e.param.as_deref(), Some(param), "{}", e.message);
        }
        let e = ChatRequest::from_json(br#"{"messages": [{"role": 1}], "temperature": "hot"}"#).unwrap_err();
        assert!(e.param.is_some(), "{}", e.message);
    }
}
