//! The running batch of `aha serve`'s engine, split into shards that decode concurrently.
//!
//! A shard is a set of rows (samples) with their own KV cache. Each turn every shard decodes
//! its rows one position and draws each live row's next token from its own random stream, so a
//! row's tokens do not depend on its shard (a row's arithmetic reads only that row). With
//! several shards ([`aha_model::rollout::decode_shards`]: one per thread for a small model on
//! the CPU), the engine thread decodes the first and persistent workers the others, each inside
//! a single-threaded pool, as the in-process rollout splits its batch: no thread hand-off per
//! operation.

use std::sync::{mpsc, Arc};

use aha_model::rollout::{decode_next, single_thread_pool, slots_to_keep};
use aha_model::{sample_token, KvCache, ModelError, Result, Sampled, SamplingParams, Transformer};
use rand_chacha::ChaCha8Rng;

/// One sample being decoded: a row of a shard.
pub(crate) struct Row {
    /// Slot of its request in the engine.
    pub request: usize,
    /// Choice index within the request.
    pub choice: usize,
    pub prompt_len: usize,
    pub sampling: SamplingParams,
    pub rng: ChaCha8Rng,
    /// Tokens emitted so far.
    pub ids: Vec<u32>,
    /// Their log-probabilities (sent with the tokens when the request is not streamed).
    pub logprobs: Vec<f32>,
    /// The token drawn for the row, emitted at the engine's next turn (drawn at admission and
    /// by every step).
    pub next: Sampled,
    pub done: bool,
}

impl Row {
    /// Draws the row's next token from `logits`.
    pub fn draw(&mut self, logits: &[f32]) -> Result<()> {
        self.next = sample_token(logits, &self.sampling, &mut self.rng)?;
        Ok(())
    }
}

/// A shard: row `j` of the cache is `rows[j]`.
pub(crate) struct Shard {
    pub cache: KvCache,
    pub rows: Vec<Row>,
}

impl Shard {
    /// Rows still decoding.
    pub fn live(&self) -> usize {
        self.rows.iter().filter(|r| !r.done).count()
    }

    /// Drops finished rows from the cache when [`slots_to_keep`] says so (the rollout's rule).
    pub fn compact(&mut self) -> Result<()> {
        let done: Vec<bool> = self.rows.iter().map(|r| r.done).collect();
        if let Some(keep) = slots_to_keep(&done) {
            self.cache = self.cache.select_rows(&keep)?;
            self.rows.retain(|r| !r.done);
        }
        Ok(())
    }

    /// Feeds every row's last token (finished rows too, until they are compacted away) and
    /// draws each live row's next token.
    pub fn step(&mut self, model: &Transformer) -> Result<()> {
        let ids: Vec<u32> = self.rows.iter().map(|r| r.ids.last().copied().unwrap_or(0)).collect();
        let pos: Vec<u32> = self.rows.iter().map(|r| (r.prompt_len + r.ids.len().max(1) - 1) as u32).collect();
        let logits = decode_next(model, ids, pos, &mut self.cache)?;
        for (r, l) in self.rows.iter_mut().zip(&logits) {
            if !r.done {
                r.draw(l)?;
            }
        }
        Ok(())
    }
}

/// Which shard each of `new` rows joins, as the rows' indices per shard (`live[k]`: rows of
/// shard `k`; shards past `live.len()` up to `count` are empty): one by one, to the shard with
/// the fewest rows, ties to the lower index, so shards are started in order.
pub(crate) fn deal(live: &[usize], count: usize, new: usize) -> Vec<Vec<usize>> {
    let mut counts: Vec<usize> = (0..count).map(|k| live.get(k).copied().unwrap_or(0)).collect();
    let mut picked = vec![Vec::new(); count];
    for k in 0..new {
        let shard = (0..count).min_by_key(|&i| (counts[i], i)).unwrap_or(0);
        counts[shard] += 1;
        picked[shard].push(k);
    }
    picked
}

/// A shard handed to a worker, and where it goes back.
type Job = (usize, Arc<Transformer>, Shard);
/// A worker's answer: the shard's index, the shard, and how its step went.
type Answer = (usize, Shard, Result<()>);

/// Steps all shards: the first on the calling thread, the others on persistent workers.
pub(crate) struct Stepper {
    /// The calling thread's own single-threaded pool (for the first shard), when sharded.
    home: Option<rayon::ThreadPool>,
    jobs: Vec<mpsc::Sender<Job>>,
    answers: mpsc::Receiver<Answer>,
    /// Kept so the workers' threads live as long as the stepper.
    _pools: Vec<rayon::ThreadPool>,
}

impl Stepper {
    /// A stepper for up to `shards` shards (1: everything on the calling thread's pool).
    pub fn new(shards: usize) -> Result<Self> {
        let (answer_tx, answers) = mpsc::channel();
        let mut jobs = Vec::new();
        let mut pools = Vec::new();
        for _ in 1..shards {
            let pool = single_thread_pool()?;
            let (tx, rx) = mpsc::channel::<Job>();
            let answer_tx = answer_tx.clone();
            pool.spawn(move || work(rx, answer_tx));
            jobs.push(tx);
            pools.push(pool);
        }
        let home = if shards > 1 { Some(single_thread_pool()?) } else { None };
        Ok(Self { home, jobs, answers, _pools: pools })
    }

    /// The engine thread's own single-threaded pool, when sharded: the engine loop runs inside
    /// it, so the first shard (and admissions' prefills) use single-threaded kernels.
    pub fn take_home(&mut self) -> Option<rayon::ThreadPool> {
        self.home.take()
    }

    /// Steps every shard, concurrently when there are workers; the shards come back in order.
    pub fn step(&self, model: &Arc<Transformer>, shards: Vec<Shard>) -> Result<Vec<Shard>> {
        let count = shards.len();
        let mut it = shards.into_iter();
        let Some(mut first) = it.next() else { return Ok(Vec::new()) };
        // Every shard handed out is waited for, even after an error, so no answer is left in
        // the channel for a later turn.
        let mut result = Ok(());
        let mut sent = 0;
        for (k, shard) in it.enumerate() {
            let handed = match self.jobs.get(k) {
                Some(tx) => tx.send((k + 1, Arc::clone(model), shard)).is_ok(),
                None => false,
            };
            if handed {
                sent += 1;
            } else {
                result = Err(ModelError::InvalidConfig("a decoding worker is missing or stopped".into()));
            }
        }
        if result.is_ok() {
            result = step_caught(&mut first, model);
        }
        let mut out: Vec<Option<Shard>> = (0..count).map(|_| None).collect();
        out[0] = Some(first);
        for _ in 0..sent {
            let Ok((k, shard, r)) = self.answers.recv() else {
                return Err(ModelError::InvalidConfig("a decoding worker stopped".into()));
            };
            out[k] = Some(shard);
            result = result.and(r);
        }
        result?;
        Ok(out.into_iter().flatten().collect())
    }
}

/// Steps `shard`, turning a panic into an error (which fails the batch, not the engine).
fn step_caught(shard: &mut Shard, model: &Transformer) -> Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shard.step(model)))
        .unwrap_or_else(|_| Err(ModelError::InvalidConfig("a decoding step panicked".into())))
}

/// A worker's loop: step each shard it is handed until the stepper is dropped.
fn work(jobs: mpsc::Receiver<Job>, answers: mpsc::Sender<Answer>) {
    while let Ok((k, model, mut shard)) = jobs.recv() {
        let r = step_caught(&mut shard, &model);
        if answers.send((k, shard, r)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::deal;

    #[test]
    fn rows_go_to_the_emptiest_shard_and_new_shards_start_in_order() {
        assert_eq!(deal(&[], 2, 3), vec![vec![0, 2], vec![1]]);
        assert_eq!(deal(&[5], 3, 4), vec![vec![], vec![0, 2], vec![1, 3]]);
        assert_eq!(deal(&[1, 4], 2, 2), vec![vec![0, 1], vec![]]);
        assert_eq!(deal(&[], 1, 2), vec![vec![0, 1]]);
    }
}
