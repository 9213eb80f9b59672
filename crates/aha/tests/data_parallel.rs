//! Data parallel over MPI (feature `mpi`): `mpirun -np 2 aha sft|grpo` against one process with
//! the same global batch. Same rollouts and rewards, parameters within 1e-5 relative; a config
//! mismatch between ranks is refused before step 1; a rank killed with SIGKILL ends the job with
//! an error naming it, and `--resume` then continues where the last checkpoint left off.
//!
//! Needs `mpirun` (Open MPI) on PATH; `.ci/run` installs it and runs this file with
//! `cargo test -p aha --features mpi --test data_parallel`.
#![cfg(feature = "mpi")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use common::{cold_stage, init_model, recipe_head, rl_stage, step_lines, AHA, TASK};

/// Writes `DIR/one.toml` and `DIR/two.toml` (`config(run dir, ranks)` for the runs `DIR/one`
/// and `DIR/two`), then runs `aha COMMAND… one.toml` in one process and `mpirun -np 2 aha
/// COMMAND… two.toml`; both must succeed. The two run directories.
fn one_and_two(dir: &Path, command: &[&str], config: impl Fn(&Path, usize) -> String) -> (PathBuf, PathBuf) {
    let (one, two) = (dir.join("one"), dir.join("two"));
    let (c1, c2) = (dir.join("one.toml"), dir.join("two.toml"));
    std::fs::write(&c1, config(&one, 1)).unwrap();
    std::fs::write(&c2, config(&two, 2)).unwrap();
    let what = command[0];
    ok(one_process().args(command).arg(&c1).output().unwrap(), &format!("aha {what}"));
    ok(mpirun(2).arg(AHA).args(command).arg(&c2).output().unwrap(), &format!("mpirun -np 2 aha {what}"));
    (one, two)
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `mpirun` as CI runs it: as root, two ranks on this machine, one thread each.
fn mpirun(np: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", &np.to_string()]);
    c.args(["-x", "RAYON_NUM_THREADS=1", "-x", "AHA_COLLECTIVE_TIMEOUT_S=120"]);
    c
}

fn one_process() -> Command {
    let mut c = Command::new(AHA);
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn latest_weights(run: &Path) -> HashMap<String, Tensor> {
    let root = run.join("checkpoints");
    let latest = std::fs::read_to_string(root.join("latest")).unwrap();
    candle_core::safetensors::load(root.join(latest.trim()).join("model.safetensors"), &Device::Cpu).unwrap()
}

/// The largest relative difference of a parameter tensor, ‖a − b‖₂ / ‖a‖₂, over every tensor but
/// the key biases. A key bias adds the same amount to every score of a query, which softmax
/// cancels: its gradient is analytically zero and numerically float noise, which AdamW normalises
/// to steps of the learning rate's size, so its values depend on the order gradients are summed
/// in (2 ranks sum micro-batches (0 + 2) + (1 + 3), one process ((0 + 1) + 2) + 3) and say
/// nothing about data parallelism. Every other tensor must agree.
fn max_rel_diff(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for (name, x) in a.iter().filter(|(n, _)| !n.ends_with("k_proj.bias")) {
        let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let y: Vec<f32> = b[name].flatten_all().unwrap().to_vec1().unwrap();
        let diff: f64 = x.iter().zip(&y).map(|(p, q)| f64::from(p - q).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = x.iter().map(|p| f64::from(*p).powi(2)).sum::<f64>().sqrt();
        worst = worst.max(diff / norm.max(1e-12));
    }
    eprintln!("largest relative parameter difference: {worst:.3e}");
    worst
}

fn sft_config(model: &Path, out: &Path, lr: f64) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data/sft-arithmetic.jsonl");
    format!(
        "model = {model:?}\noutput_dir = {out:?}\n[data]\npath = {data:?}\n\
         [sft]\nmax_steps = 5\nbatch_size = 8\nmicro_batch_size = 2\n\
         [optim]\nlearning_rate = {lr}\n[run]\nprogress = false\nsave_steps = 1\nkeep_last = 10\n"
    )
}

#[test]
fn sft_on_two_ranks_is_sft_on_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let model = init_model(tmp.path());
    let (one, two) = one_and_two(tmp.path(), &["sft", "--config"], |out, _| sft_config(&model, out, 1e-3));
    let (l1, l2) = (step_lines(&one), step_lines(&two));
    assert_eq!(l1.len(), 5);
    assert_eq!(l2.len(), 5, "rank 0 alone wrote one line per step");
    for (a, b) in l1.iter().zip(&l2) {
        let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs(), "loss {x} vs {y}");
        assert_eq!(a["tokens"], b["tokens"]);
    }
    let diff = max_rel_diff(&latest_weights(&one), &latest_weights(&two));
    assert!(diff < 1e-5, "parameters differ by {diff} (relative)");
}

#[test]
fn ranks_with_different_configs_are_refused_before_step_one() {
    let tmp = tempfile::tempdir().unwrap();
    let model = init_model(tmp.path());
    let run = tmp.path().join("run");
    let (a, b) = (tmp.path().join("a.toml"), tmp.path().join("b.toml"));
    std::fs::write(&a, sft_config(&model, &run, 1e-3)).unwrap();
    std::fs::write(&b, sft_config(&model, &run, 2e-3)).unwrap();
    let out = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "1", AHA, "sft", "--config", a.to_str().unwrap()])
        .args([":", "-np", "1", AHA, "sft", "--config", b.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a mismatch must fail");
    assert!(err.contains("disagree with rank 0") && err.contains("[1]"), "stderr: {err}");
    assert!(!run.join("metrics.jsonl").exists(), "nothing was trained or written");
}

fn grpo_config(model: &Path, out: &Path, loss_type: &str, steps: usize) -> String {
    format!(
        "model = {model:?}\noutput_dir = {out:?}\nseed = 3\n\
         [data]\ntask = {{ name = \"arithmetic\" }}\ntask_size = 50\ntemplate = \"raw\"\n\
         [grpo]\nmax_steps = {steps}\nprompts_per_step = 4\ngroup_size = 2\nmax_completion_length = 12\n\
         num_iterations = 2\nminibatches = 2\nmicro_batch_size = 2\ntemperature = 1.2\n\
         [grpo.loss]\nbeta = 0.001\nloss_type = {loss_type:?}\n\
         [optim]\nlearning_rate = 1e-3\n\
         [[rewards]]\nname = \"accuracy\"\nkind = \"numeric\"\n[[rewards]]\nkind = \"format\"\n\
         [[rewards]]\nkind = \"language\"\n\
         [run]\nsave_steps = 1\nkeep_last = 10\nprogress = false\nlog_samples_every = 1\n"
    )
}

fn samples(run: &Path) -> String {
    std::fs::read_to_string(run.join("samples.jsonl")).unwrap()
}

#[test]
fn grpo_on_two_ranks_is_grpo_on_one_process() {
    for loss_type in ["dapo", "grpo"] {
        let tmp = tempfile::tempdir().unwrap();
        let model = init_model(tmp.path());
        let config = |out: &Path, _| grpo_config(&model, out, loss_type, 5);
        let (one, two) = one_and_two(tmp.path(), &["grpo", "--config"], config);
        assert_eq!(samples(&one), samples(&two), "{loss_type}: the logged completions differ");
        let (l1, l2) = (step_lines(&one), step_lines(&two));
        assert_eq!(l1.len(), 5);
        assert_eq!(l2.len(), 5, "{loss_type}: rank 0 alone wrote one line per step");
        for (a, b) in l1.iter().zip(&l2) {
            assert_eq!(a["reward"], b["reward"], "{loss_type}: reward curves differ");
            assert_eq!(a["completions/mean_length"], b["completions/mean_length"]);
            let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "{loss_type}: loss {x} vs {y}");
        }
        // The language reward varies between a random model's samples, so the policy moves.
        assert!(l1.iter().all(|l| l["grad_norm"].as_f64().unwrap() > 1e-3), "{loss_type}: no gradient: {l1:?}");
        let diff = max_rel_diff(&latest_weights(&one), &latest_weights(&two));
        assert!(diff < 1e-5, "{loss_type}: parameters differ by {diff} (relative)");
    }
}

/// The pid of rank `rank` among `mpirun`'s children (read from their environment).
fn rank_pid(mpirun_pid: u32, rank: usize) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{mpirun_pid}/task/{mpirun_pid}/children")).ok()?;
    children.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).find(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|&b| b == 0).any(|kv| kv == format!("OMPI_COMM_WORLD_RANK={rank}").as_bytes()))
            .unwrap_or(false)
    })
}

fn latest_step(run: &Path) -> usize {
    std::fs::read_to_string(run.join("checkpoints/latest"))
        .ok()
        .and_then(|l| l.trim().strip_prefix("step-").and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn a_killed_rank_stops_the_job_by_name_and_resume_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let model = init_model(tmp.path());
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let (c1, c2) = (tmp.path().join("one.toml"), tmp.path().join("two.toml"));
    let steps = 40;
    std::fs::write(&c1, grpo_config(&model, &one, "dapo", steps)).unwrap();
    std::fs::write(&c2, grpo_config(&model, &two, "dapo", steps)).unwrap();
    ok(one_process().args(["grpo", "--config", c1.to_str().unwrap()]).output().unwrap(), "aha grpo");

    let child = mpirun(2)
        .args([AHA, "grpo", "--config", c2.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while latest_step(&two) < 3 {
        assert!(start.elapsed().as_secs() < 120, "no checkpoint after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let victim = rank_pid(child.id(), 1).expect("rank 1's pid");
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the job must fail when a rank dies");
    assert!(err.contains("rank 1") && err.contains("signal 9"), "stderr does not name the rank: {err}");
    let killed_at = latest_step(&two);
    assert!(killed_at < steps, "the run finished before the kill (step {killed_at}); make it longer");

    let resumed = mpirun(2).args([AHA, "grpo", "--config", c2.to_str().unwrap(), "--resume"]).output().unwrap();
    ok(resumed, "mpirun -np 2 aha grpo --resume");
    assert_eq!(latest_step(&two), steps);
    let diff = max_rel_diff(&latest_weights(&one), &latest_weights(&two));
    assert!(diff < 1e-5, "the resumed run's parameters differ by {diff} (relative) from one uninterrupted process");
}

/// A pipeline whose sft and grpo stages are data parallel and whose eval stage runs on rank 0.
fn pipeline_recipe(out: &Path) -> String {
    recipe_head(out, 4, "")
        + &cold_stage("", "max_steps = 3, batch_size = 8, micro_batch_size = 2")
        + &rl_stage(
            "max_steps = 3, prompts_per_step = 4, group_size = 2, max_completion_length = 8, micro_batch_size = 2",
            1e-3,
            "progress = false, log_samples_every = 1",
        )
        + &format!(
            r#"
[[stages]]
name = "check"
kind = "eval"
data = {{ task = {TASK}, limit = 4, template = "raw" }}
sampling = {{ k = 2, max_new_tokens = 8 }}
"#
        )
}

#[test]
fn a_pipeline_on_two_ranks_trains_what_one_process_trains() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = one_and_two(tmp.path(), &["pipeline"], |out, _| pipeline_recipe(out));
    for stage in ["01-cold", "02-rl"] {
        let diff = max_rel_diff(&latest_weights(&one.join(stage)), &latest_weights(&two.join(stage)));
        assert!(diff < 1e-5, "{stage}: parameters differ by {diff} (relative)");
        assert_eq!(step_lines(&two.join(stage)).len(), 3, "{stage}: rank 0 alone wrote its metrics");
    }
    assert_eq!(samples(&one.join("02-rl")), samples(&two.join("02-rl")));
    for d in [&one, &two] {
        assert!(d.join("03-check/stage.json").is_file() && d.join("report.md").is_file(), "{}", d.display());
    }
}

/// Without a micro-batch size, each rank takes ⌈per-minibatch samples / ranks⌉ of every
/// minibatch, never crossing into the next: 3 prompts × 2 samples in 2 minibatches of 3 split into
/// micro-batches of 2 and 1, the step of one process with `micro_batch_size = 2`.
#[test]
fn grpo_without_a_micro_batch_size_shares_each_minibatch_over_the_ranks() {
    let tmp = tempfile::tempdir().unwrap();
    let model = init_model(tmp.path());
    // One process with micro-batches of 2; the two ranks without a micro-batch size.
    let uneven = |out: &Path, ranks: usize| {
        let micro = if ranks == 1 { "micro_batch_size = 2" } else { "" };
        grpo_config(&model, out, "bnpo", 4)
            .replace("prompts_per_step = 4", "prompts_per_step = 3")
            .replace("micro_batch_size = 2", micro)
    };
    let (one, two) = one_and_two(tmp.path(), &["grpo", "--config"], uneven);
    assert_eq!(samples(&one), samples(&two));
    let (l1, l2) = (step_lines(&one), step_lines(&two));
    for (a, b) in l1.iter().zip(&l2) {
        assert_eq!(a["reward"], b["reward"]);
        let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1e-3), "loss {x} vs {y}");
    }
    let diff = max_rel_diff(&latest_weights(&one), &latest_weights(&two));
    assert!(diff < 1e-5, "parameters differ by {diff} (relative)");
}
