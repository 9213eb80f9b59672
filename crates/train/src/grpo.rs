//! The GRPO trainer. One step reads as one story (docs/DESIGN.md §5):
//! prompts → rollout → rewards → advantages → μ × minibatches of (loss → backward → AdamW).
//!
//! Exactly docs/DESIGN.md §2: group advantages, TRL's four loss aggregations, token or sequence (GSPO)
//! ratios, k3 KL to a reference refreshed every N steps (β = 0 builds no reference), dynamic
//! sampling, masking of truncated completions, grad accumulation, clipping, schedules. All
//! randomness is derived from (seed, step), so a resumed run continues bit-identically.
//!
//! Rollouts run in process, or on external inference servers ([`crate::remote`]): then the
//! engine's log-probabilities are the behaviour policy, and each token's clipped surrogate is
//! weighted by the truncated importance weight min(π_old / π_engine, `rollout.is_cap`), with
//! π_old the trainer's own no-grad log-probabilities of the sampled tokens.

use std::collections::BTreeMap;
use std::time::Instant;

use aha_model::rollout::{rollout, FinishReason, RolloutConfig, Sample as Completion};
use aha_model::sampling::SamplingParams;
use aha_model::Transformer;
use aha_reward::{Registry, Sample as RewardSample, ScoredSample};
use candle_core::Tensor;

use crate::advantage::{group_advantages, is_zero_std};
use crate::batch::{build_batch, no_grad_logprobs, policy_forward, PolicyForward, SeqBatch};
use crate::collective::{all_reduce_grads, share, sum_scalars, Collective, ALONE};
use crate::config::GrpoLossConfig;
use crate::data::{CursorState, DataCursor, PromptRow};
use crate::error::{Result, TrainError};
use crate::grpo_dp::gather_groups;
use crate::loss::{grpo_loss_weighted, truncated_is_weights, IsStats, LossInputs, LossNorm, LossOutput};
use crate::optim::{AdamW, Grads};
use crate::remote::RemoteRollout;
use crate::timing::{self, measure, Phase};

/// Everything about a GRPO step that is not the model, the data or the rewards.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoSettings {
    /// Trainer steps (generation rounds) to run. Default 100.
    pub max_steps: usize,
    /// Distinct prompts per step. Default 8.
    pub prompts_per_step: usize,
    /// Samples per prompt, G (TRL `num_generations`). Default 8.
    pub group_size: usize,
    /// Maximum completion tokens. Default 256.
    pub max_completion_length: usize,
    /// Changes of `max_completion_length` from a given step on (R1 raises 32 768 to 65 536 at
    /// step 8 200): `[[grpo.length_schedule]]` tables `{ from_step, max_completion_length }`,
    /// `from_step` 1-based and increasing. Default none.
    pub length_schedule: Vec<LengthChange>,
    /// Sampling temperature for rollouts. Default 1.0.
    pub temperature: f64,
    /// Nucleus threshold for rollouts (1 disables). Default 1.0.
    pub top_p: f64,
    /// Top-k for rollouts (0 disables). Default 0.
    pub top_k: usize,
    /// Min-p for rollouts (0 disables). Default 0.
    pub min_p: f64,
    /// Inner iterations μ over each generation batch (TRL `num_iterations`). Default 1.
    pub num_iterations: usize,
    /// Optimiser steps per generation batch (the batch is split into this many minibatches). Default 1.
    pub minibatches: usize,
    /// Samples per forward/backward micro-batch (gradient accumulation within a minibatch); 0 = whole minibatch. Default 0.
    pub micro_batch_size: usize,
    /// Replace the reference model by the policy every N steps (0 never). Default 0.
    pub ref_sync_steps: usize,
    /// Zero the loss mask of completions cut off by the length limit. Default false.
    pub mask_truncated_completions: bool,
    /// Drop groups whose rewards all agree and refill with fresh prompts. Default false.
    pub dynamic_sampling: bool,
    /// Refill rounds allowed per step under dynamic sampling. Default 3.
    pub max_refill_rounds: usize,
    /// Consecutive non-finite steps tolerated before aborting. Default 5.
    pub max_consecutive_skips: usize,
    /// Stop strings for rollouts. Default none.
    pub stop_strings: Vec<String>,
    /// The objective.
    pub loss: GrpoLossConfig,
}

impl Default for GrpoSettings {
    fn default() -> Self {
        Self {
            max_steps: 100,
            prompts_per_step: 8,
            group_size: 8,
            max_completion_length: 256,
            length_schedule: Vec::new(),
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            num_iterations: 1,
            minibatches: 1,
            micro_batch_size: 0,
            ref_sync_steps: 0,
            mask_truncated_completions: false,
            dynamic_sampling: false,
            max_refill_rounds: 3,
            max_consecutive_skips: 5,
            stop_strings: Vec::new(),
            loss: GrpoLossConfig::default(),
        }
    }
}

impl GrpoSettings {
    /// Checks ranges once, before any work.
    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.group_size == 0 || self.prompts_per_step == 0 || self.max_completion_length == 0 {
            return bad("group_size, prompts_per_step and max_completion_length must be positive");
        }
        if self.num_iterations == 0 || self.minibatches == 0 {
            return bad("num_iterations and minibatches must be positive");
        }
        if !(self.prompts_per_step * self.group_size).is_multiple_of(self.minibatches) {
            return bad("prompts_per_step × group_size must be divisible by minibatches");
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return bad("temperature must be > 0");
        }
        let steps: Vec<usize> = self.length_schedule.iter().map(|c| c.from_step).collect();
        if steps.first() == Some(&0) || steps.windows(2).any(|w| w[0] >= w[1]) {
            return bad("length_schedule: from_step must be >= 1 and strictly increasing");
        }
        if self.length_schedule.iter().any(|c| c.max_completion_length == 0) {
            return bad("length_schedule: max_completion_length must be positive");
        }
        Ok(())
    }

    /// The completion limit at `step` (1-based): the last schedule entry whose `from_step` is
    /// at most `step`, else `max_completion_length`.
    pub fn completion_length_at(&self, step: usize) -> usize {
        let change = self.length_schedule.iter().rev().find(|c| c.from_step <= step);
        change.map_or(self.max_completion_length, |c| c.max_completion_length)
    }

    /// The longest completion limit over the run (what prompts must leave room for).
    pub fn longest_completion(&self) -> usize {
        let scheduled = self.length_schedule.iter().map(|c| c.max_completion_length);
        scheduled.fold(self.max_completion_length, usize::max)
    }

    /// Optimiser steps over the whole run (for the LR schedule).
    pub fn total_optimizer_steps(&self) -> usize {
        self.max_steps * self.minibatches * self.num_iterations
    }

    fn rollout_config(&self, eos_ids: &[u32], seed: u64, max_new_tokens: usize) -> RolloutConfig {
        RolloutConfig {
            group_size: self.group_size,
            max_new_tokens,
            sampling: sampling_params(self.temperature, self.top_p, self.top_k, self.min_p),
            eos_ids: eos_ids.to_vec(),
            stop_strings: self.stop_strings.clone(),
            seed,
            prompt_index_offset: 0,
        }
    }
}

/// One change of the completion limit (`[[grpo.length_schedule]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LengthChange {
    /// The first step (1-based) of the new limit.
    pub from_step: usize,
    /// The limit from that step on.
    pub max_completion_length: usize,
}

/// Sampling parameters from config values, where 1 (top-p) and 0 (top-k, min-p) disable a filter.
pub fn sampling_params(temperature: f64, top_p: f64, top_k: usize, min_p: f64) -> SamplingParams {
    SamplingParams {
        temperature: temperature as f32,
        top_p: (top_p < 1.0).then_some(top_p as f32),
        top_k: (top_k > 0).then_some(top_k),
        min_p: (min_p > 0.0).then_some(min_p as f32),
    }
}

/// One scored completion ready for the loss.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Index of the prompt row in the dataset.
    pub row: usize,
    /// The tokenised prompt.
    pub prompt_ids: Vec<u32>,
    /// The completion and its rollout log-probs.
    pub completion: Completion,
    /// The completion text.
    pub text: String,
    /// Rewards by name and the weighted total.
    pub scored: ScoredSample,
    /// Group-relative advantage.
    pub advantage: f64,
}

/// What the trainer needs from a tokenizer.
pub trait TextCodec {
    /// Token ids of `text` as a prompt (template already applied).
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
    /// Text of `ids` (special tokens kept, so format tags survive).
    fn decode(&self, ids: &[u32]) -> Result<String>;
    /// End-of-sequence ids.
    fn eos_ids(&self) -> Vec<u32>;
}

/// The GRPO trainer's mutable state.
pub struct GrpoTrainer<'a> {
    /// Settings, validated.
    pub settings: GrpoSettings,
    /// The trainable policy.
    pub policy: Transformer,
    /// The frozen reference (present iff β > 0).
    pub reference: Option<Transformer>,
    /// The optimiser over the policy's variables.
    pub opt: AdamW,
    /// Prompt rows.
    pub rows: &'a [PromptRow],
    /// Prompts after templating, tokenised once.
    pub prompt_ids: Vec<Vec<u32>>,
    /// Rewards.
    pub registry: &'a Registry,
    /// Tokenizer bridge.
    pub codec: &'a dyn TextCodec,
    /// Data order.
    pub cursor: DataCursor,
    /// Trainer steps completed.
    pub step: usize,
    /// Base seed.
    pub seed: u64,
    /// Consecutive skipped steps (non-finite loss or gradient).
    pub consecutive_skips: usize,
    /// Skipped steps over the run.
    pub total_skips: usize,
    /// Reward models (`[[rewards]] kind = "model"`), called only in their active steps.
    pub model_rewards: crate::rm::ModelRewards,
    /// Rollouts on inference servers instead of in process (`[rollout] engine = "openai"`).
    /// Default none.
    pub remote: Option<RemoteRollout<'a>>,
    /// The data-parallel ranks this trainer is one of (one process by default; see
    /// [`GrpoTrainer::with_collective`]).
    pub collective: &'a dyn Collective,
}

/// Metrics of one step, TRL's names.
pub type StepMetrics = BTreeMap<String, f64>;

/// The output of one step: metrics and the scored samples (for logging).
pub struct StepOutput {
    /// Per-step metrics.
    pub metrics: StepMetrics,
    /// Every scored completion of the step.
    pub samples: Vec<Scored>,
}

impl<'a> GrpoTrainer<'a> {
    /// A trainer at step 0: `opt` over `policy`'s variables, a frozen reference copy of the
    /// policy iff β > 0, the data cursor at the start of `seed`'s order, no reward models
    /// (assign `model_rewards` to add some).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: GrpoSettings,
        policy: &Transformer,
        opt: AdamW,
        rows: &'a [PromptRow],
        prompt_ids: Vec<Vec<u32>>,
        registry: &'a Registry,
        codec: &'a dyn TextCodec,
        seed: u64,
    ) -> Result<Self> {
        // LoRA: the base with adapters off (shared storage); otherwise a frozen copy.
        let reference = if settings.loss.beta > 0.0 { Some(policy.reference_copy()?) } else { None };
        Ok(Self {
            settings,
            policy: policy.clone(),
            reference,
            opt,
            rows,
            prompt_ids,
            registry,
            codec,
            cursor: DataCursor::new(rows.len(), seed, CursorState::default()),
            step: 0,
            seed,
            consecutive_skips: 0,
            total_skips: 0,
            model_rewards: Default::default(),
            remote: None,
            collective: &ALONE,
        })
    }

    /// Makes the trainer one rank of a data-parallel job: each round's prompts are shared out
    /// over the ranks and their samples gathered, and each minibatch's micro-batches are shared
    /// out with gradients summed before the same AdamW step on every rank. Server rollouts are
    /// not data parallel. Call [`GrpoTrainer::join_ranks`] once restored, before the first step.
    pub fn with_collective(mut self, c: &'a dyn Collective) -> Result<Self> {
        if c.size() > 1 && self.remote.is_some() {
            return Err(TrainError::Config(
                "[rollout] engine = \"openai\" runs in one trainer process: start aha grpo without mpirun".into(),
            ));
        }
        self.collective = c;
        Ok(self)
    }

    /// Data parallel, after any resume: checks that every rank starts from the same step, then
    /// gives every rank rank 0's weights (and, at step 0, a reference made from them).
    pub fn join_ranks(&mut self) -> Result<()> {
        if self.collective.size() == 1 {
            return Ok(());
        }
        crate::collective::join_ranks(self.collective, self.step, &self.opt)?;
        if self.step == 0 && self.reference.is_some() {
            self.reference = Some(self.policy.reference_copy()?);
        }
        Ok(())
    }
}

impl GrpoTrainer<'_> {
    /// Runs one trainer step: rollout, rewards, advantages, optimisation.
    pub fn step(&mut self) -> Result<StepOutput> {
        let t0 = Instant::now();
        timing::reset();
        if let Some(remote) = self.remote.as_mut() {
            measure(Phase::Rollout, || remote.begin_step(&self.policy, self.step))?;
        }
        let (samples, refills) = self.generate_and_score()?;
        self.launch_prefetch()?;
        let gen_s = t0.elapsed().as_secs_f64();
        let mut metrics = reward_metrics(&samples, self.settings.group_size, self.registry);
        metrics.extend(model_reward_metrics(&samples, &self.model_rewards, self.step + 1));
        let opt_metrics = self.optimize(&samples)?;
        metrics.extend(opt_metrics);
        metrics.extend(self.remote.as_ref().map(RemoteRollout::metrics).unwrap_or_default());
        let tokens: usize = samples.iter().map(|s| s.completion.completion_ids.len()).sum();
        let step_time = t0.elapsed().as_secs_f64();
        metrics.insert("step_time".into(), step_time);
        metrics.insert("rollout_time".into(), gen_s);
        metrics.insert("tokens_per_s".into(), tokens as f64 / step_time.max(1e-9));
        metrics.insert("dynamic_sampling/refill_rounds".into(), refills as f64);
        metrics.extend(timing::take().into_iter().map(|(p, s)| (p.metric().to_string(), s)));
        self.step += 1;
        self.maybe_sync_reference()?;
        Ok(StepOutput { metrics, samples })
    }

    /// The completion limit of the step being run (`length_schedule` applied).
    fn max_len(&self) -> usize {
        self.settings.completion_length_at(self.step + 1)
    }

    /// With `rollout.max_staleness` > 0, sends the next step's first round to the servers in
    /// the background (prompts peeked from a copy of the cursor; see [`crate::remote`]).
    fn launch_prefetch(&mut self) -> Result<()> {
        let next = self.step + 1;
        let Some(remote) = self.remote.as_mut() else { return Ok(()) };
        if remote.settings().max_staleness == 0 || next >= self.settings.max_steps {
            return Ok(());
        }
        let rows = self.cursor.clone().take(self.settings.prompts_per_step);
        let prompts: Vec<Vec<u32>> = rows.iter().map(|&r| self.prompt_ids[r].clone()).collect();
        let seed = rollout_seed(self.seed, next, 0);
        let cfg =
            self.settings.rollout_config(&self.codec.eos_ids(), seed, self.settings.completion_length_at(next + 1));
        remote.launch(rows, prompts, &cfg)
    }

    fn maybe_sync_reference(&mut self) -> Result<()> {
        let n = self.settings.ref_sync_steps;
        if self.reference.is_some() && n > 0 && self.step.is_multiple_of(n) {
            self.reference = Some(self.policy.frozen_copy()?);
        }
        Ok(())
    }

    /// Draws prompts, samples G completions each, scores them; under dynamic sampling drops
    /// zero-std groups and refills (bounded). Returns the samples and the refill rounds used.
    fn generate_and_score(&mut self) -> Result<(Vec<Scored>, usize)> {
        let want = self.settings.prompts_per_step;
        let mut kept: Vec<Vec<Scored>> = Vec::new();
        let mut round = 0;
        loop {
            let rows = self.cursor.take(want - kept.len());
            let groups = self.sample_groups(&rows, round)?;
            for g in groups {
                let rewards: Vec<Option<f64>> = g.iter().map(|s| s.scored.reward).collect();
                let keep = !self.settings.dynamic_sampling
                    || !is_zero_std(&rewards)
                    || round >= self.settings.max_refill_rounds;
                if keep && kept.len() < want {
                    kept.push(g);
                }
            }
            if kept.len() >= want || !self.settings.dynamic_sampling || round >= self.settings.max_refill_rounds {
                break;
            }
            round += 1;
        }
        let mut flat: Vec<Scored> = kept.into_iter().flatten().collect();
        let rewards: Vec<Option<f64>> = flat.iter().map(|s| s.scored.reward).collect();
        let adv = measure(Phase::Rewards, || {
            group_advantages(&rewards, self.settings.group_size, self.settings.loss.scale_rewards)
        });
        for (s, a) in flat.iter_mut().zip(adv) {
            s.advantage = a;
        }
        Ok((flat, round))
    }

    /// Rollout + rewards for the given dataset rows; one `Vec<Scored>` per row.
    /// Data parallel: this rank rolls out and scores its contiguous share of `rows`, then the
    /// shares of all ranks are gathered (see [`crate::grpo_dp`]).
    fn sample_groups(&mut self, rows: &[usize], round: usize) -> Result<Vec<Vec<Scored>>> {
        self.check_prompt_lengths(rows)?;
        let c = self.collective;
        let mine = share(rows.len(), c.rank(), c.size());
        let local = &rows[mine.clone()];
        let completions = self.complete(local, mine.start, round)?;
        let groups = measure(Phase::Rewards, || -> Result<Vec<Vec<Scored>>> {
            let mut groups: Vec<Vec<Scored>> = local
                .iter()
                .zip(completions)
                .map(|(&row, group)| self.score_group(row, group))
                .collect::<Result<_>>()?;
            self.apply_model_rewards(&mut groups)?;
            Ok(groups)
        })?;
        measure(Phase::Collective, || gather_groups(c, groups, &self.prompt_ids))
    }

    /// G completions of each of `rows`' prompts, which start at index `offset` of the round's
    /// prompts (their random streams are the round's): in process, or from the servers.
    fn complete(&mut self, rows: &[usize], offset: usize, round: usize) -> Result<Vec<Vec<Completion>>> {
        let prompts: Vec<Vec<u32>> = rows.iter().map(|&r| self.prompt_ids[r].clone()).collect();
        let seed = rollout_seed(self.seed, self.step, round);
        let mut cfg = self.settings.rollout_config(&self.codec.eos_ids(), seed, self.max_len());
        cfg.prompt_index_offset = offset as u64;
        if let Some(remote) = self.remote.as_mut() {
            return measure(Phase::Rollout, || remote.complete(rows, &prompts, &cfg));
        }
        let decode = |ids: &[u32]| self.codec.decode(ids).unwrap_or_default();
        let stop: Option<aha_model::rollout::StopDecoder> =
            if self.settings.stop_strings.is_empty() { None } else { Some(&decode) };
        let mut groups = measure(Phase::Rollout, || rollout(&self.policy, &prompts, &cfg, stop))?;
        for c in groups.iter_mut().flatten() {
            c.prompt_index += offset;
        }
        Ok(groups)
    }

    /// Adds the reward models active at this step (1-based), one batched call each over every
    /// completion of the round.
    fn apply_model_rewards(&self, groups: &mut [Vec<Scored>]) -> Result<()> {
        if self.model_rewards.is_empty() {
            return Ok(());
        }
        let mut flat: Vec<&mut Scored> = groups.iter_mut().flatten().collect();
        let prompts: Vec<String> = flat.iter().map(|s| self.rows[s.row].prompt.clone()).collect();
        let texts: Vec<String> = flat.iter().map(|s| s.text.clone()).collect();
        let items: Vec<(&str, &str)> = prompts.iter().zip(&texts).map(|(p, t)| (p.as_str(), t.as_str())).collect();
        let mut scored: Vec<&mut ScoredSample> = flat.iter_mut().map(|s| &mut s.scored).collect();
        self.model_rewards.apply(self.step + 1, &items, &mut scored)
    }

    /// The policy for over-long prompts: a prompt that cannot fit with a full completion in
    /// the model's context (`max_position_embeddings`) is an error naming its dataset row, not
    /// a silent truncation or a rollout past the positions the model knows.
    fn check_prompt_lengths(&self, rows: &[usize]) -> Result<()> {
        let limit = self.policy.config().max_position_embeddings;
        let completion = self.max_len();
        for &row in rows {
            let n = self.prompt_ids[row].len();
            if n + completion > limit {
                return Err(TrainError::Config(format!(
                    "prompt row {row} has {n} tokens: with max_completion_length {completion} it exceeds the \
                     model's {limit} positions (shorten or drop the row, or lower max_completion_length)"
                )));
            }
        }
        Ok(())
    }

    fn score_group(&self, row: usize, group: Vec<Completion>) -> Result<Vec<Scored>> {
        let r = &self.rows[row];
        let texts: Vec<String> = group.iter().map(|c| self.codec.decode(&c.completion_ids)).collect::<Result<_>>()?;
        let samples: Vec<RewardSample> = texts
            .iter()
            .map(|t| RewardSample { completion: t.clone(), answer: r.answer.clone(), fields: r.fields.clone() })
            .collect();
        let scored = self.registry.score_batch(&samples).map_err(|e| TrainError::Other(format!("rewards: {e}")))?;
        Ok(group
            .into_iter()
            .zip(texts)
            .zip(scored)
            .map(|((completion, text), scored)| Scored {
                row,
                prompt_ids: self.prompt_ids[row].clone(),
                completion,
                text,
                scored,
                advantage: 0.0,
            })
            .collect())
    }

    /// μ passes over the minibatches; each minibatch is one optimiser step accumulated over
    /// micro-batches. Returns loss/clip/KL/grad metrics averaged over the optimiser steps.
    fn optimize(&mut self, samples: &[Scored]) -> Result<StepMetrics> {
        let s = self.settings.clone();
        let per_mb = samples.len() / s.minibatches;
        // Data parallel without a micro-batch size: one micro-batch per rank and minibatch.
        let unset = per_mb.div_ceil(self.collective.size());
        let micro = if s.micro_batch_size == 0 { unset } else { s.micro_batch_size.min(per_mb) };
        // π_old is the policy before this step's first update. With one minibatch, the first
        // pass's own forward is exactly that (kept when μ > 1); with several, every minibatch
        // after the first is seen after an update, so π_old is computed up front.
        let old_up_front = s.minibatches > 1;
        // Micro-batches never cross a minibatch's boundary (the last one of a minibatch may be
        // smaller), so there are exactly `minibatches` optimiser steps per pass.
        let mut prepared: Vec<Vec<Micro>> =
            samples.chunks(per_mb.max(1)).map(|mb| self.prepare(mb, micro, old_up_front)).collect::<Result<_>>()?;
        let mut acc = MetricAcc::default();
        for iteration in 0..s.num_iterations {
            let keep_old = iteration == 0 && s.num_iterations > 1;
            for mb in prepared.iter_mut() {
                self.optimizer_step(mb, keep_old, iteration == 0, &mut acc)?;
            }
        }
        measure(Phase::Collective, || acc.all_reduce(self.collective))?;
        Ok(acc.finish())
    }

    /// Packs one minibatch's micro-batches once (with π_old and π_ref log-probs where needed).
    /// Data parallel: micro-batch `j` of the minibatch is this rank's when `j % size == rank`;
    /// the others keep only their masks.
    fn prepare(&self, samples: &[Scored], micro: usize, old_up_front: bool) -> Result<Vec<Micro>> {
        let mut out = Vec::new();
        let c = self.collective;
        for (j, chunk) in samples.chunks(micro.max(1)).enumerate() {
            let owned = j % c.size() == c.rank();
            let pairs: Vec<(&[u32], &[u32])> =
                chunk.iter().map(|s| (s.prompt_ids.as_slice(), s.completion.completion_ids.as_slice())).collect();
            let batch = build_batch(&pairs, self.policy.device())?;
            let mask = self.loss_mask(chunk, &batch)?;
            let adv: Vec<f32> = chunk.iter().map(|s| s.advantage as f32).collect();
            let advantages = Tensor::from_vec(adv, chunk.len(), self.policy.device())?;
            let (old, reference) = measure(Phase::NoGradLogps, || -> Result<_> {
                if !owned {
                    return Ok((None, None));
                }
                let old = if old_up_front { Some(no_grad_logprobs(&self.policy, &batch)?) } else { None };
                Ok((old, self.reference.as_ref().map(|r| no_grad_logprobs(r, &batch)).transpose()?))
            })?;
            let engine = match self.remote {
                Some(_) => Some(engine_logprobs(chunk, batch.completion_width, self.policy.device())?),
                None => None,
            };
            out.push(Micro { batch, mask, advantages, old, reference, engine, owned });
        }
        Ok(out)
    }

    /// The completion mask with truncated completions zeroed when configured.
    fn loss_mask(&self, chunk: &[Scored], batch: &SeqBatch) -> Result<Tensor> {
        if !self.settings.mask_truncated_completions {
            return Ok(batch.completion_mask.clone());
        }
        let keep: Vec<f32> =
            chunk.iter().map(|s| if s.completion.finish_reason == FinishReason::Length { 0.0 } else { 1.0 }).collect();
        let keep = Tensor::from_vec(keep, (chunk.len(), 1), batch.completion_mask.device())?;
        Ok(batch.completion_mask.broadcast_mul(&keep)?)
    }

    /// One optimiser step over the micro-batches of one minibatch; `keep_old` stores each
    /// micro-batch's log-probs as its π_old (the first pass of a step, before any update);
    /// `first_pass` (the step's first iteration) records the importance-weight statistics.
    fn optimizer_step(
        &mut self,
        micros: &mut [Micro],
        keep_old: bool,
        first_pass: bool,
        acc: &mut MetricAcc,
    ) -> Result<()> {
        let active: f64 = micros.iter().map(|m| sum_scalar(&m.mask)).sum::<Result<f64>>()?;
        let norm = LossNorm {
            max_completion_length: self.max_len(),
            grad_accum_steps: micros.len(),
            dapo_active_tokens: active,
        };
        let mut grads = Grads::default();
        let mut finite = true;
        for m in micros.iter_mut().filter(|m| m.owned) {
            let MicroOut { fwd, out, loss_value, entropy, is_stats } =
                measure(Phase::LossForward, || self.micro_loss(m, &norm))?;
            if keep_old && m.old.is_none() {
                m.old = Some(fwd.logps().detach());
            }
            if let Some(st) = is_stats.filter(|_| first_pass) {
                acc.is.get_or_insert_with(IsStats::default).add(&st);
            }
            if !loss_value.is_finite() {
                finite = false;
                break;
            }
            acc.add_micro(loss_value, &out.stats, entropy);
            measure(Phase::Backward, || grads.accumulate(fwd.gradients(&out.loss, &self.opt)?))?;
        }
        let finite = self.all_finite(finite, &mut grads)?;
        let total = self.settings.total_optimizer_steps();
        let report = if finite { Some(measure(Phase::Optimizer, || self.opt.step(&grads, total))?) } else { None };
        let applied = report.map(|r| r.applied).unwrap_or(false);
        self.record_guard(applied)?;
        acc.add_step(report.map(|r| (r.grad_norm, r.lr)), applied);
        Ok(())
    }

    /// The policy forward with grad and the loss of one micro-batch: the forward, the loss, its
    /// value, the completions' mean entropy and, for server rollouts, the importance-weight
    /// statistics (the weights themselves scale the loss).
    fn micro_loss(&self, m: &Micro, norm: &LossNorm) -> Result<MicroOut> {
        let fwd = policy_forward(&self.policy, &m.batch)?;
        let logps = fwd.logps();
        let old = m.old.clone().unwrap_or_else(|| logps.detach());
        let (weights, is_stats) = match (&m.engine, &self.remote) {
            (Some(engine), Some(r)) => {
                let cap = r.settings().is_cap;
                let (w, st) = truncated_is_weights(&old, engine, &m.mask, cap)?;
                (w, Some(st))
            }
            _ => (None, None),
        };
        let inputs = LossInputs {
            logps,
            old_logps: &old,
            ref_logps: m.reference.as_ref(),
            advantages: &m.advantages,
            mask: &m.mask,
        };
        let out = grpo_loss_weighted(&inputs, weights.as_ref(), &self.settings.loss, norm)?;
        let loss_value = out.loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let entropy = if loss_value.is_finite() { fwd.mean_entropy(&m.mask)? } else { f64::NAN };
        Ok(MicroOut { fwd, out, loss_value, entropy, is_stats })
    }

    /// Data parallel: whether every rank's losses were finite, and (if so) the gradients summed
    /// over ranks. One process: `finite` as is.
    fn all_finite(&self, finite: bool, grads: &mut Grads) -> Result<bool> {
        let c = self.collective;
        measure(Phase::Collective, || {
            let [bad] = sum_scalars(c, "non-finite check", [f64::from(u8::from(!finite))])?;
            if bad > 0.0 {
                return Ok(false);
            }
            all_reduce_grads(c, grads, self.opt.params())?;
            Ok(true)
        })
    }

    /// Counts skipped steps; aborts after too many in a row.
    fn record_guard(&mut self, applied: bool) -> Result<()> {
        if applied {
            self.consecutive_skips = 0;
            return Ok(());
        }
        self.consecutive_skips += 1;
        self.total_skips += 1;
        if self.consecutive_skips >= self.settings.max_consecutive_skips {
            return Err(TrainError::Diverged(self.consecutive_skips, self.step));
        }
        Ok(())
    }
}

/// A packed micro-batch with its fixed inputs.
struct Micro {
    batch: SeqBatch,
    mask: Tensor,
    advantages: Tensor,
    old: Option<Tensor>,
    reference: Option<Tensor>,
    /// The rollout engine's log-probs `[B, Lc]` (server rollouts only; 0 at padding).
    engine: Option<Tensor>,
    /// Whether this data-parallel rank computes this micro-batch (always, in one process).
    owned: bool,
}

/// What one micro-batch's loss forward gives back.
struct MicroOut {
    fwd: PolicyForward,
    out: LossOutput,
    loss_value: f64,
    entropy: f64,
    is_stats: Option<IsStats>,
}

/// The engine's log-probs of `chunk`'s completions, right-padded with 0 to `width`.
fn engine_logprobs(chunk: &[Scored], width: usize, device: &candle_core::Device) -> Result<Tensor> {
    let mut v = vec![0f32; chunk.len() * width];
    for (r, s) in chunk.iter().enumerate() {
        for (j, &lp) in s.completion.logprobs.iter().take(width).enumerate() {
            v[r * width + j] = lp;
        }
    }
    Ok(Tensor::from_vec(v, (chunk.len(), width), device)?)
}

fn sum_scalar(t: &Tensor) -> Result<f64> {
    Ok(t.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

/// The rollout seed of (run seed, step, refill round): a resumed run re-derives it.
pub fn rollout_seed(seed: u64, step: usize, round: usize) -> u64 {
    let mut h = seed ^ 0xA5A5_5A5A_D00D_F00D;
    for x in [step as u64, round as u64] {
        h = (h ^ x).wrapping_mul(0x0100_0000_01b3).rotate_left(17);
    }
    h
}

/// Averages of loss-side metrics over micro-batches and optimiser steps.
#[derive(Default)]
struct MetricAcc {
    micro: usize,
    loss: f64,
    kl: f64,
    entropy: f64,
    clip_low: f64,
    clip_high: f64,
    clip_region: f64,
    steps: usize,
    grad_norm: f64,
    lr: f64,
    skipped: usize,
    /// Importance-weight sums of server rollouts (none in process).
    is: Option<IsStats>,
}

impl MetricAcc {
    fn add_micro(&mut self, loss: f64, st: &crate::loss::LossStats, entropy: f64) {
        self.micro += 1;
        self.loss += loss;
        self.kl += st.kl;
        self.entropy += entropy;
        self.clip_low += st.clip_low;
        self.clip_high += st.clip_high;
        self.clip_region += st.clip_region;
    }

    fn add_step(&mut self, report: Option<(f64, f64)>, applied: bool) {
        if let Some((g, lr)) = report {
            self.steps += 1;
            self.grad_norm += g;
            self.lr = lr;
        }
        if !applied {
            self.skipped += 1;
        }
    }

    /// Data parallel: sums the per-micro-batch figures over ranks (each rank added only its
    /// own micro-batches; the per-step ones are the same everywhere).
    fn all_reduce(&mut self, c: &dyn Collective) -> Result<()> {
        if c.size() == 1 {
            return Ok(());
        }
        let v = [self.micro as f64, self.loss, self.kl, self.entropy, self.clip_low, self.clip_high, self.clip_region];
        let [micro, loss, kl, entropy, low, high, region] = sum_scalars(c, "loss metrics", v)?;
        self.micro = micro as usize;
        (self.loss, self.kl, self.entropy) = (loss, kl, entropy);
        (self.clip_low, self.clip_high, self.clip_region) = (low, high, region);
        Ok(())
    }

    fn finish(self) -> StepMetrics {
        let m = self.micro.max(1) as f64;
        let s = self.steps.max(1) as f64;
        let mut out = self.is.map(is_metrics).unwrap_or_default();
        out.extend([
            ("loss".to_string(), self.loss / s),
            ("kl".to_string(), self.kl / m),
            ("entropy".to_string(), self.entropy / m),
            ("clip_ratio/low_mean".to_string(), self.clip_low / m),
            ("clip_ratio/high_mean".to_string(), self.clip_high / m),
            ("clip_ratio/region_mean".to_string(), self.clip_region / m),
            ("grad_norm".to_string(), self.grad_norm / s),
            ("lr".to_string(), self.lr),
            ("skipped_steps".to_string(), self.skipped as f64),
        ]);
        out
    }
}

/// `rollout/logprob_diff` (mean |log π_trainer − log π_engine| per token) and the applied
/// importance weights' `rollout/is_weight_mean`, `rollout/is_weight_max`,
/// `rollout/is_clipped_frac`.
fn is_metrics(st: IsStats) -> StepMetrics {
    let n = st.tokens.max(1.0);
    BTreeMap::from([
        ("rollout/logprob_diff".to_string(), st.abs_logprob_diff / n),
        ("rollout/is_weight_mean".to_string(), st.weight_sum / n),
        ("rollout/is_weight_max".to_string(), st.weight_max),
        ("rollout/is_clipped_frac".to_string(), st.clipped / n),
    ])
}

/// `rewards/<name>/{mean,std}` of the model rewards scored this step, and
/// `rewards/<name>/active` (1 in the reward's active steps, else 0).
fn model_reward_metrics(samples: &[Scored], models: &crate::rm::ModelRewards, step: usize) -> StepMetrics {
    let mut m = BTreeMap::new();
    for r in &models.rewards {
        let active = r.active_at(step);
        m.insert(format!("rewards/{}/active", r.name), if active { 1.0 } else { 0.0 });
        if active {
            let vals: Vec<f64> =
                samples.iter().filter_map(|s| s.scored.rewards.get(&r.name).copied().flatten()).collect();
            let (mu, sd) = crate::advantage::mean_std(&vals);
            m.insert(format!("rewards/{}/mean", r.name), mu);
            m.insert(format!("rewards/{}/std", r.name), sd);
        }
    }
    m
}

/// Reward-side metrics (TRL's names) plus completion lengths and reflection-word use.
fn reward_metrics(samples: &[Scored], group: usize, registry: &Registry) -> StepMetrics {
    let mut m = BTreeMap::new();
    let totals: Vec<f64> = samples.iter().map(|s| s.scored.reward.unwrap_or(0.0)).collect();
    let (mean, std) = crate::advantage::mean_std(&totals);
    m.insert("reward".into(), mean);
    m.insert("reward_std".into(), std);
    for name in registry.names() {
        let vals: Vec<f64> = samples.iter().filter_map(|s| s.scored.rewards.get(name).copied().flatten()).collect();
        let (mu, sd) = crate::advantage::mean_std(&vals);
        m.insert(format!("rewards/{name}/mean"), mu);
        m.insert(format!("rewards/{name}/std"), sd);
    }
    let rewards: Vec<Option<f64>> = samples.iter().map(|s| s.scored.reward).collect();
    let groups = rewards.chunks(group.max(1)).count().max(1);
    let zero = rewards.chunks(group.max(1)).filter(|g| is_zero_std(g)).count();
    m.insert("frac_reward_zero_std".into(), zero as f64 / groups as f64);
    let lens: Vec<f64> = samples.iter().map(|s| s.completion.completion_ids.len() as f64).collect();
    m.insert("completions/mean_length".into(), crate::advantage::mean_std(&lens).0);
    m.insert("completions/min_length".into(), lens.iter().copied().fold(f64::INFINITY, f64::min));
    m.insert("completions/max_length".into(), lens.iter().copied().fold(0.0, f64::max));
    let clipped = samples.iter().filter(|s| s.completion.finish_reason == FinishReason::Length).count();
    m.insert("completions/clipped_ratio".into(), clipped as f64 / samples.len().max(1) as f64);
    let texts: Vec<&str> = samples.iter().map(|s| s.text.as_str()).collect();
    m.insert("completions/reflection_per_1k_words".into(), aha_metrics::reflection_frequency(&texts));
    let unscorable = samples.iter().filter(|s| !s.scored.unscorable.is_empty()).count();
    m.insert("rewards/unscorable_samples".into(), unscorable as f64);
    m
}
