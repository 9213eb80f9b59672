//! Rollout engine tests on a tiny seeded random model: logprobs against a full forward
//! recompute, batch-composition invariance, EOS and stop strings across token boundaries.

use std::collections::HashMap;

use aha_model::rollout::{rollout, FinishReason, RolloutConfig, Sample};
use aha_model::sampling::SamplingParams;
use aha_model::{Arch, ModelConfig, ParamInit, Transformer};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config(vocab: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: vocab,
        intermediate_size: 64,
        tie_word_embeddings: false,
        attention_bias: true,
        max_position_embeddings: 512,
        ..ModelConfig::small(Arch::Qwen2)
    }
}

/// A seeded random model whose weights are large enough (std 0.3) for peaked distributions.
fn model(vocab: usize, seed: u64) -> Transformer {
    let cfg = config(vocab);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut map = HashMap::new();
    for spec in Transformer::parameter_specs(&cfg) {
        let n: usize = spec.shape.iter().product();
        let data: Vec<f32> = match spec.init {
            ParamInit::Normal(_) => (0..n).map(|_| (rng.random::<f32>() - 0.5) * 1.0).collect(),
            ParamInit::Ones => vec![1.0; n],
            ParamInit::Zeros => (0..n).map(|_| (rng.random::<f32>() - 0.5) * 0.2).collect(),
        };
        map.insert(spec.name, Tensor::from_vec(data, spec.shape, &Device::Cpu).unwrap());
    }
    Transformer::new(&cfg, VarBuilder::from_tensors(map, DType::F32, &Device::Cpu)).unwrap()
}

fn prompts(n: usize, vocab: u32) -> Vec<Vec<u32>> {
    (0..n).map(|p| (0..(3 + p % 5)).map(|i| (7 * p as u32 + 3 * i as u32 + 1) % vocab).collect()).collect()
}

/// Log-probabilities of `completion` after `prompt` from one unpadded full forward.
fn recompute(model: &Transformer, prompt: &[u32], completion: &[u32]) -> Vec<f32> {
    let seq: Vec<u32> = prompt.iter().chain(completion).copied().collect();
    let t = seq.len();
    let ids = Tensor::from_vec(seq.clone(), (1, t), &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, t), DType::F32, &Device::Cpu).unwrap();
    let pos = Tensor::arange(0u32, t as u32, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&ids, &mask, &pos).unwrap().squeeze(0).unwrap();
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
    let targets = Tensor::from_vec(seq[1..].to_vec(), (t - 1, 1), &Device::Cpu).unwrap();
    let gathered = logp.narrow(0, 0, t - 1).unwrap().gather(&targets, 1).unwrap();
    let all: Vec<f32> = gathered.flatten_all().unwrap().to_vec1().unwrap();
    all[prompt.len() - 1..].to_vec()
}

#[test]
fn logprobs_equal_a_full_forward_recompute() {
    let m = model(24, 1);
    let ps = prompts(5, 24);
    let sampling = SamplingParams { temperature: 0.8, top_k: Some(10), top_p: Some(0.95), min_p: None };
    let cfg =
        RolloutConfig { group_size: 4, max_new_tokens: 24, sampling, eos_ids: vec![5], seed: 3, ..Default::default() };
    let out = rollout(&m, &ps, &cfg, None).unwrap();
    let mut eos = 0;
    for (p, group) in out.iter().enumerate() {
        assert_eq!(group.len(), 4);
        for s in group {
            let want = recompute(&m, &ps[p], &s.completion_ids);
            assert_eq!(want.len(), s.logprobs.len());
            for (a, b) in s.logprobs.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "prompt {p} sample {}: {a} vs {b}", s.sample_index);
            }
            eos += usize::from(s.finish_reason == FinishReason::Eos);
        }
    }
    // Some rows end early (so the batch is compacted mid-rollout) and some run to the limit.
    assert!(eos > 0 && eos < 20, "{eos} of 20 samples ended on EOS");
}

#[test]
fn eos_and_length_are_reported() {
    let m = model(16, 2);
    let cfg = RolloutConfig { group_size: 8, max_new_tokens: 12, eos_ids: vec![2, 9], seed: 1, ..Default::default() };
    let out = rollout(&m, &prompts(3, 16), &cfg, None).unwrap();
    for s in out.iter().flatten() {
        let last = *s.completion_ids.last().unwrap();
        let eos_inside = s.completion_ids[..s.completion_ids.len() - 1].iter().any(|t| [2, 9].contains(t));
        assert!(!eos_inside, "{s:?}");
        match s.finish_reason {
            FinishReason::Eos => assert!([2, 9].contains(&last)),
            FinishReason::Length => assert_eq!(s.completion_ids.len(), 12),
            FinishReason::Stop => panic!("no stop strings configured"),
        }
    }
}

fn samples_by_key(out: &[Vec<Sample>], offset: usize) -> HashMap<(usize, usize), &Sample> {
    out.iter().flatten().map(|s| ((s.prompt_index + offset, s.sample_index), s)).collect()
}

#[test]
fn samples_do_not_depend_on_batch_composition() {
    let m = model(32, 3);
    let ps = prompts(8, 32);
    let sampling = SamplingParams { top_p: Some(0.9), ..Default::default() };
    let base =
        RolloutConfig { group_size: 8, max_new_tokens: 16, sampling, eos_ids: vec![4], seed: 11, ..Default::default() };
    let batch = rollout(&m, &ps, &base, None).unwrap();
    assert_eq!(batch.iter().flatten().count(), 64);
    let in_batch = samples_by_key(&batch, 0);
    for (p, prompt) in ps.iter().enumerate() {
        // The same prompt alone, with its whole group (a batch of 8) and with G = 1 (a batch of 1).
        for g in [8, 1] {
            let cfg = RolloutConfig { group_size: g, prompt_index_offset: p as u64, ..base.clone() };
            let alone = rollout(&m, std::slice::from_ref(prompt), &cfg, None).unwrap();
            for (key, s) in samples_by_key(&alone, p) {
                let b = in_batch[&key];
                assert_eq!(s.completion_ids, b.completion_ids, "{key:?} with G = {g}");
                assert_eq!(s.finish_reason, b.finish_reason);
                for (x, y) in s.logprobs.iter().zip(&b.logprobs) {
                    assert!((x - y).abs() < 1e-4, "{key:?}: {x} vs {y}");
                }
            }
        }
    }
    let distinct: std::collections::HashSet<_> = batch[0].iter().map(|s| s.completion_ids.clone()).collect();
    assert!(distinct.len() > 1, "the G samples of a prompt must differ");
}

#[test]
fn stop_strings_split_across_tokens_end_the_completion() {
    // Four tokens decoding to "a", "b", "c", "d": the stop string "bc" always spans two tokens,
    // "dab" three.
    let m = model(4, 4);
    let letters = |ids: &[u32]| ids.iter().map(|&i| (b'a' + i as u8) as char).collect::<String>();
    let decoder = |ids: &[u32]| letters(ids);
    let stops = vec!["bc".to_string(), "dab".to_string()];
    let cfg = RolloutConfig { group_size: 8, max_new_tokens: 40, stop_strings: stops, seed: 5, ..Default::default() };
    let out = rollout(&m, &prompts(2, 4), &cfg, Some(&decoder)).unwrap();
    let mut stopped = 0;
    for s in out.iter().flatten() {
        let text = letters(&s.completion_ids);
        let first_hit = ["bc", "dab"].iter().filter_map(|st| text.find(st).map(|i| i + st.len())).min();
        match s.finish_reason {
            FinishReason::Stop => {
                assert_eq!(first_hit, Some(text.len()), "stopped late or early: {text}");
                stopped += 1;
            }
            FinishReason::Length => assert_eq!(first_hit, None, "missed a stop string: {text}"),
            FinishReason::Eos => panic!("no EOS configured"),
        }
    }
    assert!(stopped > 0, "no sample hit a stop string");
}

#[test]
fn invalid_requests_are_rejected() {
    let m = model(8, 5);
    let stops = RolloutConfig { stop_strings: vec!["x".into()], ..Default::default() };
    assert!(rollout(&m, &[vec![1]], &stops, None).is_err(), "stop strings without a decoder");
    assert!(rollout(&m, &[vec![]], &RolloutConfig::default(), None).is_err(), "empty prompt");
    let zero = RolloutConfig { max_new_tokens: 0, ..Default::default() };
    assert!(rollout(&m, &[vec![1]], &zero, None).is_err());
}
