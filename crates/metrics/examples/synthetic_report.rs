//! Writes a synthetic run (metrics, TensorBoard events, samples, three evaluations) into a directory and
//! draws its report, to look at the plots without training anything:
//! `cargo run -p aha-metrics --example synthetic_report -- /tmp/synthetic-run [steps]`.

use std::path::PathBuf;

use aha_metrics::{draw_report, names, write_eval, EvalRecord, Metrics, MetricsWriter, SampleLog};

/// Deterministic noise in [-0.5, 0.5).
fn noise(state: &mut u64) -> f64 {
    *state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

fn step_metrics(t: f64, step: u64, rng: &mut u64) -> Metrics {
    let mut m = Metrics::new();
    m.set(names::REWARD, 0.3 + 1.2 * t + 0.3 * noise(rng))
        .set(names::reward_mean("accuracy"), (0.1 + 0.7 * t + 0.2 * noise(rng)).max(0.0))
        .set(names::reward_mean("format"), 0.6 + 0.4 * t.sqrt() + 0.1 * noise(rng))
        .set(names::ACCURACY, (0.1 + 0.7 * t + 0.2 * noise(rng)).clamp(0.0, 1.0))
        .set(names::COMPLETION_MEAN_LENGTH, 40.0 + 90.0 * t + 12.0 * noise(rng))
        .set(names::KL, 2e-4 * step as f64 * (1.0 + 0.6 * noise(rng)))
        .set(names::REFLECTION_PER_1K_WORDS, 2.0 + 6.0 * t + 1.5 * noise(rng))
        .set(names::LOSS, 0.02 * noise(rng))
        .set(names::GRAD_NORM, 0.8 + 0.4 * noise(rng))
        .set(names::LR, 3e-6);
    m
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "synthetic-run".into()));
    let steps: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let mut writer = MetricsWriter::create(&dir)?;
    let mut rng = 42u64;
    for step in 1..=steps {
        let t = step as f64 / steps as f64;
        writer.log(step, &step_metrics(t, step, &mut rng))?;
        if step % 50 == 0 {
            let sample = SampleLog {
                prompt: "Using 3, 5, 7 make 22.".into(),
                completion: "<think>3*5=15, 15+7=22</think><answer>3*5+7</answer>".into(),
                reward: Some(2.0),
                ..SampleLog::default()
            };
            writer.log_samples(step, &[sample])?;
        }
    }
    for (step, pass) in [(0, 0.12), (steps / 2, 0.41), (steps, 0.68)] {
        let frac = step as f64 / steps as f64;
        let record = EvalRecord {
            step,
            k: 8,
            questions: 100,
            pass_at_1: pass,
            cons_at_k: pass + 0.07,
            mean_completion_tokens: 42.0 + 80.0 * frac,
            reflection_per_1k_words: Some(2.4 + 5.0 * frac),
            ..EvalRecord::default()
        };
        write_eval(&dir, &record)?;
    }
    for path in draw_report(&dir)? {
        println!("{}", path.display());
    }
    Ok(())
}
