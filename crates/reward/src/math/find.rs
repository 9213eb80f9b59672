//! Finding the answer inside a free-form text (math-verify's extraction semantics, simplified).
//!
//! Priority: (1) `\boxed{}`: the last one, joined with the boxes just before it when only
//! punctuation or the words "and"/"or" separate them (`\boxed{1} and \boxed{2}` is the list 1, 2);
//! (2) for a short text with no math delimiters that is not prose, the whole text; (3) the latest of:
//! math spans (`$…$`, `$$…$$`, `\(…\)`, `\[…\]`; inline ones may not span lines; adjacent spans
//! joined as for boxes) and plain numbers outside math spans (not glued to a letter; `2,74` with a
//! non-thousands comma group is the decimal 2.74). Later candidates are tried when earlier ones do not
//! parse. Every step is a linear scan.

use super::normalize::collapse_double_backslash;
use crate::extract::boxed_spans;

/// Candidate answer strings, best first.
pub fn candidates(text: &str) -> Vec<String> {
    let text = &collapse_double_backslash(text);
    let boxes = boxed_spans(text);
    let lower = text.to_ascii_lowercase();
    let anchor = ["final answer is", "answer is"].iter().find_map(|a| lower.rfind(a).map(|p| p + a.len()));
    let mut out = Vec::new();
    // An anchor phrase after the last box ("The final answer is $x$") wins over earlier boxes.
    if let Some(at) = anchor.filter(|at| boxes.last().is_none_or(|b| b.end <= *at)) {
        // After the anchor, only its sentence counts (later text is commentary).
        let tail = &text[at..];
        let end = [". ", ".\n", "\n"].iter().filter_map(|e| tail.find(e)).min().unwrap_or(tail.len());
        out.extend(unanchored(&tail[..end]));
    }
    if let Some(last) = boxes.len().checked_sub(1) {
        let spans: Vec<(usize, usize, usize, usize)> =
            boxes.iter().map(|b| (b.start, b.end, b.content_start, b.content_end)).collect();
        out.push(join_back(text, &spans, last));
        return out;
    }
    out.extend(unanchored(text));
    out
}

/// Candidates without looking for boxes or an anchor phrase.
fn unanchored(text: &str) -> Vec<String> {
    let (spans, dead) = math_spans(text);
    let mut blocked = spans.clone();
    blocked.extend(dead);
    blocked.sort_unstable();
    let numbers = plain_numbers(text, &blocked);
    let mut out = Vec::new();
    let plain_number = text.trim().chars().all(|c| c.is_ascii_digit() || ",.-".contains(c));
    if spans.is_empty() && !has_delimiters(text) && !is_prose(text) && !plain_number {
        out.push(text.trim().to_string());
    }
    let mut items: Vec<(usize, String)> = Vec::new();
    for i in 0..spans.len() {
        items.push((spans[i].1, join_back(text, &spans, i)));
    }
    for (end, n) in numbers {
        items.push((end, n));
    }
    items.sort_by_key(|item| std::cmp::Reverse(item.0));
    out.extend(items.into_iter().map(|(_, s)| s));
    out
}

fn has_delimiters(text: &str) -> bool {
    text.contains('$') || text.contains("\\(") || text.contains("\\[")
}

/// Whether `text` reads as prose: a run of three or more letters that is not a command, a function
/// name or an allowed word.
fn is_prose(text: &str) -> bool {
    const ALLOWED: &[&str] = &[
        "and",
        "or",
        "percent",
        "percentage",
        "pct",
        "sin",
        "cos",
        "tan",
        "sec",
        "csc",
        "cot",
        "log",
        "exp",
        "sqrt",
        "infty",
        "inf",
        "arcsin",
        "arccos",
        "arctan",
    ];
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let after_backslash = start > 0 && bytes[start - 1] == b'\\';
            let in_text_group = text[..start].ends_with("\\text{");
            let word = &text[start..i];
            if !after_backslash && !in_text_group && word.len() >= 3 && !ALLOWED.contains(&word) {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

/// Most spans joined into one answer: bounds the work on a text of many adjacent spans, which
/// would otherwise make [`candidates`] quadratic.
const MAX_JOINED: usize = 64;

/// Joins span `last` with the spans before it (at most [`MAX_JOINED`] in all) while the gaps are
/// mere separators. Spans are `(start, end, content_start, content_end)`.
fn join_back(text: &str, spans: &[(usize, usize, usize, usize)], last: usize) -> String {
    let mut first = last;
    while first > 0 && last - first + 1 < MAX_JOINED && is_separator_gap(&text[spans[first - 1].1..spans[first].0]) {
        first -= 1;
    }
    spans[first..=last].iter().map(|s| text[s.2..s.3].trim()).collect::<Vec<_>>().join(", ")
}

fn is_separator_gap(gap: &str) -> bool {
    if gap.len() > 100 {
        return false;
    }
    let cleaned = gap
        .replace("\\quad", " ")
        .replace("\\qquad", " ")
        .replace("\\text", " ")
        .replace("\\(", " ")
        .replace("\\)", " ")
        .replace("\\[", " ")
        .replace("\\]", " ");
    if !cleaned.chars().any(|c| c.is_alphanumeric()) {
        return true;
    }
    cleaned
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|w| w.eq_ignore_ascii_case("and") || w.eq_ignore_ascii_case("or"))
}

type Spans = Vec<(usize, usize, usize, usize)>;

/// Math spans `(start, end, content_start, content_end)` in order, and dead spans: inline `$…$` and
/// `\(…\)` may not contain a newline (such a span is dead: neither math nor plain text); an unclosed
/// delimiter opens nothing.
fn math_spans(text: &str) -> (Spans, Spans) {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut dead = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (open, close, inline) = if bytes[i..].starts_with(b"$$") {
            ("$$", "$$", false)
        } else if bytes[i] == b'$' && (i == 0 || bytes[i - 1] != b'\\') {
            ("$", "$", true)
        } else if bytes[i..].starts_with(b"\\(") {
            ("\\(", "\\)", true)
        } else if bytes[i..].starts_with(b"\\[") {
            ("\\[", "\\]", false)
        } else {
            i += 1;
            continue;
        };
        let body = i + open.len();
        match find_close(text, body, close) {
            Some(end) if !(inline && text[body..end].contains('\n')) => {
                spans.push((i, end + close.len(), body, end));
                i = end + close.len();
            }
            Some(end) if inline => {
                dead.push((i, end + close.len(), body, end));
                i = end + close.len();
            }
            _ => i = body,
        }
    }
    (spans, dead)
}

fn find_close(text: &str, from: usize, close: &str) -> Option<usize> {
    let mut k = from;
    while let Some(rel) = text[k..].find(close) {
        let at = k + rel;
        if close == "$" && at > 0 && text.as_bytes()[at - 1] == b'\\' {
            k = at + 1;
            continue;
        }
        return Some(at);
    }
    None
}

/// Plain numbers outside math spans, as `(end offset, normalised text)`.
fn plain_numbers(text: &str, spans: &[(usize, usize, usize, usize)]) -> Vec<(usize, String)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut span_idx = 0;
    let mut i = 0;
    while i < bytes.len() {
        while span_idx < spans.len() && spans[span_idx].1 <= i {
            span_idx += 1;
        }
        if span_idx < spans.len() && spans[span_idx].0 <= i {
            i = spans[span_idx].1;
            continue;
        }
        let starts =
            bytes[i].is_ascii_digit() || (bytes[i] == b'.' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
        let glued = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && !glued {
            let (end, n) = scan_number(bytes, i);
            let neg = i > 0 && bytes[i - 1] == b'-';
            out.push((end, if neg { format!("-{n}") } else { n }));
            if out.len() > 8 {
                out.remove(0);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Scans a plain-text number at `i`; returns its end and a normalised form.
fn scan_number(bytes: &[u8], i: usize) -> (usize, String) {
    let digits_at = |k: usize| {
        let mut e = k;
        while e < bytes.len() && bytes[e].is_ascii_digit() {
            e += 1;
        }
        e
    };
    let mut end = digits_at(i);
    let mut int = String::from_utf8_lossy(&bytes[i..end]).to_string();
    let mut thousands = false;
    while end + 1 < bytes.len() && bytes[end] == b',' && !int.starts_with('0') {
        let g = digits_at(end + 1);
        if g - (end + 1) != 3 || int.len() > 3 && !thousands {
            break;
        }
        int.push_str(&String::from_utf8_lossy(&bytes[end + 1..g]));
        end = g;
        thousands = true;
    }
    let sep = bytes.get(end).copied();
    let frac_end = if matches!(sep, Some(b'.') | Some(b',')) && !(thousands && sep == Some(b',')) {
        digits_at(end + 1)
    } else {
        end + 1
    };
    if frac_end > end + 1 {
        let frac = String::from_utf8_lossy(&bytes[end + 1..frac_end]).to_string();
        let int = if int.is_empty() { "0".to_string() } else { int };
        return (frac_end, format!("{int}.{frac}"));
    }
    if !thousands && bytes.get(end) == Some(&b'/') {
        let den_end = digits_at(end + 1);
        if den_end > end + 1 {
            return (den_end, String::from_utf8_lossy(&bytes[i..den_end]).to_string());
        }
    }
    (end, int)
}

#[cfg(test)]
mod tests {
    use super::candidates;

    #[test]
    fn finds_answers() {
        assert_eq!(candidates("so \\boxed{1} and \\boxed{2}"), vec!["1, 2"]);
        assert_eq!(candidates("\\boxed{1} no no \\boxed{2}"), vec!["2"]);
        assert_eq!(candidates("Final: The largest $n$ is 34.")[0], "34");
        assert_eq!(candidates("Soucis : 2,74 $ a..")[0], "2.74");
        assert_eq!(candidates("the number is 1,000.99€")[0], "1000.99");
        assert!(candidates("AZYUK2A").is_empty());
        assert_eq!(candidates("10/9"), vec!["10/9", "10/9"]);
        assert!(candidates("Answer $ \n 9 \n $").is_empty());
    }

    #[test]
    fn many_adjacent_spans_stay_linear() {
        let started = std::time::Instant::now();
        let boxes = candidates(&"$1$ ".repeat(30_000));
        assert!(started.elapsed().as_secs_f64() < 5.0, "took {:?}", started.elapsed());
        assert_eq!(boxes[0].matches('1').count(), super::MAX_JOINED);
    }
}
