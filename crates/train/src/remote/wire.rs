//! The JSON of `/v1/completions`: the request a rollout sends, and the two answer shapes it
//! reads back — `aha serve`'s (`token_ids` per choice, a top-level `weight_version`) and
//! vLLM's (ids only as `"token_id:N"` strings in `logprobs.tokens`, from
//! `return_tokens_as_token_ids`).
//!
//! Choice `p·n + s` is sample `s` of the request's prompt `p`. Log-probabilities must be the
//! unmodified distribution's (temperature 1, no truncation), as the in-process rollout's are.

use aha_model::rollout::{FinishReason, RolloutConfig, Sample};
use serde_json::{json, Value};

use super::settings::Api;

/// What every request of a round shares.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    /// The model name sent.
    pub model: String,
    /// The dialect (decides which extensions are sent).
    pub api: Api,
    /// Samples per prompt, sampling, seed, stop strings, length.
    pub cfg: RolloutConfig,
    /// Most prompts in one request (0: a server's whole chunk).
    pub max_prompts: usize,
}

/// The body of one `/v1/completions` request for `prompts`, the first of which is prompt
/// `offset` of the round (its random streams are `sample_rng(seed, offset + p, s)` on `aha`).
pub fn completion_body(spec: &RequestSpec, prompts: &[Vec<u32>], offset: u64) -> Value {
    let c = &spec.cfg;
    let mut body = json!({
        "model": spec.model,
        "prompt": prompts,
        "n": c.group_size,
        "max_tokens": c.max_new_tokens,
        "temperature": c.sampling.temperature,
        "top_p": c.sampling.top_p.unwrap_or(1.0),
        "logprobs": 0,
        "return_tokens_as_token_ids": true,
    });
    let fields = body.as_object_mut();
    let Some(map) = fields else { return body };
    if let Some(k) = c.sampling.top_k {
        map.insert("top_k".into(), json!(k));
    }
    if let Some(p) = c.sampling.min_p {
        map.insert("min_p".into(), json!(p));
    }
    if !c.stop_strings.is_empty() {
        map.insert("stop".into(), json!(c.stop_strings));
    }
    if spec.api == Api::Aha {
        map.insert("seed".into(), json!(c.seed));
        map.insert("prompt_index_offset".into(), json!(offset));
    }
    body
}

/// One request's completions, grouped by prompt, and the weight version the server reported.
#[derive(Debug, Clone, PartialEq)]
pub struct Completions {
    /// `groups[p][s]`: sample `s` of the request's prompt `p`.
    pub groups: Vec<Vec<Sample>>,
    /// The server's `weight_version`, when it reports one.
    pub weight_version: Option<u64>,
}

/// Reads a `/v1/completions` answer for `prompts` prompts × `n` samples; `offset` becomes each
/// sample's `prompt_index`, `eos_ids` tells an EOS stop from a stop string.
pub fn parse_completions(
    v: &Value,
    prompts: usize,
    n: usize,
    offset: usize,
    eos_ids: &[u32],
) -> Result<Completions, String> {
    let choices = v.get("choices").and_then(Value::as_array).ok_or("the answer has no `choices` array")?;
    if choices.len() != prompts * n {
        return Err(format!("expected {} choices ({prompts} prompts × n = {n}), got {}", prompts * n, choices.len()));
    }
    let mut slots: Vec<Option<Sample>> = vec![None; prompts * n];
    for (i, c) in choices.iter().enumerate() {
        let index = c.get("index").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(i);
        let slot = slots.get_mut(index).ok_or_else(|| format!("choice index {index} is out of range"))?;
        if slot.is_some() {
            return Err(format!("choice index {index} appears twice"));
        }
        let s = parse_choice(c, eos_ids).map_err(|e| format!("choice {index}: {e}"))?;
        *slot = Some(Sample { prompt_index: offset + index / n, sample_index: index % n, ..s });
    }
    let flat: Vec<Sample> = slots.into_iter().flatten().collect();
    let groups = flat.chunks(n.max(1)).map(<[Sample]>::to_vec).collect();
    let weight_version = v.get("weight_version").and_then(Value::as_u64);
    Ok(Completions { groups, weight_version })
}

/// One choice: ids (from `token_ids`, else from `"token_id:N"` strings), log-probs, finish.
fn parse_choice(c: &Value, eos_ids: &[u32]) -> Result<Sample, String> {
    let lp = c.get("logprobs").filter(|l| !l.is_null()).ok_or("no `logprobs` (request them with logprobs = 0)")?;
    let logprobs: Vec<f32> = lp
        .get("token_logprobs")
        .and_then(Value::as_array)
        .ok_or("no `logprobs.token_logprobs`")?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32).ok_or("a token log-prob is not a number"))
        .collect::<Result<_, _>>()?;
    let ids = match c.get("token_ids").filter(|t| !t.is_null()) {
        Some(t) => ids_from_array(t)?,
        None => ids_from_token_strings(lp)?,
    };
    if ids.len() != logprobs.len() {
        return Err(format!("{} token ids but {} log-probs", ids.len(), logprobs.len()));
    }
    let finish_reason = finish(c.get("finish_reason").and_then(Value::as_str), ids.last(), eos_ids)?;
    Ok(Sample {
        prompt_index: 0,
        sample_index: 0,
        completion_ids: ids,
        logprobs,
        finish_reason,
        timing: Default::default(),
    })
}

fn ids_from_array(t: &Value) -> Result<Vec<u32>, String> {
    let arr = t.as_array().ok_or("`token_ids` is not an array")?;
    arr.iter()
        .map(|x| x.as_u64().and_then(|i| u32::try_from(i).ok()).ok_or_else(|| format!("bad token id {x}")))
        .collect()
}

/// vLLM's `return_tokens_as_token_ids`: `logprobs.tokens` holds `"token_id:N"`.
fn ids_from_token_strings(lp: &Value) -> Result<Vec<u32>, String> {
    let tokens = lp.get("tokens").and_then(Value::as_array).ok_or(
        "neither `token_ids` nor `logprobs.tokens` (the server must return token ids: \
         return_tokens_as_token_ids)",
    )?;
    tokens.iter().map(token_id_string).collect()
}

fn token_id_string(t: &Value) -> Result<u32, String> {
    let s = t.as_str().ok_or_else(|| format!("token {t} is not a string"))?;
    s.strip_prefix("token_id:")
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| format!("token `{s}` is not `token_id:N` (the server ignored return_tokens_as_token_ids)"))
}

/// `"stop"` is an EOS stop when the last token is an EOS id, else a stop string.
fn finish(reason: Option<&str>, last: Option<&u32>, eos_ids: &[u32]) -> Result<FinishReason, String> {
    match reason {
        Some("length") => Ok(FinishReason::Length),
        Some("stop") if last.is_some_and(|t| eos_ids.contains(t)) => Ok(FinishReason::Eos),
        Some("stop") => Ok(FinishReason::Stop),
        other => Err(format!("unexpected finish_reason {other:?}")),
    }
}

/// The requests of a round, `(server, offset, len)` in prompt order: each server's chunk of
/// [`split`], cut into pieces of at most `max_prompts` prompts (0: no cut).
pub fn plan_requests(prompts: usize, servers: usize, max_prompts: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (server, (start, len)) in split(prompts, servers).into_iter().enumerate() {
        let step = if max_prompts == 0 { len } else { max_prompts };
        for piece in (start..start + len).step_by(step.max(1)) {
            out.push((server, piece, step.min(start + len - piece)));
        }
    }
    out
}

/// Balanced contiguous chunks `(offset, len)` of `prompts` over `servers` (the data-parallel
/// split, [`crate::collective::share`]), empty ones dropped.
pub fn split(prompts: usize, servers: usize) -> Vec<(usize, usize)> {
    let servers = servers.max(1);
    (0..servers)
        .map(|i| crate::collective::share(prompts, i, servers))
        .filter(|r| !r.is_empty())
        .map(|r| (r.start, r.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aha_model::sampling::SamplingParams;

    #[test]
    fn aha_shape_parses_with_groups_in_index_order() {
        let v = json!({
            "choices": [
                {"index": 1, "text": "b", "token_ids": [7, 2], "logprobs": {"tokens": ["token_id:7", "token_id:2"], "token_logprobs": [-0.5, -0.25]}, "finish_reason": "stop"},
                {"index": 0, "text": "a", "token_ids": [5, 6, 9], "logprobs": {"token_logprobs": [-1.0, -2.0, -3.0]}, "finish_reason": "length"},
            ],
            "weight_version": 4
        });
        let c = parse_completions(&v, 1, 2, 3, &[2]).unwrap();
        assert_eq!(c.weight_version, Some(4));
        let g = &c.groups[0];
        assert_eq!((g[0].completion_ids.clone(), g[0].finish_reason), (vec![5, 6, 9], FinishReason::Length));
        assert_eq!((g[1].completion_ids.clone(), g[1].finish_reason), (vec![7, 2], FinishReason::Eos));
        assert_eq!(g[1].logprobs, vec![-0.5, -0.25]);
        assert_eq!((g[1].prompt_index, g[1].sample_index), (3, 1));
    }

    #[test]
    fn vllm_shape_reads_ids_from_token_strings() {
        let v = json!({"choices": [
            {"index": 0, "text": "x", "logprobs": {"tokens": ["token_id:11", "token_id:12"], "token_logprobs": [-0.1, -0.2], "top_logprobs": null}, "finish_reason": "stop"},
            {"index": 1, "text": "y", "logprobs": {"tokens": ["token_id:13"], "token_logprobs": [-0.3]}, "finish_reason": "length"},
        ]});
        let c = parse_completions(&v, 2, 1, 0, &[99]).unwrap();
        assert_eq!(c.weight_version, None);
        assert_eq!(c.groups.len(), 2);
        assert_eq!(
            (c.groups[0][0].completion_ids.clone(), c.groups[0][0].finish_reason),
            (vec![11, 12], FinishReason::Stop)
        );
        assert_eq!((c.groups[1][0].completion_ids.clone(), c.groups[1][0].prompt_index), (vec![13], 1));
    }

    #[test]
    fn malformed_answers_are_explained() {
        let text_tokens = json!({"choices": [{"index": 0, "logprobs": {"tokens": ["Hello"], "token_logprobs": [-0.1]}, "finish_reason": "stop"}]});
        assert!(parse_completions(&text_tokens, 1, 1, 0, &[]).unwrap_err().contains("return_tokens_as_token_ids"));
        let short = json!({"choices": []});
        assert!(parse_completions(&short, 1, 2, 0, &[]).unwrap_err().contains("expected 2 choices"));
        let mismatch = json!({"choices": [{"index": 0, "token_ids": [1, 2], "logprobs": {"token_logprobs": [-0.1]}, "finish_reason": "stop"}]});
        assert!(parse_completions(&mismatch, 1, 1, 0, &[]).unwrap_err().contains("2 token ids but 1 log-probs"));
        let abort = json!({"choices": [{"index": 0, "token_ids": [1], "logprobs": {"token_logprobs": [-0.1]}, "finish_reason": "abort"}]});
        assert!(parse_completions(&abort, 1, 1, 0, &[]).unwrap_err().contains("finish_reason"));
        let no_lp = json!({"choices": [{"index": 0, "token_ids": [1], "finish_reason": "stop"}]});
        assert!(parse_completions(&no_lp, 1, 1, 0, &[]).unwrap_err().contains("logprobs"));
    }

    #[test]
    fn the_body_carries_the_stream_keys_only_for_aha() {
        let cfg = RolloutConfig {
            group_size: 4,
            max_new_tokens: 16,
            sampling: SamplingParams { temperature: 0.7, top_p: None, top_k: Some(5), min_p: None },
            seed: 42,
            stop_strings: vec!["</answer>".into()],
            ..Default::default()
        };
        let mut spec = RequestSpec { model: "m".into(), api: Api::Aha, cfg, max_prompts: 0 };
        let b = completion_body(&spec, &[vec![1, 2], vec![3]], 6);
        assert_eq!(
            (b["n"].clone(), b["seed"].clone(), b["prompt_index_offset"].clone()),
            (json!(4), json!(42), json!(6))
        );
        assert_eq!(
            (b["prompt"].clone(), b["top_k"].clone(), b["top_p"].clone()),
            (json!([[1, 2], [3]]), json!(5), json!(1.0))
        );
        assert_eq!((b["stop"].clone(), b.get("min_p")), (json!(["</answer>"]), None));
        spec.api = Api::Vllm;
        let b = completion_body(&spec, &[vec![1]], 0);
        assert!(b.get("seed").is_none() && b.get("prompt_index_offset").is_none());
        assert_eq!(b["return_tokens_as_token_ids"], json!(true));
    }

    #[test]
    fn split_is_contiguous_and_balanced() {
        assert_eq!(split(8, 3), vec![(0, 3), (3, 3), (6, 2)]);
        assert_eq!(split(2, 3), vec![(0, 1), (1, 1)]);
        assert_eq!(split(5, 1), vec![(0, 5)]);
        assert_eq!(plan_requests(8, 3, 0), vec![(0, 0, 3), (1, 3, 3), (2, 6, 2)]);
        assert_eq!(plan_requests(8, 2, 3), vec![(0, 0, 3), (0, 3, 1), (1, 4, 3), (1, 7, 1)]);
        assert_eq!(plan_requests(2, 3, 5), vec![(0, 0, 1), (1, 1, 1)]);
    }
}
