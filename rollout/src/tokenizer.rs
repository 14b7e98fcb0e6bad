//! The tokenizer of a Hugging Face model folder (`tokenizer.json` through the `tokenizers`
//! crate) and its chat template, rendered with minijinja the way `transformers` renders it.
//!
//! Files read from the folder:
//! - `tokenizer.json` (required): vocabulary, pre-tokenizer, post-processor. Whether
//!   `encode(.., add_special_tokens = true)` adds a BOS is decided by its post-processor, as in
//!   transformers 5; `add_bos_token` from `tokenizer_config.json` is reported but not applied.
//! - `tokenizer_config.json` (optional): `bos_token` / `eos_token` / `pad_token` / `unk_token`
//!   (a string or an AddedToken object `{"content": ...}`), `add_bos_token`, and
//!   `chat_template` (a string, or a list of `{name, template}` of which `default` is used).
//! - `chat_template.jinja` (optional, transformers 5): wins over `tokenizer_config.json`'s.
//!
//! Rendering matches transformers' `render_jinja_template`: `trim_blocks` and
//! `lstrip_blocks` on, trailing newline of the template dropped, Python string/dict methods
//! (minijinja-contrib's pycompat), the globals `raise_exception` and `strftime_now`, a
//! `tojson` filter that writes like Python's `json.dumps` (no HTML escaping, `indent`,
//! `sort_keys`, `ensure_ascii`), and the context `messages`, `add_generation_prompt`,
//! `tools` = `documents` = none, plus the special tokens that are set.
//! With pycompat, `{{ none }}` / booleans print as Python does (`None`, `True`, `False`).
//! Known differences from transformers: the keys of a message map iterate (and `tojson`)
//! sorted rather than in insertion order (minijinja is built without `preserve_order`),
//! `{% break %}`/`{% continue %}` need minijinja's `loop_controls` feature, and
//! `strftime_now` uses UTC rather than the local time zone.

use crate::error::{Result, RolloutError};
use minijinja::value::Kwargs;
use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// One chat turn, as in transformers' `[{"role": ..., "content": ...}]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

const TEMPLATE_NAME: &str = "chat_template";

/// A chat template: its source, where it came from, and the compiled environment (or the
/// compile error, reported when the template is used so that encode/decode still work).
struct ChatTemplate {
    origin: String,
    env: std::result::Result<Environment<'static>, String>,
}

/// A tokenizer loaded from a model folder. `Send + Sync`; share it with `Arc`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    dir: PathBuf,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    unk_token: Option<String>,
    add_bos_token: Option<bool>,
    template: Option<ChatTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("dir", &self.dir)
            .field("vocab_size", &self.vocab_size())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("pad_token", &self.pad_token)
            .field("chat_template", &self.template.as_ref().map(|t| t.origin.as_str()))
            .finish()
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` (optional) and `chat_template.jinja`
    /// (optional) from a model folder.
    pub fn from_dir(dir: &Path) -> Result<Tokenizer> {
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            let hint = if dir.is_dir() {
                "ponder needs the fast tokenizer file tokenizer.json in the model folder; if the model only has a slow tokenizer, \
                 convert it once with transformers: AutoTokenizer.from_pretrained(dir).save_pretrained(dir)"
            } else {
                "the model folder does not exist; check the path"
            };
            return Err(RolloutError::MissingFile { path: tok_path, hint: hint.into() });
        }
        let mut inner = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| RolloutError::Tokenizer(format!("{}: cannot load: {e}", tok_path.display())))?;
        // transformers turns off padding/truncation stored in tokenizer.json unless asked.
        inner.with_truncation(None).map_err(|e| RolloutError::Tokenizer(e.to_string()))?;
        inner.with_padding(None);

        let mut tk = Tokenizer {
            inner,
            dir: dir.to_path_buf(),
            bos_token: None,
            eos_token: None,
            pad_token: None,
            unk_token: None,
            add_bos_token: None,
            template: None,
        };

        let cfg_path = dir.join("tokenizer_config.json");
        if cfg_path.is_file() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| RolloutError::io(&cfg_path, e))?;
            let cfg: Json = serde_json::from_str(&text).map_err(|e| RolloutError::Json { path: cfg_path.clone(), source: e })?;
            let bad = |msg: String| RolloutError::Config { path: cfg_path.clone(), msg };
            let token = |key: &str| -> Result<Option<String>> {
                match cfg.get(key) {
                    None | Some(Json::Null) => Ok(None),
                    Some(Json::String(s)) => Ok(Some(s.clone())),
                    Some(Json::Object(o)) => match o.get("content") {
                        Some(Json::String(s)) => Ok(Some(s.clone())),
                        _ => Err(bad(format!("`{key}` is an object without a string `content`"))),
                    },
                    Some(other) => Err(bad(format!("`{key}` must be a string or {{\"content\": ...}}, found {other}"))),
                }
            };
            tk.bos_token = token("bos_token")?;
            tk.eos_token = token("eos_token")?;
            tk.pad_token = token("pad_token")?;
            tk.unk_token = token("unk_token")?;
            tk.add_bos_token = cfg.get("add_bos_token").and_then(Json::as_bool);
            match cfg.get("chat_template") {
                None | Some(Json::Null) => {}
                Some(Json::String(s)) => tk.set_template(s.clone(), format!("{} (chat_template)", cfg_path.display())),
                Some(Json::Array(list)) => {
                    let mut names = vec![];
                    let mut default = None;
                    for item in list {
                        let name = item.get("name").and_then(Json::as_str);
                        let body = item.get("template").and_then(Json::as_str);
                        match (name, body) {
                            (Some(n), Some(b)) => {
                                names.push(n.to_string());
                                if n == "default" {
                                    default = Some(b.to_string());
                                }
                            }
                            _ => return Err(bad("`chat_template` list entries need a string `name` and `template`".into())),
                        }
                    }
                    let origin = format!("{} (chat_template, entry `default`)", cfg_path.display());
                    match default {
                        Some(b) => tk.set_template(b, origin),
                        None => {
                            tk.template = Some(ChatTemplate {
                                origin,
                                env: Err(format!(
                                    "{} has named chat templates {names:?} but none called `default`; \
                                     pick one with Tokenizer::set_chat_template",
                                    cfg_path.display()
                                )),
                            })
                        }
                    }
                }
                Some(other) => return Err(bad(format!("`chat_template` must be a string or a list of {{name, template}}, found {other}"))),
            }
        }

        let jinja_path = dir.join("chat_template.jinja");
        if jinja_path.is_file() {
            let body = std::fs::read_to_string(&jinja_path).map_err(|e| RolloutError::io(&jinja_path, e))?;
            tk.set_template(body, jinja_path.display().to_string());
        }
        Ok(tk)
    }

    /// Replaces the chat template (e.g. a recipe's own prompt format).
    pub fn set_chat_template(&mut self, source: impl Into<String>) {
        self.set_template(source.into(), "set_chat_template".into());
    }

    fn set_template(&mut self, source: String, origin: String) {
        let env = build_env(source).map_err(|e| format!("{origin}: {}", describe(&e)));
        self.template = Some(ChatTemplate { origin, env });
    }

    /// The folder this tokenizer was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Token ids of `text`. `add_special_tokens` runs tokenizer.json's post-processor (BOS
    /// for Llama 3 style tokenizers); rendered chat templates already hold their special
    /// tokens, so encode them with `false`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| RolloutError::Tokenizer(format!("cannot encode {:?}: {e}", preview(text))))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of `ids`. Ids the tokenizer does not know (checkpoints pad their embedding
    /// matrix past the tokenizer, so a policy can sample them) decode to nothing, as in
    /// transformers; negative ids are an error.
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let mut u = Vec::with_capacity(ids.len());
        for &i in ids {
            let i = u32::try_from(i).map_err(|_| RolloutError::Tokenizer(format!("cannot decode negative token id {i}")))?;
            if self.inner.id_to_token(i).is_some() {
                u.push(i);
            }
        }
        self.inner.decode(&u, skip_special_tokens).map_err(|e| RolloutError::Tokenizer(format!("cannot decode: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }

    pub fn id_to_token(&self, id: i64) -> Option<String> {
        u32::try_from(id).ok().and_then(|i| self.inner.id_to_token(i))
    }

    /// Number of tokens including added ones (Python's `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }
    pub fn pad_token(&self) -> Option<&str> {
        self.pad_token.as_deref()
    }
    pub fn unk_token(&self) -> Option<&str> {
        self.unk_token.as_deref()
    }
    /// `add_bos_token` from tokenizer_config.json, if given (informational; see module docs).
    pub fn add_bos_token(&self) -> Option<bool> {
        self.add_bos_token
    }
    pub fn eos_token_id(&self) -> Option<i64> {
        self.eos_token.as_deref().and_then(|t| self.token_to_id(t))
    }
    pub fn pad_token_id(&self) -> Option<i64> {
        self.pad_token.as_deref().and_then(|t| self.token_to_id(t))
    }
    pub fn bos_token_id(&self) -> Option<i64> {
        self.bos_token.as_deref().and_then(|t| self.token_to_id(t))
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    /// Renders `messages` with the chat template, exactly as
    /// `tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let t = self.template.as_ref().ok_or_else(|| {
            RolloutError::Template(format!(
                "{} has no chat template (neither chat_template.jinja nor a `chat_template` in tokenizer_config.json); \
                 this looks like a base model: use a recipe prompt format that needs no template, or set one with \
                 Tokenizer::set_chat_template",
                self.dir.display()
            ))
        })?;
        let env = t.env.as_ref().map_err(|e| RolloutError::Template(e.clone()))?;
        let tmpl = env.get_template(TEMPLATE_NAME).map_err(|e| RolloutError::Template(describe(&e)))?;
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from_serialize(messages)),
            ("add_generation_prompt".into(), Value::from(add_generation_prompt)),
            ("tools".into(), Value::from(())),
            ("documents".into(), Value::from(())),
        ];
        for (k, v) in
            [("bos_token", &self.bos_token), ("eos_token", &self.eos_token), ("pad_token", &self.pad_token), ("unk_token", &self.unk_token)]
        {
            if let Some(v) = v {
                ctx.push((k.into(), Value::from(v.as_str())));
            }
        }
        let ctx: Value = ctx.into_iter().collect();
        tmpl.render(ctx).map_err(|e| RolloutError::Template(format!("{}: {}", t.origin, describe(&e))))
    }

    /// Renders and encodes (without adding special tokens again), ready as a prompt.
    pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<i64>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }
}

fn preview(text: &str) -> String {
    let mut s: String = text.chars().take(40).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

/// A minijinja error with its detail and its causes, on one line.
fn describe(e: &JinjaError) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}

/// The jinja environment transformers uses for chat templates.
fn build_env(source: String) -> std::result::Result<Environment<'static>, JinjaError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, source)?;
    Ok(env)
}

fn raise_exception(message: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, format!("raise_exception: {message}")))
}

/// Python's `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<String, JinjaError> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let indent_v: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent = match indent_v {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match i64::try_from(v.clone()) {
            Ok(n) => Some(" ".repeat(n.max(0) as usize)),
            Err(_) => Some(
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| JinjaError::new(ErrorKind::InvalidOperation, "tojson: indent must be an integer or a string"))?,
            ),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| JinjaError::new(ErrorKind::InvalidOperation, "tojson: separators must be two strings"))?;
            (parts[0].clone(), parts[1].clone())
        }
        _ => (if indent.is_some() { ",".to_string() } else { ", ".to_string() }, ": ".to_string()),
    };
    let json =
        serde_json::to_value(value).map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: cannot serialize: {e}")))?;
    let mut out = String::new();
    let style = PyJson { indent, item_sep, key_sep, sort_keys: sort_keys.unwrap_or(false), ensure_ascii: ensure_ascii.unwrap_or(false) };
    style.write(&json, 0, &mut out);
    Ok(out)
}

struct PyJson {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl PyJson {
    fn newline(&self, depth: usize, out: &mut String) {
        if let Some(ind) = &self.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(ind);
            }
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        let quoted = serde_json::to_string(s).unwrap_or_default();
        if self.ensure_ascii {
            for c in quoted.chars() {
                if c.is_ascii() {
                    out.push(c);
                } else {
                    let mut buf = [0u16; 2];
                    for u in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{:04x}", u));
                    }
                }
            }
        } else {
            out.push_str(&quoted);
        }
    }

    fn write(&self, v: &Json, depth: usize, out: &mut String) {
        match v {
            Json::Array(items) if !items.is_empty() => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.write(item, depth + 1, out);
                }
                self.newline(depth, out);
                out.push(']');
            }
            Json::Object(map) if !map.is_empty() => {
                let mut entries: Vec<(&String, &Json)> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, item)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(depth + 1, out);
                    self.string(k, out);
                    out.push_str(&self.key_sep);
                    self.write(item, depth + 1, out);
                }
                self.newline(depth, out);
                out.push('}');
            }
            Json::Array(_) => out.push_str("[]"),
            Json::Object(_) => out.push_str("{}"),
            Json::String(s) => self.string(s, out),
            Json::Number(n) => {
                // Python writes floats with a fractional part or exponent (1.0, 1e+20).
                let s = n.to_string();
                out.push_str(&s);
            }
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Null => out.push_str("null"),
        }
    }
}

/// `datetime.now().strftime(format)`, in UTC (ponder carries no time-zone database).
/// Supports %Y %y %m %d %e %j %H %I %M %S %p %a %A %b %B %h %F %T %D %%; anything else is
/// written through unchanged.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    strftime_utc(&format, secs)
}

pub(crate) fn strftime_utc(format: &str, unix_secs: i64) -> String {
    // The calendar comes from the `time` crate (already in the tree through tch's zip).
    let t = time::OffsetDateTime::from_unix_timestamp(unix_secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let (y, m, d) = (t.year(), t.month() as u8, t.day());
    let (hh, mm, ss) = (t.hour(), t.minute(), t.second());
    let h12 = if hh % 12 == 0 { 12 } else { hh % 12 };
    let month = t.month().to_string();
    let weekday = t.weekday().to_string();
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('j') => out.push_str(&format!("{:03}", t.ordinal())),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('I') => out.push_str(&format!("{h12:02}")),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('a') => out.push_str(&weekday[..3]),
            Some('A') => out.push_str(&weekday),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('B') => out.push_str(&month),
            Some('F') => out.push_str(&format!("{y}-{m:02}-{d:02}")),
            Some('T') => out.push_str(&format!("{hh:02}:{mm:02}:{ss:02}")),
            Some('D') => out.push_str(&format!("{m:02}/{d:02}/{:02}", y.rem_euclid(100))),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_render(src: &str, ctx: Value) -> std::result::Result<String, String> {
        let env = build_env(src.to_string()).map_err(|e| describe(&e))?;
        env.get_template(TEMPLATE_NAME).unwrap().render(ctx).map_err(|e| describe(&e))
    }

    #[test]
    fn strftime_matches_known_dates() {
        // 2024-07-26 13:05:09 UTC was a Friday.
        let t = 1_722_000_000 - 1_722_000_000 % 86_400 + 13 * 3600 + 5 * 60 + 9;
        assert_eq!(strftime_utc("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime_utc("%A %B %e, %y %H:%M:%S %p %I %j %%", t), "Friday July 26, 24 13:05:09 PM 01 208 %");
        assert_eq!(strftime_utc("%F %T %a", 0), "1970-01-01 00:00:00 Thu");
        assert_eq!(strftime_utc("%F", 951_782_400), "2000-02-29");
        assert_eq!(strftime_utc("%Q", 0), "%Q");
    }

    #[test]
    fn tojson_writes_like_python_json_dumps() {
        let v: Value = Value::from_serialize(serde_json::json!({"b": [1, 2.5, "é<&>\n"], "a": null, "c": {}}));
        let ctx: Value = vec![("x".to_string(), v)].into_iter().collect();
        // Key order follows minijinja's maps (sorted without the preserve_order feature).
        let plain = env_render("{{ x | tojson }}", ctx.clone()).unwrap();
        assert!(plain.contains(r#""b": [1, 2.5, "é<&>\n"]"#), "{plain}");
        assert!(plain.contains(r#""a": null"#) && plain.contains(r#""c": {}"#), "{plain}");
        let sorted = env_render("{{ x | tojson(indent=2, sort_keys=true) }}", ctx.clone()).unwrap();
        assert_eq!(sorted, "{\n  \"a\": null,\n  \"b\": [\n    1,\n    2.5,\n    \"é<&>\\n\"\n  ],\n  \"c\": {}\n}");
        let ascii = env_render("{{ x.b | tojson(ensure_ascii=true, separators=(',', ':')) }}", ctx).unwrap();
        assert_eq!(ascii, r#"[1,2.5,"\u00e9<&>\n"]"#);
    }

    #[test]
    fn trims_blocks_and_python_methods() {
        let src = "{% for m in messages %}\n  {% if m.role == 'user' %}\n[{{ m.content.strip().upper() }}]\n  {% endif %}\n{% endfor %}\n";
        let ctx: Value =
            vec![("messages".to_string(), Value::from_serialize(vec![ChatMessage::user("  hi "), ChatMessage::assistant("x")]))]
                .into_iter()
                .collect();
        assert_eq!(env_render(src, ctx).unwrap(), "[HI]\n");
    }
}
