//! The continuously batched decode loop behind `aha serve`.
//!
//! One OS thread runs the loop and owns the running batch (the decode workers of `shard.rs`
//! share the model with it). Each turn it admits queued requests (prefilled together, their
//! first tokens drawn, then merged into the running KV cache with [`KvCache::merge`]), sends
//! every live row's drawn token to its request (a non-streamed request gets a choice's tokens
//! when the choice finishes), drops finished rows, and steps the batch: decode every live row
//! one position and draw its next token. A request that arrives while others decode joins the
//! batch at the next turn; rows leave as soon as they finish.
//!
//! The batch is split into as many shards as [`decode_shards`] says (one per thread for a small
//! model on the CPU, else one): new rows join the shard with the fewest rows, and the shards
//! step concurrently (`shard.rs`), as the in-process rollout splits its batch. A row's decode
//! arithmetic reads only that row (up to 256 rows per shard, the small-batch kernels' limit), so
//! its tokens do not depend on its shard or on the rows beside it; its first token comes from a
//! prefill shared with the prompts admitted in the same turn, padded to the longest.
//!
//! Weight reloads ([`EngineHandle::swap`]) are ordered: requests submitted before the reload
//! are still admitted and decoded on the old weights, later ones wait; once no row is decoding
//! the new weights are installed and admission resumes. Every request therefore decodes on exactly one weight version, which its
//! [`GenEvent::Done`] reports.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use aha_model::rollout::{decode_shards, finish_reason, prefill, StopMatcher};
use aha_model::{sample_rng, sample_token, AhaTokenizer, FinishReason, KvCache, SamplingParams, Transformer};
use tokio::sync::{mpsc as tmpsc, oneshot};

use crate::shard::{deal, Row, Shard, Stepper};

/// Limits of the decode loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Most rows (prompts × n) decoded together; queued requests wait for room. Default 64.
    pub max_batch_rows: usize,
    /// Most requests waiting to be admitted; [`EngineHandle::submit`] refuses more. Default 256.
    pub max_queued: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { max_batch_rows: 64, max_queued: 256 }
    }
}

/// One generation request, already tokenized and validated by the HTTP layer.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Prompts (token ids, each non-empty); choice `p * n + s` is sample `s` of prompt `p`.
    pub prompts: Vec<Vec<u32>>,
    /// Samples per prompt.
    pub n: usize,
    /// Most new tokens per sample (≥ 1; prompt + max_tokens must fit the model's context).
    pub max_tokens: usize,
    /// How tokens are drawn.
    pub sampling: SamplingParams,
    /// Seed of the samples' random streams: sample `s` of prompt `p` draws from
    /// `sample_rng(seed, prompt_index_offset + p, s)`, the in-process rollout's streams.
    pub seed: u64,
    /// Stream index of `prompts[0]` (see `seed`).
    pub prompt_index_offset: u64,
    /// Stop strings (matched on decoded text; the completing token is still emitted).
    pub stop: Vec<String>,
    /// Token ids that end a sample besides the tokenizer's EOS ids (kept as its last token).
    pub stop_token_ids: Vec<u32>,
    /// Do not stop at the tokenizer's EOS ids.
    pub ignore_eos: bool,
    /// Send each token as it is drawn; otherwise a choice's tokens are sent together when it
    /// finishes (the same events in the same order per choice, one wake-up of the receiving
    /// task instead of one per token).
    pub stream: bool,
}

/// What the engine sends back for a request, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// Choice `choice` generated `token`; `logprob` is under the unmodified model distribution
    /// (temperature 1, no truncation), as the trainer's `log π_old` needs.
    Token { choice: usize, token: u32, logprob: f32 },
    /// Choice `choice` ended (its last token was already sent).
    Finished { choice: usize, reason: FinishReason },
    /// Every choice has finished; the weight version they were all decoded with.
    Done { weight_version: u64 },
    /// The request failed (nothing more follows).
    Failed { message: String },
}

/// Why a request was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// `max_queued` requests are already waiting.
    #[error("the server is at capacity: {0} requests are queued")]
    QueueFull(usize),
    /// The engine is draining for shutdown or has stopped.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A later reload replaced this one before it was installed.
    #[error("a later weight reload replaced this one before it was installed")]
    Superseded,
}

/// Counters for `/health` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Rows decoding now.
    pub running_rows: usize,
    /// Requests waiting for admission.
    pub queued: usize,
    /// Weight version now serving (0 = the weights loaded at start).
    pub weight_version: u64,
}

/// A cheap, cloneable handle to the engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Shared>,
}

/// State shared by the handles and the engine thread.
struct Shared {
    commands: mpsc::Sender<Command>,
    queued: AtomicUsize,
    running_rows: AtomicUsize,
    version: AtomicU64,
    shutting_down: AtomicBool,
    tokenizer: Arc<AhaTokenizer>,
    context_len: usize,
    opts: EngineOptions,
}

enum Command {
    Submit(Pending),
    Swap(Box<Transformer>, oneshot::Sender<Result<u64, SubmitError>>),
    Shutdown,
}

struct Pending {
    req: GenRequest,
    events: tmpsc::UnboundedSender<GenEvent>,
}

impl EngineHandle {
    /// Starts the engine thread serving `model` (weight version 0).
    pub fn start(
        model: Transformer,
        tokenizer: Arc<AhaTokenizer>,
        opts: EngineOptions,
    ) -> aha_model::Result<(Self, JoinHandle<()>)> {
        let model = model.detached()?;
        let (commands, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            commands,
            queued: AtomicUsize::new(0),
            running_rows: AtomicUsize::new(0),
            version: AtomicU64::new(0),
            shutting_down: AtomicBool::new(false),
            context_len: model.config().max_position_embeddings,
            tokenizer,
            opts,
        });
        let engine = Engine::new(model, Arc::clone(&shared), rx)?;
        let thread = std::thread::Builder::new()
            .name("aha-engine".into())
            .spawn(move || engine.run())
            .map_err(|e| aha_model::ModelError::InvalidConfig(format!("cannot start the engine thread: {e}")))?;
        Ok((Self { inner: shared }, thread))
    }

    /// Queues a request; events arrive on the receiver. Dropping the receiver cancels the
    /// request's rows at the next decode turn.
    pub fn submit(&self, req: GenRequest) -> Result<tmpsc::UnboundedReceiver<GenEvent>, SubmitError> {
        let s = &self.inner;
        if s.shutting_down.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let queued = s.queued.fetch_add(1, Ordering::SeqCst);
        if queued >= s.opts.max_queued {
            s.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(queued));
        }
        let (events, rx) = tmpsc::unbounded_channel();
        if s.commands.send(Command::Submit(Pending { req, events })).is_err() {
            s.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(rx)
    }

    /// Installs new weights once the rows in flight have finished; resolves to the new version.
    pub async fn swap(&self, model: Transformer) -> Result<u64, SubmitError> {
        let (tx, rx) = oneshot::channel();
        self.inner.commands.send(Command::Swap(Box::new(model), tx)).map_err(|_| SubmitError::ShuttingDown)?;
        rx.await.map_err(|_| SubmitError::ShuttingDown)?
    }

    /// Counters.
    pub fn stats(&self) -> EngineStats {
        let s = &self.inner;
        EngineStats {
            running_rows: s.running_rows.load(Ordering::SeqCst),
            queued: s.queued.load(Ordering::SeqCst),
            weight_version: s.version.load(Ordering::SeqCst),
        }
    }

    /// Stops admitting requests; queued and running ones finish, then the thread exits.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        // A send error means the thread has already stopped.
        let _ = self.inner.commands.send(Command::Shutdown);
    }

    /// The tokenizer (chat template, decoding).
    pub fn tokenizer(&self) -> &Arc<AhaTokenizer> {
        &self.inner.tokenizer
    }

    /// The model's context length (prompt + max_tokens must fit).
    pub fn context_len(&self) -> usize {
        self.inner.context_len
    }
}

/// A request being decoded.
struct Active {
    events: tmpsc::UnboundedSender<GenEvent>,
    req: GenRequest,
    eos: Vec<u32>,
    unfinished: usize,
    version: u64,
}

/// A reload waiting for the requests submitted before it to finish.
struct PendingSwap {
    model: Box<Transformer>,
    done: oneshot::Sender<Result<u64, SubmitError>>,
    /// Waiting requests that arrived before the reload (still decoded on the old weights).
    ahead: usize,
}

struct Engine {
    model: Arc<Transformer>,
    version: u64,
    shared: Arc<Shared>,
    commands: mpsc::Receiver<Command>,
    waiting: VecDeque<Pending>,
    swap: Option<PendingSwap>,
    /// Requests by slot; a finished request's slot is `None` until reused.
    requests: Vec<Option<Active>>,
    /// The running batch's non-empty shards (at most `shard_count`).
    shards: Vec<Shard>,
    /// How many shards the batch may have.
    shard_count: usize,
    stepper: Stepper,
    stopping: bool,
}

impl Engine {
    fn new(model: Transformer, shared: Arc<Shared>, commands: mpsc::Receiver<Command>) -> aha_model::Result<Self> {
        let shard_count = decode_shards(&model);
        Ok(Self {
            model: Arc::new(model),
            version: 0,
            shared,
            commands,
            waiting: VecDeque::new(),
            swap: None,
            requests: Vec::new(),
            shards: Vec::new(),
            shard_count,
            stepper: Stepper::new(shard_count)?,
            stopping: false,
        })
    }

    /// Runs the decode loop, inside the engine's own single-threaded pool when sharded.
    fn run(mut self) {
        match self.stepper.take_home() {
            Some(pool) => pool.install(move || self.run_loop()),
            None => self.run_loop(),
        }
    }

    /// The decode loop; returns when shut down and drained, or when every handle is gone.
    fn run_loop(mut self) {
        loop {
            if !self.receive() {
                return;
            }
            self.install_swap();
            self.admit();
            if !self.shards.is_empty() {
                if let Err(e) = self.turn() {
                    self.fail_batch(&e.to_string());
                }
            }
            self.publish();
        }
    }

    /// Takes commands: blocks while there is nothing to do. `false` once the loop should end.
    fn receive(&mut self) -> bool {
        let idle = self.shards.is_empty() && self.waiting.is_empty() && self.swap.is_none();
        if idle && self.stopping {
            return false;
        }
        if idle {
            match self.commands.recv() {
                Ok(c) => self.handle(c),
                Err(_) => return false,
            }
        }
        while let Ok(c) = self.commands.try_recv() {
            self.handle(c);
        }
        true
    }

    fn handle(&mut self, c: Command) {
        match c {
            Command::Submit(p) => self.waiting.push_back(p),
            Command::Swap(model, done) => {
                // A newer reload replaces one still waiting; its caller learns it was superseded.
                let ahead = self.waiting.len();
                if let Some(old) = self.swap.replace(PendingSwap { model, done, ahead }) {
                    let _ = old.done.send(Err(SubmitError::Superseded));
                }
            }
            Command::Shutdown => self.stopping = true,
        }
    }

    /// Installs waiting weights once no row is decoding.
    fn install_swap(&mut self) {
        if !self.shards.is_empty() {
            return;
        }
        if self.swap.as_ref().is_some_and(|s| s.ahead > 0) {
            return;
        }
        if let Some(swap) = self.swap.take() {
            self.model = Arc::new(*swap.model);
            self.version += 1;
            self.shared.version.store(self.version, Ordering::SeqCst);
            let _ = swap.done.send(Ok(self.version));
        }
    }

    fn live_rows(&self) -> usize {
        self.shards.iter().map(Shard::live).sum()
    }

    /// Moves waiting requests into the batch while they fit `max_batch_rows` (a request larger
    /// than that is admitted alone); while a reload waits, only the requests ahead of it.
    fn admit(&mut self) {
        let mut taken = Vec::new();
        let mut rows = self.live_rows();
        while let Some(p) = self.waiting.front() {
            if self.swap.as_ref().is_some_and(|s| s.ahead == 0) {
                break;
            }
            let need = p.req.prompts.len() * p.req.n;
            if rows > 0 && rows + need > self.shared.opts.max_batch_rows {
                break;
            }
            rows += need;
            if let Some(p) = self.waiting.pop_front() {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                taken.push(p);
            }
            if let Some(s) = self.swap.as_mut() {
                s.ahead -= 1;
            }
        }
        let taken: Vec<Pending> = taken.into_iter().filter(|p| !p.events.is_closed()).collect();
        if taken.is_empty() {
            return;
        }
        if let Err(e) = self.prefill_into_batch(taken) {
            self.fail_batch(&e.to_string());
        }
    }

    /// Prefills the new requests' prompts together, fans each prompt out to its `n` rows and
    /// deals the rows to the shards with the fewest rows, merging them into each shard's cache
    /// (an empty shard takes its rows' prefilled cache, sized for their remaining tokens). A
    /// failed prefill fails the new requests only; the running batch is untouched until the
    /// merge (whose failure is an engine error).
    fn prefill_into_batch(&mut self, taken: Vec<Pending>) -> aha_model::Result<()> {
        let prompts: Vec<Vec<u32>> = taken.iter().flat_map(|p| p.req.prompts.iter().cloned()).collect();
        let new_room = taken.iter().map(|p| p.req.max_tokens).max().unwrap_or(0);
        let (cache, logits) = match prefill(&self.model, &prompts, new_room) {
            Ok(x) => x,
            Err(e) => {
                for p in taken {
                    let _ = p.events.send(GenEvent::Failed { message: format!("prefill failed: {e}") });
                }
                return Ok(());
            }
        };
        // Row `k` is sample `s` of prompt `fan_out[k]` (its index in `prompts`), first token drawn.
        let mut rows = Vec::new();
        let mut fan_out = Vec::new();
        let mut prompt = 0;
        for p in taken {
            let slot = self.free_slot();
            let req = &p.req;
            for (pi, ids) in req.prompts.iter().enumerate() {
                for s in 0..req.n {
                    let mut rng = sample_rng(req.seed, req.prompt_index_offset + pi as u64, s as u64);
                    let next = sample_token(&logits[prompt], &req.sampling, &mut rng)?;
                    rows.push(Row {
                        request: slot,
                        choice: pi * req.n + s,
                        prompt_len: ids.len(),
                        sampling: req.sampling,
                        rng,
                        ids: Vec::with_capacity(req.max_tokens),
                        logprobs: Vec::with_capacity(req.max_tokens),
                        next,
                        done: false,
                    });
                    fan_out.push(prompt as u32);
                }
                prompt += 1;
            }
            self.insert(slot, p);
        }
        let live: Vec<usize> = self.shards.iter().map(Shard::live).collect();
        let mut rows: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
        for (shard, picked) in deal(&live, self.shard_count, rows.len()).into_iter().enumerate() {
            if picked.is_empty() {
                continue;
            }
            let cache_rows: Vec<u32> = picked.iter().map(|&k| fan_out[k]).collect();
            let part = cache.select_rows(&cache_rows)?;
            let new_rows = picked.iter().filter_map(|&k| rows[k].take());
            if shard < self.shards.len() {
                let b = &mut self.shards[shard];
                let room = new_room.max(room_needed(&self.requests, &b.rows));
                b.cache = KvCache::merge(&[b.cache.clone(), part], room)?;
                b.rows.extend(new_rows);
            } else {
                self.shards.push(Shard { cache: part, rows: new_rows.collect() });
            }
        }
        Ok(())
    }

    /// The slot the next [`Engine::insert`] fills: the first free one, else a new one.
    fn free_slot(&self) -> usize {
        self.requests.iter().position(Option::is_none).unwrap_or(self.requests.len())
    }

    /// Stores a request being admitted in `slot` (from [`Engine::free_slot`]).
    fn insert(&mut self, slot: usize, p: Pending) {
        let mut eos = if p.req.ignore_eos { Vec::new() } else { self.shared.tokenizer.eos_token_ids().to_vec() };
        eos.extend(&p.req.stop_token_ids);
        let a = Active {
            unfinished: p.req.prompts.len() * p.req.n,
            events: p.events,
            req: p.req,
            eos,
            version: self.version,
        };
        match self.requests.get_mut(slot) {
            Some(free) => *free = Some(a),
            None => self.requests.push(Some(a)),
        }
    }

    fn active(&self, slot: usize) -> Option<&Active> {
        self.requests.get(slot).and_then(Option::as_ref)
    }

    /// One turn of the batch: emit every live row's drawn token, retire finished rows, then
    /// step the shards (decode one position, draw the next tokens).
    fn turn(&mut self) -> aha_model::Result<()> {
        let mut shards = std::mem::take(&mut self.shards);
        for b in &mut shards {
            for r in b.rows.iter_mut().filter(|r| !r.done) {
                self.emit(r);
            }
            self.cancel_abandoned(&mut b.rows);
        }
        shards.retain(|b| b.live() > 0);
        for b in &mut shards {
            b.compact()?;
        }
        self.shards = self.stepper.step(&self.model, shards)?;
        Ok(())
    }

    /// Streams row `r`'s drawn token and finishes the row when it should stop.
    fn emit(&mut self, r: &mut Row) {
        let Some(a) = self.active(r.request) else {
            r.done = true;
            return;
        };
        let s = r.next;
        r.ids.push(s.token);
        r.logprobs.push(s.logprob);
        if a.req.stream {
            let _ = a.events.send(GenEvent::Token { choice: r.choice, token: s.token, logprob: s.logprob });
        }
        let tok = &self.shared.tokenizer;
        let decode = |ids: &[u32]| tok.decode(ids, false).unwrap_or_default();
        let stops = StopMatcher::new(&a.req.stop, Some(&decode));
        let reason = finish_reason(&r.ids, &a.eos, &stops, a.req.max_tokens);
        if let Some(reason) = reason {
            r.done = true;
            if !a.req.stream {
                for (&token, &logprob) in r.ids.iter().zip(&r.logprobs) {
                    let _ = a.events.send(GenEvent::Token { choice: r.choice, token, logprob });
                }
            }
            let _ = a.events.send(GenEvent::Finished { choice: r.choice, reason });
            self.finish_row(r.request);
        }
    }

    /// Counts a finished row against its request; the request's last row sends `Done`.
    fn finish_row(&mut self, slot: usize) {
        let Some(a) = self.requests.get_mut(slot).and_then(Option::as_mut) else { return };
        a.unfinished -= 1;
        if a.unfinished == 0 {
            let _ = a.events.send(GenEvent::Done { weight_version: a.version });
            self.requests[slot] = None;
        }
    }

    /// Finishes the rows of requests whose receiver was dropped (the client went away).
    fn cancel_abandoned(&mut self, rows: &mut [Row]) {
        for r in rows.iter_mut().filter(|r| !r.done) {
            if self.active(r.request).is_none_or(|a| a.events.is_closed()) {
                r.done = true;
                self.finish_row(r.request);
            }
        }
    }

    /// Fails every request in the batch (an engine error must not leave clients waiting).
    fn fail_batch(&mut self, message: &str) {
        self.shards.clear();
        for a in self.requests.drain(..).flatten() {
            let _ = a.events.send(GenEvent::Failed { message: message.to_string() });
        }
    }

    fn publish(&self) {
        self.shared.running_rows.store(self.live_rows(), Ordering::SeqCst);
    }
}

/// The free cache slots a shard can still need: the most tokens a live row may yet add.
fn room_needed(requests: &[Option<Active>], rows: &[Row]) -> usize {
    rows.iter()
        .filter(|r| !r.done)
        .map(|r| {
            requests.get(r.request).and_then(Option::as_ref).map_or(0, |a| a.req.max_tokens.saturating_sub(r.ids.len()))
        })
        .max()
        .unwrap_or(0)
}
