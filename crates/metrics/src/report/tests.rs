//! Tests of `draw_report` on a synthetic run: files, image sizes, ink on the canvas, the markdown.

use std::fs;
use std::path::Path;

use super::*;
use crate::eval::write_eval;
use crate::metrics::Metrics;
use crate::writer::MetricsWriter;

/// A deterministic noise source for synthetic curves.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

fn synthetic_run(dir: &Path, steps: u64) {
    let mut writer = MetricsWriter::create(dir).unwrap();
    let mut noise = Lcg(7);
    for step in 1..=steps {
        let t = step as f64 / steps as f64;
        let mut m = Metrics::new();
        m.set(names::REWARD, 0.2 + 0.7 * t + 0.2 * noise.next())
            .set(names::reward_mean("accuracy"), 0.1 + 0.7 * t + 0.2 * noise.next())
            .set(names::reward_mean("format"), 0.5 + 0.5 * t.sqrt())
            .set(names::ACCURACY, (0.1 + 0.7 * t + 0.2 * noise.next()).clamp(0.0, 1.0))
            .set(names::COMPLETION_MEAN_LENGTH, 40.0 + 80.0 * t + 10.0 * noise.next())
            .set(names::KL, 1e-4 * step as f64 * (1.0 + noise.next()))
            .set(names::REFLECTION_PER_1K_WORDS, 2.0 + 6.0 * t + noise.next())
            .set(names::LOSS, 0.01 * noise.next())
            .set(names::GRAD_NORM, 1.0 + noise.next());
        writer.log(step, &m).unwrap();
    }
    for (step, pass) in [(0, 0.15), (steps / 2, 0.45), (steps, 0.7)] {
        let record = EvalRecord {
            step,
            k: 8,
            questions: 100,
            pass_at_1: pass,
            cons_at_k: pass + 0.08,
            mean_completion_tokens: 40.0 + 70.0 * step as f64 / steps as f64,
            reflection_per_1k_words: Some(2.5 + 5.0 * step as f64 / steps as f64),
            ..EvalRecord::default()
        };
        write_eval(dir, &record).unwrap();
    }
}

/// (width, height, fraction of non-white pixels) of a PNG.
fn png_stats(path: &Path) -> (u32, u32, f64) {
    let decoder = png::Decoder::new(fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let ink = pixels.chunks(channels).filter(|p| p.iter().take(3).any(|&c| c < 250)).count();
    (info.width, info.height, ink as f64 / (pixels.len() / channels) as f64)
}

#[test]
fn report_of_a_full_run() {
    let dir = tempfile::tempdir().unwrap();
    synthetic_run(dir.path(), 120);
    let written = draw_report(dir.path()).unwrap();
    let stems: Vec<String> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let expected = [
        "reward.png",
        "accuracy.png",
        "reward_components.png",
        "completion_length.png",
        "kl.png",
        "reflection.png",
        "loss.png",
        "grad_norm.png",
        "report.png",
        "report.md",
    ];
    assert_eq!(stems, expected);
    for path in written.iter().filter(|p| p.extension().is_some_and(|e| e == "png")) {
        let (w, h, ink) = png_stats(path);
        assert!(w >= 900 && h >= 500, "{}: {w}x{h}", path.display());
        assert!((0.01..0.5).contains(&ink), "{}: ink fraction {ink}", path.display());
    }
    let (w, h, _) = png_stats(&dir.path().join(REPORT_PNG));
    assert_eq!((w, h), (3 * CELL_SIZE.0, 3 * CELL_SIZE.1), "8 panels in a 3×3 grid");
    let md = fs::read_to_string(dir.path().join(REPORT_MD)).unwrap();
    assert!(md.contains("![Reward](plots/reward.png)"), "{md}");
    assert!(md.contains("| `reward` |"), "{md}");
    assert!(md.contains("## Evaluation"), "{md}");
}

#[test]
fn eval_only_directory_draws_accuracy_length_and_reflection() {
    let dir = tempfile::tempdir().unwrap();
    write_eval(
        dir.path(),
        &EvalRecord {
            step: 0,
            k: 4,
            questions: 10,
            pass_at_1: 0.3,
            cons_at_k: 0.4,
            mean_completion_tokens: 50.0,
            ..EvalRecord::default()
        },
    )
    .unwrap();
    let written = draw_report(dir.path()).unwrap();
    let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_owned()).collect();
    assert_eq!(names, ["accuracy.png", "completion_length.png", "report.png", "report.md"]);
}

#[test]
fn accuracy_panel_falls_back_to_the_accuracy_reward() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = MetricsWriter::create(dir.path()).unwrap();
    for step in 1..=3 {
        let mut m = Metrics::new();
        m.set(names::reward_mean("accuracy"), 0.25 * step as f64);
        writer.log(step, &m).unwrap();
    }
    let log = load_metrics(dir.path()).unwrap();
    let panels = build_panels(&log, &[]);
    let accuracy = panels.iter().find(|p| p.stem == "accuracy").unwrap();
    assert_eq!(accuracy.series[0].points, vec![(1.0, 0.25), (2.0, 0.5), (3.0, 0.75)]);
}

#[test]
fn empty_directory_is_an_error_and_single_step_runs_draw() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(draw_report(dir.path()), Err(MetricsError::NothingToPlot(_))));
    let mut writer = MetricsWriter::create(dir.path()).unwrap();
    let mut m = Metrics::new();
    m.set(names::REWARD, 0.5);
    writer.log(1, &m).unwrap();
    assert_eq!(draw_report(dir.path()).unwrap().len(), 3);
}
