//! LaTeX / plain-math tokenizer for the math-equivalence parser.
//!
//! Works on characters (never slices inside UTF-8), one left-to-right pass, so its time is linear in
//! the input (which the caller caps). Formatting-only commands (`\left`, `\,`, `\quad`, `$`) are
//! dropped here; `\text{…}`-like commands become [`Tok::Text`] (or a list separator for "and"/"or").

/// A relation operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelOp {
    /// `=`
    Eq,
    /// `\neq`
    Ne,
    /// `<`
    Lt,
    /// `\le`
    Le,
    /// `>`
    Gt,
    /// `\ge`
    Ge,
    /// `\approx`
    Approx,
    /// `\in`
    In,
}

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// A number as written (digits, optional `.digits`); thousands separators removed.
    Num(String),
    /// A one-letter variable, a Greek letter or another unknown command name.
    Ident(String),
    /// A known function (`sin`, `ln`, ...).
    Func(String),
    /// `\frac` and friends.
    Frac,
    /// `\sqrt`.
    Sqrt,
    /// `\text{…}` content.
    Text(String),
    /// `\begin{name}`.
    Begin(String),
    /// `\end{name}`.
    End(String),
    /// A subscript's raw text (`_1`, `_{n-1}`).
    Sub(String),
    LParen,
    RParen,
    LBrack,
    RBrack,
    LBrace,
    RBrace,
    LSet,
    RSet,
    Plus,
    Minus,
    Times,
    Div,
    Caret,
    Comma,
    Semi,
    Colon,
    Bang,
    Percent,
    Pipe,
    Amp,
    RowSep,
    Rel(RelOp),
    Pm,
    Mp,
    Cup,
    Infinity,
    Pi,
    /// "and" / "or" between list items.
    Sep,
}

/// Too long, or an unknown construct the lexer refuses.
#[derive(Debug, Clone, PartialEq)]
pub struct LexError(pub String);

const FUNCS: &[&str] = &[
    "sin", "cos", "tan", "sec", "csc", "cot", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "ln", "log", "exp",
    "lg",
];
const IGNORED: &[&str] = &[
    "left",
    "right",
    "big",
    "Big",
    "bigl",
    "bigr",
    "Bigl",
    "Bigr",
    "bigg",
    "Bigg",
    "displaystyle",
    "quad",
    "qquad",
    "circ",
    "degree",
    "limits",
    "boxed",
    "fbox",
    "textstyle",
    "!",
    ",",
    ";",
    ":",
    " ",
    "$",
    "hline",
    "cline",
    "nonumber",
    "mathord",
    "mathbin",
];
const TEXTLIKE: &[&str] = &[
    "text",
    "textbf",
    "textit",
    "textnormal",
    "textrm",
    "texttt",
    "mbox",
    "mathrm",
    "mathbf",
    "mathit",
    "operatorname",
    "mathsf",
    "textsf",
    "hbox",
    "emph",
];

/// Tokenizes `src` (already normalised by [`super::normalize`]).
pub fn lex(src: &str) -> Result<Vec<Tok>, LexError> {
    let chars: Vec<char> = src.chars().collect();
    let mut lx = Lexer { c: &chars, i: 0, out: Vec::new(), depth: 0 };
    lx.run()?;
    Ok(lx.out)
}

struct Lexer<'a> {
    c: &'a [char],
    i: usize,
    out: Vec<Tok>,
    depth: i64,
}

impl Lexer<'_> {
    fn peek(&self, k: usize) -> Option<char> {
        self.c.get(self.i + k).copied()
    }

    fn run(&mut self) -> Result<(), LexError> {
        while let Some(ch) = self.peek(0) {
            self.i += 1;
            match ch {
                ' ' | '\t' | '\n' | '\r' | '~' | '$' => {}
                '0'..='9' | '.' if ch != '.' || self.peek(0).is_some_and(|d| d.is_ascii_digit()) => {
                    self.i -= 1;
                    self.number();
                }
                '\\' => self.command()?,
                'a'..='z' | 'A'..='Z' => {
                    self.i -= 1;
                    self.word();
                }
                '_' => {
                    let sub = self.raw_arg();
                    self.out.push(Tok::Sub(sub));
                }
                _ => self.symbol(ch)?,
            }
        }
        Ok(())
    }

    fn symbol(&mut self, ch: char) -> Result<(), LexError> {
        let t = match ch {
            '(' => {
                self.depth += 1;
                Tok::LParen
            }
            ')' => {
                self.depth -= 1;
                Tok::RParen
            }
            '[' => {
                self.depth += 1;
                Tok::LBrack
            }
            ']' => {
                self.depth -= 1;
                Tok::RBrack
            }
            '{' => {
                self.depth += 1;
                Tok::LBrace
            }
            '}' => {
                self.depth -= 1;
                Tok::RBrace
            }
            '+' => Tok::Plus,
            '-' | '−' => Tok::Minus,
            '*' | '×' | '·' => Tok::Times,
            '/' | '÷' => Tok::Div,
            '^' => Tok::Caret,
            ',' => Tok::Comma,
            ';' => Tok::Semi,
            ':' => Tok::Colon,
            '%' => Tok::Percent,
            '|' => Tok::Pipe,
            '&' => Tok::Amp,
            '±' => Tok::Pm,
            '∞' => Tok::Infinity,
            'π' => Tok::Pi,
            '∪' => Tok::Cup,
            '≤' => Tok::Rel(RelOp::Le),
            '≥' => Tok::Rel(RelOp::Ge),
            '≠' => Tok::Rel(RelOp::Ne),
            '≈' => Tok::Rel(RelOp::Approx),
            '∈' => Tok::Rel(RelOp::In),
            '=' => Tok::Rel(RelOp::Eq),
            '!' if self.peek(0) == Some('=') => {
                self.i += 1;
                Tok::Rel(RelOp::Ne)
            }
            '!' => Tok::Bang,
            '<' | '>' => self.angle(ch),
            '\u{1}' | '\'' | '"' | '?' | '°' | '.' => return Ok(()),
            other => return Err(LexError(format!("unexpected character {other:?}"))),
        };
        self.out.push(t);
        Ok(())
    }

    fn angle(&mut self, ch: char) -> Tok {
        let eq = self.peek(0) == Some('=');
        if eq {
            self.i += 1;
        }
        Tok::Rel(match (ch, eq) {
            ('<', false) => RelOp::Lt,
            ('<', true) => RelOp::Le,
            (_, false) => RelOp::Gt,
            (_, true) => RelOp::Ge,
        })
    }

    /// Digits with `.` decimals and thousands separators (`,ddd` or ` ddd` outside brackets, or the
    /// `\u{1}` marker left by `,\!`).
    fn number(&mut self) {
        let mut s = String::new();
        let mut int_digits = 0usize;
        while let Some(d) = self.peek(0) {
            if d.is_ascii_digit() {
                s.push(d);
                int_digits += 1;
                self.i += 1;
            } else if self.thousands_sep(d, int_digits, &s) {
                self.i += 1;
                int_digits = 0;
            } else {
                break;
            }
        }
        if self.peek(0) == Some('.') && self.peek(1).is_some_and(|d| d.is_ascii_digit()) {
            s.push('.');
            self.i += 1;
            while let Some(d) = self.peek(0).filter(|d| d.is_ascii_digit()) {
                s.push(d);
                self.i += 1;
            }
        }
        if s.starts_with('.') {
            s.insert(0, '0');
        }
        self.out.push(Tok::Num(s));
    }

    fn thousands_sep(&self, d: char, group: usize, so_far: &str) -> bool {
        let three_follow = (1..=3).all(|k| self.peek(k).is_some_and(|c| c.is_ascii_digit()))
            && !self.peek(4).is_some_and(|c| c.is_ascii_digit());
        match d {
            '\u{1}' => true,
            ',' | ' ' => {
                self.depth == 0
                    && three_follow
                    && (1..=3).contains(&group)
                    && !(so_far.starts_with('0') && so_far.len() == 1)
            }
            _ => false,
        }
    }

    fn word(&mut self) {
        let start = self.i;
        while self.peek(0).is_some_and(|c| c.is_ascii_alphabetic()) {
            self.i += 1;
        }
        let w: String = self.c[start..self.i].iter().collect();
        match w.as_str() {
            "and" | "or" => self.out.push(Tok::Sep),
            "infty" | "inf" => self.out.push(Tok::Infinity),
            "pi" => self.out.push(Tok::Pi),
            "sqrt" => self.out.push(Tok::Sqrt),
            w if FUNCS.contains(&w) => self.out.push(Tok::Func(w.to_string())),
            _ => {
                for ch in w.chars() {
                    self.out.push(Tok::Ident(ch.to_string()));
                }
            }
        }
    }

    fn command(&mut self) -> Result<(), LexError> {
        let Some(first) = self.peek(0) else {
            return Ok(());
        };
        if !first.is_ascii_alphabetic() {
            self.i += 1;
            let t = match first {
                '{' => Tok::LSet,
                '}' => Tok::RSet,
                '%' => Tok::Percent,
                '\\' => Tok::RowSep,
                '|' => Tok::Pipe,
                _ => return Ok(()),
            };
            self.out.push(t);
            return Ok(());
        }
        let start = self.i;
        while self.peek(0).is_some_and(|c| c.is_ascii_alphabetic()) {
            self.i += 1;
        }
        let name: String = self.c[start..self.i].iter().collect();
        self.named_command(&name)
    }

    fn named_command(&mut self, name: &str) -> Result<(), LexError> {
        let tok = match name {
            n if IGNORED.contains(&n) => return Ok(()),
            n if TEXTLIKE.contains(&n) => return self.text(),
            "frac" | "dfrac" | "tfrac" | "cfrac" => Tok::Frac,
            "sqrt" => Tok::Sqrt,
            "cdot" | "times" | "ast" => Tok::Times,
            "div" => Tok::Div,
            "pm" => Tok::Pm,
            "mp" => Tok::Mp,
            "le" | "leq" | "leqslant" => Tok::Rel(RelOp::Le),
            "ge" | "geq" | "geqslant" => Tok::Rel(RelOp::Ge),
            "lt" => Tok::Rel(RelOp::Lt),
            "gt" => Tok::Rel(RelOp::Gt),
            "ne" | "neq" => Tok::Rel(RelOp::Ne),
            "approx" | "simeq" | "thickapprox" => Tok::Rel(RelOp::Approx),
            "in" => Tok::Rel(RelOp::In),
            "cup" => Tok::Cup,
            "infty" | "infin" => Tok::Infinity,
            "pi" => Tok::Pi,
            "lbrace" => Tok::LSet,
            "rbrace" => Tok::RSet,
            "vert" | "mid" | "lvert" | "rvert" => Tok::Pipe,
            "begin" | "end" => return self.environment(name),
            n if FUNCS.contains(&n) => Tok::Func(n.to_string()),
            n => Tok::Ident(n.to_string()),
        };
        self.out.push(tok);
        Ok(())
    }

    fn environment(&mut self, which: &str) -> Result<(), LexError> {
        let env = self.raw_arg();
        let env = env.trim_end_matches('*').to_string();
        if which == "begin" {
            if env == "array" {
                let _column_spec = self.raw_arg();
            }
            self.out.push(Tok::Begin(env));
        } else {
            self.out.push(Tok::End(env));
        }
        Ok(())
    }

    fn text(&mut self) -> Result<(), LexError> {
        let raw = self.raw_arg();
        let t = raw.trim();
        match t.to_ascii_lowercase().as_str() {
            "" => {}
            "and" | "or" | "," => self.out.push(Tok::Sep),
            _ if t.chars().count() == 1 && t.chars().all(|c| c.is_alphabetic()) => {
                self.out.push(Tok::Ident(t.to_string()))
            }
            _ => self.out.push(Tok::Text(t.to_string())),
        }
        Ok(())
    }

    /// A brace-matched group's raw text, or a single character.
    fn raw_arg(&mut self) -> String {
        while self.peek(0) == Some(' ') {
            self.i += 1;
        }
        match self.peek(0) {
            Some('{') => {
                let start = self.i + 1;
                let mut depth = 0i64;
                while let Some(c) = self.peek(0) {
                    self.i += 1;
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                return self.c[start..self.i - 1].iter().collect();
                            }
                        }
                        _ => {}
                    }
                }
                self.c[start.min(self.c.len())..].iter().collect()
            }
            Some('\\') => {
                let start = self.i;
                self.i += 1;
                while self.peek(0).is_some_and(|c| c.is_ascii_alphabetic()) {
                    self.i += 1;
                }
                self.c[start..self.i].iter().collect()
            }
            Some(c) => {
                self.i += 1;
                c.to_string()
            }
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_separators() {
        assert_eq!(lex("7,425,000").unwrap(), vec![Tok::Num("7425000".into())]);
        assert_eq!(lex("1 000").unwrap(), vec![Tok::Num("1000".into())]);
        assert_eq!(lex(".4").unwrap(), vec![Tok::Num("0.4".into())]);
        assert_eq!(lex("(12,102)").unwrap().len(), 5);
        assert_eq!(lex("x \\leq 2").unwrap()[1], Tok::Rel(RelOp::Le));
    }
}
