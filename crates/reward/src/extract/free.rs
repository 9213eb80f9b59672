//! Free-form answer extraction: the final answer of a model that was never taught the R1 format,
//! read the way benchmark harnesses read it (math-verify's priorities, GSM8K's `####` marker).
//!
//! A completion with a valid R1 `<answer>` block is read as under `r1` (its last `\boxed{…}`,
//! else the whole block) unless the block is prose, which is then read like free text; so an R1
//! model scores the same under both modes. Otherwise the text after the last `</think>` is read
//! (the whole completion when there is none), and the first rule that finds something wins:
//! 1. the last brace-matched `\boxed{…}` (or `\fbox{…}`; nested braces are fine);
//! 2. an anchor: the last `answer:`, else the last `answer` (this covers "the answer is", "final
//!    answer is", "**Answer:**"; case-insensitive; not the words of `<answer>` tags), followed on
//!    its line within [`ANCHOR_REACH`] bytes by a math span, an arithmetic expression or a number;
//!    when an `=` follows the anchor within [`EQUALS_REACH`] bytes on that line and such an item
//!    comes right after the last of them, that one (`The answer is 3 + 2 = 5` gives 5);
//! 3. GSM8K's marker: what follows the last `####`, read like an anchor (`#### 1,500` gives
//!    1500, `#### 11.7 / 88 = 0.133` gives 0.133);
//! 4. the latest item of the text, math-verify's last resort: math spans (`$…$`, `$$…$$`, `\(…\)`,
//!    `\[…\]`, a bare `\frac{a}{b}`), arithmetic expressions (`96 * 12`) and numbers, the ones
//!    ending last first (of two ending together, the longer), the first that parses winning;
//! 5. the math reward's finder ([`crate::math::find::candidates`]) on the last [`MAX_SPAN`] bytes,
//!    e.g. a short bare formula.
//!
//! Numbers and expressions count only when set off like math-verify's: at the start, or after
//! whitespace or `=` (a `**` between is fine), so `(7.25%)` or `x2` hold none. The answer is then
//! cleaned ([`clean`]): math delimiters and a leading currency sign removed, thousands commas
//! dropped from a plain number (`1,234.5` → `1234.5`), a trailing period, comma or colon removed,
//! and a unit after a number dropped when it is simple (`18 dollars`, `5\text{ cm}^2`, not `5x`).
//! Every scan is linear in the text, with spans capped at [`MAX_SPAN`] bytes.

use crate::extract::{answer_block, last_boxed};
use crate::math::{find, lexer, normalize, parser};

/// How far after an `answer` anchor (bytes, same line) the answer may start; math-verify's 50.
pub const ANCHOR_REACH: usize = 50;
/// How far after an `answer` anchor (bytes, same line) an `=` may introduce the answer; math-verify's 100.
pub const EQUALS_REACH: usize = 100;
/// Longest math span considered, in bytes (the math reward parses answers up to 2 000 characters).
pub const MAX_SPAN: usize = 2000;
/// Items of the last resorts tried before giving up.
const MAX_TRIES: usize = 16;
/// Characters of an arithmetic expression besides digits and spaces.
const OPERATORS: &[char] = &['+', '-', '*', '×', '/', '^', '(', ')', '÷'];

/// The free-form final answer of `completion` (see the module docs); `None` when none is found.
pub fn free_answer(completion: &str) -> Option<String> {
    if let Ok(block) = answer_block(completion) {
        if let Some(boxed) = last_boxed(block) {
            return clean(boxed);
        }
        if !is_prose(block) {
            return clean(block);
        }
    }
    let region = answer_region(completion);
    let raw = last_boxed(region)
        .map(str::to_string)
        .or_else(|| anchored(region))
        .or_else(|| gsm8k_marker(region))
        .or_else(|| latest_item(region))
        .or_else(|| find::candidates(tail(region)).into_iter().take(MAX_TRIES).find(|c| parses(c)))?;
    clean(&raw)
}

/// The text the answer is read from: a valid R1 answer block, else the text after the last
/// `</think>`, else the whole completion.
pub fn answer_region(completion: &str) -> &str {
    if let Ok(block) = answer_block(completion) {
        return block;
    }
    match completion.rfind("</think>") {
        Some(at) => &completion[at + "</think>".len()..],
        None => completion,
    }
}

/// Whether `text` parses as one math answer under the math reward's parser.
fn parses(text: &str) -> bool {
    text.len() <= MAX_SPAN && lexer::lex(&normalize::normalize(text)).is_ok_and(|toks| parser::parse(toks).is_ok())
}

/// The answer after the last `answer:` anchor that has one, else after the last `answer`.
fn anchored(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let anchors: Vec<usize> = lower
        .match_indices("answer")
        .filter(|(at, _)| !lower[..*at].ends_with('<') && !lower[..*at].ends_with('/'))
        .map(|(at, m)| at + m.len())
        .collect();
    let with_colon = anchors.iter().rev().filter(|&&end| lower[end..].starts_with(':'));
    with_colon.chain(anchors.iter().rev()).find_map(|&end| after_anchor(&text[end..]))
}

/// The answer in `rest` (the text after an anchor), on its first line (of which no more than an
/// item's length past [`EQUALS_REACH`] is read).
fn after_anchor(rest: &str) -> Option<String> {
    let rest = &rest[..floor_boundary(rest, EQUALS_REACH + MAX_SPAN)];
    let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
    let near_equals = line[..floor_boundary(line, EQUALS_REACH + 1)].rfind('=');
    if let Some(eq) = near_equals {
        let after = &line[eq + 1..];
        let start = after.len() - after.trim_start().len();
        if let Some((found, end)) = item_at(after, start) {
            if !after[end..].trim_start().starts_with('=') {
                return Some(found);
            }
        }
    }
    line.char_indices()
        .take_while(|&(at, _)| at <= ANCHOR_REACH)
        .filter(|&(at, _)| set_off(line, at) || span_opens(&line[at..]))
        .find_map(|(at, _)| item_at(line, at).map(|(found, _)| found))
}

/// A math span, an expression that parses or a number starting exactly at byte `at` of `text`,
/// with its end.
fn item_at(text: &str, at: usize) -> Option<(String, usize)> {
    if let Some((inner, end)) = span_at(text, at) {
        return Some((inner.to_string(), end));
    }
    if let Some((expr, end)) = expression_at(text, at).filter(|(e, _)| parses(e)) {
        return Some((expr.to_string(), end));
    }
    number_at(text, at)
}

/// Whether byte `at` of `text` starts an item math-verify would see: at the start, or after
/// whitespace or `=`, with an optional `**` between.
fn set_off(text: &str, at: usize) -> bool {
    let before = text[..at].strip_suffix("**").unwrap_or(&text[..at]);
    before.is_empty() || before.ends_with(char::is_whitespace) || before.ends_with('=')
}

fn span_opens(rest: &str) -> bool {
    rest.starts_with('$') || rest.starts_with("\\(") || rest.starts_with("\\[")
}

/// A math span opening at byte `at`: its content and end. Inline spans (`$…$`, `\(…\)`) stay on
/// one line, and a `$` right after a digit or a backslash opens none; a `$…$` whose content reads
/// as prose is two prices (`$18 and $5`), not a span.
fn span_at(text: &str, at: usize) -> Option<(&str, usize)> {
    let rest = &text[at..];
    let preceded = |c: u8| at > 0 && text.as_bytes()[at - 1] == c;
    if rest.starts_with('$') && (preceded(b'\\') || text[..at].ends_with(|c: char| c.is_ascii_digit())) {
        return None;
    }
    for (open, close, inline) in [("$$", "$$", false), ("\\[", "\\]", false), ("\\(", "\\)", true), ("$", "$", true)] {
        let Some(body) = rest.strip_prefix(open) else { continue };
        let window = &body[..floor_boundary(body, MAX_SPAN)];
        let inner = &window[..window.find(close)?];
        let one_line = !inline || !inner.contains('\n');
        let ok = !inner.trim().is_empty() && one_line && !(open == "$" && is_prose(inner));
        return ok.then_some((inner, at + open.len() + inner.len() + close.len()));
    }
    let fraction = rest.strip_prefix('-').unwrap_or(rest).strip_prefix("\\frac{")?;
    let (num, tail) = fraction.split_once('}')?;
    let (den, _) = tail.strip_prefix('{')?.split_once('}')?;
    let simple = |s: &str| !s.is_empty() && s.len() < 20 && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let len = rest.len() - fraction.len() + num.len() + 2 + den.len() + 1;
    (simple(num) && simple(den)).then_some((&rest[..len], at + len))
}

/// The last [`MAX_SPAN`] bytes of `text` (whole characters).
fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(MAX_SPAN);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The largest char boundary of `s` at or below `max`.
fn floor_boundary(s: &str, max: usize) -> usize {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// An arithmetic expression on one line starting at byte `at` (`-?(?-?digit…`, holding an
/// operator with something after it, followed by whitespace, `.`, `,`, `:`, `)`, `$`, `*` or the
/// end), with its end; trailing spaces are not part of it.
fn expression_at(text: &str, at: usize) -> Option<(&str, usize)> {
    let rest = &text[at..];
    let head = rest.strip_prefix('-').unwrap_or(rest);
    let head = head.strip_prefix('(').unwrap_or(head);
    let head = head.strip_prefix('-').unwrap_or(head);
    if !head.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let run = rest[..expression_run(rest)].trim_end();
    let lead = rest.len() - head.len() + 1;
    let op = run[lead.min(run.len())..].find(OPERATORS)? + lead;
    if run[op..].chars().skip(1).all(char::is_whitespace) {
        return None;
    }
    let next = text[at + run.len()..].chars().next();
    let suffix_ok = next.is_none_or(|c| c.is_whitespace() || ".,:)$*".contains(c));
    suffix_ok.then_some((run, at + run.len()))
}

/// Length of the run of expression characters (digits, `.`, spaces, tabs, operators) at the
/// start of `rest`.
fn expression_run(rest: &str) -> usize {
    rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ' ' || c == '\t' || OPERATORS.contains(&c)))
        .unwrap_or(rest.len())
}

/// A plain number at byte `at`: an optional currency sign and minus, digits with thousands
/// commas, a decimal part or a fraction `a/b`, and an optional percent sign; returned as written
/// (commas kept), with its end.
fn number_at(text: &str, at: usize) -> Option<(String, usize)> {
    let bytes = text.as_bytes();
    let mut i = at;
    if let Some(sign) = ["\\$", "$", "€", "£"].iter().find(|s| text[i..].starts_with(**s)) {
        i += sign.len();
    }
    let start = i;
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    let digits = |mut k: usize| {
        while k < bytes.len() && bytes[k].is_ascii_digit() {
            k += 1;
        }
        k
    };
    let int_end = digits(i);
    let mut end = int_end;
    if int_end > i {
        while bytes.get(end) == Some(&b',') && digits(end + 1) == end + 4 && bytes[i] != b'0' {
            end += 4;
        }
    }
    if bytes.get(end) == Some(&b'.') && digits(end + 1) > end + 1 {
        end = digits(end + 1);
    } else if int_end == i {
        return None;
    } else if end == int_end && bytes.get(end) == Some(&b'/') && digits(end + 1) > end + 1 {
        end = digits(end + 1);
    }
    let percent = ["%", "\\%", " %", " \\%"].iter().find(|p| text[end..].starts_with(**p));
    let end = end + percent.map_or(0, |p| p.len());
    Some((text[start..end].replace(' ', ""), end))
}

/// The answer after the last `####` (GSM8K's final-answer marker), read like an anchor's: the
/// item after the last `=` on its line when there is one (`#### 11.7 / 88 = 0.133`), else the first.
fn gsm8k_marker(text: &str) -> Option<String> {
    let at = text.rfind("####")? + "####".len();
    after_anchor(&text[at..])
}

/// math-verify's last resort: every math span, expression and set-off number of `text`, the
/// ones ending last first (the longer of two ending together), the first that parses.
fn latest_item(text: &str) -> Option<String> {
    // (end, start, item)
    let mut items: Vec<(usize, usize, String)> = Vec::new();
    let (mut span_from, mut expr_from, mut number_from) = (0, 0, 0);
    for (at, _) in text.char_indices() {
        if at >= span_from {
            if let Some((inner, end)) = span_at(text, at) {
                items.push((end, at, inner.to_string()));
                span_from = end;
            }
        }
        if !set_off(text, at) {
            continue;
        }
        let opens_expression = text[at..].starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '(');
        if at >= expr_from && opens_expression {
            if let Some((expr, end)) = expression_at(text, at) {
                items.push((end, at, expr.to_string()));
            }
            // A run is scanned once, whether or not it held an expression.
            expr_from = at + expression_run(&text[at..]);
        }
        if at >= number_from {
            if let Some((number, end)) = number_at(text, at) {
                items.push((end, at, number));
                number_from = end;
            }
        }
    }
    items.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    items.into_iter().take(MAX_TRIES).map(|(_, _, item)| item).find(|item| parses(item))
}

/// Whether `text` reads as prose: a word of three or more letters that is not a LaTeX command
/// or inside `\text{…}`.
fn is_prose(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphabetic() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let command = start > 0 && bytes[start - 1] == b'\\';
        let in_text = text[..start].trim_end().ends_with("\\text{");
        if i - start >= 3 && !command && !in_text {
            return true;
        }
    }
    false
}

/// Cleans an extracted answer (see the module docs); `None` when nothing is left.
pub fn clean(raw: &str) -> Option<String> {
    let mut s = raw.trim();
    loop {
        let before = s;
        for (open, close) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
            if let Some(inner) = s.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
                s = inner.trim();
            }
        }
        s = s.trim_end_matches(['.', ',', ';', ':']).trim_end();
        for sign in ["\\$", "$", "€", "£"] {
            s = s.strip_prefix(sign).unwrap_or(s).trim_start();
        }
        if s == before {
            break;
        }
    }
    let s = drop_thousands_commas(drop_unit(s));
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// `18 dollars` → `18`, `5\text{ cm}^2` → `5`: a number followed only by a simple unit (words of
/// two or more letters after a space, or `\text{…}`/`\mbox{…}`/`\mathrm{…}` groups, each with an
/// optional `^2`/`^3`); anything else is returned unchanged.
fn drop_unit(s: &str) -> &str {
    let Some((_, end)) = number_at(s, 0) else { return s };
    let (number, unit) = s.split_at(end);
    let spaced = unit.starts_with(' ');
    let unit = unit.trim();
    if unit.is_empty() || !is_simple_unit(unit, spaced) {
        return s;
    }
    number
}

fn is_simple_unit(unit: &str, spaced: bool) -> bool {
    let mut rest = unit;
    let mut any = false;
    while !rest.is_empty() {
        if let Some(group) = ["\\text{", "\\mbox{", "\\mathrm{"].iter().find_map(|g| rest.strip_prefix(g)) {
            let Some(close) = group.find('}') else { return false };
            let inner = group[..close].trim();
            if inner.is_empty() || !inner.chars().all(|c| c.is_alphabetic() || c == ' ') {
                return false;
            }
            rest = &group[close + 1..];
        } else {
            let word_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
            if word_len < 2 || !spaced && !any {
                return false;
            }
            rest = &rest[word_len..];
        }
        any = true;
        for power in ["^2", "^3", "^{2}", "^{3}"] {
            rest = rest.strip_prefix(power).unwrap_or(rest);
        }
        rest = rest.trim_start();
    }
    any
}

/// `1,234,567.5` → `1234567.5` when the whole answer is such a number; else unchanged.
fn drop_thousands_commas(s: &str) -> String {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let mut groups = int.split(',');
    let first_ok = groups.next().is_some_and(|g| (1..=3).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_digit()));
    let rest_ok = int.contains(',') && groups.all(|g| g.len() == 3 && g.bytes().all(|b| b.is_ascii_digit()));
    if first_ok && rest_ok && frac.bytes().all(|b| b.is_ascii_digit()) {
        s.replace(',', "")
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests;
