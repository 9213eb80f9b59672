//! Recursive-descent parser from tokens to a small math AST ([`Node`]).
//!
//! Grammar, loosest first: `;`-lists, `,`/"and"-lists, relation chains, `\cup`, ratios `a:b`,
//! sums (with `\pm`), products (explicit and implicit), unary signs, powers, postfix `!`/`%`/
//! subscripts, primaries. Nesting depth is capped ([`MAX_DEPTH`]) so hostile input cannot overflow
//! the stack; the token count is linear in the (capped) input.

use super::lexer::{RelOp, Tok};
use num_bigint::BigInt;
use num_rational::BigRational;

/// Deepest nesting the parser accepts.
pub const MAX_DEPTH: usize = 60;

/// The math AST.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// An exact number; `true` when written with a decimal point.
    Num(BigRational, bool),
    /// A variable (name includes its subscript: `a_3`).
    Sym(String),
    /// π.
    Pi,
    /// ∞.
    Inf,
    /// A text answer (`\text{Evelyn}`).
    Text(String),
    Add(Vec<Node>),
    Mul(Vec<Node>),
    Neg(Box<Node>),
    Div(Box<Node>, Box<Node>),
    Pow(Box<Node>, Box<Node>),
    /// A function application (known or unknown function name).
    Func(String, Box<Node>),
    Fact(Box<Node>),
    Percent(Box<Node>),
    Abs(Box<Node>),
    /// `a ± b`.
    Pm(Box<Node>, Box<Node>),
    /// `(a, b, …)`: ordered.
    Tuple(Vec<Node>),
    /// A bare comma list `a, b`: compared as a set, or in order against a tuple.
    List(Vec<Node>),
    /// `\{a, b\}`: unordered.
    Set(Vec<Node>),
    /// Interval with endpoints and closedness (left, right).
    Interval(Box<Node>, Box<Node>, bool, bool),
    /// `A \cup B`.
    Union(Vec<Node>),
    Matrix(Vec<Vec<Node>>),
    /// `a : b`.
    Ratio(Vec<Node>),
    /// A relation chain: parts and the operators between them.
    Rel(Vec<Node>, Vec<RelOp>),
}

/// A parse failure (or the depth cap).
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError(pub String);

type R = Result<Node, ParseError>;

/// Parses a whole token stream.
pub fn parse(tokens: Vec<Tok>) -> R {
    let mut p = Parser { t: tokens, pos: 0, depth: 0 };
    if p.t.is_empty() {
        return Err(ParseError("empty".into()));
    }
    let node = p.semilist()?;
    if p.pos != p.t.len() {
        return Err(ParseError(format!("unexpected {:?}", p.t[p.pos])));
    }
    Ok(node)
}

const FUNCTION_LETTERS: &[&str] = &["f", "g", "h", "F", "G", "H", "P", "Q", "W", "p", "q"];

struct Parser {
    t: Vec<Tok>,
    pos: usize,
    depth: usize,
}

fn err<T>(msg: &str) -> Result<T, ParseError> {
    Err(ParseError(msg.to_string()))
}

fn unwrap_single(mut items: Vec<Node>, make: fn(Vec<Node>) -> Node) -> Node {
    if items.len() == 1 {
        items.pop().unwrap_or(Node::List(Vec::new()))
    } else {
        make(items)
    }
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.pos)
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err("nesting too deep");
        }
        Ok(())
    }

    fn semilist(&mut self) -> R {
        self.enter()?;
        let mut items = vec![self.list()?];
        while self.eat(&Tok::Semi) {
            if self.at_list_end() {
                break;
            }
            items.push(self.list()?);
        }
        self.depth -= 1;
        Ok(unwrap_single(items, Node::List))
    }

    fn at_list_end(&self) -> bool {
        matches!(self.peek(), None | Some(Tok::RParen | Tok::RBrack | Tok::RBrace | Tok::RSet | Tok::End(_)))
    }

    fn list(&mut self) -> R {
        let mut items = vec![self.rel()?];
        while matches!(self.peek(), Some(Tok::Comma | Tok::Sep)) {
            while matches!(self.peek(), Some(Tok::Comma | Tok::Sep)) {
                self.pos += 1;
            }
            if self.at_list_end() || self.peek() == Some(&Tok::Semi) {
                break;
            }
            items.push(self.rel()?);
        }
        Ok(unwrap_single(items, Node::List))
    }

    fn rel(&mut self) -> R {
        let mut parts = vec![self.union()?];
        let mut ops = Vec::new();
        while let Some(Tok::Rel(op)) = self.peek() {
            ops.push(*op);
            self.pos += 1;
            parts.push(self.union()?);
        }
        Ok(if ops.is_empty() { parts.remove(0) } else { Node::Rel(parts, ops) })
    }

    fn union(&mut self) -> R {
        let mut parts = vec![self.ratio()?];
        while self.eat(&Tok::Cup) {
            parts.push(self.ratio()?);
        }
        Ok(unwrap_single(parts, Node::Union))
    }

    fn ratio(&mut self) -> R {
        let mut parts = vec![self.sum()?];
        while self.eat(&Tok::Colon) {
            parts.push(self.sum()?);
        }
        Ok(unwrap_single(parts, Node::Ratio))
    }

    fn sum(&mut self) -> R {
        let mut terms = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Tok::Plus) => {
                    self.pos += 1;
                    terms.push(self.term()?);
                }
                Some(Tok::Minus) => {
                    self.pos += 1;
                    terms.push(Node::Neg(Box::new(self.term()?)));
                }
                Some(Tok::Pm | Tok::Mp) => {
                    self.pos += 1;
                    let rhs = self.term()?;
                    let lhs = unwrap_single(std::mem::take(&mut terms), Node::Add);
                    terms.push(Node::Pm(Box::new(lhs), Box::new(rhs)));
                }
                _ => break,
            }
        }
        Ok(unwrap_single(terms, Node::Add))
    }

    fn unary(&mut self) -> R {
        self.enter()?;
        let node = match self.peek() {
            Some(Tok::Minus) => {
                self.pos += 1;
                Node::Neg(Box::new(self.unary()?))
            }
            Some(Tok::Plus) => {
                self.pos += 1;
                self.unary()?
            }
            Some(Tok::Pm | Tok::Mp) => {
                self.pos += 1;
                Node::Pm(Box::new(Node::Num(BigRational::from_integer(0.into()), false)), Box::new(self.unary()?))
            }
            _ => self.term()?,
        };
        self.depth -= 1;
        Ok(node)
    }

    fn starts_primary(&self) -> bool {
        matches!(
            self.peek(),
            Some(
                Tok::Num(_)
                    | Tok::Ident(_)
                    | Tok::Func(_)
                    | Tok::Frac
                    | Tok::Sqrt
                    | Tok::LParen
                    | Tok::LBrace
                    | Tok::Pi
                    | Tok::Infinity
                    | Tok::Text(_)
                    | Tok::Begin(_)
            )
        )
    }

    fn term(&mut self) -> R {
        let mut acc = self.power()?;
        let mut factors = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::Times) => {
                    self.pos += 1;
                    factors.push(acc);
                    acc = self.signed_power()?;
                }
                Some(Tok::Div) => {
                    self.pos += 1;
                    let rhs = self.signed_power()?;
                    acc = Node::Div(Box::new(acc), Box::new(rhs));
                }
                _ if self.starts_primary() => {
                    factors.push(acc);
                    acc = self.power()?;
                }
                _ => break,
            }
        }
        factors.push(acc);
        Ok(drop_units(factors))
    }

    fn signed_power(&mut self) -> R {
        if self.eat(&Tok::Minus) {
            return Ok(Node::Neg(Box::new(self.signed_power()?)));
        }
        self.power()
    }

    fn power(&mut self) -> R {
        self.enter()?;
        let base = self.postfix()?;
        let node = if self.eat(&Tok::Caret) {
            let exp = self.arg()?;
            self.postfix_ops(Node::Pow(Box::new(base), Box::new(exp)))?
        } else {
            base
        };
        self.depth -= 1;
        Ok(node)
    }

    fn postfix(&mut self) -> R {
        let p = self.primary()?;
        self.postfix_ops(p)
    }

    fn postfix_ops(&mut self, mut p: Node) -> R {
        loop {
            match self.peek().cloned() {
                Some(Tok::Bang) => p = Node::Fact(Box::new(p)),
                Some(Tok::Percent) => p = Node::Percent(Box::new(p)),
                Some(Tok::Sub(s)) => p = with_subscript(p, &s),
                _ => return Ok(p),
            }
            self.pos += 1;
        }
    }

    /// An argument of `\frac`, `\sqrt` or `^`: a group, one digit of a number, or one primary.
    fn arg(&mut self) -> R {
        self.enter()?;
        let node = match self.peek().cloned() {
            Some(Tok::LBrace) => {
                self.pos += 1;
                let inner = self.semilist()?;
                if !self.eat(&Tok::RBrace) {
                    return err("unclosed {");
                }
                inner
            }
            Some(Tok::Num(s)) if s.len() > 1 && !s.contains('.') => {
                let (first, rest) = s.split_at(1);
                self.t[self.pos] = Tok::Num(rest.to_string());
                num(first)?
            }
            Some(Tok::Minus) => {
                self.pos += 1;
                Node::Neg(Box::new(self.arg()?))
            }
            _ => self.primary()?,
        };
        self.depth -= 1;
        Ok(node)
    }

    fn primary(&mut self) -> R {
        self.enter()?;
        let Some(tok) = self.peek().cloned() else {
            return err("unexpected end");
        };
        self.pos += 1;
        let node = match tok {
            Tok::Num(s) => num(&s)?,
            Tok::Ident(name) => self.ident(name)?,
            Tok::Func(name) => self.function(name)?,
            Tok::Frac => {
                let a = self.arg()?;
                let b = self.arg()?;
                Node::Div(Box::new(a), Box::new(b))
            }
            Tok::Sqrt => self.sqrt()?,
            Tok::LParen => self.bracketed(true)?,
            Tok::LBrack => self.bracketed(false)?,
            Tok::LBrace => {
                let inner = self.semilist()?;
                if !self.eat(&Tok::RBrace) {
                    return err("unclosed {");
                }
                inner
            }
            Tok::LSet => self.set()?,
            Tok::Pipe => {
                let inner = self.sum()?;
                if !self.eat(&Tok::Pipe) {
                    return err("unclosed |");
                }
                Node::Abs(Box::new(inner))
            }
            Tok::Pi => Node::Pi,
            Tok::Infinity => Node::Inf,
            Tok::Text(s) => Node::Text(s),
            Tok::Begin(env) => self.environment(&env)?,
            other => return Err(ParseError(format!("unexpected {other:?}"))),
        };
        self.depth -= 1;
        Ok(node)
    }

    fn ident(&mut self, name: String) -> R {
        if FUNCTION_LETTERS.contains(&name.as_str()) && self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let arg = self.bracketed(true)?;
            return Ok(Node::Func(name, Box::new(arg)));
        }
        Ok(Node::Sym(name))
    }

    fn function(&mut self, name: String) -> R {
        let mut name = name;
        if let Some(Tok::Sub(base)) = self.peek().cloned() {
            self.pos += 1;
            name = format!("{name}_{}", base.trim());
        }
        let power = if self.eat(&Tok::Caret) { Some(self.arg()?) } else { None };
        let arg = if self.eat(&Tok::LParen) { self.bracketed(true)? } else { self.power()? };
        let f = Node::Func(name, Box::new(arg));
        Ok(match power {
            Some(p) => Node::Pow(Box::new(f), Box::new(p)),
            None => f,
        })
    }

    fn sqrt(&mut self) -> R {
        let index = if self.eat(&Tok::LBrack) {
            let n = self.sum()?;
            if !self.eat(&Tok::RBrack) {
                return err("unclosed root index");
            }
            n
        } else {
            Node::Num(BigRational::from_integer(2.into()), false)
        };
        let radicand = self.arg()?;
        let one = Node::Num(BigRational::from_integer(1.into()), false);
        Ok(Node::Pow(Box::new(radicand), Box::new(Node::Div(Box::new(one), Box::new(index)))))
    }

    fn items_until_close(&mut self) -> Result<Vec<Node>, ParseError> {
        let mut items = Vec::new();
        loop {
            if matches!(self.peek(), Some(Tok::RParen | Tok::RBrack | Tok::RSet) | None) {
                return Ok(items);
            }
            items.push(self.rel()?);
            if !matches!(self.peek(), Some(Tok::Comma | Tok::Semi | Tok::Sep)) {
                return Ok(items);
            }
            self.pos += 1;
        }
    }

    /// `( … )`, `[ … ]` and mixed-bracket intervals.
    fn bracketed(&mut self, open_paren: bool) -> R {
        let items = self.items_until_close()?;
        let close_paren = match self.peek() {
            Some(Tok::RParen) => true,
            Some(Tok::RBrack) => false,
            _ => return err("unclosed bracket"),
        };
        self.pos += 1;
        let mut items = items;
        match (items.len(), open_paren, close_paren) {
            (0, _, _) => err("empty brackets"),
            (1, true, true) | (1, false, false) => Ok(items.remove(0)),
            (2, true, true) => Ok(Node::Tuple(items)),
            (2, lo_open, hi_open) => {
                let hi = items.remove(1);
                let lo = items.remove(0);
                Ok(Node::Interval(Box::new(lo), Box::new(hi), !lo_open, !hi_open))
            }
            (_, true, true) => Ok(Node::Tuple(items)),
            (_, false, false) => Ok(Node::List(items)),
            _ => err("mismatched brackets"),
        }
    }

    fn set(&mut self) -> R {
        let items = self.items_until_close()?;
        if !self.eat(&Tok::RSet) {
            return err("unclosed \\{");
        }
        let mut flat = Vec::new();
        for item in items {
            match item {
                Node::List(inner) => flat.extend(inner),
                other => flat.push(other),
            }
        }
        Ok(Node::Set(flat))
    }

    fn environment(&mut self, env: &str) -> R {
        let matrix = env.ends_with("matrix") || env == "array";
        if !matrix {
            let inner = self.semilist()?;
            while matches!(self.peek(), Some(Tok::RowSep | Tok::Amp)) {
                self.pos += 1;
            }
            self.eat(&Tok::End(env.to_string()));
            return Ok(inner);
        }
        let mut rows = Vec::new();
        let mut row = Vec::new();
        loop {
            match self.peek() {
                Some(Tok::End(_)) | None => {
                    self.pos += 1;
                    break;
                }
                Some(Tok::Amp) => self.pos += 1,
                Some(Tok::RowSep) => {
                    self.pos += 1;
                    if !row.is_empty() {
                        rows.push(std::mem::take(&mut row));
                    }
                }
                _ => row.push(self.sum()?),
            }
        }
        if !row.is_empty() {
            rows.push(row);
        }
        if rows.is_empty() || rows.iter().any(|r| r.len() != rows[0].len()) {
            return err("ragged matrix");
        }
        Ok(Node::Matrix(rows))
    }
}

/// Units are dropped: in a product with a non-text factor, `\text{…}` factors (and their powers)
/// are removed (`15\text{ cm}^2` → 15).
fn drop_units(factors: Vec<Node>) -> Node {
    let is_unit = |n: &Node| match n {
        Node::Text(_) => true,
        Node::Pow(b, _) => matches!(**b, Node::Text(_)),
        _ => false,
    };
    let kept: Vec<Node> = if factors.iter().any(|f| !is_unit(f)) {
        factors.into_iter().filter(|f| !is_unit(f)).collect()
    } else {
        factors
    };
    unwrap_single(kept, Node::Mul)
}

fn with_subscript(p: Node, sub: &str) -> Node {
    let sub: String = sub.chars().filter(|c| !c.is_whitespace() && *c != '{' && *c != '}').collect();
    match p {
        Node::Sym(name) => Node::Sym(format!("{name}_{sub}")),
        Node::Num(v, _) => Node::Text(format!("{v}_{sub}")),
        other => other,
    }
}

/// An exact number from its written digits (`12`, `0.5`).
pub fn num(s: &str) -> R {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits: BigInt = format!("{int}{frac}").parse().map_err(|_| ParseError(format!("bad number {s}")))?;
    let scale = BigInt::from(10u32).pow(frac.len() as u32);
    Ok(Node::Num(BigRational::new(digits, scale), !frac.is_empty()))
}
