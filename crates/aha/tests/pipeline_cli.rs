//! `aha pipeline` through the built binary: a pipeline of tiny stages end to end (every kind,
//! the eval table after each, the report), resume skipping done stages, recipe errors that
//! name the field before anything runs, and `recipes/r1.toml`: its values against the paper
//! (docs/DESIGN.md §1) and one step of its first RL stage with a tiny model substituted.

mod common;

use std::path::{Path, PathBuf};

use common::{cold_stage, err, ok, recipe_head, repo_root, rl_stage, TASK};
use serde_json::Value;

/// Every stage kind, each as small as it gets.
fn tiny_recipe(out: &Path) -> String {
    recipe_head(out, 2, "language = \"en\"\n")
        + &cold_stage(", cot_words = { foreign_fraction = 0.5 }", "max_steps = 2, batch_size = 4")
        + &rl_stage(
            "max_steps = 2, prompts_per_step = 2, group_size = 2, max_completion_length = 6, \
             length_schedule = [{ from_step = 2, max_completion_length = 8 }]",
            1e-4,
            "progress = false",
        )
        + &format!(
            r#"
[[stages]]
name = "rejection"
kind = "sample"
sample = {{ data = {{ task = {TASK}, split = "train", limit = 3, template = "raw" }}, sampling = {{ k = 2, max_new_tokens = 8 }} }}
filter = {{ require_correct = false, require_well_formed = false, format = "prompt_completion" }}
[[stages.mix]]
from_stage = "cold"
ratio = 0.5

[[stages]]
name = "sft2"
kind = "sft"
data_from = "rejection"
data = {{ template = "raw" }}
sft = {{ max_steps = 1, batch_size = 2 }}
run = {{ progress = false }}

[[stages]]
name = "rm"
kind = "rm"
from = "cold"
objective = "pairwise"
make_data = {{ kind = "helpful", n = 30 }}
data = {{ template = "raw" }}
train = {{ max_steps = 2, batch_size = 4, progress = false }}
optim = {{ learning_rate = 1e-3 }}

[[stages]]
name = "final"
kind = "grpo"
from = "sft2"
data = {{ task = {TASK}, task_size = 20, template = "raw" }}
grpo = {{ max_steps = 2, prompts_per_step = 2, group_size = 2, max_completion_length = 8, temperature = 0.7 }}
run = {{ progress = false }}
[[stages.rewards]]
name = "accuracy"
kind = "numeric"
[[stages.rewards]]
name = "helpful"
kind = "model"
from_stage = "rm"
last_steps = 1

[[stages]]
name = "check"
kind = "eval"
data = {{ task = {TASK}, limit = 2, template = "raw" }}
sampling = {{ k = 2, max_new_tokens = 8 }}
"#
        )
}

fn metrics(run: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Each (re)start of a run writes a header line naming its execution plan, then step lines.
    assert!(lines[0]["run"]["exec"]["backend"].is_string(), "no run header: {}", lines[0]);
    lines.into_iter().filter(|v| v.get("step").is_some()).collect()
}

const STAGES: [&str; 7] = ["01-cold", "02-rl", "03-rejection", "04-sft2", "05-rm", "06-final", "07-check"];

#[test]
fn tiny_pipeline_runs_every_stage_then_resume_skips_done_stages() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let recipe = tmp.path().join("recipe.toml");
    std::fs::write(&recipe, tiny_recipe(&out)).unwrap();
    let r = recipe.to_str().unwrap();
    let first = ok(&["pipeline", r]);
    let stdout = String::from_utf8_lossy(&first.stdout);
    // An eval table after every stage: 7 tables, the last with 7 rows.
    assert_eq!(stdout.matches("| stage | kind | pass@1 | cons@k |").count(), 7, "{stdout}");
    assert!(stdout.contains("CoT en fraction"), "{stdout}");
    for s in STAGES {
        assert!(out.join(s).join("stage.json").is_file(), "{s} not marked done");
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for name in ["cold", "rl", "rejection", "sft2", "rm", "final", "check"] {
        assert!(report.contains(&format!("`{name}`")), "report misses {name}:\n{report}");
    }
    assert!(report.contains("Rejection sampling:") && report.contains("Reward model, held-out"), "{report}");
    assert!(out.join("02-rl/report.png").is_file(), "the stage's plots are drawn");
    // A stage continuing an evaluated one starts its plots from that evaluation, as step 0.
    let json = |p: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(out.join(p)).unwrap()).unwrap() };
    let start = json("02-rl/eval_00000000_cold__start_.json");
    let cold = json("01-cold/stage.json");
    assert_eq!((start["step"].as_u64(), start["label"].as_str()), (Some(0), Some("cold (start)")));
    assert_eq!(start["pass_at_1"], cold["eval"]["pass_at_1"]);
    let starts = |d: &str| {
        let names = std::fs::read_dir(out.join(d)).unwrap().map(|e| e.unwrap().file_name());
        names.filter(|n| n.to_string_lossy().starts_with("eval_00000000")).count()
    };
    assert_eq!(starts("01-cold"), 0, "the first stage starts from the base, which is not evaluated");
    // Links: the SFT stage read the rejection stage's data; the reward model ran only at the last step.
    let sft2: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("04-sft2/aha_config.json")).unwrap()).unwrap();
    assert!(sft2["data"]["path"].as_str().unwrap().ends_with("03-rejection/sft.jsonl"));
    let active: Vec<f64> =
        metrics(&out.join("06-final")).iter().map(|m| m["rewards/helpful/active"].as_f64().unwrap()).collect();
    assert_eq!(active, vec![0.0, 1.0]);
    let rl = metrics(&out.join("02-rl"));
    let longest: Vec<f64> = rl.iter().map(|m| m["completions/max_length"].as_f64().unwrap()).collect();
    assert!(longest[0] <= 6.0 && longest[1] <= 8.0, "the length schedule raises 6 → 8 at step 2: {longest:?}");
    let done = std::fs::metadata(out.join("02-rl/stage.json")).unwrap().modified().unwrap();

    // Without --resume the finished run is not overwritten.
    assert!(err(&["pipeline", r]).contains("--resume"));
    // With it, every done stage is skipped (no file rewritten).
    let again = ok(&["pipeline", r, "--resume"]);
    assert_eq!(String::from_utf8_lossy(&again.stderr).matches("done, skipped").count(), 7);
    assert_eq!(std::fs::metadata(out.join("02-rl/stage.json")).unwrap().modified().unwrap(), done);
    // A stage not marked done runs again, continuing from its own latest checkpoint.
    std::fs::remove_file(out.join("06-final/stage.json")).unwrap();
    let partial = ok(&["pipeline", r, "--resume"]);
    let log = String::from_utf8_lossy(&partial.stderr);
    assert_eq!(log.matches("done, skipped").count(), 6, "{log}");
    assert!(log.contains("resumed from") && log.contains("06-final"), "{log}");
    assert!(out.join("06-final/stage.json").is_file());
    assert_eq!(metrics(&out.join("06-final")).len(), 2, "no step is trained twice");
}

#[test]
fn bad_recipes_name_the_field_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let good = tiny_recipe(&out);
    let cases: Vec<(String, &str)> = vec![
        (good.replace("[init]", "bogus = 1\n[init]"), "bogus"),
        (good.replace("max_completion_length = 6,", "max_completion_lenght = 6,"), "max_completion_lenght"),
        (
            good.replace("stages[1]", "").replace("name = \"rl\"\nkind = \"grpo\"", "name = \"rl\"\nkind = \"grop\""),
            "grop",
        ),
        (good.replace("from = \"sft2\"", "from = \"sft3\""), "sft3"),
        (good.replace("from_stage = \"rm\"", "from_stage = \"cold\""), "from_stage"),
        (good.replace("slip_rate = 0.5", "slip_rat = 0.5"), "slip_rat"),
        (good.replace("data_from = \"rejection\"", "data_from = \"final\""), "final"),
        (good.replace("name = \"sft2\"", "name = \"rl\""), "used twice"),
        (good.replace("ratio = 0.5", "ratio = 0.5\nratios = 1"), "ratios"),
        (good.replace("from_step = 2,", "from_step = 0,"), "from_step"),
    ];
    for (text, field) in cases {
        let recipe = tmp.path().join("bad.toml");
        std::fs::write(&recipe, &text).unwrap();
        let e = err(&["pipeline", recipe.to_str().unwrap()]);
        assert!(e.contains(field) && e.contains("bad.toml"), "expected `{field}` in:\n{e}");
        assert!(!out.exists(), "nothing may run before the recipe is valid ({field})");
    }
    let recipe = tmp.path().join("good.toml");
    std::fs::write(&recipe, &good).unwrap();
    let e = err(&["pipeline", recipe.to_str().unwrap(), "--set", "stages.nope.sft.max_steps=1"]);
    assert!(e.contains("nope"), "{e}");
}

fn r1() -> toml::Table {
    toml::from_str(&std::fs::read_to_string(repo_root().join("recipes/r1.toml")).unwrap()).unwrap()
}

fn stage<'a>(t: &'a toml::Table, name: &str) -> &'a toml::Table {
    let stages = t["stages"].as_array().unwrap();
    stages.iter().find(|s| s["name"].as_str() == Some(name)).unwrap().as_table().unwrap()
}

fn f(v: &toml::Value) -> f64 {
    v.as_float().or_else(|| v.as_integer().map(|i| i as f64)).unwrap()
}

/// Every value docs/DESIGN.md §1 gives, as `recipes/r1.toml` states it.
#[test]
fn r1_recipe_matches_the_paper() {
    let t = r1();
    let names: Vec<&str> = t["stages"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cold-start", "rl-reasoning", "rejection", "sft-2", "rm-helpful", "rm-safety", "rl-final"]);
    let kinds: Vec<&str> = t["stages"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["sft", "grpo", "sample", "sft", "rm", "rm", "grpo"]);
    for (name, temperature) in [("rl-reasoning", 1.0), ("rl-final", 0.7)] {
        let s = stage(&t, name);
        let g = s["grpo"].as_table().unwrap();
        let per_round = f(&g["prompts_per_step"]) * f(&g["group_size"]);
        let minibatches = f(&g["minibatches"]);
        assert_eq!(per_round, 8192.0, "{name}: 8 192 samples per rollout");
        assert_eq!(minibatches, 16.0, "{name}: 16 minibatches");
        assert_eq!(f(&g["group_size"]), 16.0, "{name}: 16 samples per question");
        assert_eq!(f(&g["prompts_per_step"]) / minibatches, 32.0, "{name}: 32 questions per optimiser step");
        assert_eq!(f(&g["num_iterations"]), 1.0, "{name}: one inner epoch");
        assert_eq!(f(&g["temperature"]), temperature, "{name}: temperature");
        assert_eq!(f(&g["max_completion_length"]), 32768.0, "{name}: max length");
        assert_eq!(f(&g["ref_sync_steps"]) * minibatches, 400.0, "{name}: reference every 400 steps");
        let loss = g["loss"].as_table().unwrap();
        assert_eq!(f(&loss["beta"]), 0.001, "{name}: β");
        assert_eq!((f(&loss["epsilon_low"]), f(&loss["epsilon_high"])), (10.0, 10.0), "{name}: clip ε");
        assert_eq!(f(&s["optim"]["learning_rate"]), 3e-6, "{name}: lr");
    }
    let g = stage(&t, "rl-reasoning")["grpo"].as_table().unwrap();
    let change = g["length_schedule"].as_array().unwrap()[0].as_table().unwrap();
    assert_eq!(f(&change["max_completion_length"]), 65536.0);
    let from = f(&change["from_step"]);
    assert!(((from - 1.0) * 16.0..from * 16.0).contains(&8200.0), "paper step 8 200 falls in aha step {from}");
    let rl1: Vec<&str> =
        stage(&t, "rl-reasoning")["rewards"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(rl1, ["math", "format", "language"], "accuracy + format + language consistency");
    let rej = stage(&t, "rejection");
    assert!(
        rej["filter"]["require_correct"].as_bool().unwrap() && rej["filter"]["require_well_formed"].as_bool().unwrap()
    );
    assert!((f(&rej["mix"].as_array().unwrap()[0]["ratio"]) - 200.0 / 600.0).abs() < 1e-12, "600k + 200k");
    let sft2 = stage(&t, "sft-2");
    assert_eq!((sft2["from"].as_str(), f(&sft2["sft"]["epochs"])), (Some("base"), 2.0), "from base, 2 epochs");
    let fin = stage(&t, "rl-final")["rewards"].as_array().unwrap();
    let models: Vec<f64> =
        fin.iter().filter(|r| r["kind"].as_str() == Some("model")).map(|r| f(&r["last_steps"]) * 16.0).collect();
    assert_eq!(models, [400.0, 400.0], "model rewards in the final 400 steps only");
    assert_eq!(stage(&t, "rm-helpful")["objective"].as_str(), Some("pairwise"));
    assert_eq!(stage(&t, "rm-safety")["objective"].as_str(), Some("pointwise"));
    let e = t["eval"].as_table().unwrap();
    assert_eq!((f(&e["sampling"]["temperature"]), f(&e["sampling"]["top_p"])), (0.6, 0.95));
    // And the whole recipe validates through the stages' own parsers.
    ok(&["pipeline", repo_root().join("recipes/r1.toml").to_str().unwrap(), "--check"]);
}

/// `recipes/r1.toml` with a tiny model and tiny data: cold start (1 step), then one step of
/// the first RL stage with the paper's lr, β, ε, temperature and rewards, on CPU.
#[test]
fn r1_recipe_takes_one_rl_step_with_a_tiny_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = dir.join("model");
    ok(&["init", "--out", model.to_str().unwrap(), "--max-position-embeddings", "128"]);
    let prompts = dir.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\":\"1+1?\",\"answer\":\"2\"}\n{\"prompt\":\"2+2?\",\"answer\":\"4\"}\n")
        .unwrap();
    let sft = repo_root().join("examples/data/sft-arithmetic.jsonl");
    let out = dir.join("r1");
    let set = |kv: String| ["--set".to_string(), kv];
    let mut args: Vec<String> = vec!["pipeline".into(), repo_root().join("recipes/r1.toml").display().to_string()];
    for kv in [
        format!("model={}", model.display()),
        format!("output_dir={}", out.display()),
        format!("eval.data.path={}", prompts.display()),
        "eval.sampling={ k = 2, temperature = 0.6, top_p = 0.95, max_new_tokens = 8 }".into(),
        format!("stages.cold-start.data.path={}", sft.display()),
        "stages.cold-start.sft={ max_steps = 1, batch_size = 2 }".into(),
        format!("stages.rl-reasoning.data.path={}", prompts.display()),
        "stages.rl-reasoning.grpo.max_steps=1".into(),
        "stages.rl-reasoning.grpo.prompts_per_step=2".into(),
        "stages.rl-reasoning.grpo.group_size=2".into(),
        "stages.rl-reasoning.grpo.minibatches=1".into(),
        "stages.rl-reasoning.grpo.max_completion_length=8".into(),
        "stages.rl-reasoning.grpo.length_schedule=[]".into(),
    ] {
        args.extend(set(kv));
    }
    args.extend(["--until".to_string(), "rl-reasoning".to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&refs);
    let rl = out.join("02-rl-reasoning");
    assert_eq!(metrics(&rl).len(), 1, "one step of the first RL stage");
    assert!(!out.join("03-rejection").exists(), "--until stops there");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(rl.join("aha_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["optim"]["learning_rate"].as_f64(), Some(3e-6));
    assert_eq!(cfg["grpo"]["loss"]["beta"].as_f64(), Some(0.001));
    assert_eq!(cfg["grpo"]["loss"]["epsilon_high"].as_f64(), Some(10.0));
    assert_eq!(cfg["grpo"]["temperature"].as_f64(), Some(1.0));
    assert_eq!(cfg["rewards"].as_array().unwrap().len(), 3);
    assert!(cfg["model"].as_str().unwrap().contains("01-cold-start"), "RL starts from the cold-start checkpoint");
}

fn smollm2() -> toml::Table {
    toml::from_str(&std::fs::read_to_string(repo_root().join("recipes/smollm2.toml")).unwrap()).unwrap()
}

/// `recipes/smollm2.toml`: evaluated on ≥ 200 held-out questions × k ≥ 4 at the paper's
/// sampling, the teacher and the RL prompts drawn from the same task's train split, RL with a
/// LoRA table (full fine-tuning one `--unset` away), and the whole recipe valid.
#[test]
fn smollm2_recipe_holds_out_its_eval_and_trains_rl_with_lora() {
    let t = smollm2();
    let e = t["eval"].as_table().unwrap();
    assert!(f(&e["data"]["limit"]) >= 200.0 && f(&e["sampling"]["k"]) >= 4.0, "≥ 200 questions × k ≥ 4");
    assert_eq!((f(&e["sampling"]["temperature"]), f(&e["sampling"]["top_p"])), (0.6, 0.95));
    assert_eq!(e["data"].get("split"), None, "the test split (the default)");
    let (cold, rl) = (stage(&t, "cold-start"), stage(&t, "rl"));
    for (what, task, percent) in [
        ("teacher", &cold["teacher"]["task"], &cold["teacher"]["test_percent"]),
        ("rl data", &rl["data"]["task"], &rl["data"]["test_percent"]),
    ] {
        assert_eq!(task, &e["data"]["task"], "{what}: the evaluated task");
        assert_eq!(percent, &e["data"]["test_percent"], "{what}: the same split");
    }
    assert!(f(&cold["teacher"]["slip_rate"]) > 0.0, "an imperfect teacher leaves RL something to fix");
    assert_eq!(cold.get("lora"), None, "the cold start trains every weight");
    let lora = rl["lora"].as_table().unwrap();
    let keys: Vec<&str> = lora.keys().map(String::as_str).collect();
    assert_eq!(keys, ["alpha", "dropout", "init_seed", "r", "target_modules"]);
    assert_eq!(lora["target_modules"].as_array().unwrap().len(), 7, "every projection");
    let r = repo_root().join("recipes/smollm2.toml");
    let r = r.to_str().unwrap();
    ok(&["pipeline", r, "--check"]);
    ok(&["pipeline", r, "--check", "--unset", "stages.rl.lora", "--set", "stages.rl.optim.learning_rate=1e-5"]);
    assert!(err(&["pipeline", r, "--check", "--unset", "stages.rl.lorra"]).contains("lorra"));
    // A held-out split that training would overlap is refused before anything runs.
    let e = err(&["pipeline", r, "--check", "--set", "stages.rl.data.test_percent=5"]);
    assert!(e.contains("stage `rl` [data]") && e.contains("test_percent"), "{e}");
}

/// `recipes/smollm2.toml` end to end with a tiny model substituted and every size shrunk: the
/// cold start, then RL with LoRA (an adapter checkpoint, evaluated after the stage and during
/// it, plots starting from the cold start's evaluation); and with `--unset stages.rl.lora`,
/// full fine-tuning (a full checkpoint).
#[test]
fn smollm2_recipe_runs_with_a_tiny_model_with_and_without_lora() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    ok(&["init", "--out", model.to_str().unwrap(), "--max-position-embeddings", "256"]);
    let recipe = repo_root().join("recipes/smollm2.toml");
    let run = |out: &Path, extra: &[&str]| {
        let mut args: Vec<String> = vec!["pipeline".into(), recipe.display().to_string()];
        for kv in [
            format!("model={}", model.display()),
            format!("output_dir={}", out.display()),
            "eval.data.limit=2".into(),
            "eval.sampling={ k = 2, max_new_tokens = 8 }".into(),
            "stages.cold-start.teacher.size=8".into(),
            "stages.cold-start.sft={ max_steps = 2, batch_size = 4 }".into(),
            "stages.cold-start.run.progress=false".into(),
            "stages.rl.grpo.max_steps=2".into(),
            "stages.rl.grpo.prompts_per_step=2".into(),
            "stages.rl.grpo.group_size=2".into(),
            "stages.rl.grpo.max_completion_length=8".into(),
            "stages.rl.eval={ every_steps = 1, questions = 2, sampling = { k = 1, max_new_tokens = 8 } }".into(),
            "stages.rl.run.progress=false".into(),
        ] {
            args.extend(["--set".to_string(), kv]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let lora = tmp.path().join("lora");
    let stdout = String::from_utf8_lossy(&run(&lora, &[]).stdout).into_owned();
    assert!(stdout.contains("| cold-start | Sft |") && stdout.contains("| rl | Grpo |"), "{stdout}");
    let rl = lora.join("02-rl");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(rl.join("stage.json")).unwrap()).unwrap();
    let ckpt = PathBuf::from(record["model"].as_str().unwrap());
    assert!(ckpt.join("adapter_config.json").is_file(), "the RL stage saves LoRA adapters: {}", ckpt.display());
    assert!(record["eval"]["pass_at_1"].is_number(), "the adapter checkpoint is evaluated");
    for file in ["eval_00000000_cold-start__start_.json", "eval_00000001_heldout.json", "eval_00000002_rl.json"] {
        assert!(rl.join(file).is_file(), "{file}: the held-out curve of the RL stage");
    }
    assert!(rl.join("report.png").is_file() && lora.join("01-cold-start/report.png").is_file());
    assert_eq!(metrics(&rl).len(), 2);

    let full = tmp.path().join("full");
    run(&full, &["--unset", "stages.rl.lora", "--set", "stages.rl.optim.learning_rate=1e-5"]);
    let record: Value = serde_json::from_str(&std::fs::read_to_string(full.join("02-rl/stage.json")).unwrap()).unwrap();
    let ckpt = PathBuf::from(record["model"].as_str().unwrap());
    assert!(ckpt.join("config.json").is_file() && !ckpt.join("adapter_config.json").exists(), "full fine-tuning");
}
