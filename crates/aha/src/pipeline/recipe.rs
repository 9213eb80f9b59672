//! The recipe of `aha pipeline`: a TOML file of ordered stages, parsed, overridden (`--unset`,
//! `--set`) and checked **before anything runs**.
//!
//! ```toml
//! output_dir = "runs/pipeline"
//! model = "Qwen/Qwen2.5-0.5B"     # or an [init] table: a tiny random model
//! [eval]                           # after every stage: pass@1, cons@k, length, reflection
//! data = { task = { name = "arithmetic" }, limit = 100 }
//! [[stages]]
//! name = "cold-start"
//! kind = "sft"                     # sft | grpo | sample | rm | eval
//! from = "base"                    # the model: "base" or an earlier sft/grpo stage (default: the latest)
//! [stages.sft]                     # the rest is the `aha sft` / `aha grpo` / … config tree
//! ```
//!
//! A stage's own keys are `name`, `kind`, `from` and `eval` (false skips the evaluation after
//! it; a GRPO stage may give a table instead, `aha grpo`'s own `[eval]` during training, and
//! is still evaluated after); each kind adds a few that link stages: an SFT stage takes its
//! data from `[data].path`, a generated `[stages.teacher]` set, or `data_from = "<sample or sft
//! stage>"`; a GRPO reward with `kind = "model"` names its reward model by `from_stage = "<rm
//! stage>"`; a `[[mix]]` entry of a sample stage may name `from_stage` instead of `path`; an
//! rm stage can make its synthetic data (`[stages.make_data]`). Everything else is the kind's own typed config
//! (`model` and `output_dir` are filled in by the pipeline), parsed by the same code as the
//! stand-alone commands, so unknown fields are errors that name the stage and the field.
//!
//! Held-out questions stay held out: when an evaluation draws a task's test split, every
//! stage that trains on questions of that task (a teacher, GRPO `[data]`, a sample stage) must
//! draw the train split with the same `test_percent`, or the recipe is rejected.

use std::path::{Path, PathBuf};

use aha_model::{ExecRequest, TinySpec};
use aha_reward::language::Language;
use aha_reward::RewardSpec;
use aha_train::eval::EvalSettings;
use aha_train::rejection::RejectionJob;
use aha_train::rm::{RmConfig, SynthKind};
use aha_train::source::PromptSource;
use aha_train::tasks::{Split, TaskSpec};
use aha_train::teacher::TeacherConfig;
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::config::{grpo_from_str, sft_from_str, GrpoConfig, SftConfig};

/// What a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    /// Supervised fine-tuning (`aha sft`).
    Sft,
    /// GRPO (`aha grpo`).
    Grpo,
    /// Rejection sampling: sample, filter, mix into SFT data (`aha sample` + `aha filter`).
    Sample,
    /// A reward model (`aha rm train`).
    Rm,
    /// An evaluation of the current model (`aha eval`).
    Eval,
}

impl StageKind {
    /// Whether the stage trains the policy (a later stage's `from` may name it).
    pub fn makes_policy(self) -> bool {
        matches!(self, StageKind::Sft | StageKind::Grpo)
    }
}

/// `[init]`: the base model is a tiny random model with the byte-level tokenizer (`aha init`).
///
/// The table is a [`TinySpec`] (`hidden_size` 64, `intermediate_size` 192, `num_hidden_layers`
/// 2, `num_attention_heads` 4, `num_key_value_heads` 2, `max_position_embeddings` 512,
/// `rope_theta`, `tie_word_embeddings`, `arch`; each optional) with the weights' `seed` beside
/// it. Unknown keys are errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InitSpec {
    /// The model sizes (the table's other keys).
    #[serde(flatten)]
    pub model: TinySpec,
    /// Seed of the weights. Default 0.
    pub seed: u64,
}

/// The evaluation run after stages (`[eval]`) and by `kind = "eval"` stages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineEval {
    /// The questions (held out: a task's test split, or a JSONL file).
    pub data: PromptSource,
    /// Sampling (the paper's T 0.6, top-p 0.95 by default).
    #[serde(default)]
    pub sampling: EvalSettings,
    /// Rewards; empty: the data's `accuracy` verifier and `format`. Default empty.
    #[serde(default)]
    pub rewards: Vec<RewardSpec>,
    /// Also measure the chain of thought's fraction of words in this language. Default none.
    #[serde(default)]
    pub language: Option<Language>,
}

/// `[stages.make_data]` of an rm stage: the synthetic data `aha rm make-data` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MakeData {
    /// `helpful` (pairs) or `safety` (labels).
    pub kind: SynthKind,
    /// Rows. Default 2000.
    #[serde(default = "default_rows")]
    pub n: usize,
    /// Seed. Default 0.
    #[serde(default)]
    pub seed: u64,
}

fn default_rows() -> usize {
    2000
}

/// Where an SFT stage's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum SftData {
    /// `[data].path` of the stage's own table.
    Own,
    /// Written by the teacher into the stage directory.
    Teacher(TeacherConfig),
    /// The data file of an earlier stage (`data_from`).
    Stage(usize),
}

/// One stage, its links resolved.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Position in the recipe (0-based).
    pub index: usize,
    /// Unique name.
    pub name: String,
    /// What it does.
    pub kind: StageKind,
    /// The stage whose model it starts from; `None`: the base model.
    pub from: Option<usize>,
    /// Evaluate after the stage. Default true.
    pub eval_after: bool,
    /// `<output_dir>/<NN>-<name>`.
    pub dir: PathBuf,
    /// The kind's config table, links not yet filled in.
    pub table: Table,
    /// SFT stages: the data source.
    pub sft_data: Option<SftData>,
    /// rm stages: synthetic data to make first.
    pub make_data: Option<MakeData>,
}

/// A stage's typed config, as its kind runs it.
#[derive(Debug, Clone)]
pub enum StageConfig {
    /// `aha sft`'s config and its TOML text (written beside the run).
    Sft(Box<SftConfig>, String),
    /// `aha grpo`'s config and its TOML text.
    Grpo(Box<GrpoConfig>, String),
    /// Rejection sampling.
    Sample(Box<RejectionJob>),
    /// Reward-model training.
    Rm(Box<RmConfig>),
    /// An evaluation.
    Eval(Box<PipelineEval>),
}

/// The parsed recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The recipe file (for messages).
    pub path: PathBuf,
    /// Where every stage writes.
    pub output_dir: PathBuf,
    /// The base model (`model`), when not made by `[init]`.
    pub model: Option<String>,
    /// A tiny model to make as the base.
    pub init: Option<InitSpec>,
    /// Where and how every stage runs its models (`[exec]`; a stage's own `[exec]` wins).
    pub exec: ExecRequest,
    /// The evaluation after stages.
    pub eval: Option<PipelineEval>,
    /// The stages, in order.
    pub stages: Vec<Stage>,
    /// The recipe table after overrides (saved with the run).
    pub table: Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    output_dir: PathBuf,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    init: Option<InitSpec>,
    #[serde(default)]
    exec: ExecRequest,
    #[serde(default)]
    eval: Option<PipelineEval>,
    stages: Vec<Table>,
}

/// The directory of the base model made by `[init]`.
pub const BASE_DIR: &str = "00-base";

impl Recipe {
    /// Reads `path`, removes the `unset` keys (`key.path`), applies `overrides`
    /// (`key.path=VALUE`) and checks every stage.
    pub fn load(path: &Path, unset: &[String], overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()))?;
        let mut table: Table = toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        for key in unset {
            apply_unset(&mut table, key).with_context(|| format!("--unset {key}"))?;
        }
        for o in overrides {
            apply_override(&mut table, o).with_context(|| format!("--set {o}"))?;
        }
        Self::from_table(path, table)
    }

    fn from_table(path: &Path, table: Table) -> Result<Self> {
        let at = path.display().to_string();
        let head: Head = Value::Table(table.clone()).try_into().map_err(|e| anyhow!("{at}: {e}"))?;
        match (&head.model, &head.init) {
            (None, None) => bail!("{at}: give the base `model` or an `[init]` table"),
            (Some(_), Some(_)) => bail!("{at}: give either `model` or `[init]`, not both"),
            _ => {}
        }
        if let Some(e) = &head.eval {
            check_eval(e).with_context(|| format!("{at}: [eval]"))?;
        }
        if head.stages.is_empty() {
            bail!("{at}: no [[stages]]");
        }
        let mut recipe = Recipe {
            path: path.to_path_buf(),
            output_dir: head.output_dir,
            model: head.model,
            init: head.init,
            exec: head.exec,
            eval: head.eval,
            stages: Vec::new(),
            table,
        };
        for (i, raw) in head.stages.into_iter().enumerate() {
            let stage = recipe.stage(i, raw).with_context(|| format!("{at}: stages[{i}]"))?;
            recipe.stages.push(stage);
        }
        let mut configs = Vec::with_capacity(recipe.stages.len());
        for s in &recipe.stages {
            let placeholder = recipe.model_placeholder(s);
            configs.push(recipe.materialize(s, &placeholder)?);
        }
        recipe.check_held_out(&configs).with_context(|| format!("{at}: held-out questions"))?;
        Ok(recipe)
    }

    /// Parses one stage's own keys and links (earlier stages only).
    fn stage(&self, index: usize, mut t: Table) -> Result<Stage> {
        let name = take_str(&mut t, "name")?.ok_or_else(|| anyhow!("missing `name`"))?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            bail!("name `{name}`: use letters, digits, `-` and `_`");
        }
        if self.stages.iter().any(|s| s.name == name) {
            bail!("name `{name}` is used twice");
        }
        let ctx = || format!("`{name}`");
        let kind_text = take_str(&mut t, "kind")?.ok_or_else(|| anyhow!("`{name}`: missing `kind`"))?;
        let kind: StageKind = Value::String(kind_text.clone())
            .try_into()
            .map_err(|_| anyhow!("`{name}`: kind `{kind_text}` is not one of sft, grpo, sample, rm, eval"))?;
        let from = match take_str(&mut t, "from").with_context(ctx)?.as_deref() {
            None => self.stages.iter().rev().find(|s| s.kind.makes_policy()).map(|s| s.index),
            Some("base") => None,
            Some(other) => Some(self.earlier(other, "from", |k| k.makes_policy()).with_context(ctx)?),
        };
        let eval_after = match t.remove("eval") {
            None => true,
            Some(Value::Boolean(b)) => b,
            // A GRPO stage's `[stages.eval]` table is `aha grpo`'s own `[eval]` (held-out
            // evaluation during the run); the evaluation after the stage still runs.
            Some(v @ Value::Table(_)) if kind == StageKind::Grpo => {
                t.insert("eval".into(), v);
                true
            }
            Some(v) => bail!(
                "`{name}`: `eval` must be true or false (a GRPO stage may also give `aha grpo`'s [eval] table), got {v}"
            ),
        };
        let sft_data = if kind == StageKind::Sft { Some(self.sft_data(&mut t).with_context(ctx)?) } else { None };
        let make_data = match (kind, t.remove("make_data")) {
            (StageKind::Rm, Some(v)) => Some(v.try_into().map_err(|e| anyhow!("`{name}`: make_data: {e}"))?),
            (_, Some(_)) => bail!("`{name}`: `make_data` belongs to rm stages"),
            (_, None) => None,
        };
        let dir = self.output_dir.join(format!("{:02}-{name}", index + 1));
        Ok(Stage { index, name, kind, from, eval_after, dir, table: t, sft_data, make_data })
    }

    fn sft_data(&self, t: &mut Table) -> Result<SftData> {
        let teacher = t.remove("teacher");
        let from = take_str(t, "data_from")?;
        let own = t.get("data").and_then(|d| d.get("path")).is_some();
        match (teacher, from, own) {
            (Some(v), None, false) => {
                let cfg: TeacherConfig = v.try_into().map_err(|e| anyhow!("teacher: {e}"))?;
                cfg.validate().context("teacher")?;
                Ok(SftData::Teacher(cfg))
            }
            (None, Some(name), false) => Ok(SftData::Stage(
                self.earlier(&name, "data_from", |k| matches!(k, StageKind::Sample | StageKind::Sft))?,
            )),
            (None, None, true) => Ok(SftData::Own),
            (None, None, false) => bail!("SFT data: give [data].path, a [teacher] table or data_from"),
            _ => bail!("SFT data: give only one of [data].path, [teacher] and data_from"),
        }
    }

    /// The index of the earlier stage `name`, which must be of a kind `ok` accepts.
    fn earlier(&self, name: &str, field: &str, ok: impl Fn(StageKind) -> bool) -> Result<usize> {
        let s = self
            .stages
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| anyhow!("{field} = \"{name}\": no earlier stage has that name"))?;
        if !ok(s.kind) {
            bail!("{field} = \"{name}\": that stage is of kind {:?}, which cannot be used here", s.kind);
        }
        Ok(s.index)
    }

    /// Where the model of `stage.from` will be; the real path is known once it has run.
    fn model_placeholder(&self, stage: &Stage) -> String {
        match stage.from {
            Some(i) => self.stages[i].dir.join("checkpoints/latest").display().to_string(),
            None => self.base_model(),
        }
    }

    /// The base model: `model`, or the `[init]` directory.
    pub fn base_model(&self) -> String {
        match &self.model {
            Some(m) => m.clone(),
            None => self.output_dir.join(BASE_DIR).display().to_string(),
        }
    }

    /// The SFT data file a stage makes or uses (sft and sample stages).
    pub fn data_file(&self, i: usize) -> Option<PathBuf> {
        let s = &self.stages[i];
        match (&s.kind, &s.sft_data) {
            (StageKind::Sample, _) => Some(s.dir.join(SAMPLE_SFT_FILE)),
            (StageKind::Sft, Some(SftData::Teacher(_))) => Some(s.dir.join(TEACHER_FILE)),
            (StageKind::Sft, Some(SftData::Stage(j))) => self.data_file(*j),
            (StageKind::Sft, Some(SftData::Own)) => {
                s.table.get("data").and_then(|d| d.get("path")).and_then(Value::as_str).map(PathBuf::from)
            }
            _ => None,
        }
    }

    /// The stage's typed config with `model` as its starting model: links filled in, parsed
    /// and validated by the kind's own code. Errors name the recipe, the stage and the field.
    pub fn materialize(&self, s: &Stage, model: &str) -> Result<StageConfig> {
        let origin = PathBuf::from(format!("{}: stages[{}] `{}` ({:?})", self.path.display(), s.index, s.name, s.kind));
        let at = origin.display().to_string();
        let mut t = s.table.clone();
        let model_s = Value::String(model.to_string());
        let out = Value::String(s.dir.display().to_string());
        if matches!(s.kind, StageKind::Sft | StageKind::Grpo | StageKind::Rm) && !t.contains_key("exec") {
            t.insert("exec".into(), Value::try_from(self.exec).map_err(|e| anyhow!("{at}: [exec]: {e}"))?);
        }
        match s.kind {
            StageKind::Sft => {
                if let Some(file) = self.data_file(s.index).filter(|_| s.sft_data != Some(SftData::Own)) {
                    table_at(&mut t, "data")?.insert("path".into(), Value::String(file.display().to_string()));
                }
                t.insert("model".into(), model_s);
                t.insert("output_dir".into(), out);
                typed::<SftConfig>(&t, &at)?;
                let text = toml::to_string(&t)?;
                Ok(StageConfig::Sft(Box::new(sft_from_str(&origin, &text)?), text))
            }
            StageKind::Grpo => {
                self.link_rewards(&mut t).with_context(|| at.clone())?;
                t.insert("model".into(), model_s);
                t.insert("output_dir".into(), out);
                typed::<GrpoConfig>(&t, &at)?;
                let text = toml::to_string(&t)?;
                Ok(StageConfig::Grpo(Box::new(grpo_from_str(&origin, &text)?), text))
            }
            StageKind::Sample => {
                self.link_mix(&mut t).with_context(|| at.clone())?;
                let job: RejectionJob = Value::Table(t).try_into().map_err(|e| anyhow!("{at}: {e}"))?;
                job.sample.data.validate().map_err(|e| anyhow!("{at}: [sample.data]: {e}"))?;
                Ok(StageConfig::Sample(Box::new(job)))
            }
            StageKind::Rm => {
                if s.make_data.is_some() {
                    table_at(&mut t, "data")?
                        .insert("path".into(), Value::String(self.rm_data(s).display().to_string()));
                }
                t.insert("model".into(), model_s);
                t.insert("output_dir".into(), out);
                let cfg: RmConfig = Value::Table(t).try_into().map_err(|e| anyhow!("{at}: {e}"))?;
                cfg.validate().map_err(|e| anyhow!("{at}: {e}"))?;
                Ok(StageConfig::Rm(Box::new(cfg)))
            }
            StageKind::Eval => {
                let e: PipelineEval = Value::Table(t).try_into().map_err(|e| anyhow!("{at}: {e}"))?;
                check_eval(&e).with_context(|| at.clone())?;
                Ok(StageConfig::Eval(Box::new(e)))
            }
        }
    }

    /// Where an rm stage's synthetic data goes.
    pub fn rm_data(&self, s: &Stage) -> PathBuf {
        s.dir.join(RM_DATA_FILE)
    }

    /// `[[rewards]] kind = "model", from_stage = "rm"` → `path = "<rm dir>/final"`.
    fn link_rewards(&self, t: &mut Table) -> Result<()> {
        let Some(Value::Array(rewards)) = t.get_mut("rewards") else { return Ok(()) };
        for (i, r) in rewards.iter_mut().enumerate() {
            let Some(r) = r.as_table_mut() else { continue };
            if let Some(name) = take_str(r, "from_stage")? {
                let j = self.earlier(&name, &format!("rewards[{i}].from_stage"), |k| k == StageKind::Rm)?;
                let dir = self.stages[j].dir.join(aha_train::rm::FINAL_DIR);
                r.insert("path".into(), Value::String(dir.display().to_string()));
            }
        }
        Ok(())
    }

    /// `[[mix]] from_stage = "cold-start"` → that stage's SFT data file.
    fn link_mix(&self, t: &mut Table) -> Result<()> {
        let Some(Value::Array(mix)) = t.get_mut("mix") else { return Ok(()) };
        for (i, m) in mix.iter_mut().enumerate() {
            let Some(m) = m.as_table_mut() else { continue };
            if let Some(name) = take_str(m, "from_stage")? {
                let field = format!("mix[{i}].from_stage");
                let j = self.earlier(&name, &field, |k| matches!(k, StageKind::Sample | StageKind::Sft))?;
                let file = self.data_file(j).ok_or_else(|| anyhow!("{field}: stage `{name}` has no data file"))?;
                m.insert("path".into(), Value::String(file.display().to_string()));
            }
        }
        Ok(())
    }

    /// No evaluation's held-out questions can be trained on. A task's split is a hash of each
    /// problem's text against `test_percent` (whatever the task's other knobs), so every
    /// evaluation of a task's test split — `[eval]` and eval stages — needs every source of
    /// training questions of the same task (a teacher, a GRPO stage's `[data]`, a sample
    /// stage's questions) to draw from the train split with the same `test_percent`.
    /// Files (`[data].path`) cannot be checked and are not.
    fn check_held_out(&self, configs: &[StageConfig]) -> Result<()> {
        let mut evals: Vec<(String, &PromptSource)> = Vec::new();
        if let Some(e) = &self.eval {
            evals.push(("[eval]".into(), &e.data));
        }
        let mut trains: Vec<(String, &TaskSpec, u64, Split)> = Vec::new();
        for (s, c) in self.stages.iter().zip(configs) {
            let at = format!("stage `{}`", s.name);
            if let Some(SftData::Teacher(t)) = &s.sft_data {
                trains.push((format!("{at} [teacher]"), &t.task, t.test_percent, Split::Train));
            }
            match c {
                StageConfig::Grpo(g, _) => {
                    if let Some(task) = &g.data.task {
                        trains.push((format!("{at} [data]"), task, g.data.test_percent, Split::Train));
                    }
                }
                StageConfig::Sample(job) => {
                    let d = &job.sample.data;
                    if let Some(task) = &d.task {
                        trains.push((format!("{at} [sample.data]"), task, d.test_percent, d.split));
                    }
                }
                StageConfig::Eval(e) => evals.push((format!("eval {at}"), &e.data)),
                StageConfig::Sft(..) | StageConfig::Rm(..) => {}
            }
        }
        for (eval_at, e) in evals {
            let Some(held) = e.task.as_ref().filter(|_| e.split == Split::Test) else { continue };
            for (train_at, task, percent, split) in &trains {
                if std::mem::discriminant(*task) != std::mem::discriminant(held) {
                    continue;
                }
                if *split == Split::Test {
                    bail!("{train_at} draws training questions from the test split that {eval_at} holds out");
                }
                if *percent != e.test_percent {
                    bail!(
                        "{train_at} has test_percent {percent} but {eval_at} holds out {}: the splits \
                         would overlap; give both the same test_percent",
                        e.test_percent
                    );
                }
            }
        }
        Ok(())
    }

    /// The stages to run: all, or up to and including `until`.
    pub fn upto(&self, until: Option<&str>) -> Result<usize> {
        match until {
            None => Ok(self.stages.len()),
            Some(name) => self
                .stages
                .iter()
                .position(|s| s.name == name)
                .map(|i| i + 1)
                .ok_or_else(|| anyhow!("--until {name}: the recipe has no stage of that name")),
        }
    }
}

/// The teacher's output file in an SFT stage directory.
pub const TEACHER_FILE: &str = "teacher.jsonl";
/// The SFT rows a sample stage writes.
pub const SAMPLE_SFT_FILE: &str = "sft.jsonl";
/// Every sample a sample stage drew.
pub const SAMPLES_FILE: &str = "samples.jsonl";
/// An rm stage's synthetic data.
pub const RM_DATA_FILE: &str = "data.jsonl";

/// Deserialises `t` as `T`, for an error that names the field's path in the stage (the
/// stage's generated TOML text is what the commands' parsers then read, with its own lines).
fn typed<T: serde::de::DeserializeOwned>(t: &Table, at: &str) -> Result<T> {
    Value::Table(t.clone()).try_into().map_err(|e| anyhow!("{at}: {}", e.to_string().trim_end()))
}

fn check_eval(e: &PipelineEval) -> Result<()> {
    e.data.validate()?;
    e.sampling.pass_at_list()?;
    if e.sampling.generation.k == 0 || e.sampling.generation.max_new_tokens == 0 {
        bail!("sampling.k and sampling.max_new_tokens must be positive");
    }
    Ok(())
}

fn take_str(t: &mut Table, key: &str) -> Result<Option<String>> {
    match t.remove(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => bail!("`{key}` must be a string, got {v}"),
    }
}

fn table_at<'a>(t: &'a mut Table, key: &str) -> Result<&'a mut Table> {
    t.entry(key)
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()
        .ok_or_else(|| anyhow!("`{key}` must be a table"))
}

/// Applies `a.b.c=VALUE` to the recipe table. `stages.<name>.…` addresses a stage by name (or
/// index); VALUE is a TOML value (`3`, `1e-4`, `"text"`, `[1, 2]`, `{ a = 1 }`), else a string.
pub fn apply_override(table: &mut Table, spec: &str) -> Result<()> {
    let (key, value) = spec.split_once('=').ok_or_else(|| anyhow!("expected KEY=VALUE"))?;
    edit_path(table, &key_parts(key)?, Some(parse_value(value.trim())))
}

/// Removes `a.b.c` from the recipe table (`--unset stages.rl.lora` drops a stage's `[lora]`
/// table), addressed as [`apply_override`] does. A key that is not there is an error, so a typo
/// cannot pass for a removal.
pub fn apply_unset(table: &mut Table, key: &str) -> Result<()> {
    edit_path(table, &key_parts(key)?, None)
}

fn key_parts(key: &str) -> Result<Vec<&str>> {
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("empty key segment in `{key}`");
    }
    Ok(parts)
}

fn parse_value(text: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()))
}

/// Sets (`Some`) or removes (`None`) the value at `parts`; setting creates missing tables.
fn edit_path(t: &mut Table, parts: &[&str], value: Option<Value>) -> Result<()> {
    let Some((first, rest)) = parts.split_first() else { bail!("empty key") };
    if rest.is_empty() {
        match value {
            Some(v) => {
                t.insert((*first).to_string(), v);
            }
            None => {
                t.remove(*first).ok_or_else(|| anyhow!("there is no `{first}` to remove"))?;
            }
        }
        return Ok(());
    }
    if let Some(Value::Array(items)) = t.get_mut(*first) {
        return edit_in_array(items, first, rest, value);
    }
    let next = if value.is_some() {
        table_at(t, first)?
    } else {
        t.get_mut(*first).and_then(Value::as_table_mut).ok_or_else(|| anyhow!("there is no table `{first}`"))?
    };
    edit_path(next, rest, value)
}

/// `key.<name or index>.…`: an element of an array of tables, by its `name` or position.
fn edit_in_array(items: &mut [Value], key: &str, parts: &[&str], value: Option<Value>) -> Result<()> {
    let (sel, tail) = parts.split_first().ok_or_else(|| anyhow!("{key}.<name> needs a field"))?;
    if tail.is_empty() {
        bail!("{key}.{sel} needs a field");
    }
    let by_index = sel.parse::<usize>().ok();
    let item = items
        .iter_mut()
        .enumerate()
        .find(|(i, s)| Some(*i) == by_index || s.get("name").and_then(Value::as_str) == Some(*sel))
        .map(|(_, s)| s)
        .ok_or_else(|| anyhow!("`{key}` has no element named `{sel}`"))?;
    let item = item.as_table_mut().ok_or_else(|| anyhow!("{key}.{sel} is not a table"))?;
    edit_path(item, tail, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_reads_a_tiny_spec_with_the_seed_beside_it() {
        let init: InitSpec = toml::from_str("hidden_size = 32\nmax_position_embeddings = 96\nseed = 4\n").unwrap();
        let model = TinySpec { hidden_size: 32, max_position_embeddings: 96, ..TinySpec::default() };
        assert_eq!(init, InitSpec { model, seed: 4 });
        assert_eq!(toml::from_str::<InitSpec>("").unwrap(), InitSpec::default());
        let err = toml::from_str::<InitSpec>("hidden_sise = 32\n").unwrap_err().to_string();
        assert!(err.contains("hidden_sise"), "{err}");
    }

    const ARITH: &str = "{ name = \"arithmetic\" }";

    /// A recipe evaluating arithmetic's test split (`eval_data` extra keys) after `stage`.
    fn recipe(eval_data: &str, stage: &str) -> Result<Recipe> {
        let text = format!(
            "output_dir = \"o\"\n[init]\n[eval]\ndata = {{ task = {ARITH}, limit = 4{eval_data} }}\n[[stages]]\n{stage}\n"
        );
        Recipe::from_table(Path::new("r.toml"), toml::from_str(&text)?)
    }

    fn teacher(extra: &str) -> String {
        format!("name = \"c\"\nkind = \"sft\"\nteacher = {{ task = {ARITH}{extra} }}")
    }

    fn grpo(data: &str) -> String {
        format!(
            "name = \"rl\"\nkind = \"grpo\"\ndata = {{ {data} }}\nrewards = [{{ name = \"accuracy\", kind = \"numeric\" }}]"
        )
    }

    #[test]
    fn a_recipe_that_would_train_on_held_out_questions_is_rejected() {
        let err = |r: Result<Recipe>| format!("{:#}", r.expect_err("the recipe should be rejected"));
        recipe("", &teacher("")).unwrap();
        recipe(", test_percent = 20", &teacher(", test_percent = 20")).unwrap();
        let e = err(recipe("", &teacher(", test_percent = 20")));
        assert!(
            e.contains("stage `c` [teacher]") && e.contains("test_percent 20") && e.contains("holds out 10"),
            "{e}"
        );
        let e = err(recipe("", &grpo(&format!("task = {ARITH}, test_percent = 5"))));
        assert!(e.contains("stage `rl` [data]") && e.contains("test_percent 5"), "{e}");
        recipe("", &grpo(&format!("task = {ARITH}"))).unwrap();
        let sample = |split: &str| {
            format!("name = \"s\"\nkind = \"sample\"\nsample = {{ data = {{ task = {ARITH}, split = \"{split}\" }} }}")
        };
        recipe("", &sample("train")).unwrap();
        let e = err(recipe("", &sample("test")));
        assert!(e.contains("stage `s` [sample.data]") && e.contains("test split"), "{e}");
        // Another task's problems, an evaluation of the train split, and files are not constrained.
        let countdown =
            "name = \"c\"\nkind = \"sft\"\nteacher = { task = { name = \"countdown\" }, test_percent = 20 }";
        recipe("", countdown).unwrap();
        recipe(", split = \"train\"", &teacher(", test_percent = 20")).unwrap();
        // So is an eval stage's own test split.
        let stages = format!(
            "{}\n[[stages]]\nname = \"e\"\nkind = \"eval\"\ndata = {{ task = {ARITH}, test_percent = 30 }}",
            teacher("")
        );
        let e = err(recipe("", &stages));
        assert!(e.contains("eval stage `e`") && e.contains("holds out 30"), "{e}");
    }

    #[test]
    fn a_grpo_stage_passes_an_eval_table_to_its_run() {
        let stage = format!("{}\neval = {{ every_steps = 5, questions = 8 }}", grpo(&format!("task = {ARITH}")));
        let r = recipe("", &stage).unwrap();
        assert!(r.stages[0].eval_after, "the evaluation after the stage still runs");
        let StageConfig::Grpo(cfg, _) = r.materialize(&r.stages[0], "m").unwrap() else { panic!("not a GRPO stage") };
        let e = cfg.eval.expect("the run's [eval]");
        assert_eq!((e.every_steps, e.questions), (5, 8));
        let off = recipe("", &format!("{}\neval = false", grpo(&format!("task = {ARITH}")))).unwrap();
        assert!(!off.stages[0].eval_after);
        let e = format!("{:#}", recipe("", &format!("{}\neval = {{ every_steps = 5 }}", teacher(""))).unwrap_err());
        assert!(e.contains("`eval` must be true or false"), "{e}");
    }

    #[test]
    fn overrides_reach_stages_by_name_and_parse_values() {
        let mut t: Table = toml::from_str(
            "output_dir = \"o\"\n[[stages]]\nname = \"a\"\nkind = \"sft\"\n[[stages]]\nname = \"b\"\nkind = \"grpo\"\n",
        )
        .unwrap();
        apply_override(&mut t, "stages.b.grpo.max_steps=3").unwrap();
        apply_override(&mut t, "stages.0.optim.learning_rate=1e-4").unwrap();
        apply_override(&mut t, "model=runs/x").unwrap();
        let stages = t["stages"].as_array().unwrap();
        assert_eq!(stages[1]["grpo"]["max_steps"].as_integer(), Some(3));
        assert_eq!(stages[0]["optim"]["learning_rate"].as_float(), Some(1e-4));
        assert_eq!(t["model"].as_str(), Some("runs/x"));
        assert!(apply_override(&mut t, "stages.zz.x=1").unwrap_err().to_string().contains("zz"));
        apply_override(&mut t, "stages.b.rewards=[{ name = \"r\", weight = 1.0 }]").unwrap();
        apply_override(&mut t, "stages.b.rewards.r.weight=0.5").unwrap();
        assert_eq!(t["stages"][1]["rewards"][0]["weight"].as_float(), Some(0.5));
        assert!(apply_override(&mut t, "novalue").is_err());
        // --unset removes a key, by the same addresses; a key that is not there is an error.
        apply_override(&mut t, "stages.b.lora={ r = 8 }").unwrap();
        apply_unset(&mut t, "stages.b.lora").unwrap();
        assert!(t["stages"][1].get("lora").is_none() && t["stages"][1].get("grpo").is_some());
        apply_unset(&mut t, "stages.0.optim.learning_rate").unwrap();
        assert!(t["stages"][0]["optim"].get("learning_rate").is_none());
        for missing in ["stages.b.lora", "stages.b.nope.x", "stages.zz.lora", "nope"] {
            assert!(apply_unset(&mut t, missing).is_err(), "{missing}");
        }
    }
}
