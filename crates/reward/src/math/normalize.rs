//! String-level normalisation applied to an extracted answer before tokenizing.
//!
//! Only rewrites that need context the lexer lacks live here: doubled backslashes from
//! double-escaped sources (`\\frac` → `\frac`), a form-feed that was `\f`, thousands groups written
//! `11,\!111`, degree marks, the `\$` currency sign, percent words, and a few Unicode symbols.

/// Normalises `s` (see the module docs). Linear time.
pub fn normalize(s: &str) -> String {
    let s = s.replace('\u{c}', "\\f");
    let s = collapse_double_backslash(&s);
    let mut s = s
        .replace(",\\!", "\u{1}")
        .replace("{, }", "{,}")
        .replace(" {,}", "{,}")
        .replace("{,}", "\u{1}")
        .replace("^{\\circ}", "")
        .replace("^\\circ", "")
        .replace("\\$", " ")
        .replace("\\%", "%")
        .replace("²", "^2")
        .replace("³", "^3")
        .replace("√", "\\sqrt")
        .replace("\\dots", "")
        .replace("\\ldots", "")
        .replace("\\cdots", "");
    for word in ["percentage", "percent", "pct"] {
        s = s.replace(word, "%");
    }
    // Thousands groups written `11,\! 111`: the marker may be followed by spaces.
    while s.contains("\u{1} ") {
        s = s.replace("\u{1} ", "\u{1}");
    }
    s.trim().trim_end_matches('.').to_string()
}

/// `\\` directly followed by a letter becomes `\` (a double-escaped command, not a row break).
pub fn collapse_double_backslash(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && chars.peek() == Some(&'\\') {
            chars.next();
            if chars.peek().is_some_and(|n| n.is_ascii_alphabetic()) {
                out.push('\\');
            } else {
                out.push_str("\\\\");
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn rewrites() {
        assert_eq!(normalize("-2 \\\\le x"), "-2 \\le x");
        assert_eq!(normalize("1 \\\\ 2"), "1 \\\\ 2");
        assert_eq!(normalize("11,\\! 111"), "11\u{1}111");
        assert_eq!(normalize("90^\\circ."), "90");
        assert_eq!(normalize("28 percent"), "28 %");
    }
}
