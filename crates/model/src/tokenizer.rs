//! The tokenizer: a Hugging Face `tokenizers` tokenizer plus what `transformers` keeps beside it
//! (special tokens and the chat template from `tokenizer_config.json`, end-of-sequence ids from
//! `generation_config.json`).
//!
//! Encoding a chat follows `apply_chat_template(tokenize=True)`: render the template to text,
//! then encode that text without adding special tokens (the template already wrote them).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};
use tokenizers::Tokenizer;

use crate::chat_template::{ChatMessage, ChatTemplate};
use crate::error::{ModelError, Result};

/// File names of a Hugging Face tokenizer directory.
pub const TOKENIZER_JSON: &str = "tokenizer.json";
/// See [`TOKENIZER_JSON`].
pub const TOKENIZER_CONFIG_JSON: &str = "tokenizer_config.json";
/// See [`TOKENIZER_JSON`].
pub const GENERATION_CONFIG_JSON: &str = "generation_config.json";
/// Newer `transformers` versions save the chat template in its own file.
pub const CHAT_TEMPLATE_JINJA: &str = "chat_template.jinja";

/// The special-token keys `transformers` passes to chat templates (`special_tokens_map`).
const SPECIAL_TOKEN_KEYS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

/// A tokenizer with its special tokens and chat template.
#[derive(Debug)]
pub struct AhaTokenizer {
    inner: Tokenizer,
    /// `tokenizer.json` as loaded (saved verbatim, so a round trip is byte-identical).
    json_text: String,
    /// `tokenizer_config.json` as loaded (empty when there was none); saved back with the template.
    config: Map<String, Json>,
    chat_template: Option<ChatTemplate>,
    bos_token_id: Option<u32>,
    eos_token_ids: Vec<u32>,
    pad_token_id: Option<u32>,
}

impl AhaTokenizer {
    /// Loads `tokenizer.json` (required), `tokenizer_config.json`, `chat_template.jinja` and
    /// `generation_config.json` (optional) from a Hugging Face model directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let tok_path = dir.join(TOKENIZER_JSON);
        if !tok_path.is_file() {
            return Err(ModelError::MissingFile {
                path: tok_path,
                hint: "the tokenizer of a Hugging Face model directory".into(),
            });
        }
        let json_text = read_text(&tok_path)?;
        let config = read_json_object_if_exists(&dir.join(TOKENIZER_CONFIG_JSON))?.unwrap_or_default();
        let generation = read_json_object_if_exists(&dir.join(GENERATION_CONFIG_JSON))?.unwrap_or_default();
        let template_file = dir.join(CHAT_TEMPLATE_JINJA);
        let template = if template_file.is_file() {
            Some((read_text(&template_file)?, template_file.display().to_string()))
        } else {
            None
        };
        Self::from_parts(&json_text, &tok_path, config, &generation, template)
    }

    /// Builds a tokenizer from `tokenizer.json` text (`origin` names it in errors), the
    /// `tokenizer_config.json` object, the `generation_config.json` object and optionally a chat
    /// template given separately (`(source, origin)`, which wins over the config's).
    pub fn from_parts(
        json_text: &str,
        origin: &Path,
        config: Map<String, Json>,
        generation: &Map<String, Json>,
        template: Option<(String, String)>,
    ) -> Result<Self> {
        let inner = Tokenizer::from_bytes(json_text.as_bytes())
            .map_err(|e| ModelError::Tokenizer { path: origin.to_path_buf(), reason: e.to_string() })?;
        Self::from_tokenizer(inner, json_text.to_string(), origin, config, generation, template)
    }

    /// Wraps an already-built `tokenizers` tokenizer (e.g. one read from GGUF metadata).
    pub fn from_tokenizer(
        inner: Tokenizer,
        json_text: String,
        origin: &Path,
        mut config: Map<String, Json>,
        generation: &Map<String, Json>,
        template: Option<(String, String)>,
    ) -> Result<Self> {
        let config_origin = origin.with_file_name(TOKENIZER_CONFIG_JSON);
        let template = match template {
            Some(t) => Some(t),
            None => template_from_config(&config, &config_origin)?,
        };
        if let Some((source, _)) = &template {
            config.insert("chat_template".into(), Json::String(source.clone()));
        }
        let special = special_tokens_map(&config);
        let chat_template =
            template.map(|(source, origin)| ChatTemplate::new(&source, &origin, special.clone())).transpose()?;
        let id_of = |key: &str| special.get(key).and_then(Json::as_str).and_then(|t| inner.token_to_id(t));
        let bos_token_id = id_of("bos_token").or_else(|| token_ids(generation.get("bos_token_id")).first().copied());
        let mut eos_token_ids = token_ids(generation.get("eos_token_id"));
        if let Some(id) = id_of("eos_token") {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        let pad_token_id = id_of("pad_token").or_else(|| token_ids(generation.get("pad_token_id")).first().copied());
        Ok(Self { inner, json_text, config, chat_template, bos_token_id, eos_token_ids, pad_token_id })
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Encodes text; `add_special_tokens` applies the tokenizer's post-processor (e.g. BOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, optionally dropping special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| self.err(e))
    }

    /// The chat template, if the tokenizer has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Renders a conversation like `apply_chat_template(tokenize=False)`.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.template()?.render(messages, add_generation_prompt)
    }

    /// Renders and encodes a conversation like `apply_chat_template(tokenize=True)`.
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }

    /// The beginning-of-sequence id, if any.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// Every id that ends generation: `generation_config.json`'s `eos_token_id` (one or several),
    /// then the tokenizer's `eos_token`.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// The padding id: the tokenizer's `pad_token`, else `generation_config.json`'s, else the
    /// first EOS id (what trainers usually fall back to).
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id.or_else(|| self.eos_token_ids.first().copied())
    }

    /// The id of a token string (special tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `tokenizer.json` text as loaded.
    pub fn json_text(&self) -> &str {
        &self.json_text
    }

    /// `tokenizer_config.json` as it will be saved (chat template included).
    pub fn config(&self) -> &Map<String, Json> {
        &self.config
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (with the chat template) into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_file(&dir.join(TOKENIZER_JSON), self.json_text.as_bytes())?;
        let config = serde_json::to_string_pretty(&Json::Object(self.config.clone()))
            .map_err(|e| ModelError::Tokenizer { path: dir.join(TOKENIZER_CONFIG_JSON), reason: e.to_string() })?;
        write_file(&dir.join(TOKENIZER_CONFIG_JSON), config.as_bytes())
    }

    /// A streaming decoder: feed ids one at a time, get the text they complete (multi-byte
    /// characters are held back until whole). Each push decodes a short window, not the whole
    /// sequence, so streaming costs O(1) per token.
    pub fn stream(&self, skip_special_tokens: bool) -> TokenStream<'_> {
        TokenStream { tokenizer: self, ids: Vec::new(), prefix: 0, read: 0, skip_special_tokens }
    }

    fn template(&self) -> Result<&ChatTemplate> {
        self.chat_template.as_ref().ok_or_else(|| ModelError::ChatTemplate {
            origin: "tokenizer_config.json".into(),
            reason: "this tokenizer has no chat template (no `chat_template` in tokenizer_config.json, no chat_template.jinja)".into(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> ModelError {
        ModelError::Tokenizer { path: PathBuf::from(TOKENIZER_JSON), reason: e.to_string() }
    }
}

/// Incremental detokenisation for streaming output (see [`AhaTokenizer::stream`]).
///
/// The window is `ids[prefix..]`: the text of `ids[prefix..read]` was already emitted, and
/// decoding it together with the new ids (rather than the new ids alone) keeps the spacing that
/// decoders derive from the previous token. Once new text is complete (no trailing U+FFFD, the
/// mark of a partial UTF-8 sequence), it is emitted and the window moves on — the scheme of
/// Hugging Face's streaming decoders.
#[derive(Debug)]
pub struct TokenStream<'a> {
    tokenizer: &'a AhaTokenizer,
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
    skip_special_tokens: bool,
}

impl TokenStream<'_> {
    /// Adds one id; returns the newly completed text (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let done = self.tokenizer.decode(&self.ids[self.prefix..self.read], self.skip_special_tokens)?;
        let text = self.tokenizer.decode(&self.ids[self.prefix..], self.skip_special_tokens)?;
        if text.len() <= done.len() || text.ends_with('\u{FFFD}') || !text.is_char_boundary(done.len()) {
            return Ok(String::new());
        }
        let new = text[done.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(new)
    }
}

/// The chat template from `tokenizer_config.json`: a string, or a list of named templates of
/// which `default` is used (as `transformers` does).
fn template_from_config(config: &Map<String, Json>, origin: &Path) -> Result<Option<(String, String)>> {
    let where_ = |key: &str| format!("{}: {key}", origin.display());
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some((s.clone(), where_("chat_template")))),
        Some(Json::Array(items)) => {
            let named = items.iter().find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
            let source = named.and_then(|t| t.get("template")).and_then(Json::as_str);
            Ok(source.map(|s| (s.to_string(), where_("chat_template[name=default]"))))
        }
        Some(_) => Err(ModelError::Config {
            path: origin.to_path_buf(),
            field: "chat_template".into(),
            reason: "must be a string or a list of {name, template}".into(),
        }),
    }
}

/// `special_tokens_map` as `transformers` 5 passes it to chat templates: the named special tokens'
/// contents (strings, or `{"content": ...}` objects); extra special tokens are not included.
fn special_tokens_map(config: &Map<String, Json>) -> Map<String, Json> {
    let mut out = Map::new();
    for key in SPECIAL_TOKEN_KEYS {
        let content = match config.get(key) {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Object(o)) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        };
        if let Some(c) = content {
            out.insert(key.to_string(), Json::String(c));
        }
    }
    out
}

/// One id or a list of ids.
fn token_ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_u64).map(|x| x as u32).collect(),
        _ => Vec::new(),
    }
}

/// Reads a UTF-8 file, naming it in the error.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
}

/// Reads a JSON object file if it exists (`None` when absent).
pub(crate) fn read_json_object_if_exists(path: &Path) -> Result<Option<Map<String, Json>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = read_text(path)?;
    let v: Json =
        serde_json::from_str(&text).map_err(|source| ModelError::Json { path: path.to_path_buf(), source })?;
    match v {
        Json::Object(m) => Ok(Some(m)),
        _ => Err(ModelError::Config {
            path: path.to_path_buf(),
            field: "(root)".into(),
            reason: "expected a JSON object".into(),
        }),
    }
}

/// Writes a file, naming it in the error.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
}
