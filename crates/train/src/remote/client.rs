//! Blocking HTTP to one inference server (`ureq`): JSON in, JSON out, every request bounded by
//! `rollout.timeout_s`, retried with backoff only when it could not connect or got a 5xx
//! answer. Every error names the server's URL, the endpoint and what happened.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;

use super::settings::RolloutSettings;
use crate::error::{Result, TrainError};

/// One server: its base URL and an HTTP agent with the run's timeouts.
#[derive(Clone)]
pub struct Server {
    /// The base URL, without a trailing slash.
    pub url: String,
    agent: ureq::Agent,
    retries: usize,
    timeout: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("url", &self.url).field("retries", &self.retries).finish()
    }
}

/// What one failed attempt was, and whether another may help.
enum Failure {
    Retryable(String),
    Final(String),
}

impl Server {
    /// A client for `url` with `settings`' timeout and retries.
    pub fn new(url: &str, settings: &RolloutSettings) -> Self {
        let timeout = settings.timeout();
        let agent = ureq::AgentBuilder::new().timeout_connect(timeout).timeout(timeout).build();
        Self { url: url.trim_end_matches('/').to_string(), agent, retries: settings.retries, timeout }
    }

    /// `POST {url}{path}` with a JSON body; the answer as JSON (`Value::Null` for a 2xx answer
    /// that is not JSON, like vLLM's plain-text adapter confirmation).
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let text = body.to_string();
        self.with_retries("POST", path, || {
            self.agent
                .post(&format!("{}{path}", self.url))
                .set("Content-Type", "application/json")
                .send_string(&text)
                .map_err(Box::new)
        })
    }

    /// `GET {url}{path}`, the answer as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        self.with_retries("GET", path, || self.agent.get(&format!("{}{path}", self.url)).call().map_err(Box::new))
    }

    fn with_retries(
        &self,
        method: &str,
        path: &str,
        call: impl Fn() -> std::result::Result<ureq::Response, Box<ureq::Error>>,
    ) -> Result<Value> {
        let mut attempt = 0;
        loop {
            let failure = match call() {
                Ok(resp) => match read_json(resp) {
                    Ok(v) => return Ok(v),
                    Err(e) => Failure::Final(e),
                },
                Err(e) => self.classify(e),
            };
            match failure {
                Failure::Retryable(_) if attempt < self.retries => {
                    std::thread::sleep(backoff(attempt));
                    attempt += 1;
                }
                Failure::Retryable(what) | Failure::Final(what) => {
                    let tries = attempt + 1;
                    return Err(TrainError::Other(format!(
                        "rollout server {}: {method} {path} failed ({tries} attempt(s)): {what}",
                        self.url
                    )));
                }
            }
        }
    }

    fn classify(&self, e: Box<ureq::Error>) -> Failure {
        match *e {
            ureq::Error::Status(code, resp) => {
                let body = resp.into_string().unwrap_or_default();
                let what = format!("HTTP {code}: {}", body.chars().take(500).collect::<String>());
                if code >= 500 {
                    Failure::Retryable(what)
                } else {
                    Failure::Final(what)
                }
            }
            ureq::Error::Transport(t) => {
                let kind = t.kind();
                let msg = t.to_string();
                if matches!(kind, ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Dns) {
                    Failure::Retryable(format!("cannot connect ({msg})"))
                } else if is_timeout(&t) {
                    Failure::Final(format!(
                        "no answer within {:.1} s (rollout.timeout_s): {msg}",
                        self.timeout.as_secs_f64()
                    ))
                } else {
                    Failure::Final(msg)
                }
            }
        }
    }
}

fn is_timeout(t: &ureq::Transport) -> bool {
    let io = std::error::Error::source(t).and_then(|s| s.downcast_ref::<std::io::Error>());
    io.is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock))
        || t.to_string().contains("timed out")
}

/// 0.5 s, 1 s, 2 s, ... capped at 8 s.
fn backoff(attempt: usize) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(4)))
}

/// The body as JSON; an empty or non-JSON 2xx body reads as `Null`.
fn read_json(resp: ureq::Response) -> std::result::Result<Value, String> {
    let mut text = String::new();
    resp.into_reader().read_to_string(&mut text).map_err(|e| format!("reading the answer: {e}"))?;
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::Instant;

    fn settings(timeout_s: f64, retries: usize) -> RolloutSettings {
        RolloutSettings { timeout_s, retries, ..Default::default() }
    }

    /// A port nothing listens on: bind, read the port, close.
    fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[test]
    fn connection_refused_names_the_url_after_retries() {
        let url = format!("http://127.0.0.1:{}", closed_port());
        let t0 = Instant::now();
        let err = Server::new(&url, &settings(5.0, 1)).get("/health").unwrap_err().to_string();
        assert!(err.contains(&url) && err.contains("cannot connect") && err.contains("2 attempt(s)"), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_silent_server_times_out_naming_the_url() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let hold = std::thread::spawn(move || {
            let conn = l.accept();
            std::thread::sleep(Duration::from_secs(3));
            drop(conn);
        });
        let t0 = Instant::now();
        let err = Server::new(&url, &settings(0.5, 2)).post("/v1/completions", &Value::Null).unwrap_err().to_string();
        assert!(t0.elapsed() < Duration::from_secs(2), "not retried, bounded by the timeout: {:?}", t0.elapsed());
        assert!(err.contains(&url) && err.contains("rollout.timeout_s") && err.contains("1 attempt(s)"), "{err}");
        hold.join().unwrap();
    }

    #[test]
    fn client_errors_are_final_and_server_errors_retried() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let serve = std::thread::spawn(move || {
            for status in ["503 Service Unavailable", "400 Bad Request"] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut s, &mut buf);
                let body = "{\"success\":false,\"message\":\"nope\"}";
                let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                s.write_all(head.as_bytes()).unwrap();
                s.write_all(body.as_bytes()).unwrap();
            }
        });
        let err = Server::new(&url, &settings(5.0, 3)).post("/x", &Value::Null).unwrap_err().to_string();
        assert!(err.contains("HTTP 400") && err.contains("nope") && err.contains("2 attempt(s)"), "{err}");
        serve.join().unwrap();
    }
}
