//! Smoke test of `aha serve` over plain HTTP/1.1: a tiny model made with `aha init` is served on
//! a free port; health, a completion (deterministic under a seed), a streamed chat, OpenAI-shaped
//! errors (400, 404, 413), a weight reload, and a clean exit on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{init_tiny, serve, Served};
use serde_json::{json, Value};

/// `aha serve` on `model` with this test's limits.
fn start(model: &Path) -> Served {
    serve(model, &["--max-tokens-limit", "64", "--max-body-bytes", "4096"], Duration::from_secs(120))
}

/// One HTTP/1.1 request; returns the status and the raw body.
fn request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn post_json(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = request(port, "POST", path, &body.to_string());
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

fn get_json(port: u16, path: &str) -> (u16, Value) {
    let (status, text) = request(port, "GET", path, "");
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

fn check_completions(port: u16) {
    let body =
        json!({"model": "tiny", "prompt": [[1, 2, 3], [4, 5]], "n": 2, "max_tokens": 5, "seed": 7, "logprobs": 1});
    let (status, a) = post_json(port, "/v1/completions", &body);
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["object"], "text_completion");
    assert_eq!(a["choices"].as_array().unwrap().len(), 4, "{a}");
    assert_eq!(a["usage"]["prompt_tokens"], 5);
    assert_eq!(a["weight_version"], 0);
    let c = &a["choices"][3];
    assert_eq!(c["index"], 3);
    let ids = c["token_ids"].as_array().unwrap();
    assert!(!ids.is_empty() && ids.len() <= 5, "{c}");
    assert_eq!(c["logprobs"]["token_logprobs"].as_array().unwrap().len(), ids.len());
    let (_, b) = post_json(port, "/v1/completions", &body);
    let token_ids =
        |v: &Value| v["choices"].as_array().unwrap().iter().map(|c| c["token_ids"].clone()).collect::<Vec<_>>();
    assert_eq!(token_ids(&a), token_ids(&b), "same seed, same samples");
}

fn check_errors(port: u16) {
    let (status, e) = post_json(port, "/v1/completions", &json!({"prompt": "hi", "temperature": -1}));
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["param"], "temperature", "{e}");
    let (status, e) = post_json(port, "/v1/completions", &json!({"model": "gpt-4", "prompt": "hi"}));
    assert_eq!((status, e["error"]["code"].clone()), (404, json!("model_not_found")), "{e}");
    let (status, e) = post_json(port, "/v1/completions", &json!({"prompt": "hi", "max_tokens": 65}));
    assert_eq!((status, e["error"]["param"].clone()), (400, json!("max_tokens")), "{e}");
    let (status, text) = request(port, "POST", "/v1/completions", "{\"prompt\": ");
    assert_eq!(status, 400, "{text}");
    assert!(serde_json::from_str::<Value>(&text).unwrap()["error"]["message"].is_string());
    let (status, e) = post_json(port, "/v1/completions", &json!({"prompt": "x".repeat(5000)}));
    assert_eq!(status, 413, "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("4096"), "{e}");
    let (status, e) = get_json(port, "/v1/nothing");
    assert_eq!(status, 404, "{e}");
    assert!(e["error"]["message"].is_string());
}

fn check_chat_stream(port: u16) {
    let body = json!({
        "model": "tiny", "messages": [{"role": "user", "content": "1+1"}], "max_tokens": 4, "stream": true,
        "stream_options": {"include_usage": true}
    });
    let (status, text) = request(port, "POST", "/v1/chat/completions", &body.to_string());
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("chat.completion.chunk") && text.contains("\"role\":\"assistant\""), "{text}");
    assert!(text.contains("\"finish_reason\":\"") && text.contains("\"usage\":"), "{text}");
    assert!(text.contains("data: [DONE]"), "{text}");
}

fn check_reload(port: u16, model: &Path) {
    let (status, r) = post_json(port, "/update_weights_from_disk", &json!({"model_path": model}));
    assert_eq!((status, r["success"].clone(), r["weight_version"].clone()), (200, json!(true), json!(1)), "{r}");
    let (status, r) = post_json(port, "/update_weights_from_disk", &json!({"model_path": "/no/such/model"}));
    assert_eq!((status, r["success"].clone()), (400, json!(false)), "{r}");
    assert!(r["message"].as_str().unwrap().contains("/no/such/model"), "{r}");
    let (_, h) = get_json(port, "/health");
    assert_eq!(h["weight_version"], 1, "{h}");
}

#[test]
fn serve_answers_http_and_exits_on_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("tiny");
    init_tiny(&model, &["--heads", "2", "--kv-heads", "1", "--seed", "3"]);
    let mut server = start(&model);
    let (status, h) = get_json(server.port, "/health");
    assert_eq!(status, 200);
    assert_eq!((h["status"].clone(), h["weight_version"].clone()), (json!("ok"), json!(0)), "{h}");
    let (_, models) = get_json(server.port, "/v1/models");
    assert_eq!(models["data"][0]["id"], "tiny", "{models}");
    check_completions(server.port);
    check_errors(server.port);
    check_chat_stream(server.port);
    check_reload(server.port, &model);

    // A stream in flight when SIGTERM arrives still runs to its end.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let body = json!({"prompt": [1, 2], "max_tokens": 64, "ignore_eos": true, "stream": true}).to_string();
    let head = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    stream.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let mut first = [0u8; 64];
    let got = stream.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..got]).starts_with("HTTP/1.1 200"));
    server.sigterm();
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "{rest}");
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    let status = server.wait_exit();
    assert!(status.success(), "{status}");
}
