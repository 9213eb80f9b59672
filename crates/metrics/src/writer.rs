//! `MetricsWriter`: per-step metrics to `RUN_DIR/metrics.jsonl` and TensorBoard event files under
//! `RUN_DIR/tb/`, plus sample completions to `RUN_DIR/samples.jsonl`.
//!
//! Every call writes whole lines and flushes them to the operating system before returning, so a crash
//! loses at most the line being written. On `create`, a partial last line left by such a crash is cut off
//! before appending, so the next line starts cleanly; readers keep the last record of a step, so a resumed
//! run that repeats steps simply overrides them.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};
use crate::metrics::Metrics;
use crate::tensorboard::{Event, EventFileWriter};

/// File name of the per-step metrics log inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// File name of the sample-completion log inside a run directory.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// Directory of TensorBoard event files inside a run directory.
pub const TB_DIR: &str = "tb";
/// Keys every `metrics.jsonl` line carries besides the metrics; metric names may not use them.
pub const RESERVED_KEYS: [&str; 2] = ["step", "wall_time"];

/// One sample completion, as logged every N steps to `samples.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SampleLog {
    /// The prompt as the model saw it (after the chat template).
    pub prompt: String,
    /// The generated completion.
    pub completion: String,
    /// Total weighted reward; `None` when the sample was unscorable.
    pub reward: Option<f64>,
    /// Each reward function's score by name; `None` for unscorable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rewards: BTreeMap<String, Option<f64>>,
    /// The group advantage the sample received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advantage: Option<f64>,
    /// The reference answer, when the task has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Completion length in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
}

/// A sample line of `samples.jsonl`: the step, then the sample's fields.
#[derive(Serialize)]
struct SampleLine<'a> {
    step: u64,
    #[serde(flatten)]
    sample: &'a SampleLog,
}

/// Writes a run's metrics (JSONL + TensorBoard) and sample logs.
pub struct MetricsWriter {
    run_dir: PathBuf,
    metrics: File,
    samples: Option<File>,
    tb: EventFileWriter,
}

impl MetricsWriter {
    /// Opens `run_dir` for logging: creates it (and `tb/`) if needed, appends to `metrics.jsonl`, and starts
    /// a new TensorBoard event file `tb/events.out.tfevents.<unix time>.<host>.<pid>.<n>`.
    pub fn create(run_dir: &Path) -> Result<Self> {
        let tb_dir = run_dir.join(TB_DIR);
        fs::create_dir_all(&tb_dir).map_err(|e| MetricsError::io(&tb_dir, e))?;
        let metrics = open_for_append(&run_dir.join(METRICS_FILE))?;
        let now = unix_time();
        let tb = EventFileWriter::create(&tb_dir.join(event_file_name(now)), now)?;
        Ok(MetricsWriter { run_dir: run_dir.to_path_buf(), metrics, samples: None, tb })
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The TensorBoard event file this writer appends to.
    pub fn event_file(&self) -> &Path {
        self.tb.path()
    }

    /// Logs one step: a line `{"step":…,"wall_time":…,<name>:<value>,…}` in `metrics.jsonl` (non-finite
    /// values become `null`) and one event with a scalar summary per metric in TensorBoard.
    pub fn log(&mut self, step: u64, metrics: &Metrics) -> Result<()> {
        if let Some((name, _)) = metrics.iter().find(|(k, _)| RESERVED_KEYS.contains(k)) {
            return Err(MetricsError::ReservedName(name.to_string()));
        }
        let wall_time = unix_time();
        let line = metrics_line(step, wall_time, metrics);
        let path = self.run_dir.join(METRICS_FILE);
        self.metrics.write_all(line.as_bytes()).map_err(|e| MetricsError::io(&path, e))?;
        let event = Event {
            wall_time,
            step: i64::try_from(step).unwrap_or(i64::MAX),
            file_version: None,
            scalars: metrics.iter().map(|(k, v)| (k.to_string(), v as f32)).collect(),
        };
        self.tb.write_event(&event)
    }

    /// Writes a run header line `{"run":{…},"wall_time":…}` to `metrics.jsonl` (what ran: the
    /// execution plan, the command); a resumed run appends another. Readers skip these lines.
    pub fn log_run_header(&mut self, header: &serde_json::Value) -> Result<()> {
        let line = serde_json::json!({ "run": header, "wall_time": unix_time() }).to_string() + "\n";
        let path = self.run_dir.join(METRICS_FILE);
        self.metrics.write_all(line.as_bytes()).map_err(|e| MetricsError::io(&path, e))
    }

    /// Appends sample completions of `step` to `samples.jsonl`, one JSON object per sample.
    pub fn log_samples(&mut self, step: u64, samples: &[SampleLog]) -> Result<()> {
        let path = self.run_dir.join(SAMPLES_FILE);
        if self.samples.is_none() {
            self.samples = Some(open_for_append(&path)?);
        }
        let mut text = String::new();
        for sample in samples {
            let line = serde_json::to_string(&SampleLine { step, sample }).map_err(|e| MetricsError::Parse {
                path: path.clone(),
                line: 0,
                message: e.to_string(),
            })?;
            text.push_str(&line);
            text.push('\n');
        }
        match self.samples.as_mut() {
            Some(file) => file.write_all(text.as_bytes()).map_err(|e| MetricsError::io(&path, e)),
            None => Ok(()),
        }
    }
}

/// Formats one `metrics.jsonl` line with `step` and `wall_time` first.
fn metrics_line(step: u64, wall_time: f64, metrics: &Metrics) -> String {
    let mut line = format!("{{\"step\":{step},\"wall_time\":{}", json_number(wall_time));
    for (name, value) in metrics.iter() {
        let key = serde_json::Value::String(name.to_string());
        line.push_str(&format!(",{key}:{}", json_number(value)));
    }
    line.push_str("}\n");
    line
}

fn json_number(value: f64) -> String {
    // serde_json prints the shortest round-tripping form and `null` for NaN and infinities.
    serde_json::Value::from(value).to_string()
}

/// Opens `path` for appending, first cutting off a partial last line (one without a newline).
fn open_for_append(path: &Path) -> Result<File> {
    let mut file =
        File::options().read(true).append(true).create(true).open(path).map_err(|e| MetricsError::io(path, e))?;
    let complete = complete_prefix_len(&mut file).map_err(|e| MetricsError::io(path, e))?;
    let len = file.metadata().map_err(|e| MetricsError::io(path, e))?.len();
    if complete < len {
        file.set_len(complete).map_err(|e| MetricsError::io(path, e))?;
    }
    Ok(file)
}

/// The length of the file up to and including its last newline.
fn complete_prefix_len(file: &mut File) -> std::io::Result<u64> {
    let len = file.metadata()?.len();
    let mut pos = len;
    let mut buf = [0u8; 4096];
    while pos > 0 {
        let chunk = pos.min(buf.len() as u64);
        pos -= chunk;
        file.seek(SeekFrom::Start(pos))?;
        let part = &mut buf[..chunk as usize];
        file.read_exact(part)?;
        if let Some(i) = part.iter().rposition(|&b| b == b'\n') {
            return Ok(pos + i as u64 + 1);
        }
    }
    Ok(0)
}

fn unix_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `events.out.tfevents.<time>.<host>.<pid>.<n>`, the naming TensorBoard's own writer uses; the counter
/// keeps two writers opened in the same second by one process apart.
fn event_file_name(now: f64) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("events.out.tfevents.{}.{}.{}.{n}", now as u64, hostname(), std::process::id())
}

fn hostname() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String =
        raw.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')).collect();
    if clean.is_empty() {
        "localhost".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensorboard::read_event_file;

    fn step_metrics(step: u64) -> Metrics {
        let mut m = Metrics::new();
        m.set("reward", step as f64 / 10.0).set("rewards/format/mean", 1.0).set("kl", f64::NAN);
        m
    }

    #[test]
    fn metrics_line_format() {
        let mut m = Metrics::new();
        m.set("loss", 0.5).set("a\"b", f64::INFINITY);
        let line = metrics_line(3, 1.5, &m);
        assert_eq!(line, "{\"step\":3,\"wall_time\":1.5,\"a\\\"b\":null,\"loss\":0.5}\n");
    }

    #[test]
    fn writes_jsonl_and_tensorboard() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = MetricsWriter::create(dir.path()).unwrap();
        for step in 1..=3 {
            w.log(step, &step_metrics(step)).unwrap();
        }
        let text = fs::read_to_string(dir.path().join(METRICS_FILE)).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["step"], 3);
        assert_eq!(lines[2]["reward"], 0.3);
        assert!(lines[2]["kl"].is_null());

        let events = read_event_file(w.event_file()).unwrap();
        assert_eq!(events.len(), 4, "header + 3 steps");
        let last = &events[3];
        assert_eq!(last.step, 3);
        let reward = last.scalars.iter().find(|(t, _)| t == "reward").unwrap().1;
        assert_eq!(reward, 0.3f32);
        let kl = last.scalars.iter().find(|(t, _)| t == "kl").unwrap().1;
        assert!(kl.is_nan());
        let name = w.event_file().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
    }

    #[test]
    fn reserved_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = MetricsWriter::create(dir.path()).unwrap();
        let mut m = Metrics::new();
        m.set("step", 1.0);
        assert!(matches!(w.log(1, &m), Err(MetricsError::ReservedName(_))));
    }

    #[test]
    fn reopening_cuts_a_partial_line_and_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS_FILE);
        fs::write(&path, "{\"step\":1,\"wall_time\":0}\n{\"step\":2,\"wal").unwrap();
        let mut w = MetricsWriter::create(dir.path()).unwrap();
        w.log(2, &step_metrics(2)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("{\"step\":2,\"wall_time\":"));
        let second = MetricsWriter::create(dir.path()).unwrap();
        assert_ne!(second.event_file(), w.event_file(), "a new event file per writer");
    }

    #[test]
    fn samples_are_appended_with_their_step() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = MetricsWriter::create(dir.path()).unwrap();
        let sample = SampleLog {
            prompt: "2+2?".into(),
            completion: "<think>\n</think><answer>4</answer>".into(),
            reward: Some(1.0),
            rewards: [("math".to_string(), Some(1.0)), ("format".to_string(), None)].into(),
            ..SampleLog::default()
        };
        w.log_samples(10, &[sample.clone(), sample.clone()]).unwrap();
        w.log_samples(20, &[sample]).unwrap();
        let text = fs::read_to_string(dir.path().join(SAMPLES_FILE)).unwrap();
        let rows: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["step"], 10);
        assert_eq!(rows[2]["step"], 20);
        assert!(rows[0]["rewards"]["format"].is_null());
        let back: SampleLog = serde_json::from_value(rows[1].clone()).unwrap();
        assert_eq!(back.prompt, "2+2?");
        assert_eq!(back.reward, Some(1.0));
    }
}
