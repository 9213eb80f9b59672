//! `aha grpo` with `[rollout] engine = "openai"` end to end, through the built binary, against
//! reference servers run inside this test: each speaks the `aha serve` protocol
//! (`/v1/models`, `/update_weights_from_disk`, `/v1/completions` with token-id prompts, `seed`
//! and `prompt_index_offset`, `weight_version`) and samples with the in-process rollout of
//! the weights it was told to load. Checked: the first step's completions equal an in-process
//! run's, weights are pushed every step, staleness is bounded and logged, and a server that
//! dies fails the step naming its URL while `--resume` recovers with a healthy one. The same
//! runs against real `aha serve` processes close the loop with the server itself.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aha_model::{
    load_model, rollout, ExecRequest, FinishReason, LoadedModel, ModelSpec, RolloutConfig, SamplingParams,
};
use common::{aha, init_model, serve, step_lines, Served};
use serde_json::{json, Value};

fn samples(run: &Path, step: u64) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|v| v["step"] == step).collect()
}

fn config(model: &Path, out: &Path, steps: usize, rollout: &str) -> String {
    format!(
        "model = {model:?}\noutput_dir = {out:?}\nseed = 5\n\
         [data]\ntask = {{ name = \"arithmetic\" }}\ntask_size = 40\ntemplate = \"raw\"\n\
         [grpo]\nmax_steps = {steps}\nprompts_per_step = 2\ngroup_size = 2\nmax_completion_length = 10\n\
         temperature = 0.9\ntop_k = 20\n\
         [optim]\nlearning_rate = 1e-3\n\
         [[rewards]]\nname = \"accuracy\"\nkind = \"numeric\"\n[[rewards]]\nkind = \"format\"\n\
         [run]\nsave_steps = 1\nkeep_last = 5\nlog_samples_every = 1\nprogress = false\n{rollout}"
    )
}

fn remote_table(urls: &[String], max_staleness: usize) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[rollout]\nengine = \"openai\"\nurls = [{}]\nmax_staleness = {max_staleness}\nretries = 0\ntimeout_s = 60\n",
        urls.join(", ")
    )
}

fn run_grpo(dir: &Path, name: &str, text: &str, extra: &[&str]) -> Output {
    let toml = dir.join(format!("{name}.toml"));
    std::fs::write(&toml, text).unwrap();
    let mut args = vec!["grpo", "--config", toml.to_str().unwrap()];
    args.extend_from_slice(extra);
    aha(&args)
}

/// [`run_grpo`], which must succeed.
fn run_grpo_ok(dir: &Path, name: &str, text: &str, extra: &[&str]) {
    let out = run_grpo(dir, name, text, extra);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A reference server: the `aha serve` protocol over the in-process rollout.
#[derive(Default)]
struct RefServer {
    model: Mutex<Option<LoadedModel>>,
    version: AtomicUsize,
    reloads: Mutex<Vec<String>>,
    completions: AtomicUsize,
}

/// Starts a reference server on a free port; it stops listening after `max_requests`.
fn spawn_server(max_requests: Option<usize>) -> (String, Arc<RefServer>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(RefServer::default());
    let shared = state.clone();
    std::thread::spawn(move || {
        for (served, conn) in listener.incoming().enumerate() {
            if let Ok(stream) = conn {
                handle(stream, &shared);
            }
            if max_requests.is_some_and(|m| served + 1 >= m) {
                return; // the listener closes: later connections are refused
            }
        }
    });
    (url, state)
}

fn handle(mut stream: TcpStream, state: &RefServer) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    let mut len = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    let body: Value = if len > 0 { serde_json::from_slice(&body).unwrap() } else { Value::Null };
    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
    let (status, answer) = route(&path, &body, state);
    let text = answer.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(text.as_bytes()).unwrap();
}

fn route(path: &str, body: &Value, state: &RefServer) -> (&'static str, Value) {
    match path {
        "/v1/models" => ("200 OK", json!({"data": [{"id": "tiny"}]})),
        "/update_weights_from_disk" => {
            let dir = body["model_path"].as_str().unwrap().to_string();
            let lm = load_model(&ModelSpec::HfDir(dir.clone().into()), &ExecRequest::default()).unwrap();
            *state.model.lock().unwrap() = Some(lm);
            state.reloads.lock().unwrap().push(dir);
            let v = state.version.fetch_add(1, Ordering::SeqCst) + 1;
            ("200 OK", json!({"success": true, "weight_version": v}))
        }
        "/v1/completions" => {
            state.completions.fetch_add(1, Ordering::SeqCst);
            ("200 OK", complete(body, state))
        }
        _ => ("404 Not Found", json!({"error": path})),
    }
}

fn complete(body: &Value, state: &RefServer) -> Value {
    let guard = state.model.lock().unwrap();
    let lm = guard.as_ref().expect("a completion before any weights were loaded");
    let prompts: Vec<Vec<u32>> = serde_json::from_value(body["prompt"].clone()).unwrap();
    let n = body["n"].as_u64().unwrap() as usize;
    let top_p = body["top_p"].as_f64().unwrap_or(1.0) as f32;
    let cfg = RolloutConfig {
        group_size: n,
        max_new_tokens: body["max_tokens"].as_u64().unwrap() as usize,
        sampling: SamplingParams {
            temperature: body["temperature"].as_f64().unwrap() as f32,
            top_p: (top_p < 1.0).then_some(top_p),
            top_k: body["top_k"].as_u64().map(|k| k as usize),
            min_p: body["min_p"].as_f64().map(|p| p as f32),
        },
        eos_ids: lm.tokenizer.eos_token_ids().to_vec(),
        stop_strings: Vec::new(),
        seed: body["seed"].as_u64().unwrap(),
        prompt_index_offset: body["prompt_index_offset"].as_u64().unwrap(),
    };
    let groups = rollout(&lm.model, &prompts, &cfg, None).unwrap();
    let choices: Vec<Value> = groups
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, s)| {
            let tokens: Vec<String> = s.completion_ids.iter().map(|t| format!("token_id:{t}")).collect();
            let finish = if s.finish_reason == FinishReason::Length { "length" } else { "stop" };
            json!({"index": i, "text": "", "token_ids": s.completion_ids,
                   "logprobs": {"tokens": tokens, "token_logprobs": s.logprobs}, "finish_reason": finish})
        })
        .collect();
    json!({"choices": choices, "weight_version": state.version.load(Ordering::SeqCst)})
}

fn metric(step: &Value, name: &str) -> f64 {
    step[name].as_f64().unwrap_or_else(|| panic!("no {name} in {step}"))
}

#[test]
fn remote_rollouts_match_in_process_and_weights_are_pushed_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = init_model(dir);
    let local = dir.join("local");
    run_grpo_ok(dir, "local", &config(&model, &local, 2, ""), &[]);

    let (a, sa) = spawn_server(None);
    let (b, sb) = spawn_server(None);
    let remote = dir.join("remote");
    run_grpo_ok(dir, "remote", &config(&model, &remote, 2, &remote_table(&[a, b], 0)), &[]);

    // Same weights, same streams: the first step's completions are the in-process ones.
    let texts = |run: &Path| samples(run, 1).iter().map(|s| s["completion"].clone()).collect::<Vec<_>>();
    assert_eq!(texts(&local), texts(&remote));
    assert!(texts(&local).iter().any(|t| t.as_str().is_some_and(|t| !t.is_empty())), "{:?}", texts(&local));
    let (l1, r) = (&step_lines(&local)[0], step_lines(&remote));
    for name in ["reward", "completions/mean_length", "completions/max_length"] {
        assert_eq!(metric(l1, name), metric(&r[0], name), "{name}");
    }
    assert!(l1.get("rollout/logprob_diff").is_none(), "in-process runs log no engine metrics");
    for (i, step) in r.iter().enumerate() {
        assert_eq!(metric(step, "rollout/staleness"), 0.0);
        assert_eq!(metric(step, "rollout/weight_version"), i as f64);
        assert!(metric(step, "rollout/logprob_diff") < 1e-3, "{step}");
        assert!((metric(step, "rollout/is_weight_mean") - 1.0).abs() < 1e-3, "{step}");
        assert!(metric(step, "rollout/is_clipped_frac") == 0.0, "{step}");
    }
    // Both servers loaded the weights of steps 0 and 1 and answered one request per step.
    for s in [&sa, &sb] {
        let reloads = s.reloads.lock().unwrap().clone();
        assert_eq!(reloads.len(), 2, "{reloads:?}");
        assert!(reloads[0].ends_with("step-000000") && reloads[1].ends_with("step-000001"), "{reloads:?}");
        assert_eq!(s.completions.load(Ordering::SeqCst), 2);
    }
    assert!(remote.join("weights-sync/step-000001/model.safetensors").exists());
}

#[test]
fn bounded_staleness_prefetches_the_next_round_and_logs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = init_model(dir);
    let (a, sa) = spawn_server(None);
    let run = dir.join("stale");
    let table = format!("{}max_prompts_per_request = 1\n", remote_table(&[a], 1));
    run_grpo_ok(dir, "stale", &config(&model, &run, 3, &table), &[]);
    let lines = step_lines(&run);
    let stale: Vec<f64> = lines.iter().map(|l| metric(l, "rollout/staleness")).collect();
    let version: Vec<f64> = lines.iter().map(|l| metric(l, "rollout/weight_version")).collect();
    assert_eq!(stale, vec![0.0, 1.0, 1.0]);
    assert_eq!(version, vec![0.0, 0.0, 1.0]);
    // Synced before steps 1, 2, 3; three rounds (no prefetch after the last step) of two
    // one-prompt requests each.
    assert_eq!(sa.reloads.lock().unwrap().len(), 3);
    assert_eq!(sa.completions.load(Ordering::SeqCst), 6);
}

#[test]
fn a_dead_server_fails_the_step_naming_it_and_resume_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = init_model(dir);
    let (a, _) = spawn_server(None);
    // Step 1 costs the second server two requests (reload, completions): it dies before step 2.
    let (b, _) = spawn_server(Some(2));
    let run = dir.join("dead");
    let out = run_grpo(dir, "dead", &config(&model, &run, 3, &remote_table(&[a.clone(), b.clone()], 0)), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&b) && err.contains("cannot connect"), "{err}");
    let done: Vec<u64> = step_lines(&run).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(done, vec![1], "the failed step wrote nothing");
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "step-000001");

    let (c, sc) = spawn_server(None);
    run_grpo_ok(dir, "dead", &config(&model, &run, 3, &remote_table(&[a, c], 0)), &["--resume"]);
    let done: Vec<u64> = step_lines(&run).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(done, vec![1, 2, 3]);
    let reloads = sc.reloads.lock().unwrap().clone();
    assert!(reloads[0].ends_with("step-000001"), "the new server gets the checkpoint's weights first: {reloads:?}");
}

/// `aha serve` on `model`, ready.
fn aha_serve(model: &Path) -> Served {
    serve(model, &[], Duration::from_secs(120))
}

#[test]
fn aha_serve_rollouts_match_in_process_and_a_killed_server_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = init_model(dir);
    let local = dir.join("local");
    run_grpo_ok(dir, "local", &config(&model, &local, 1, ""), &[]);

    let (a, mut b) = (aha_serve(&model), aha_serve(&model));
    let run = dir.join("served");
    let urls = [a.url(), b.url()];
    run_grpo_ok(dir, "served", &config(&model, &run, 1, &remote_table(&urls, 0)), &[]);
    let texts = |run: &Path| samples(run, 1).iter().map(|s| s["completion"].clone()).collect::<Vec<_>>();
    assert_eq!(texts(&local), texts(&run), "aha serve draws the in-process streams");
    let first = &step_lines(&run)[0];
    assert!(metric(first, "rollout/logprob_diff") < 1e-5, "{first}");
    assert_eq!(metric(first, "rollout/staleness"), 0.0);

    // One server dies: resuming for a second step fails at the weight push, naming it.
    let _ = b.child.kill();
    let _ = b.child.wait();
    let out = run_grpo(dir, "served", &config(&model, &run, 2, &remote_table(&urls, 0)), &["--resume"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&b.url()) && err.contains("cannot connect"), "{err}");
    assert_eq!(step_lines(&run).len(), 1, "the failed step wrote nothing");

    // A fresh server in its place: the resumed run syncs the checkpoint's weights and goes on,
    // now with background rollouts (max_staleness = 1).
    let c = aha_serve(&model);
    run_grpo_ok(dir, "served", &config(&model, &run, 3, &remote_table(&[a.url(), c.url()], 1)), &["--resume"]);
    let done: Vec<u64> = step_lines(&run).iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(done, vec![1, 2, 3]);
    // Step 3's rollouts were requested in the background while step 2 trained.
    let stale: Vec<f64> = step_lines(&run).iter().map(|l| metric(l, "rollout/staleness")).collect();
    assert_eq!(stale, vec![0.0, 0.0, 1.0]);
}

#[test]
fn a_lora_policy_reaches_aha_serve_as_an_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = init_model(dir);
    let server = aha_serve(&model);
    let run = dir.join("lora");
    let text = format!("{}[lora]\nr = 4\n", config(&model, &run, 2, &remote_table(&[server.url()], 0)));
    run_grpo_ok(dir, "lora", &text, &[]);
    assert!(run.join("weights-sync/step-000001/adapter_config.json").exists(), "the adapter is what is pushed");
    for (i, step) in step_lines(&run).iter().enumerate() {
        assert_eq!(metric(step, "rollout/weight_version"), i as f64);
        assert!(metric(step, "rollout/logprob_diff") < 1e-5, "the server applies the pushed adapter: {step}");
    }
}
