//! A reward model inside GRPO: a short loop with a tiny policy and a tiny reward model enabled
//! for the last N steps. The model is called only in those steps (its call counter and the
//! metrics say so), each sample's total is the rule reward plus weight × the model's own score
//! of (prompt, completion), and the advantages move only once it is active.

use aha_model::io::ModelSpec;
use aha_model::{init_tiny, TinySpec};
use aha_reward::{Registry, Reward, Sample, Score};
use aha_train::config::OptimConfig;
use aha_train::data::PromptRow;
use aha_train::grpo::{GrpoSettings, GrpoTrainer, TextCodec};
use aha_train::optim::{named_vars, AdamW};
use aha_train::rm::{ModelReward, ModelRewardSpec, ModelRewards, Objective, RewardModel, ScoreTransform};
use aha_train::tasks::{Split, TaskSpec};
use aha_train::template::PromptTemplate;

/// Always the same value: alone it gives every group zero reward spread.
struct ConstReward;
impl Reward for ConstReward {
    fn score(&self, _: &Sample) -> Score {
        Score::Value(0.25)
    }
}

fn tiny() -> TinySpec {
    TinySpec {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 1,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        max_position_embeddings: 96,
        ..TinySpec::default()
    }
}

#[test]
fn a_model_reward_for_the_last_steps_is_called_only_there_and_enters_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let lm = init_tiny(&dir.path().join("policy"), &tiny(), 3).unwrap();
    init_tiny(&dir.path().join("rm-base"), &tiny(), 4).unwrap();
    // A tiny reward model: a base with a fresh head (large enough to spread the scores), saved
    // and reopened the way GRPO loads one.
    let mut base = RewardModel::load(
        &ModelSpec::HfDir(dir.path().join("rm-base")),
        Some(PromptTemplate::Raw),
        1.0,
        9,
        &Default::default(),
    )
    .unwrap();
    base.objective = Objective::Pairwise;
    let rm_dir = dir.path().join("rm");
    base.save(&rm_dir).unwrap();
    let spec: ModelRewardSpec = toml::from_str(&format!(
        "kind = \"model\"\nname = \"helpful\"\npath = {:?}\nweight = 0.5\nlast_steps = 2\n",
        rm_dir
    ))
    .unwrap();
    let max_steps = 4;
    let model_rewards = ModelRewards::load(std::slice::from_ref(&spec), max_steps, &Default::default()).unwrap();
    assert_eq!(model_rewards.rewards[0].from_step, 3);

    let task = TaskSpec::Arithmetic { min_operands: 2, max_operands: 3, max_value: 9 };
    let rows: Vec<PromptRow> = task.generate(5, Split::Train, 12, 10).iter().map(PromptRow::from).collect();
    let prompt_ids = rows.iter().map(|r| TextCodec::encode(&lm.tokenizer, &r.prompt).unwrap()).collect();
    let registry = Registry::from_rewards(vec![("const".into(), 1.0, Box::new(ConstReward))], 0);
    let settings = GrpoSettings {
        max_steps,
        prompts_per_step: 2,
        group_size: 3,
        max_completion_length: 8,
        ..GrpoSettings::default()
    };
    let opt =
        AdamW::new(named_vars(&lm.varmap), OptimConfig { learning_rate: 1e-3, ..OptimConfig::default() }).unwrap();
    let mut trainer =
        GrpoTrainer::new(settings, &lm.model, opt, &rows, prompt_ids, &registry, &lm.tokenizer, 11).unwrap();
    trainer.model_rewards = model_rewards;
    let judge = RewardModel::open(&rm_dir, &Default::default()).unwrap();
    for step in 1..=max_steps {
        let out = trainer.step().unwrap();
        let active = step > max_steps - 2;
        assert_eq!(out.metrics["rewards/helpful/active"], if active { 1.0 } else { 0.0 }, "step {step}");
        assert_eq!(out.metrics.contains_key("rewards/helpful/mean"), active, "step {step}");
        assert_eq!(trainer.model_rewards.rewards[0].calls(), step.saturating_sub(2), "after step {step}");
        for s in &out.samples {
            let helpful = s.scored.rewards.get("helpful").copied().flatten();
            if !active {
                assert_eq!((helpful, s.scored.reward), (None, Some(0.25)));
                assert_eq!(s.advantage, 0.0, "a constant reward gives no advantage");
                continue;
            }
            let want = judge.score(&[(rows[s.row].prompt.as_str(), s.text.as_str())], 4).unwrap()[0].unwrap() as f64;
            let got = helpful.unwrap();
            assert!((got - want).abs() < 1e-5, "step {step}: logged {got}, the model says {want}");
            let total = s.scored.reward.unwrap();
            assert!((total - (0.25 + 0.5 * got)).abs() < 1e-9, "total {total} = 0.25 + 0.5 × {got}");
        }
        if active {
            assert!(out.samples.iter().any(|s| s.advantage.abs() > 1e-6), "the model reward moves advantages");
        }
    }
    assert_eq!(trainer.model_rewards.rewards[0].called_at_steps(), vec![3, 4]);
}

#[test]
fn windows_and_transforms() {
    struct Fixed;
    impl aha_train::rm::BatchScorer for Fixed {
        fn score_batch(&self, items: &[(&str, &str)]) -> aha_train::Result<Vec<Option<f64>>> {
            Ok(items.iter().map(|(_, r)| (r.len() < 5).then_some(0.0)).collect())
        }
    }
    let r = ModelReward::new("m", 2.0, 3, ScoreTransform::Sigmoid, Box::new(Fixed));
    assert!(!r.active_at(2) && r.active_at(3) && r.active_at(10));
    let rewards = ModelRewards { rewards: vec![r] };
    let mut a = aha_reward::ScoredSample { reward: None, ..Default::default() };
    let mut b = aha_reward::ScoredSample { reward: Some(1.0), ..Default::default() };
    rewards.apply(2, &[("p", "ok"), ("p", "too long")], &mut [&mut a, &mut b]).unwrap();
    assert_eq!((a.reward, rewards.rewards[0].calls()), (None, 0), "inactive: not called");
    rewards.apply(3, &[("p", "ok"), ("p", "too long")], &mut [&mut a, &mut b]).unwrap();
    assert_eq!(a.reward, Some(1.0), "σ(0) × 2 alone makes the total");
    assert_eq!((b.reward, b.rewards["m"]), (Some(1.0), None), "unscorable adds nothing");
    assert!(b.unscorable.contains_key("m"));
    let spec = |extra: &str| toml::from_str::<ModelRewardSpec>(&format!("kind = \"model\"\npath = \"x\"\n{extra}"));
    assert_eq!(spec("").unwrap().first_active_step(10).unwrap(), 1);
    assert_eq!(spec("active_from_step = 4").unwrap().first_active_step(10).unwrap(), 4);
    assert_eq!(spec("last_steps = 20").unwrap().first_active_step(10).unwrap(), 1);
    assert!(spec("kind2 = 1").is_err());
}
