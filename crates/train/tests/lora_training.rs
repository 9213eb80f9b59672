//! GRPO with LoRA adapters on a tiny model: only the adapters train (the base stays bit for bit
//! what it was, the optimiser holds adapter moments only), the KL reference is the base with
//! adapters off (no copy saved), checkpoints are PEFT adapter directories, and resume is exact —
//! with adapter dropout too, whose masks are a function of the batch.

use aha_model::io::{ModelSpec, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use aha_model::{init_tiny, load_model, LoadedModel, LoraConfig};
use aha_reward::{Registry, Reward, Sample, Score};
use aha_train::checkpoint::REFERENCE_FILE;
use aha_train::config::{GrpoLossConfig, LossType, OptimConfig};
use aha_train::data::PromptRow;
use aha_train::grpo::{GrpoSettings, GrpoTrainer, TextCodec};
use aha_train::optim::{named_vars, AdamW};
use aha_train::run::{restore, save, RunOptions};
use aha_train::tasks::{Split, TaskSpec};

mod common;
use common::{bits, tiny_spec};

/// A reward with spread on a random model: the completion's length mod 5, scaled.
struct LengthReward;
impl Reward for LengthReward {
    fn score(&self, s: &Sample) -> Score {
        Score::Value((s.completion.chars().count() % 5) as f64 / 4.0)
    }
}

struct Setup {
    dir: tempfile::TempDir,
    lm: LoadedModel,
    rows: Vec<PromptRow>,
    prompt_ids: Vec<Vec<u32>>,
}

fn lora() -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, init_seed: 7, ..LoraConfig::default() }
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut lm = init_tiny(&dir.path().join("init"), &tiny_spec(), 3).unwrap();
    lm.apply_lora(&lora(), "test").unwrap();
    let task = TaskSpec::Arithmetic { min_operands: 2, max_operands: 3, max_value: 9 };
    let rows: Vec<PromptRow> = task.generate(5, Split::Train, 6, 10).iter().map(PromptRow::from).collect();
    let prompt_ids =
        rows.iter().map(|r| TextCodec::encode(&lm.tokenizer, &format!("{}\n", r.prompt)).unwrap()).collect();
    Setup { dir, lm, rows, prompt_ids }
}

fn settings() -> GrpoSettings {
    let loss = GrpoLossConfig { loss_type: LossType::Grpo, beta: 0.04, ..GrpoLossConfig::default() };
    GrpoSettings {
        max_steps: 100,
        prompts_per_step: 2,
        group_size: 4,
        max_completion_length: 8,
        loss,
        ..Default::default()
    }
}

fn trainer<'a>(s: &'a Setup, lm: &LoadedModel, registry: &'a Registry) -> GrpoTrainer<'a> {
    let optim = OptimConfig { learning_rate: 1e-2, max_grad_norm: 0.0, ..OptimConfig::default() };
    let opt = AdamW::new(named_vars(&lm.varmap), optim).unwrap();
    GrpoTrainer::new(settings(), &lm.model, opt, &s.rows, s.prompt_ids.clone(), registry, &s.lm.tokenizer, 11).unwrap()
}

fn registry() -> Registry {
    Registry::from_rewards(vec![("r".into(), 1.0, Box::new(LengthReward) as Box<dyn Reward>)], 100)
}

#[test]
fn lora_grpo_trains_only_the_adapters_and_resumes_exactly() {
    let reg = registry();
    let straight_setup = setup();
    let base_before: Vec<Vec<u32>> = straight_setup.lm.model.named_parameters().iter().map(|(_, t)| bits(t)).collect();
    let adapters_before: Vec<Vec<u32>> =
        straight_setup.lm.model.adapter_parameters().iter().map(|(_, t)| bits(t)).collect();
    let mut straight = trainer(&straight_setup, &straight_setup.lm, &reg);
    assert!(straight.opt.params().iter().all(|p| p.name.contains(".lora_")), "the optimiser must hold adapters only");
    assert!(straight.reference.as_ref().unwrap().lora().is_none(), "the reference is the base, adapters off");
    for _ in 0..4 {
        straight.step().unwrap();
    }
    let base_after: Vec<Vec<u32>> = straight.policy.named_parameters().iter().map(|(_, t)| bits(t)).collect();
    assert!(base_before == base_after, "the frozen base changed");
    let adapters_after: Vec<Vec<u32>> = straight.policy.adapter_parameters().iter().map(|(_, t)| bits(t)).collect();
    assert!(adapters_before != adapters_after, "the adapters did not train");

    let s = setup();
    let run_dir = s.dir.path().join("run");
    {
        let mut first = trainer(&s, &s.lm, &reg);
        for _ in 0..2 {
            first.step().unwrap();
        }
        save(&first, &s.lm.tokenizer, &run_dir, &RunOptions::default(), &serde_json::json!({})).unwrap();
    }
    let ckpt = aha_train::checkpoint::latest_checkpoint(&run_dir).unwrap().unwrap();
    assert!(ckpt.join(ADAPTER_CONFIG).is_file() && ckpt.join(ADAPTER_WEIGHTS).is_file());
    assert!(!ckpt.join("model.safetensors").exists(), "a LoRA checkpoint must not copy the base");
    assert!(!ckpt.join(REFERENCE_FILE).exists(), "the base reference needs no copy");
    // The adapter directory names its base: loading it gives base + trainable adapters.
    let lm = load_model(&ModelSpec::HfDir(ckpt.clone()), &aha_model::ExecRequest::default()).unwrap();
    assert_eq!(lm.model.lora(), Some(&lora()));
    let mut resumed = trainer(&s, &lm, &reg);
    assert_eq!(restore(&mut resumed, &run_dir).unwrap(), Some(ckpt));
    for _ in 0..2 {
        resumed.step().unwrap();
    }
    for ((na, ta), (nb, tb)) in straight.policy.adapter_parameters().iter().zip(resumed.policy.adapter_parameters()) {
        assert_eq!(na, &nb);
        assert!(bits(ta) == bits(&tb), "adapter {na} differs after resume");
    }
    for ((na, ta), (_, tb)) in straight.opt.state_tensors().iter().zip(resumed.opt.state_tensors()) {
        assert!(bits(ta) == bits(&tb), "optimiser state {na} differs after resume");
    }
    let (oa, ob) = (straight.step().unwrap(), resumed.step().unwrap());
    for (x, y) in oa.samples.iter().zip(&ob.samples) {
        assert_eq!(x.completion.completion_ids, y.completion.completion_ids, "rollouts differ after resume");
    }
}
