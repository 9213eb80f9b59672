//! The continuously batched engine against the in-process rollout: the same tokens for the same
//! seeds, requests that join a running batch, and weight swaps that never mix versions.

use std::sync::Arc;

use aha_model::rollout::rollout;
use aha_model::{init_tiny, FinishReason, LoadedModel, RolloutConfig, SamplingParams, TinySpec, Transformer};
use aha_serve::engine::{EngineHandle, EngineOptions, GenEvent, GenRequest};
use tokio::sync::mpsc::UnboundedReceiver;

fn tiny(seed: u64) -> (tempfile::TempDir, LoadedModel) {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = init_tiny(dir.path(), &TinySpec::default(), seed).expect("tiny model");
    (dir, m)
}

fn request(prompts: Vec<Vec<u32>>, n: usize, max_tokens: usize, seed: u64, offset: u64) -> GenRequest {
    GenRequest {
        prompts,
        n,
        max_tokens,
        sampling: SamplingParams::default(),
        seed,
        prompt_index_offset: offset,
        stop: Vec::new(),
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        stream: true,
    }
}

/// Everything a request produced: per-choice ids, logprobs and finish reason, and its version.
#[derive(Debug, Default)]
struct Outcome {
    ids: Vec<Vec<u32>>,
    logprobs: Vec<Vec<f32>>,
    reasons: Vec<Option<FinishReason>>,
    version: Option<u64>,
}

fn collect(mut rx: UnboundedReceiver<GenEvent>, choices: usize) -> Outcome {
    let mut o = Outcome {
        ids: vec![Vec::new(); choices],
        logprobs: vec![Vec::new(); choices],
        reasons: vec![None; choices],
        version: None,
    };
    while let Some(e) = rx.blocking_recv() {
        match e {
            GenEvent::Token { choice, token, logprob } => {
                o.ids[choice].push(token);
                o.logprobs[choice].push(logprob);
            }
            GenEvent::Finished { choice, reason } => o.reasons[choice] = Some(reason),
            GenEvent::Done { weight_version } => {
                o.version = Some(weight_version);
                break;
            }
            GenEvent::Failed { message } => panic!("request failed: {message}"),
        }
    }
    o
}

/// [`collect`] of a request whose first event, `first` (a token), was already received.
fn collect_after(first: GenEvent, rx: UnboundedReceiver<GenEvent>, choices: usize) -> Outcome {
    let GenEvent::Token { choice, token, logprob } = first else { panic!("not a token: {first:?}") };
    let mut o = collect(rx, choices);
    o.ids[choice].insert(0, token);
    o.logprobs[choice].insert(0, logprob);
    o
}

fn in_process(
    model: &Transformer,
    prompts: &[Vec<u32>],
    n: usize,
    max: usize,
    seed: u64,
    offset: u64,
    eos: &[u32],
) -> Outcome {
    let cfg = RolloutConfig {
        group_size: n,
        max_new_tokens: max,
        eos_ids: eos.to_vec(),
        seed,
        prompt_index_offset: offset,
        ..RolloutConfig::default()
    };
    let out = rollout(model, prompts, &cfg, None).expect("rollout");
    let samples: Vec<_> = out.into_iter().flatten().collect();
    Outcome {
        ids: samples.iter().map(|s| s.completion_ids.clone()).collect(),
        logprobs: samples.iter().map(|s| s.logprobs.clone()).collect(),
        reasons: samples.iter().map(|s| Some(s.finish_reason)).collect(),
        version: None,
    }
}

fn start(m: &LoadedModel) -> (EngineHandle, std::thread::JoinHandle<()>) {
    let tok = Arc::new(aha_model::tiny::tiny_tokenizer(512).expect("tokenizer"));
    EngineHandle::start(m.model.clone(), tok, EngineOptions::default()).expect("engine")
}

fn assert_same(a: &Outcome, b: &Outcome) {
    assert_eq!(a.ids, b.ids, "token ids differ");
    assert_eq!(a.reasons, b.reasons, "finish reasons differ");
    for (x, y) in a.logprobs.iter().flatten().zip(b.logprobs.iter().flatten()) {
        assert!((x - y).abs() < 1e-4, "logprob {x} vs {y}");
    }
}

#[test]
fn a_request_decodes_the_in_process_rollout_tokens() {
    let (_d, m) = tiny(1);
    let (engine, thread) = start(&m);
    let prompts = vec![vec![5, 6, 7], vec![9, 10], vec![11, 12, 13, 14, 15]];
    let eos = engine.tokenizer().eos_token_ids().to_vec();
    let got = collect(engine.submit(request(prompts.clone(), 2, 12, 7, 5)).expect("submit"), 6);
    let want = in_process(&m.model, &prompts, 2, 12, 7, 5, &eos);
    assert_same(&got, &want);
    assert_eq!(got.version, Some(0));
    // Not streamed: each choice's tokens arrive together when it finishes, the same tokens.
    let whole = request(prompts.clone(), 2, 12, 7, 5);
    let mut rx = engine.submit(GenRequest { stream: false, ..whole }).expect("submit");
    let first = rx.blocking_recv().expect("an event");
    assert_same(&collect_after(first, rx, 6), &want);
    engine.shutdown();
    thread.join().expect("engine thread");
}

#[test]
fn a_request_joins_a_running_batch_and_matches_its_solo_tokens() {
    let (_d, m) = tiny(2);
    let (engine, thread) = start(&m);
    let mut long = request(vec![vec![3, 4, 5]], 2, 500, 1, 0);
    long.ignore_eos = true;
    let mut long_rx = engine.submit(long).expect("submit long");
    // Wait until the long request is decoding, then send a short one with a different length.
    let first = long_rx.blocking_recv().expect("a first event");
    assert!(matches!(first, GenEvent::Token { .. }));
    let short_prompts = vec![vec![20, 21, 22, 23, 24, 25, 26]];
    let short = collect(engine.submit(request(short_prompts.clone(), 1, 10, 3, 4)).expect("submit short"), 1);
    // The short request finished while the long one still decodes: it joined the batch. (The
    // engine sends events in order, so a long request already done would show its `Done` here.)
    let mut streamed = 1;
    while let Ok(e) = long_rx.try_recv() {
        assert!(!matches!(e, GenEvent::Done { .. }), "the long request ended before the short one");
        streamed += 1;
    }
    assert!(streamed < 1000, "the long request is mid-stream ({streamed} events)");
    let eos = engine.tokenizer().eos_token_ids().to_vec();
    assert_same(&short, &in_process(&m.model, &short_prompts, 1, 10, 3, 4, &eos));
    drop(long_rx);
    engine.shutdown();
    thread.join().expect("engine thread");
}

#[test]
fn rows_dealt_to_several_shards_decode_their_solo_tokens() {
    let (_d, m) = tiny(4);
    // Started inside a 3-thread pool, the engine splits its batch into 3 shards on any machine.
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().expect("pool");
    let (engine, thread) = pool.install(|| start(&m));
    let eos = engine.tokenizer().eos_token_ids().to_vec();
    // A long request (6 rows over the 3 shards) is decoding when the others arrive and join.
    let long_prompts = vec![vec![3, 4, 5], vec![6]];
    let mut long = request(long_prompts.clone(), 3, 150, 11, 0);
    long.ignore_eos = true;
    let mut long_rx = engine.submit(long).expect("submit long");
    let first = long_rx.blocking_recv().expect("a first event");
    let shapes: Vec<(Vec<Vec<u32>>, usize, usize)> = vec![
        (vec![vec![7, 8, 9, 10, 11, 12]], 2, 9),
        (vec![vec![13, 14]], 1, 25),
        (vec![vec![15, 16, 17], vec![18, 19], vec![20]], 2, 17),
    ];
    let pending: Vec<_> = shapes
        .iter()
        .enumerate()
        .map(|(k, (prompts, n, max))| engine.submit(request(prompts.clone(), *n, *max, 11, 10 + 5 * k as u64)))
        .collect();
    for (k, rx) in pending.into_iter().enumerate() {
        let (prompts, n, max) = &shapes[k];
        let got = collect(rx.expect("submit"), prompts.len() * n);
        assert_same(&got, &in_process(&m.model, prompts, *n, *max, 11, 10 + 5 * k as u64, &eos));
    }
    assert_same(&collect_after(first, long_rx, 6), &in_process(&m.model, &long_prompts, 3, 150, 11, 0, &[]));
    engine.shutdown();
    thread.join().expect("engine thread");
}

#[test]
fn a_swap_waits_for_rows_in_flight_and_later_requests_use_the_new_weights() {
    let (_d, m) = tiny(3);
    let (_d2, m2) = tiny(4);
    let (engine, thread) = start(&m);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let mut long = request(vec![vec![3, 4, 5]], 1, 300, 1, 0);
    long.ignore_eos = true;
    let long_rx = engine.submit(long).expect("submit long");
    let version = rt.block_on(engine.swap(m2.model.clone())).expect("swap");
    assert_eq!(version, 1);
    let old = collect(long_rx, 1);
    assert_eq!(old.version, Some(0), "the request in flight finished on the old weights");
    assert_eq!(old.ids[0].len(), 300);
    let eos = engine.tokenizer().eos_token_ids().to_vec();
    // Its tokens are the old model's, every one of them (no mix of versions).
    let cfg = RolloutConfig { max_new_tokens: 300, seed: 1, ..RolloutConfig::default() };
    let want = rollout(&m.model, &[vec![3, 4, 5]], &cfg, None).expect("rollout");
    assert_eq!(old.ids[0], want[0][0].completion_ids);
    let prompts = vec![vec![7, 8, 9]];
    let new = collect(engine.submit(request(prompts.clone(), 2, 8, 9, 0)).expect("submit"), 2);
    assert_eq!(new.version, Some(1));
    assert_same(&new, &in_process(&m2.model, &prompts, 2, 8, 9, 0, &eos));
    assert_eq!(engine.stats().weight_version, 1);
    engine.shutdown();
    thread.join().expect("engine thread");
}

#[test]
fn shutdown_refuses_new_requests_and_finishes_queued_ones() {
    let (_d, m) = tiny(5);
    let (engine, thread) = start(&m);
    let rx = engine.submit(request(vec![vec![1, 2]], 3, 6, 0, 0)).expect("submit");
    engine.shutdown();
    assert!(engine.submit(request(vec![vec![1, 2]], 1, 6, 0, 0)).is_err());
    let o = collect(rx, 3);
    assert!(o.reasons.iter().all(Option::is_some), "every choice finished: {o:?}");
    thread.join().expect("engine thread");
}
