//! The TOML config tree of `aha grpo` and `aha sft`: parsed once, layered over a preset once,
//! validated once, then saved as resolved JSON beside the run and in every checkpoint.
//!
//! Precedence, lowest to highest: the built-in defaults of every field, then the named
//! `preset` (only `r1` so far: the DeepSeek-R1 paper's values, docs/DESIGN.md §1), then the file's own
//! values. Tables merge key by key; arrays (`[[rewards]]`, `stop_strings`) are replaced whole.
//! Every table denies unknown fields, and every error names the file (TOML errors also give
//! the line, column and field). Relative paths are taken from the working directory.

use std::path::{Path, PathBuf};

use aha_model::{ExecRequest, LoraConfig};
use aha_reward::{RewardSpec, RewardsConfig};
use aha_train::config::OptimConfig;
use aha_train::data::DataConfig;
use aha_train::eval::EvalSettings;
use aha_train::grpo::GrpoSettings;
use aha_train::remote::RolloutSettings;
use aha_train::rm::ModelRewardSpec;
use aha_train::run::RunOptions;
pub use aha_train::sft::SftSettings;
use aha_train::sft_data::SftColumns;
use aha_train::template::PromptTemplate;
use anyhow::{bail, Context, Result};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize};

/// A named set of hyper-parameters applied under the file's own values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// DeepSeek-R1 (docs/DESIGN.md §1): lr 3e-6, β 0.001 with the reference replaced every 400 steps,
    /// clip ε 10, temperature 1, 32 prompts × 16 samples, max length 32 768, 16 minibatches,
    /// one inner epoch.
    R1,
}

/// The `r1` preset as a TOML layer (the single source of these values).
const R1_PRESET: &str = r#"
[optim]
learning_rate = 3e-6

[grpo]
prompts_per_step = 32
group_size = 16
max_completion_length = 32768
temperature = 1.0
num_iterations = 1
minibatches = 16
ref_sync_steps = 400

[grpo.loss]
beta = 0.001
epsilon_low = 10.0
epsilon_high = 10.0
"#;

impl Preset {
    fn layer(self) -> &'static str {
        match self {
            Preset::R1 => R1_PRESET,
        }
    }
}

/// Held-out evaluation during a GRPO run (`[eval]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate every N steps (0: only after the last step). Default 0.
    pub every_steps: usize,
    /// Held-out questions (from the task's test split, or the first of `path`). Default 100.
    pub questions: usize,
    /// A JSONL file of held-out prompts (same columns and template as `[data]`); required when
    /// training on a JSONL file, ignored for tasks (their test split is used). Default none.
    pub path: Option<PathBuf>,
    /// How to sample (`[eval.sampling]`; the paper's T 0.6, top-p 0.95 by default).
    pub sampling: EvalSettings,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self { every_steps: 0, questions: 100, path: None, sampling: EvalSettings::default() }
    }
}

/// The whole `aha grpo` config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoConfig {
    /// A preset layered under this file's values. Default none.
    #[serde(default)]
    pub preset: Option<Preset>,
    /// The model: an HF directory, a `.gguf` file or a hub repo id (downloaded when missing).
    pub model: String,
    /// A PEFT adapter directory to continue from, on top of `model` (like `--adapter`).
    /// Default none.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// LoRA (`[lora]`: `r`, `alpha`, `dropout`, `target_modules`, `init_seed`, `use_rslora`):
    /// train fresh low-rank adapters on the frozen model. Default none (full fine-tuning).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Where and how the model runs (`[exec]`: `device`, `dtype`, `backend`); `--device`,
    /// `--dtype` and `--backend` override it. Default CPU, f32, auto.
    #[serde(default)]
    pub exec: ExecRequest,
    /// The run directory (metrics, checkpoints, plots, the resolved config).
    pub output_dir: PathBuf,
    /// Seed of data order, rollouts and task generation. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Prompts: a task or a JSONL file, and the prompt template.
    pub data: DataConfig,
    /// GRPO settings (`[grpo]`, `[grpo.loss]`).
    #[serde(default)]
    pub grpo: GrpoSettings,
    /// AdamW and schedule.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Where completions are sampled (`[rollout]`: `engine`, `urls`, `api`, `model`,
    /// `lora_name`, `sync_every`, `max_prompts_per_request`, `timeout_s`, `retries`, `is_cap`,
    /// `max_staleness`; see
    /// [`RolloutSettings`]). Default in process.
    #[serde(default)]
    pub rollout: RolloutSettings,
    /// Rewards by name and weight (`[[rewards]]`): rule-based, or reward models (`kind = "model"`).
    pub rewards: Vec<RewardEntry>,
    /// Reward panics tolerated over the run before it aborts. Default 16.
    #[serde(default = "default_max_panics")]
    pub max_reward_panics: usize,
    /// Checkpoint, logging and progress options.
    #[serde(default)]
    pub run: RunOptions,
    /// Held-out evaluation. Default none.
    #[serde(default)]
    pub eval: Option<EvalConfig>,
}

fn default_max_panics() -> usize {
    16
}

/// One `[[rewards]]` table: a rule-based reward of the tensor-free `aha-reward` registry, or
/// a trained reward model (`kind = "model"`), which GRPO scores itself in its active steps.
/// The split is made here, on the `kind` key, so the registry's strict parsing never sees a
/// model reward.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RewardEntry {
    /// Built by the registry.
    Rule(RewardSpec),
    /// A reward model.
    Model(ModelRewardSpec),
}

impl<'de> Deserialize<'de> for RewardEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        let is_model = table.get("kind").and_then(toml::Value::as_str) == Some("model");
        let value = toml::Value::Table(table);
        if is_model {
            value.try_into().map(RewardEntry::Model).map_err(D::Error::custom)
        } else {
            value.try_into().map(RewardEntry::Rule).map_err(D::Error::custom)
        }
    }
}

impl RewardEntry {
    /// The reward's name in outputs.
    pub fn name(&self) -> String {
        match self {
            RewardEntry::Rule(r) => r.name(),
            RewardEntry::Model(m) => m.name.clone(),
        }
    }
}

/// SFT data (`[data]` of `aha sft`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftDataConfig {
    /// A JSONL file of chat rows (`messages`) or prompt/completion rows.
    pub path: PathBuf,
    /// Column names. Default `messages`, `prompt`, `completion`.
    #[serde(default)]
    pub columns: SftColumns,
    /// Template for prompt/completion rows (chat rows use the chat template). Default `chat`.
    #[serde(default)]
    pub template: PromptTemplate,
}

/// The whole `aha sft` config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftConfig {
    /// The model: an HF directory, a `.gguf` file or a hub repo id (downloaded when missing).
    pub model: String,
    /// A PEFT adapter directory to continue from, on top of `model` (like `--adapter`).
    /// Default none.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// LoRA (`[lora]`: `r`, `alpha`, `dropout`, `target_modules`, `init_seed`, `use_rslora`):
    /// train fresh low-rank adapters on the frozen model. Default none (full fine-tuning).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Where and how the model runs (`[exec]`: `device`, `dtype`, `backend`); `--device`,
    /// `--dtype` and `--backend` override it. Default CPU, f32, auto.
    #[serde(default)]
    pub exec: ExecRequest,
    /// The run directory.
    pub output_dir: PathBuf,
    /// Seed of the data order. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// The dataset.
    pub data: SftDataConfig,
    /// Epochs, steps and batch sizes.
    #[serde(default)]
    pub sft: SftSettings,
    /// AdamW and schedule.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Checkpoint, logging and progress options (`log_samples_every` is unused).
    #[serde(default)]
    pub run: RunOptions,
}

/// Reads, layers and validates an `aha grpo` config.
pub fn load_grpo(path: &Path) -> Result<GrpoConfig> {
    grpo_from_str(path, &read(path)?)
}

/// Layers and validates an `aha grpo` config held in `text`; errors name `origin` (a file,
/// or a pipeline recipe's stage).
pub fn grpo_from_str(origin: &Path, text: &str) -> Result<GrpoConfig> {
    let raw: GrpoConfig = parse(origin, text)?;
    check_reward_fields(origin, text)?;
    let cfg = match raw.preset {
        Some(p) => layered(origin, p.layer(), text)?,
        None => raw,
    };
    cfg.validate().with_context(|| format!("{}: invalid config", origin.display()))?;
    Ok(cfg)
}

/// Reads and validates an `aha sft` config.
pub fn load_sft(path: &Path) -> Result<SftConfig> {
    sft_from_str(path, &read(path)?)
}

/// Validates an `aha sft` config held in `text`; errors name `origin`.
pub fn sft_from_str(origin: &Path, text: &str) -> Result<SftConfig> {
    let cfg: SftConfig = parse(origin, text)?;
    cfg.validate().with_context(|| format!("{}: invalid config", origin.display()))?;
    Ok(cfg)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))
}

/// Deserialises with TOML's spans: the message names the line, column and field.
fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The file's table merged over the preset's, deserialised.
fn layered<T: DeserializeOwned>(path: &Path, preset: &str, text: &str) -> Result<T> {
    let mut base: toml::Table = toml::from_str(preset).context("the built-in preset does not parse")?;
    let over: toml::Table = parse(path, text)?;
    merge(&mut base, over);
    toml::Value::Table(base).try_into().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Merges `over` into `base` key by key; tables recurse, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

/// `RewardSpec` flattens its kind, so serde cannot deny unknown fields there: compare each
/// `[[rewards]]` table's keys with what its typed form knows.
fn check_reward_fields(path: &Path, text: &str) -> Result<()> {
    let table: toml::Table = parse(path, text)?;
    let Some(toml::Value::Array(rewards)) = table.get("rewards") else {
        return Ok(());
    };
    for (i, raw) in rewards.iter().enumerate() {
        let Some(raw) = raw.as_table() else { continue };
        if raw.get("kind").and_then(toml::Value::as_str) == Some("model") {
            continue; // `ModelRewardSpec` denies unknown fields itself.
        }
        let spec: RewardSpec = toml::Value::Table(raw.clone()).try_into()?;
        let known = serde_json::to_value(&spec)?;
        if let Some(key) = raw.keys().find(|k| known.get(k.as_str()).is_none()) {
            bail!("{}: rewards[{i}] (kind `{}`): unknown field `{key}`", path.display(), spec.kind.kind_name());
        }
    }
    Ok(())
}

impl GrpoConfig {
    /// Checks every section once, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        validate_data(&self.data)?;
        validate_lora(self.lora.as_ref(), self.adapter.as_deref())?;
        self.grpo.validate().context("[grpo]")?;
        let lora = self.lora.is_some() || self.adapter.is_some();
        self.rollout.validate(lora).context("[rollout]")?;
        validate_optim(&self.optim)?;
        self.rewards_config().validate().context("[[rewards]]")?;
        self.validate_model_rewards().context("[[rewards]] kind = \"model\"")?;
        if let Some(eval) = &self.eval {
            self.validate_eval(eval)?;
        }
        Ok(())
    }

    fn validate_eval(&self, eval: &EvalConfig) -> Result<()> {
        let names: Vec<String> = self.rewards_config().rewards.iter().map(RewardSpec::name).collect();
        if !names.contains(&eval.sampling.generation.correct_reward) {
            bail!(
                "[eval.sampling].correct_reward `{}` is not a configured reward ({names:?})",
                eval.sampling.generation.correct_reward
            );
        }
        if self.data.path.is_some() && eval.path.is_none() {
            bail!("[eval].path is required when [data].path is a JSONL file");
        }
        if eval.questions == 0 || eval.sampling.generation.k == 0 {
            bail!("[eval].questions and [eval.sampling].k must be positive");
        }
        eval.sampling.pass_at_list().context("[eval.sampling].pass_at")?;
        Ok(())
    }

    /// The rewards section in the form the registry builds from.
    pub fn rewards_config(&self) -> RewardsConfig {
        let rewards = self
            .rewards
            .iter()
            .filter_map(|r| match r {
                RewardEntry::Rule(spec) => Some(spec.clone()),
                RewardEntry::Model(_) => None,
            })
            .collect();
        RewardsConfig { rewards, max_panics: self.max_reward_panics }
    }

    /// The reward models (`kind = "model"`), in config order.
    pub fn model_rewards(&self) -> Vec<ModelRewardSpec> {
        self.rewards
            .iter()
            .filter_map(|r| match r {
                RewardEntry::Model(m) => Some(m.clone()),
                RewardEntry::Rule(_) => None,
            })
            .collect()
    }

    /// Model rewards: valid values, one window each, and names unique among all rewards.
    fn validate_model_rewards(&self) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.rewards {
            if !seen.insert(r.name()) {
                bail!("duplicate reward name `{}`", r.name());
            }
        }
        for m in self.model_rewards() {
            m.validate()?;
            m.first_active_step(self.grpo.max_steps)?;
        }
        Ok(())
    }
}

impl SftConfig {
    /// Checks every section once, naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        if self.sft.batch_size == 0 {
            bail!("[sft].batch_size must be positive");
        }
        if self.sft.max_steps == 0 && self.sft.epochs == 0 {
            bail!("[sft]: give max_steps > 0 or epochs > 0");
        }
        validate_lora(self.lora.as_ref(), self.adapter.as_deref())?;
        validate_optim(&self.optim)
    }
}

/// `[lora]`'s fields, and that a run does not both continue an adapter and start new ones.
fn validate_lora(lora: Option<&LoraConfig>, adapter: Option<&Path>) -> Result<()> {
    if let Some(l) = lora {
        l.validate("[lora]")?;
    }
    if let (Some(_), Some(dir)) = (lora, adapter) {
        bail!(
            "`adapter` ({}) continues training that adapter and `[lora]` starts new ones: give one \
             (to add new adapters on top, first fold it into its base with `aha merge`)",
            dir.display()
        );
    }
    Ok(())
}

fn validate_data(data: &DataConfig) -> Result<()> {
    match (&data.task, &data.path) {
        (Some(_), Some(_)) => bail!("[data]: give either `task` or `path`, not both"),
        (None, None) => bail!("[data]: give a `task` table or a JSONL `path`"),
        _ => {}
    }
    if data.task.is_some() && data.task_size == 0 {
        bail!("[data].task_size must be positive");
    }
    if data.test_percent >= 100 {
        bail!("[data].test_percent must be below 100, got {}", data.test_percent);
    }
    Ok(())
}

fn validate_optim(o: &OptimConfig) -> Result<()> {
    if !(o.learning_rate > 0.0 && o.learning_rate.is_finite()) {
        bail!("[optim].learning_rate must be a finite value > 0, got {}", o.learning_rate);
    }
    if !(0.0..1.0).contains(&o.beta1) || !(0.0..1.0).contains(&o.beta2) {
        bail!("[optim].beta1 and beta2 must lie in [0, 1)");
    }
    if o.max_grad_norm.is_nan() || o.max_grad_norm < 0.0 || o.weight_decay.is_nan() || o.weight_decay < 0.0 {
        bail!("[optim].max_grad_norm and weight_decay must be >= 0");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aha_reward::extract::AnswerExtraction;

    const MINIMAL: &str = r#"
model = "m"
output_dir = "out"
[data]
task = { name = "arithmetic" }
[[rewards]]
kind = "numeric"
name = "accuracy"
"#;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn r1_preset_resolves_to_the_paper_values() {
        let (_d, p) = write(&format!("preset = \"r1\"\n{MINIMAL}"));
        let c = load_grpo(&p).unwrap();
        assert_eq!(c.optim.learning_rate, 3e-6);
        assert_eq!(c.grpo.loss.beta, 0.001);
        assert_eq!(c.grpo.ref_sync_steps, 400);
        assert_eq!((c.grpo.loss.epsilon_low, c.grpo.loss.epsilon_high), (10.0, 10.0));
        assert_eq!(c.grpo.temperature, 1.0);
        assert_eq!((c.grpo.prompts_per_step, c.grpo.group_size), (32, 16));
        assert_eq!(c.grpo.max_completion_length, 32768);
        assert_eq!((c.grpo.minibatches, c.grpo.num_iterations), (16, 1));
        let plain = load_grpo(&write(MINIMAL).1).unwrap();
        assert_ne!(plain.optim.learning_rate, 3e-6, "without the preset the defaults apply");
    }

    #[test]
    fn file_values_override_the_preset_key_by_key() {
        let text = format!("preset = \"r1\"\n{MINIMAL}\n[optim]\nlearning_rate = 1e-4\n[grpo.loss]\nbeta = 0.0\n");
        let c = load_grpo(&write(&text).1).unwrap();
        assert_eq!(c.optim.learning_rate, 1e-4);
        assert_eq!(c.grpo.loss.beta, 0.0);
        assert_eq!(c.grpo.loss.epsilon_low, 10.0, "siblings keep the preset's value");
        assert_eq!(c.grpo.group_size, 16);
    }

    #[test]
    fn unknown_fields_are_named_with_the_file() {
        for (extra, field) in [
            ("[grpo]\ngroup_sise = 4\n", "group_sise"),
            ("[grpo.loss]\nbeta2 = 1\n", "beta2"),
            ("bogus = 1\n", "bogus"),
        ] {
            let (_d, p) = write(&format!("{MINIMAL}{extra}"));
            let err = format!("{:#}", load_grpo(&p).unwrap_err());
            assert!(err.contains(field) && err.contains("c.toml"), "{err}");
        }
        let (_d, p) = write(&MINIMAL.replace("name = \"accuracy\"", "name = \"accuracy\"\ntolerence = 0.1"));
        let err = format!("{:#}", load_grpo(&p).unwrap_err());
        assert!(err.contains("tolerence") && err.contains("rewards[0]"), "{err}");
    }

    #[test]
    fn eval_extract_is_typed_and_defaults_to_r1() {
        let free = load_grpo(&write(&format!("{MINIMAL}[eval.sampling]\nk = 2\nextract = \"free\"\n")).1).unwrap();
        let sampling = &free.eval.as_ref().unwrap().sampling.generation;
        assert_eq!((sampling.k, sampling.extract), (2, AnswerExtraction::Free));
        let plain = load_grpo(&write(&format!("{MINIMAL}[eval]\nquestions = 5\n")).1).unwrap();
        assert_eq!(plain.eval.unwrap().sampling.generation.extract, AnswerExtraction::R1);
        for (bad, named) in [("extract = \"loose\"", "loose"), ("extraction = \"free\"", "extraction")] {
            let (_d, p) = write(&format!("{MINIMAL}[eval.sampling]\n{bad}\n"));
            let err = format!("{:#}", load_grpo(&p).unwrap_err());
            assert!(err.contains(named) && err.contains("c.toml"), "{err}");
        }
    }

    #[test]
    fn the_examples_parse_and_validate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let g = load_grpo(&root.join("grpo-arithmetic.toml")).unwrap();
        assert_eq!(g.rewards.len(), 2);
        let rm = load_grpo(&root.join("grpo-rm.toml")).unwrap();
        let windows: Vec<usize> =
            rm.model_rewards().iter().map(|m| m.first_active_step(rm.grpo.max_steps).unwrap()).collect();
        assert_eq!((rm.rewards_config().rewards.len(), windows), (2, vec![11, 11]));
        let s = load_sft(&root.join("sft-arithmetic.toml")).unwrap();
        assert_eq!(s.sft.total_steps(24), 60);
    }

    #[test]
    fn model_rewards_are_split_from_the_registry_and_checked() {
        let model = "[[rewards]]\nkind = \"model\"\nname = \"helpful\"\npath = \"rm\"\nweight = 0.5\nlast_steps = 10\n";
        let c = load_grpo(&write(&format!("{MINIMAL}{model}")).1).unwrap();
        assert_eq!(c.rewards_config().rewards.len(), 1);
        let m = c.model_rewards();
        assert_eq!((m.len(), m[0].name.as_str(), m[0].weight), (1, "helpful", 0.5));
        assert_eq!(m[0].first_active_step(c.grpo.max_steps).unwrap(), c.grpo.max_steps - 9);
        let typo = model.replace("last_steps", "last_step");
        let err = format!("{:#}", load_grpo(&write(&format!("{MINIMAL}{typo}")).1).unwrap_err());
        assert!(err.contains("last_step"), "{err}");
        let both = format!("{MINIMAL}{model}active_from_step = 3\n");
        assert!(format!("{:#}", load_grpo(&write(&both).1).unwrap_err()).contains("not both"));
        let clash = model.replace("helpful", "accuracy");
        assert!(format!("{:#}", load_grpo(&write(&format!("{MINIMAL}{clash}")).1).unwrap_err()).contains("duplicate"));
    }

    #[test]
    fn the_rollout_table_is_typed_defaulted_and_validated() {
        let plain = load_grpo(&write(MINIMAL).1).unwrap();
        assert!(!plain.rollout.is_remote());
        let text = format!(
            "{MINIMAL}[rollout]\nengine = \"openai\"\nurls = [\"http://127.0.0.1:8000\", \"http://127.0.0.1:8001\"]\n\
             max_staleness = 1\nis_cap = 2.0\n"
        );
        let c = load_grpo(&write(&text).1).unwrap();
        assert!(c.rollout.is_remote());
        assert_eq!((c.rollout.urls.len(), c.rollout.max_staleness, c.rollout.is_cap), (2, 1, 2.0));
        assert_eq!((c.rollout.sync_every, c.rollout.retries, c.rollout.timeout_s), (1, 2, 120.0));
        for (extra, named) in [
            ("[rollout]\nengine = \"openai\"\n", "rollout.urls"),
            ("[rollout]\nengine = \"remote\"\n", "remote"),
            ("[rollout]\nurl = \"http://x\"\n", "url"),
            ("[rollout]\nengine = \"openai\"\nurls = [\"http://x:1\"]\napi = \"vllm\"\n", "LoRA"),
            ("[rollout]\nengine = \"openai\"\nurls = [\"http://x:1\"]\nsync_every = 2\n", "rollout.max_staleness"),
        ] {
            let (_d, p) = write(&format!("{MINIMAL}{extra}"));
            let err = format!("{:#}", load_grpo(&p).unwrap_err());
            assert!(err.contains(named) && err.contains("c.toml"), "{named}: {err}");
        }
        let lora = format!(
            "{MINIMAL}[lora]\nr = 4\n[rollout]\nengine = \"openai\"\nurls = [\"http://x:1\"]\napi = \"vllm\"\n"
        );
        assert!(load_grpo(&write(&lora).1).is_ok());
    }

    #[test]
    fn validation_names_the_section() {
        let (_d, p) = write(
            &MINIMAL
                .replace("task = { name = \"arithmetic\" }", "path = \"x.jsonl\"\ntask = { name = \"arithmetic\" }"),
        );
        let err = format!("{:#}", load_grpo(&p).unwrap_err());
        assert!(err.contains("[data]") && err.contains("c.toml"), "{err}");
        let (_d, p) = write(&format!("{MINIMAL}[eval]\nsampling = {{ correct_reward = \"nope\" }}\n"));
        assert!(format!("{:#}", load_grpo(&p).unwrap_err()).contains("correct_reward"));
    }
}
