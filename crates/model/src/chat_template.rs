//! Chat templates: Hugging Face's Jinja chat templates rendered with `minijinja`, byte-identical
//! to `transformers`' `apply_chat_template`.
//!
//! `transformers` compiles templates in a Jinja2 sandbox with `trim_blocks` and `lstrip_blocks`,
//! the `loopcontrols` extension, a `tojson` filter that is Python's `json.dumps` (not Jinja's
//! HTML-safe one), and the globals `raise_exception` and `strftime_now`; it renders with
//! `messages`, `tools`, `documents`, `add_generation_prompt` and the tokenizer's special tokens
//! (`bos_token`, `eos_token`, ...). This module reproduces that environment, including Python
//! string methods (`.strip()`, `.split()`, `.startswith()`, ...) through `minijinja-contrib`'s
//! pycompat layer and dictionaries that keep their insertion order.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::error::{ModelError, Result};

/// The template's name inside its private environment.
const TEMPLATE_NAME: &str = "chat";

/// ChatML, the template of `aha init`'s tiny models (Qwen's format without a default system
/// prompt).
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}\n    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

/// One chat message with plain text content (the common case). Richer messages (tool calls,
/// `reasoning_content`) go through [`ChatTemplate::render_json`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A compiled chat template plus the special-token variables it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    origin: String,
    special_tokens: Map<String, Json>,
}

impl ChatTemplate {
    /// Compiles `source`; `origin` (e.g. `"/m/tokenizer_config.json: chat_template"`) names it in
    /// errors. `special_tokens` are the `bos_token`, `eos_token`, ... variables `transformers`
    /// passes to every render.
    pub fn new(source: &str, origin: &str, special_tokens: Map<String, Json>) -> Result<Self> {
        let mut env = python_compatible_environment();
        env.add_template_owned(TEMPLATE_NAME, source.to_string()).map_err(|e| template_error(origin, &e))?;
        Ok(Self { env, source: source.to_string(), origin: origin.to_string(), special_tokens })
    }

    /// The template's Jinja source, as loaded (saved verbatim by `save_pretrained`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The special-token variables passed to every render.
    pub fn special_tokens(&self) -> &Map<String, Json> {
        &self.special_tokens
    }

    /// Renders plain-text messages, like `apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt=...)`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let json = serde_json::to_value(messages).map_err(|e| ModelError::ChatTemplate {
            origin: self.origin.clone(),
            reason: format!("messages are not serialisable: {e}"),
        })?;
        self.render_json(&json, add_generation_prompt, &Map::new())
    }

    /// Renders arbitrary JSON messages (tool calls, `reasoning_content`, ...). `kwargs` are extra
    /// template variables (`tools`, `documents`, `enable_thinking`, `date_string`, ...), exactly
    /// like `apply_chat_template`'s keyword arguments; they override the special tokens.
    pub fn render_json(
        &self,
        messages: &Json,
        add_generation_prompt: bool,
        kwargs: &Map<String, Json>,
    ) -> Result<String> {
        let mut ctx = self.special_tokens.clone();
        ctx.insert("messages".into(), normalize_messages(messages));
        ctx.insert("tools".into(), Json::Null);
        ctx.insert("documents".into(), Json::Null);
        ctx.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        for (k, v) in kwargs {
            ctx.insert(k.clone(), v.clone());
        }
        let tmpl = self.env.get_template(TEMPLATE_NAME).map_err(|e| template_error(&self.origin, &e))?;
        tmpl.render(Value::from_serialize(&ctx)).map_err(|e| template_error(&self.origin, &e))
    }
}

/// What `transformers` 5 does to messages before rendering: keys whose value is `null` are
/// dropped, and a message's reasoning (`reasoning_content`, `thinking` or `reasoning`) is
/// exposed as both `thinking` (first) and `reasoning_content` (last).
fn normalize_messages(messages: &Json) -> Json {
    let Json::Array(items) = messages else {
        return messages.clone();
    };
    let normalized = items
        .iter()
        .map(|m| {
            let Json::Object(fields) = m else {
                return m.clone();
            };
            let kept: Map<String, Json> =
                fields.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect();
            let reasoning = ["reasoning_content", "thinking", "reasoning"].iter().find_map(|k| kept.get(*k)).cloned();
            let Some(r) = reasoning else {
                return Json::Object(kept);
            };
            let mut out = Map::new();
            out.insert("thinking".into(), r.clone());
            for (k, v) in kept {
                out.insert(k, v);
            }
            out.insert("reasoning_content".into(), r);
            Json::Object(out)
        })
        .collect();
    Json::Array(normalized)
}

/// The Jinja environment `transformers` uses, rebuilt on minijinja.
fn python_compatible_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    minijinja_contrib::add_to_environment(&mut env);
    env.add_filter("tojson", tojson_filter);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env
}

/// Formats a minijinja error with its line and chained causes.
fn template_error(origin: &str, e: &Error) -> ModelError {
    let mut reason = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let _ = write!(reason, ": {s}");
        src = s.source();
    }
    ModelError::ChatTemplate { origin: origin.to_string(), reason }
}

/// `raise_exception(message)`: aborts rendering with the template's own message.
fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("raise_exception: {message}")))
}

/// `strftime_now(format)`: the current UTC time formatted like Python's `strftime`.
fn strftime_now(format: String) -> std::result::Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?
        .as_secs();
    Ok(Value::from(strftime(&format, secs)))
}

/// A subset of Python's `strftime` for a Unix time in UTC: `%d %m %Y %y %b %B %a %A %H %M %S %j %%`.
pub fn strftime(format: &str, unix_secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = (unix_secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let weekday = ((days + 3).rem_euclid(7)) as usize; // 1970-01-01 was a Thursday.
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let tod = unix_secs % 86_400;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let _ = match chars.next() {
            Some('d') => write!(out, "{d:02}"),
            Some('m') => write!(out, "{m:02}"),
            Some('Y') => write!(out, "{y}"),
            Some('y') => write!(out, "{:02}", y.rem_euclid(100)),
            Some('b') => write!(out, "{}", &MONTHS[(m - 1) as usize][..3]),
            Some('B') => write!(out, "{}", MONTHS[(m - 1) as usize]),
            Some('a') => write!(out, "{}", &DAYS[weekday][..3]),
            Some('A') => write!(out, "{}", DAYS[weekday]),
            Some('H') => write!(out, "{:02}", tod / 3600),
            Some('M') => write!(out, "{:02}", tod / 60 % 60),
            Some('S') => write!(out, "{:02}", tod % 60),
            Some('j') => write!(out, "{yday:03}"),
            Some('%') => write!(out, "%"),
            Some(other) => write!(out, "%{other}"),
            None => write!(out, "%"),
        };
    }
    out
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, as
/// `transformers` defines it: Python's `json.dumps`, not Jinja's HTML-escaping filter.
fn tojson_filter(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let opts = DumpOptions::from_kwargs(&kwargs)?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    python_dumps(&json, &opts, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// The `json.dumps` options `tojson` accepts.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Escape every non-ASCII character as `\uXXXX`.
    pub ensure_ascii: bool,
    /// Pretty-print with this many spaces per level.
    pub indent: Option<usize>,
    /// Item and key separators (Python's defaults depend on `indent`).
    pub separators: (String, String),
    /// Sort object keys.
    pub sort_keys: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        Self { ensure_ascii: false, indent: None, separators: (", ".into(), ": ".into()), sort_keys: false }
    }
}

impl DumpOptions {
    fn from_kwargs(kwargs: &Kwargs) -> std::result::Result<Self, Error> {
        let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
        let indent: Option<usize> = kwargs.get("indent")?;
        let separators: Option<Vec<String>> = kwargs.get("separators")?;
        let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
        let separators = match separators.as_deref() {
            Some([item, key]) => (item.clone(), key.clone()),
            Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "separators must be a pair")),
            None if indent.is_some() => (",".into(), ": ".into()),
            None => (", ".into(), ": ".into()),
        };
        Ok(Self {
            ensure_ascii: ensure_ascii.unwrap_or(false),
            indent,
            separators,
            sort_keys: sort_keys.unwrap_or(false),
        })
    }
}

/// Writes `v` exactly as Python's `json.dumps(v, **opts)` would.
pub fn python_dumps(v: &Json, opts: &DumpOptions, level: usize, out: &mut String) {
    match v {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => write_number(n, out),
        Json::String(s) => write_string(s, opts.ensure_ascii, out),
        Json::Array(items) if items.is_empty() => out.push_str("[]"),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                separator(i, level + 1, opts, out);
                python_dumps(item, opts, level + 1, out);
            }
            close(level, opts, out);
            out.push(']');
        }
        Json::Object(map) if map.is_empty() => out.push_str("{}"),
        Json::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, item)) in entries.into_iter().enumerate() {
                separator(i, level + 1, opts, out);
                write_string(k, opts.ensure_ascii, out);
                out.push_str(&opts.separators.1);
                python_dumps(item, opts, level + 1, out);
            }
            close(level, opts, out);
            out.push('}');
        }
    }
}

/// The item separator (before every item but the first) and, when indenting, the new line.
fn separator(i: usize, level: usize, opts: &DumpOptions, out: &mut String) {
    if i > 0 {
        out.push_str(&opts.separators.0);
    }
    if let Some(n) = opts.indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * level));
    }
}

/// The new line before a closing bracket when indenting.
fn close(level: usize, opts: &DumpOptions, out: &mut String) {
    if let Some(n) = opts.indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * level));
    }
}

/// Integers as they are; floats as Python's `float.__repr__` (`1.0`, `1e-07`, `1e+16`).
fn write_number(n: &serde_json::Number, out: &mut String) {
    match n.as_f64() {
        Some(f) if n.is_f64() => out.push_str(&python_float_repr(f)),
        _ => out.push_str(&n.to_string()),
    }
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside `1e-4 <= |x| < 1e16`.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sci = format!("{f:e}"); // e.g. "-1.5e-7": shortest round-trip digits.
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

/// A JSON string literal with Python's escapes (`ensure_ascii` escapes non-ASCII as UTF-16).
fn write_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dumps(v: Json, opts: DumpOptions) -> String {
        let mut s = String::new();
        python_dumps(&v, &opts, 0, &mut s);
        s
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let v = json!({"b": 1, "a": [1.0, "é<>&'\"\n", null, true], "c": {}});
        assert_eq!(
            dumps(v.clone(), DumpOptions::default()),
            r#"{"b": 1, "a": [1.0, "é<>&'\"\n", null, true], "c": {}}"#
        );
        let opts = DumpOptions { indent: Some(2), separators: (",".into(), ": ".into()), ..Default::default() };
        assert_eq!(dumps(json!({"x": [1, 2]}), opts), "{\n  \"x\": [\n    1,\n    2\n  ]\n}");
        let ascii = DumpOptions { ensure_ascii: true, ..Default::default() };
        assert_eq!(dumps(json!("é😀"), ascii), r#""\u00e9\ud83d\ude00""#);
    }

    #[test]
    fn float_repr_matches_python() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-7, "1e-07"),
            (1e16, "1e+16"),
            (123.456, "123.456"),
            (1e-4, "0.0001"),
            (-2.5e20, "-2.5e+20"),
        ] {
            assert_eq!(python_float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 00:00:00 UTC was a Friday.
        assert_eq!(strftime("%d %b %Y %A %j %%", 1_721_952_000), "26 Jul 2024 Friday 208 %");
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", 0), "1970-01-01 00:00:00");
    }

    #[test]
    fn chatml_renders_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "test", Map::new()).unwrap();
        let out = t.render(&[ChatMessage::new("user", "hi")], true).unwrap();
        assert_eq!(out, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn raise_exception_surfaces_the_message() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", "inline", Map::new()).unwrap();
        let e = t.render(&[], false).unwrap_err().to_string();
        assert!(e.contains("no system role") && e.contains("inline"), "{e}");
    }

    #[test]
    fn tojson_in_template_keeps_key_order_and_python_spacing() {
        let t =
            ChatTemplate::new("{{ tools | tojson }}|{{ tools[0] | tojson(indent=4) }}", "inline", Map::new()).unwrap();
        let mut kw = Map::new();
        kw.insert("tools".into(), json!([{"z": 1, "a": "<b>"}]));
        let out = t.render_json(&json!([]), false, &kw).unwrap();
        assert_eq!(out, "[{\"z\": 1, \"a\": \"<b>\"}]|{\n    \"z\": 1,\n    \"a\": \"<b>\"\n}");
    }
}
