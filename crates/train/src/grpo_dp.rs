//! What data-parallel GRPO ranks exchange: each rank rolls out and scores its share of a
//! round's prompts, then every rank gathers all of them ([`gather_groups`]), so advantages,
//! dynamic sampling and the reward metrics see exactly the one-process step. Log-probs travel as
//! their bit patterns and rewards as exactly round-tripped JSON numbers, so every rank holds the
//! same values bit for bit.

use aha_model::rollout::{FinishReason, Sample as Completion, SampleTiming};
use aha_reward::ScoredSample;
use serde::{Deserialize, Serialize};

use crate::collective::Collective;
use crate::error::{Result, TrainError};
use crate::grpo::Scored;

/// One scored sample on the wire (the prompt ids are looked up from `row` on arrival).
#[derive(Serialize, Deserialize)]
struct WireSample {
    row: usize,
    prompt_index: usize,
    sample_index: usize,
    ids: Vec<u32>,
    logprob_bits: Vec<u32>,
    finish: FinishReason,
    text: String,
    scored: ScoredSample,
    timing: SampleTiming,
}

fn to_wire(s: &Scored) -> WireSample {
    let c = &s.completion;
    WireSample {
        row: s.row,
        prompt_index: c.prompt_index,
        sample_index: c.sample_index,
        ids: c.completion_ids.clone(),
        logprob_bits: c.logprobs.iter().map(|x| x.to_bits()).collect(),
        finish: c.finish_reason,
        text: s.text.clone(),
        scored: s.scored.clone(),
        timing: c.timing,
    }
}

fn from_wire(w: WireSample, prompt_ids: &[Vec<u32>]) -> Result<Scored> {
    let prompt = prompt_ids.get(w.row).ok_or_else(|| {
        TrainError::Other(format!("data parallel: a rank sent dataset row {} this rank lacks", w.row))
    })?;
    Ok(Scored {
        row: w.row,
        prompt_ids: prompt.clone(),
        completion: Completion {
            prompt_index: w.prompt_index,
            sample_index: w.sample_index,
            completion_ids: w.ids,
            logprobs: w.logprob_bits.into_iter().map(f32::from_bits).collect(),
            finish_reason: w.finish,
            timing: w.timing,
        },
        text: w.text,
        scored: w.scored,
        advantage: 0.0,
    })
}

/// Every rank's groups, in rank order (rank `r` holds the `r`-th contiguous share of the
/// round's prompts, so the concatenation is the round's prompt order).
pub fn gather_groups(c: &dyn Collective, local: Vec<Vec<Scored>>, prompt_ids: &[Vec<u32>]) -> Result<Vec<Vec<Scored>>> {
    if c.size() == 1 {
        return Ok(local);
    }
    let wire: Vec<Vec<WireSample>> = local.iter().map(|g| g.iter().map(to_wire).collect()).collect();
    let bytes =
        serde_json::to_vec(&wire).map_err(|e| TrainError::Other(format!("data parallel: encoding samples: {e}")))?;
    let mut out = Vec::new();
    for (rank, part) in c.all_gather("rollout samples", &bytes)?.into_iter().enumerate() {
        let groups: Vec<Vec<WireSample>> = serde_json::from_slice(&part)
            .map_err(|e| TrainError::Other(format!("data parallel: samples from rank {rank}: {e}")))?;
        for g in groups {
            out.push(g.into_iter().map(|w| from_wire(w, prompt_ids)).collect::<Result<Vec<_>>>()?);
        }
    }
    Ok(out)
}
