//! Unit tests of the rejection-sampling filter and mixer.

use std::collections::BTreeMap;

use super::*;

fn rec(prompt: &str, completion: &str, correct: bool, well_formed: bool, tokens: usize) -> SampleRecord {
    SampleRecord {
        prompt_index: 0,
        sample_index: 0,
        prompt: prompt.into(),
        answer: "1".into(),
        fields: Default::default(),
        task: None,
        completion: completion.into(),
        extracted: Some("1".into()),
        rewards: BTreeMap::new(),
        reward: Some(1.0),
        correct,
        well_formed,
        completion_tokens: tokens,
        finish_reason: "eos".into(),
    }
}

fn completions(rows: &[SftRow]) -> Vec<String> {
    rows.iter()
        .map(|r| match r {
            SftRow::Chat(m) => m[1].content.clone(),
            SftRow::PromptCompletion { completion, .. } => completion.clone(),
        })
        .collect()
}

#[test]
fn keeps_correct_well_formed_and_counts_each_drop_once() {
    let records = vec![
        rec("p", "a", true, true, 5),
        rec("p", "b", false, false, 5), // incorrect (first reason wins over malformed)
        rec("p", "c", true, false, 5),  // malformed
        rec("p", "a", true, true, 5),   // duplicate
        rec("q", "a", true, true, 5),   // same text, other prompt: kept
    ];
    let (rows, stats) = filter(&records, &FilterConfig::default());
    assert_eq!(completions(&rows), ["a", "a"]);
    let want = FilterStats {
        total: 5,
        kept: 2,
        incorrect: 1,
        malformed: 1,
        duplicate: 1,
        prompts: 2,
        prompts_kept: 2,
        ..FilterStats::default()
    };
    assert_eq!(stats, want);
    let (_, stats) = filter(&records, &FilterConfig { dedup: false, ..FilterConfig::default() });
    assert_eq!((stats.kept, stats.duplicate), (3, 0));
    let (_, stats) = filter(&records, &FilterConfig { require_correct: false, ..FilterConfig::default() });
    assert_eq!((stats.incorrect, stats.malformed), (0, 2));
}

#[test]
fn per_prompt_cap_keeps_the_first_survivors_in_sample_order() {
    let records: Vec<SampleRecord> = ["x1", "x2", "x3", "x4"]
        .iter()
        .flat_map(|c| [rec("p", c, true, true, 3), rec("q", &format!("q{c}"), true, true, 3)])
        .chain([rec("r", "bad", false, true, 3)])
        .collect();
    let cfg = FilterConfig { per_prompt_cap: 2, ..FilterConfig::default() };
    let (rows, stats) = filter(&records, &cfg);
    assert_eq!(completions(&rows), ["x1", "qx1", "x2", "qx2"]);
    assert_eq!((stats.over_cap, stats.incorrect, stats.prompts, stats.prompts_kept), (4, 1, 3, 2));
    // A duplicate does not use up the cap.
    let records = vec![rec("p", "a", true, true, 1), rec("p", "a", true, true, 1), rec("p", "b", true, true, 1)];
    let (rows, stats) = filter(&records, &FilterConfig { per_prompt_cap: 2, ..FilterConfig::default() });
    assert_eq!((completions(&rows), stats.duplicate, stats.over_cap), (vec!["a".into(), "b".into()], 1, 0));
}

#[test]
fn length_bounds_in_tokens_and_chars_are_inclusive() {
    let records = vec![
        rec("p", "aa", true, true, 2),
        rec("p", "bbb", true, true, 3),
        rec("p", "cccc", true, true, 4),
        rec("p", "ddddd", true, true, 5),
    ];
    let cfg = FilterConfig { min_tokens: Some(3), max_tokens: Some(4), ..FilterConfig::default() };
    let (rows, stats) = filter(&records, &cfg);
    assert_eq!(completions(&rows), ["bbb", "cccc"]);
    assert_eq!((stats.too_short, stats.too_long), (1, 1));
    let cfg = FilterConfig { min_chars: Some(4), max_chars: Some(4), ..FilterConfig::default() };
    let (rows, stats) = filter(&records, &cfg);
    assert_eq!(completions(&rows), ["cccc"]);
    assert_eq!((stats.too_short, stats.too_long), (2, 1));
}

#[test]
fn rows_take_the_requested_sft_shape() {
    let records = vec![rec("Compute 1+2.", "<think>1+2=3</think><answer>3</answer>", true, true, 9)];
    let (rows, _) = filter(&records, &FilterConfig::default());
    let line = sft_row_json(&rows[0]);
    assert_eq!(line["messages"][0]["role"], "user");
    assert_eq!(line["messages"][1]["content"], "<think>1+2=3</think><answer>3</answer>");
    let cfg = FilterConfig { format: SftFormat::PromptCompletion, ..FilterConfig::default() };
    let (rows, _) = filter(&records, &cfg);
    assert_eq!(sft_row_json(&rows[0]), json!({"prompt": "Compute 1+2.", "completion": records[0].completion}));
}

fn pc(tag: &str, i: usize) -> SftRow {
    SftRow::PromptCompletion { prompt: format!("{tag}{i}"), completion: "c".into() }
}

fn count(rows: &[SftRow], tag: &str) -> usize {
    rows.iter().filter(|r| matches!(r, SftRow::PromptCompletion { prompt, .. } if prompt.starts_with(tag))).count()
}

#[test]
fn mixing_takes_exactly_round_ratio_times_kept_and_is_deterministic() {
    let kept: Vec<SftRow> = (0..30).map(|i| pc("k", i)).collect();
    let other: Vec<SftRow> = (0..100).map(|i| pc("o", i)).collect();
    let small: Vec<SftRow> = (0..7).map(|i| pc("s", i)).collect();
    for (ratio, small_ratio) in [(0.0, 0.0), (1.0 / 3.0, 0.5), (0.25, 1.0), (2.0, 2.5)] {
        let sources = vec![(other.clone(), ratio), (small.clone(), small_ratio)];
        let (rows, stats) = mix(kept.clone(), &sources, 9).unwrap();
        let (want_o, want_s) = (mix_count(30, ratio), mix_count(30, small_ratio));
        assert_eq!((count(&rows, "k"), count(&rows, "o"), count(&rows, "s")), (30, want_o, want_s));
        assert_eq!(
            stats,
            MixStats { kept: 30, sources: vec![(100, want_o), (7, want_s)], total: 30 + want_o + want_s }
        );
        assert_eq!(mix(kept.clone(), &sources, 9).unwrap().0, rows, "same seed, same mix");
    }
    assert_eq!((mix_count(30, 1.0 / 3.0), mix_count(30, 2.5), mix_count(3, 0.5)), (10, 75, 2));
    // Without replacement while the source lasts; whole copies beyond it.
    let (rows, _) = mix(kept.clone(), &[(other.clone(), 1.0)], 1).unwrap();
    let mut drawn: Vec<&SftRow> = rows.iter().filter(|r| count(std::slice::from_ref(*r), "o") == 1).collect();
    drawn.sort_by_key(|r| format!("{r:?}"));
    drawn.dedup();
    assert_eq!(drawn.len(), 30, "30 distinct rows of the large source");
    let (rows, _) = mix(kept.clone(), &[(small.clone(), 1.0)], 1).unwrap();
    for i in 0..7 {
        let n = rows.iter().filter(|r| **r == pc("s", i)).count();
        assert!(n == 4 || n == 5, "row s{i} drawn {n} times: 4 whole copies plus 2 of the rest");
    }
    let a = mix(kept.clone(), &[(other.clone(), 0.5)], 1).unwrap().0;
    let b = mix(kept.clone(), &[(other.clone(), 0.5)], 2).unwrap().0;
    assert_ne!(a, b, "another seed, another draw or order");
}

#[test]
fn bad_mix_inputs_are_errors() {
    let kept = vec![pc("k", 0)];
    assert!(mix(kept.clone(), &[(vec![], 1.0)], 0).is_err());
    assert!(mix(kept.clone(), &[(vec![pc("o", 0)], f64::NAN)], 0).is_err());
    assert!(mix(kept, &[(vec![], 0.0)], 0).is_ok());
    let m: MixSource = "dir:x/chat.jsonl:0.25".parse().unwrap();
    assert_eq!((m.path, m.ratio), (PathBuf::from("dir:x/chat.jsonl"), 0.25));
    for bad in ["chat.jsonl", "chat.jsonl:-1", ":1", "a:nan", "a:inf"] {
        assert!(bad.parse::<MixSource>().is_err(), "{bad}");
    }
}

#[test]
fn samples_and_sft_rows_round_trip_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let records = vec![rec("p", "a", true, true, 1), rec("q", "b", false, true, 2)];
    let path = dir.path().join("s.jsonl");
    write_samples(&path, &records).unwrap();
    assert_eq!(read_samples(&path).unwrap(), records);
    std::fs::write(&path, "{\"prompt\": 1}\n").unwrap();
    assert!(read_samples(&path).unwrap_err().to_string().contains("s.jsonl:1"));
    let rows = vec![pc("x", 1), SftRow::Chat(vec![ChatMessage::new("user", "u"), ChatMessage::new("assistant", "a")])];
    let sft = dir.path().join("sub/sft.jsonl");
    write_sft_jsonl(&sft, &rows).unwrap();
    let (back, skipped) = read_sft_jsonl(&sft, &SftColumns::default()).unwrap();
    assert_eq!((back, skipped.0.len()), (rows, 0));
}

#[test]
fn a_rejection_job_parses_from_toml_and_denies_unknown_fields() {
    let text = r#"
seed = 3
[sample.data]
task = { name = "arithmetic", max_value = 3 }
split = "train"
limit = 50
[sample.sampling]
k = 8
temperature = 1.0
[filter]
per_prompt_cap = 4
max_tokens = 256
[[mix]]
path = "chat.jsonl"
ratio = 0.33
"#;
    let job: RejectionJob = toml::from_str(text).unwrap();
    assert_eq!((job.sample.sampling.k, job.sample.sampling.top_p), (8, 0.95), "unset fields keep their defaults");
    assert_eq!((job.filter.per_prompt_cap, job.filter.dedup, job.mix[0].ratio), (4, true, 0.33));
    assert!(toml::from_str::<RejectionJob>(&text.replace("per_prompt_cap", "per_prompt_kap")).is_err());
}

#[test]
fn run_rejection_and_run_eval_work_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let lm = aha_model::init_tiny(&dir.path().join("m"), &aha_model::TinySpec::default(), 1).unwrap();
    let data =
        PromptSource { limit: 3, ..PromptSource::task(crate::tasks::TaskSpec::Countdown { numbers: 3, max_value: 9 }) };
    let sampling = GenSettings { k: 2, max_new_tokens: 4, ..GenSettings::default() };
    let keep_all =
        FilterConfig { require_correct: false, require_well_formed: false, dedup: false, ..FilterConfig::default() };
    let job = RejectionJob {
        sample: SampleJob { data: data.clone(), sampling, rewards: Vec::new() },
        filter: keep_all,
        mix: Vec::new(),
        seed: 0,
    };
    let (samples, sft) = (dir.path().join("s.jsonl"), dir.path().join("sft.jsonl"));
    let report = run_rejection(&lm, &job, &samples, &sft, &mut TrainProgress::hidden(0)).unwrap();
    assert_eq!((report.filter.total, report.filter.kept, report.mix.total), (6, 6, 6));
    let records = read_samples(&samples).unwrap();
    assert!(records.iter().all(|r| r.rewards.contains_key("accuracy") && r.rewards.contains_key("format")));
    assert_eq!(read_sft_jsonl(&sft, &SftColumns::default()).unwrap().0.len(), 6);

    let eval_job = crate::eval::EvalJob {
        data,
        sampling: crate::eval::EvalSettings { generation: job.sample.sampling.clone(), ..Default::default() },
        rewards: Vec::new(),
        out_dir: Some(dir.path().join("eval")),
    };
    let out = crate::eval::run_eval(&lm, &eval_job, &mut TrainProgress::hidden(0)).unwrap();
    assert_eq!((out.record.questions, out.record.k), (3, 2));
    assert!(dir.path().join("eval/eval.json").is_file());
    let eval_samples = read_samples(&dir.path().join("eval/samples.jsonl")).unwrap();
    let completions = |rs: &[SampleRecord]| rs.iter().map(|r| r.completion.clone()).collect::<Vec<_>>();
    assert_eq!(completions(&eval_samples), completions(&records), "same seed and settings, same samples");
}
