//! The HTTP routes of `aha serve`: health, model list, completions and chat completions (JSON or
//! server-sent events), and SGLang's `/update_weights_from_disk`. Handlers validate and tokenize
//! (see [`crate::api`]), hand a [`GenRequest`] to the engine, and turn its events into OpenAI
//! responses.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aha_model::tokenizer::TokenStream;
use aha_model::{AhaTokenizer, FinishReason};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::json;
use tokio::sync::mpsc as tmpsc;

use crate::api::{
    self, ChatChoice, ChatChunk, ChatChunkChoice, ChatDelta, ChatLogprobs, ChatMessageOut, ChatRequest, ChatResponse,
    ChatTokenLogprob, CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, Limits,
    MaxTokensDefault, OutputOptions, PromptInput, UpdateWeightsRequest, Usage,
};
use crate::engine::{EngineHandle, GenEvent, GenRequest};
use crate::error::{ApiError, ApiJson, BodyLimit};
use crate::load::{load_update, ModelSource, Shape};

/// What every handler shares.
pub struct AppState {
    /// The decode loop.
    pub engine: EngineHandle,
    /// The name requests must use (`--served-model-name`, default `--model`).
    pub served_model_name: String,
    /// Request limits.
    pub limits: Limits,
    /// `--max-body-bytes`.
    pub max_body_bytes: usize,
    /// Unix seconds of the start (the model list's `created`).
    pub created: u64,
    /// The base model, for adapter reloads.
    pub source: ModelSource,
    /// The shape reloads must match.
    pub shape: Shape,
    /// Serializes reloads.
    pub reload: tokio::sync::Mutex<()>,
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/update_weights_from_disk", post(update_weights))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(Extension(BodyLimit(limit)))
        .with_state(state)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::route_not_found(method.as_str(), uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

async fn health(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let st = s.engine.stats();
    Json(json!({
        "status": "ok",
        "weight_version": st.weight_version,
        "running_rows": st.running_rows,
        "queued": st.queued,
    }))
}

async fn models(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": s.served_model_name, "object": "model", "created": s.created, "owned_by": "aha"}],
    }))
}

// ---------------------------------------------------------------------------------------------
// Completions and chat completions.

/// Which response format a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

/// What a response needs besides the engine's events.
struct Job {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    out: OutputOptions,
    stop: Vec<String>,
    prompt_tokens: usize,
    choices: usize,
}

impl Job {
    fn new(kind: Kind, s: &AppState, out: OutputOptions, gen: &GenRequest) -> Self {
        let prefix = match kind {
            Kind::Completion => "cmpl",
            Kind::Chat => "chatcmpl",
        };
        Self {
            kind,
            id: format!("{prefix}-{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>()),
            created: unix_now(),
            model: s.served_model_name.clone(),
            out,
            stop: gen.stop.clone(),
            prompt_tokens: gen.prompts.iter().map(Vec::len).sum(),
            choices: gen.prompts.len() * gen.n,
        }
    }
}

async fn completions(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    api::check_model(req.model.as_deref(), &s.served_model_name)?;
    let out = api::completion_output(&req)?;
    let prompts = tokenize_prompt(s.engine.tokenizer(), api::parse_prompt(&req.prompt)?)?;
    let default = MaxTokensDefault::Fixed(api::DEFAULT_COMPLETION_MAX_TOKENS);
    let gen = api::build_gen(prompts, req.max_tokens, default, &req.sampling, &s.limits)?;
    run(&s, Job::new(Kind::Completion, &s, out, &gen), gen).await
}

async fn chat_completions(
    State(s): State<Arc<AppState>>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    api::check_model(req.model.as_deref(), &s.served_model_name)?;
    let out = api::chat_output(&req)?;
    let messages = api::parse_messages(&req.messages)?;
    let tok = s.engine.tokenizer();
    if tok.chat_template().is_none() {
        let m = "this model's tokenizer has no chat template: use /v1/completions with a formatted prompt";
        return Err(ApiError::invalid("messages", m));
    }
    let prompt = tok.encode_chat(&messages, true).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let gen =
        api::build_gen(vec![prompt], api::chat_max_tokens(&req), MaxTokensDefault::Fill, &req.sampling, &s.limits)?;
    run(&s, Job::new(Kind::Chat, &s, out, &gen), gen).await
}

/// Tokenizes text prompts (with the tokenizer's special tokens); token-id prompts pass through.
fn tokenize_prompt(tok: &AhaTokenizer, input: PromptInput) -> Result<Vec<Vec<u32>>, ApiError> {
    match input {
        PromptInput::Ids(ids) => Ok(ids),
        PromptInput::Texts(texts) => texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    return Err(ApiError::invalid("prompt", format!("prompt {i} is empty")));
                }
                tok.encode(t, true).map_err(|e| ApiError::invalid("prompt", e.to_string()))
            })
            .collect(),
    }
}

/// Submits the request and answers with JSON or a stream.
async fn run(s: &AppState, job: Job, gen: GenRequest) -> Result<Response, ApiError> {
    let mut rx = s.engine.submit(gen)?;
    if job.out.stream {
        return Ok(stream(s.engine.clone(), job, rx).into_response());
    }
    let done = collect(&mut rx, job.choices).await?;
    let tok = s.engine.tokenizer();
    Ok(match job.kind {
        Kind::Completion => Json(completion_response(tok, &job, done)).into_response(),
        Kind::Chat => Json(chat_response(tok, &job, done)).into_response(),
    })
}

/// Everything one choice generated.
#[derive(Debug, Clone, Default)]
struct ChoiceOut {
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    reason: Option<FinishReason>,
}

/// A finished request.
struct Collected {
    choices: Vec<ChoiceOut>,
    weight_version: u64,
}

/// Reads the engine's events until the request is done.
async fn collect(rx: &mut tmpsc::UnboundedReceiver<GenEvent>, choices: usize) -> Result<Collected, ApiError> {
    let mut out = vec![ChoiceOut::default(); choices];
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Token { choice, token, logprob } => {
                let c = choice_mut(&mut out, choice)?;
                c.ids.push(token);
                c.logprobs.push(logprob);
            }
            GenEvent::Finished { choice, reason } => choice_mut(&mut out, choice)?.reason = Some(reason),
            GenEvent::Done { weight_version } => return Ok(Collected { choices: out, weight_version }),
            GenEvent::Failed { message } => return Err(ApiError::internal(message)),
        }
    }
    Err(engine_gone())
}

fn choice_mut(out: &mut [ChoiceOut], choice: usize) -> Result<&mut ChoiceOut, ApiError> {
    let len = out.len();
    out.get_mut(choice).ok_or_else(|| ApiError::internal(format!("the engine sent choice {choice} of {len}")))
}

fn engine_gone() -> ApiError {
    ApiError::internal("the engine stopped before the request finished")
}

/// A choice's final text (special tokens skipped, cut before the first stop string) and its
/// OpenAI finish reason.
fn final_text(tok: &AhaTokenizer, c: &ChoiceOut, stop: &[String]) -> (String, &'static str) {
    let mut text = tok.decode(&c.ids, true).unwrap_or_default();
    let cut = api::stop_cut(&text, stop);
    if let Some(at) = cut {
        text.truncate(at);
    }
    (text, api::finish_reason(c.reason.unwrap_or(FinishReason::Length), cut.is_some()))
}

/// How a token is shown in log-probabilities: its text, or `token_id:N`.
fn token_text(tok: &AhaTokenizer, id: u32, as_ids: bool) -> String {
    if as_ids {
        format!("token_id:{id}")
    } else {
        tok.decode(&[id], false).unwrap_or_default()
    }
}

/// A finished choice, as both response kinds show it.
struct FinalChoice {
    index: usize,
    text: String,
    reason: &'static str,
    /// With `logprobs` asked for: each token as shown, its log-probability, and whether the top
    /// log-probabilities are shown too.
    logprobs: Option<(Vec<String>, Vec<f32>, bool)>,
    ids: Vec<u32>,
}

/// The choices of a finished request, and the tokens they completed in all.
fn final_choices(tok: &AhaTokenizer, job: &Job, done: Vec<ChoiceOut>) -> (Vec<FinalChoice>, usize) {
    let completion_tokens = done.iter().map(|c| c.ids.len()).sum();
    let choices = done
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let (text, reason) = final_text(tok, &c, &job.stop);
            let ChoiceOut { ids, logprobs, .. } = c;
            let logprobs = job.out.logprobs.map(|k| {
                let tokens = ids.iter().map(|&id| token_text(tok, id, job.out.tokens_as_ids)).collect();
                (tokens, logprobs, k > 0)
            });
            FinalChoice { index, text, reason, logprobs, ids }
        })
        .collect();
    (choices, completion_tokens)
}

fn completion_response(tok: &AhaTokenizer, job: &Job, done: Collected) -> CompletionResponse {
    let (choices, completion_tokens) = final_choices(tok, job, done.choices);
    let choices = choices
        .into_iter()
        .map(|c| CompletionChoice {
            index: c.index,
            text: c.text,
            logprobs: c.logprobs.map(|(tokens, logprobs, top)| CompletionLogprobs::new(tokens, &logprobs, top, 0)),
            finish_reason: Some(c.reason),
            token_ids: c.ids,
        })
        .collect();
    CompletionResponse {
        id: job.id.clone(),
        object: "text_completion",
        created: job.created,
        model: job.model.clone(),
        choices,
        usage: Some(Usage::new(job.prompt_tokens, completion_tokens)),
        weight_version: Some(done.weight_version),
    }
}

fn chat_response(tok: &AhaTokenizer, job: &Job, done: Collected) -> ChatResponse {
    let (choices, completion_tokens) = final_choices(tok, job, done.choices);
    let choices = choices
        .into_iter()
        .map(|c| ChatChoice {
            index: c.index,
            message: ChatMessageOut { role: "assistant", content: c.text },
            logprobs: c.logprobs.map(|(tokens, logprobs, top)| ChatLogprobs {
                content: tokens.into_iter().zip(logprobs).map(|(t, lp)| ChatTokenLogprob::new(t, lp, top)).collect(),
            }),
            finish_reason: c.reason,
            token_ids: c.ids,
        })
        .collect();
    ChatResponse {
        id: job.id.clone(),
        object: "chat.completion",
        created: job.created,
        model: job.model.clone(),
        choices,
        usage: Usage::new(job.prompt_tokens, completion_tokens),
        weight_version: done.weight_version,
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming.

/// Server-sent events of a request: a task turns the engine's events into chunks. When the
/// client goes away the chunk channel closes, the task ends and drops the engine receiver, which
/// cancels the request's rows.
fn stream(
    engine: EngineHandle,
    job: Job,
    rx: tmpsc::UnboundedReceiver<GenEvent>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let (tx, mut events) = tmpsc::channel::<Event>(64);
    tokio::spawn(async move {
        let tok = Arc::clone(engine.tokenizer());
        let mut w = StreamWriter::new(&tok, job, tx);
        w.run(rx).await;
    });
    let body = futures_util::stream::poll_fn(move |cx| events.poll_recv(cx).map(|e| e.map(Ok)));
    Sse::new(body).keep_alive(KeepAlive::default())
}

/// One choice's streaming state.
struct ChoiceStream<'t> {
    decoder: TokenStream<'t>,
    ids: Vec<u32>,
    text: String,
    sent: usize,
    /// Bytes of the token texts reported so far (the completion logprobs' `text_offset`).
    token_text_len: usize,
}

/// Writes one request's chunks.
struct StreamWriter<'t> {
    tok: &'t AhaTokenizer,
    job: Job,
    tx: tmpsc::Sender<Event>,
    choices: Vec<ChoiceStream<'t>>,
}

/// The client went away.
struct Gone;

impl<'t> StreamWriter<'t> {
    fn new(tok: &'t AhaTokenizer, job: Job, tx: tmpsc::Sender<Event>) -> Self {
        let choices = (0..job.choices)
            .map(|_| ChoiceStream {
                decoder: tok.stream(true),
                ids: Vec::new(),
                text: String::new(),
                sent: 0,
                token_text_len: 0,
            })
            .collect();
        Self { tok, job, tx, choices }
    }

    async fn run(&mut self, mut rx: tmpsc::UnboundedReceiver<GenEvent>) {
        if let Err(Gone) = self.events(&mut rx).await {
            return;
        }
        let _ = self.tx.send(Event::default().data("[DONE]")).await;
    }

    async fn events(&mut self, rx: &mut tmpsc::UnboundedReceiver<GenEvent>) -> Result<(), Gone> {
        if self.job.kind == Kind::Chat {
            for index in 0..self.job.choices {
                let delta = ChatDelta { role: Some("assistant"), content: Some(String::new()) };
                self.send(self.chat_chunk(index, delta, None, None, Vec::new())).await?;
            }
        }
        while let Some(ev) = rx.recv().await {
            match ev {
                GenEvent::Token { choice, token, logprob } => self.token(choice, token, logprob).await?,
                GenEvent::Finished { choice, reason } => self.finished(choice, reason).await?,
                GenEvent::Done { weight_version } => return self.done(weight_version).await,
                GenEvent::Failed { message } => return self.error(ApiError::internal(message)).await,
            }
        }
        self.error(engine_gone()).await
    }

    async fn send(&self, event: Event) -> Result<(), Gone> {
        self.tx.send(event).await.map_err(|_| Gone)
    }

    async fn error(&self, e: ApiError) -> Result<(), Gone> {
        self.send(json_event(&e.body())).await
    }

    async fn token(&mut self, choice: usize, token: u32, logprob: f32) -> Result<(), Gone> {
        let Some(c) = self.choices.get_mut(choice) else {
            return self.error(ApiError::internal(format!("the engine sent unknown choice {choice}"))).await;
        };
        c.text.push_str(&c.decoder.push(token).unwrap_or_default());
        c.ids.push(token);
        let end = api::streamable_len(&c.text, &self.job.stop, false).max(c.sent);
        let new = c.text[c.sent..end].to_string();
        c.sent = end;
        let shown = self.job.out.logprobs.map(|k| (token_text(self.tok, token, self.job.out.tokens_as_ids), k > 0));
        let offset = c.token_text_len;
        c.token_text_len += shown.as_ref().map_or(0, |s| s.0.len());
        let event = match self.job.kind {
            Kind::Completion => {
                let lp = shown.map(|(t, top)| CompletionLogprobs::new(vec![t], &[logprob], top, offset));
                self.completion_chunk(choice, new, lp, None, vec![token])
            }
            Kind::Chat => {
                let lp = shown.map(|(t, top)| ChatLogprobs { content: vec![ChatTokenLogprob::new(t, logprob, top)] });
                self.chat_chunk(choice, ChatDelta { role: None, content: Some(new) }, lp, None, vec![token])
            }
        };
        self.send(event).await
    }

    async fn finished(&mut self, choice: usize, reason: FinishReason) -> Result<(), Gone> {
        let Some(c) = self.choices.get_mut(choice) else {
            return self.error(ApiError::internal(format!("the engine sent unknown choice {choice}"))).await;
        };
        // The whole decode, as the non-streamed answer has it (it also flushes an incomplete
        // character the incremental decoder held back).
        let full = self.tok.decode(&c.ids, true).unwrap_or_default();
        if full.starts_with(&c.text[..c.sent]) {
            c.text = full;
        }
        let end = api::streamable_len(&c.text, &self.job.stop, true).max(c.sent);
        let rest = c.text[c.sent..end].to_string();
        c.sent = end;
        let reason = Some(api::finish_reason(reason, api::stop_cut(&c.text, &self.job.stop).is_some()));
        let event = match self.job.kind {
            Kind::Completion => self.completion_chunk(choice, rest, None, reason, Vec::new()),
            Kind::Chat => {
                let content = (!rest.is_empty()).then_some(rest);
                self.chat_chunk(choice, ChatDelta { role: None, content }, None, reason, Vec::new())
            }
        };
        self.send(event).await
    }

    /// The usage chunk (when asked for, with the weight version).
    async fn done(&self, weight_version: u64) -> Result<(), Gone> {
        if !self.job.out.include_usage {
            return Ok(());
        }
        let usage = Usage::new(self.job.prompt_tokens, self.choices.iter().map(|c| c.ids.len()).sum());
        let event = match self.job.kind {
            Kind::Completion => json_event(&CompletionResponse {
                usage: Some(usage),
                weight_version: Some(weight_version),
                ..self.completion_base(Vec::new())
            }),
            Kind::Chat => json_event(&ChatChunk {
                usage: Some(usage),
                weight_version: Some(weight_version),
                ..self.chat_base(Vec::new())
            }),
        };
        self.send(event).await
    }

    fn completion_base(&self, choices: Vec<CompletionChoice>) -> CompletionResponse {
        CompletionResponse {
            id: self.job.id.clone(),
            object: "text_completion",
            created: self.job.created,
            model: self.job.model.clone(),
            choices,
            usage: None,
            weight_version: None,
        }
    }

    fn chat_base(&self, choices: Vec<ChatChunkChoice>) -> ChatChunk {
        ChatChunk {
            id: self.job.id.clone(),
            object: "chat.completion.chunk",
            created: self.job.created,
            model: self.job.model.clone(),
            choices,
            usage: None,
            weight_version: None,
        }
    }

    fn completion_chunk(
        &self,
        index: usize,
        text: String,
        logprobs: Option<CompletionLogprobs>,
        finish_reason: Option<&'static str>,
        token_ids: Vec<u32>,
    ) -> Event {
        json_event(&self.completion_base(vec![CompletionChoice { index, text, logprobs, finish_reason, token_ids }]))
    }

    fn chat_chunk(
        &self,
        index: usize,
        delta: ChatDelta,
        logprobs: Option<ChatLogprobs>,
        finish_reason: Option<&'static str>,
        token_ids: Vec<u32>,
    ) -> Event {
        json_event(&self.chat_base(vec![ChatChunkChoice { index, delta, logprobs, finish_reason, token_ids }]))
    }
}

/// A `data: {json}` event.
fn json_event<T: serde::Serialize>(value: &T) -> Event {
    Event::default().json_data(value).unwrap_or_else(|e| Event::default().data(format!("{{\"error\": \"{e}\"}}")))
}

// ---------------------------------------------------------------------------------------------
// Weight reloads.

/// `POST /update_weights_from_disk`: loads `model_path` off the runtime's threads and swaps it
/// in; on any failure the old weights keep serving. Reloads are serialized.
async fn update_weights(
    State(s): State<Arc<AppState>>,
    body: Result<ApiJson<UpdateWeightsRequest>, ApiError>,
) -> Response {
    let req = match body {
        Ok(ApiJson(req)) => req,
        Err(e) => return reload_answer(e.status, e.message, None),
    };
    let _serial = s.reload.lock().await;
    let path = PathBuf::from(&req.model_path);
    let (source, shape) = (s.source.clone(), s.shape);
    let loaded = tokio::task::spawn_blocking(move || load_update(&source, &path, &shape)).await;
    let model = match loaded {
        Ok(Ok(model)) => model,
        Ok(Err(message)) => return reload_answer(StatusCode::BAD_REQUEST, message, None),
        Err(e) => return reload_answer(StatusCode::INTERNAL_SERVER_ERROR, format!("loading failed: {e}"), None),
    };
    match s.engine.swap(model).await {
        Ok(version) => {
            let message = format!("loaded {} as weight version {version}", req.model_path);
            reload_answer(StatusCode::OK, message, Some(version))
        }
        Err(e) => reload_answer(ApiError::from(e.clone()).status, e.to_string(), None),
    }
}

/// SGLang's answer: `{"success", "message"}` (+ `weight_version` on success).
fn reload_answer(status: StatusCode, message: String, version: Option<u64>) -> Response {
    let body = match version {
        Some(v) => json!({"success": true, "message": message, "weight_version": v}),
        None => json!({"success": false, "message": message}),
    };
    (status, Json(body)).into_response()
}
