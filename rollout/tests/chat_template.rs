//! Tokenizer and chat templates against transformers / tokenizers / jinja2 outputs.
//!
//! Fixtures (`tests/fixtures/<model>/` and `tests/fixtures/chat_templates.json`) come from
//! `scripts/make_fixtures.py`; regenerate with
//!     python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-fixtures.txt
//!     .venv/bin/python scripts/make_fixtures.py

use rollout::tokenizer::{ChatMessage, Tokenizer};
use rollout::RolloutError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(Deserialize)]
struct Chat {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    text: String,
    ids: Vec<i64>,
}

#[derive(Deserialize)]
struct TemplateError {
    messages: Vec<ChatMessage>,
    message: String,
}

#[derive(Deserialize)]
struct Encoding {
    text: String,
    ids: Vec<i64>,
    ids_with_special: Vec<i64>,
    decoded: String,
    decoded_skip_special: String,
}

#[derive(Deserialize)]
struct ModelCases {
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    vocab_size: usize,
    has_chat_template: bool,
    chats: Vec<Chat>,
    errors: Vec<TemplateError>,
    encodings: Vec<Encoding>,
}

#[derive(Deserialize)]
struct Cases {
    models: BTreeMap<String, ModelCases>,
}

fn cases() -> Cases {
    let path = fixtures().join("chat_templates.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}; see the header of this file", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str) -> Tokenizer {
    Tokenizer::from_dir(&fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn fixtures_cover_every_template_source() {
    let c = cases();
    let names: Vec<&str> = c.models.keys().map(String::as_str).collect();
    assert_eq!(names, ["llama-bias", "llama3-sharded", "qwen2-tied", "qwen2-untied"]);
    // tokenizer_config.json string, tokenizer_config.json list, chat_template.jinja, none.
    assert!(fixtures().join("llama3-sharded/chat_template.jinja").is_file());
    assert!(!fixtures().join("qwen2-tied/chat_template.jinja").exists());
    for (name, m) in &c.models {
        if m.has_chat_template {
            assert!(m.chats.len() >= 8, "{name}");
            assert!(m.chats.iter().any(|c| c.add_generation_prompt) && m.chats.iter().any(|c| !c.add_generation_prompt));
        }
    }
}

#[test]
fn rendered_templates_match_transformers() {
    for (name, m) in cases().models {
        let tk = load(&name);
        assert_eq!(tk.has_chat_template(), m.has_chat_template, "{name}");
        for (i, c) in m.chats.iter().enumerate() {
            let text = tk.apply_chat_template(&c.messages, c.add_generation_prompt).unwrap_or_else(|e| panic!("{name} chat {i}: {e}"));
            assert_eq!(text, c.text, "{name} chat {i} (add_generation_prompt={})", c.add_generation_prompt);
            let ids = tk.encode(&text, false).unwrap();
            assert_eq!(ids, c.ids, "{name} chat {i}: token ids differ");
            assert_eq!(tk.encode_chat(&c.messages, c.add_generation_prompt).unwrap(), c.ids, "{name} chat {i}");
        }
    }
}

#[test]
fn special_tokens_and_vocab_match_transformers() {
    for (name, m) in cases().models {
        let tk = load(&name);
        assert_eq!(tk.vocab_size(), m.vocab_size, "{name}");
        assert_eq!(tk.bos_token(), m.bos_token.as_deref(), "{name}");
        assert_eq!(tk.eos_token(), m.eos_token.as_deref(), "{name}");
        assert_eq!(tk.pad_token(), m.pad_token.as_deref(), "{name}");
        assert!(tk.eos_token_id().is_some() && tk.pad_token_id().is_some(), "{name}");
        for t in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<answer>", "</answer>"] {
            let id = tk.token_to_id(t).unwrap_or_else(|| panic!("{name}: {t} missing"));
            assert_eq!(tk.id_to_token(id).as_deref(), Some(t));
        }
        assert_eq!(tk.token_to_id("<no such token>"), None);
    }
    let llama = load("llama3-sharded");
    assert_eq!(llama.add_bos_token(), Some(true));
    assert_eq!(llama.bos_token_id(), llama.token_to_id("<|begin_of_text|>"));
}

#[test]
fn encode_decode_round_trip_matches_fixture_ids() {
    for (name, m) in cases().models {
        let tk = load(&name);
        assert!(!m.encodings.is_empty());
        for e in &m.encodings {
            assert_eq!(tk.encode(&e.text, false).unwrap(), e.ids, "{name}: {:?}", e.text);
            assert_eq!(tk.encode(&e.text, true).unwrap(), e.ids_with_special, "{name} (special): {:?}", e.text);
            assert_eq!(tk.decode(&e.ids_with_special, false).unwrap(), e.decoded, "{name}");
            assert_eq!(tk.decode(&e.ids_with_special, true).unwrap(), e.decoded_skip_special, "{name}");
            // Byte-level BPE: decoding the plain ids gives the text back exactly.
            assert_eq!(tk.decode(&e.ids, false).unwrap(), e.text, "{name}");
        }
        // Reasoning markers are ordinary added tokens: skip_special_tokens keeps them.
        let ids = tk.encode("<think>a</think><answer>4</answer><|endoftext|>", false).unwrap();
        assert_eq!(tk.decode(&ids, true).unwrap(), "<think>a</think><answer>4</answer>");
    }
    // Greedy tokens from the parity reference decode and re-encode to the same text.
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("qwen2-tied/reference.json")).unwrap()).unwrap();
    let tk = load("qwen2-tied");
    for p in r["prompts"].as_array().unwrap() {
        let ids: Vec<i64> = serde_json::from_value(p.clone()).unwrap();
        let text = tk.decode(&ids, false).unwrap();
        assert_eq!(tk.decode(&tk.encode(&text, false).unwrap(), false).unwrap(), text);
    }
    // Ids past the tokenizer (padded embedding rows a policy can sample) decode to nothing,
    // as in transformers; negative ids are errors, not panics.
    let past = tk.vocab_size() as i64;
    assert_eq!(tk.decode(&[5, past, past + 7], false).unwrap(), tk.decode(&[5], false).unwrap());
    let e = tk.decode(&[-1], false).unwrap_err();
    assert!(matches!(e, RolloutError::Tokenizer(_)), "{e}");
}

#[test]
fn raise_exception_in_fixture_templates_is_a_template_error() {
    for (name, m) in cases().models {
        let tk = load(&name);
        for e in &m.errors {
            let err = tk.apply_chat_template(&e.messages, true).unwrap_err();
            assert!(matches!(err, RolloutError::Template(_)), "{name}: {err}");
            assert!(err.to_string().contains(&e.message), "{name}: {err} should contain {:?}", e.message);
        }
    }
}

#[test]
fn missing_tokenizer_json_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let e = Tokenizer::from_dir(tmp.path()).unwrap_err();
    match &e {
        RolloutError::MissingFile { path, hint } => {
            assert!(path.ends_with("tokenizer.json"), "{e}");
            assert!(hint.contains("tokenizer.json"), "{e}");
        }
        other => panic!("expected MissingFile, got {other}"),
    }
    let e = Tokenizer::from_dir(&tmp.path().join("nope")).unwrap_err();
    assert!(matches!(e, RolloutError::MissingFile { .. }), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn custom_template_raise_exception_and_syntax_errors() {
    let mut tk = load("qwen2-tied");
    tk.set_chat_template(
        "{% if messages|length > 1 %}{{ raise_exception('only one message, please') }}{% endif %}{{ messages[0].content }}",
    );
    assert_eq!(tk.apply_chat_template(&[ChatMessage::user("hi")], false).unwrap(), "hi");
    let e = tk.apply_chat_template(&[ChatMessage::user("a"), ChatMessage::user("b")], false).unwrap_err();
    assert!(matches!(e, RolloutError::Template(_)), "{e}");
    assert!(e.to_string().contains("only one message, please"), "{e}");

    // A syntax error does not stop the tokenizer from loading; it surfaces when rendering.
    tk.set_chat_template("{% for m in messages %}{{ m.content }");
    assert!(tk.has_chat_template());
    assert_eq!(tk.encode("hi", false).unwrap(), load("qwen2-tied").encode("hi", false).unwrap());
    let e = tk.apply_chat_template(&[ChatMessage::user("a")], false).unwrap_err();
    assert!(matches!(e, RolloutError::Template(_)), "{e}");
    assert!(e.to_string().to_lowercase().contains("syntax"), "{e}");

    // strftime_now and bos_token are available; tools is none.
    // Booleans and none print the Python way (True / False / None), as in transformers.
    tk.set_chat_template("{{ bos_token is defined }}#{{ eos_token }}#{{ tools is none }}#{{ tools }}#{{ strftime_now('%Y-%m-%d') }}");
    let out = tk.apply_chat_template(&[ChatMessage::user("a")], false).unwrap();
    let parts: Vec<&str> = out.split('#').collect();
    assert_eq!(&parts[..4], ["False", "<|im_end|>", "True", "None"], "{out}");
    assert_eq!(parts[4].len(), 10, "{out}");
    assert!(parts[4].starts_with("20"), "{out}");
}

#[test]
fn folder_without_template_refuses_to_render() {
    let tk = load("llama-bias");
    assert!(!tk.has_chat_template());
    let e = tk.apply_chat_template(&[ChatMessage::user("hi")], true).unwrap_err();
    assert!(matches!(e, RolloutError::Template(_)), "{e}");
    assert!(e.to_string().contains("no chat template") && e.to_string().contains("llama-bias"), "{e}");
}

#[test]
fn template_sources_and_precedence() {
    let src = fixtures().join("qwen2-tied");
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::copy(src.join("tokenizer.json"), d.join("tokenizer.json")).unwrap();
    // No tokenizer_config.json at all: tokenizer works, no template, no special tokens named.
    let tk = Tokenizer::from_dir(d).unwrap();
    assert!(!tk.has_chat_template() && tk.eos_token().is_none());
    // AddedToken objects for special tokens; list-form template without `default`.
    let cfg = serde_json::json!({
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": false},
        "bos_token": null,
        "chat_template": [{"name": "tool_use", "template": "T"}]
    });
    std::fs::write(d.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tk = Tokenizer::from_dir(d).unwrap();
    assert_eq!(tk.eos_token(), Some("<|im_end|>"));
    assert_eq!(tk.bos_token(), None);
    let e = tk.apply_chat_template(&[ChatMessage::user("x")], false).unwrap_err().to_string();
    assert!(e.contains("default") && e.contains("tool_use"), "{e}");
    // A plain string template; then chat_template.jinja wins over it.
    let cfg = serde_json::json!({"eos_token": "<|im_end|>", "chat_template": "config:{{ messages[0].content }}"});
    std::fs::write(d.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let msgs = [ChatMessage::user("x")];
    assert_eq!(Tokenizer::from_dir(d).unwrap().apply_chat_template(&msgs, false).unwrap(), "config:x");
    std::fs::write(d.join("chat_template.jinja"), "jinja:{{ messages[0].content }}\n").unwrap();
    assert_eq!(Tokenizer::from_dir(d).unwrap().apply_chat_template(&msgs, false).unwrap(), "jinja:x");
    // Malformed tokenizer_config.json names the file.
    std::fs::write(d.join("tokenizer_config.json"), "{not json").unwrap();
    let e = Tokenizer::from_dir(d).unwrap_err();
    assert!(matches!(e, RolloutError::Json { .. }) && e.to_string().contains("tokenizer_config.json"), "{e}");
    // A broken tokenizer.json is a tokenizer error naming the file.
    std::fs::write(d.join("tokenizer.json"), "{}").unwrap();
    let e = Tokenizer::from_dir(d).unwrap_err();
    assert!(matches!(e, RolloutError::Tokenizer(_)) && e.to_string().contains("tokenizer.json"), "{e}");
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Tokenizer>();
}
