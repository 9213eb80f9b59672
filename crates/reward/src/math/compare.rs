//! Equivalence of two parsed answers: structure first (relations, sets, tuples, intervals,
//! matrices, text), then numbers.
//!
//! Numbers: exact rationals compare exactly; when either side was written with a decimal point the
//! tolerance is absolute, `10^-precision` (like math-verify's rounding to `precision` = 6 decimal
//! places; absolute, so `1000000.5` does not pass for `1000000`); other irrational values compare
//! with a relative tolerance of 1e-9 (scaled by `max(1, |x|)`). Expressions with
//! variables are compared by evaluating both at [`SAMPLES`] fixed pseudo-random points (a
//! probabilistic identity test: `\tan^2 y + 1` equals `\sec^2 y`); equations and inequalities
//! compare as `lhs − rhs` up to a constant factor (positive for inequalities, so `x < 1` equals
//! `-x > -1` but not `x > -1`).

use super::eval::{as_f64, eval, Budget, EvalError, Val};
use super::lexer::RelOp;
use super::parser::Node;
use super::simplify::simplify;
use super::MathOptions;
use num_rational::BigRational;
use num_traits::{Signed, ToPrimitive};
use std::collections::{BTreeMap, BTreeSet};

/// Sample points used for expressions with variables.
pub const SAMPLES: usize = 4;

/// Could not decide (budget exhausted, overflow).
#[derive(Debug, Clone, PartialEq)]
pub struct Undecided(pub String);

type Res = Result<bool, Undecided>;

/// The comparison context.
pub struct Cmp<'a> {
    /// Options (precision, set/relation asymmetry).
    pub opts: &'a MathOptions,
    /// Remaining work.
    pub budget: Budget,
}

impl Cmp<'_> {
    /// Whether `pred` is equivalent to `gold` (not symmetric: see relations).
    pub fn equal(&mut self, gold: &Node, pred: &Node) -> Res {
        let g = simplify(gold);
        let p = simplify(pred);
        self.equal_simplified(&g, &p)
    }

    fn equal_simplified(&mut self, g: &Node, p: &Node) -> Res {
        if self.budget.ops == 0 {
            return Err(Undecided("budget exhausted".into()));
        }
        self.budget.ops -= 1;
        if infinity_sign(g).is_some() || infinity_sign(p).is_some() {
            return Ok(infinity_sign(g) == infinity_sign(p));
        }
        match (g, p) {
            (Node::Rel(gp, gops), Node::Rel(pp, pops)) => self.rel_equal(gp, gops, pp, pops),
            (Node::Rel(parts, ops), other) => self.gold_relation(parts, ops, other),
            (other, Node::Rel(parts, ops)) => self.pred_relation(other, parts, ops),
            (Node::List(a) | Node::Set(a), Node::List(b) | Node::Set(b)) => self.set_equal(a, b),
            (Node::Union(a), Node::Union(b)) => self.set_equal(a, b),
            (Node::Tuple(a), Node::Tuple(b) | Node::List(b)) | (Node::List(a), Node::Tuple(b)) => self.seq_equal(a, b),
            (Node::Ratio(a), Node::Ratio(b)) => self.seq_equal(a, b),
            (Node::Matrix(a), Node::Matrix(b)) if same_shape(a, b) => self.seq_equal(&a.concat(), &b.concat()),
            (Node::Interval(..), Node::Interval(..) | Node::Tuple(_)) | (Node::Tuple(_), Node::Interval(..)) => {
                self.interval_equal(g, p)
            }
            (Node::Percent(a), Node::Percent(b)) => self.equal_simplified(a, b),
            (Node::Percent(a), b) | (b, Node::Percent(a)) => self.percent_equal(a, b),
            (Node::Text(_), _) | (_, Node::Text(_)) => Ok(text_equal(g, p)),
            _ if is_collection(g) || is_collection(p) => Ok(false),
            _ => self.scalar_equal(g, p),
        }
    }

    fn percent_equal(&mut self, a: &Node, b: &Node) -> Res {
        if self.equal_simplified(a, b)? {
            return Ok(true);
        }
        let hundredth = Node::Div(Box::new(a.clone()), Box::new(int(100)));
        self.equal_simplified(&hundredth, b)
    }

    /// Gold is a relation, pred is not: `x = v` (a variable-like left side, or a chain) gives `v`;
    /// an inequality in one variable gives its interval.
    fn gold_relation(&mut self, parts: &[Node], ops: &[RelOp], pred: &Node) -> Res {
        let all_eq = ops.iter().all(|o| *o == RelOp::Eq);
        if all_eq && (parts.len() > 2 || var_like(&parts[0])) {
            return self.equal_simplified(&parts[parts.len() - 1], pred);
        }
        match relation_interval(parts, ops) {
            Some(iv) => self.equal_simplified(&iv, pred),
            None => Ok(false),
        }
    }

    /// Pred is a relation, gold is not: an equation gives its last part (math-verify's policy); an
    /// inequality matches a gold interval only with `allow_set_relation_comp`.
    fn pred_relation(&mut self, gold: &Node, parts: &[Node], ops: &[RelOp]) -> Res {
        if ops.iter().all(|o| matches!(o, RelOp::Eq | RelOp::Approx)) {
            return self.equal_simplified(gold, &parts[parts.len() - 1]);
        }
        if self.opts.allow_set_relation_comp {
            if let Some(iv) = relation_interval(parts, ops) {
                return self.equal_simplified(gold, &iv);
            }
        }
        Ok(false)
    }

    fn rel_equal(&mut self, gp: &[Node], gops: &[RelOp], pp: &[Node], pops: &[RelOp]) -> Res {
        let gl = links(gp, gops);
        let pl = links(pp, pops);
        if gl.len() != pl.len() {
            return Ok(false);
        }
        for g in &gl {
            let mut found = false;
            for p in &pl {
                if self.link_equal(g, p)? {
                    found = true;
                    break;
                }
            }
            if !found {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn link_equal(&mut self, g: &Link, p: &Link) -> Res {
        if g.op != p.op {
            return Ok(false);
        }
        if g.op == RelOp::In || is_collection(&g.lhs) || is_collection(&g.rhs) {
            return Ok(self.equal_simplified(&g.lhs, &p.lhs)? && self.equal_simplified(&g.rhs, &p.rhs)?);
        }
        let dg = Node::Add(vec![g.lhs.clone(), Node::Neg(Box::new(g.rhs.clone()))]);
        let dp = Node::Add(vec![p.lhs.clone(), Node::Neg(Box::new(p.rhs.clone()))]);
        let positive_only = matches!(g.op, RelOp::Lt | RelOp::Le);
        self.proportional(&dg, &dp, positive_only)
    }

    /// Whether `a = k·b` for one constant `k ≠ 0` (k > 0 when `positive_only`), by sampling.
    fn proportional(&mut self, a: &Node, b: &Node, positive_only: bool) -> Res {
        let mut ratio: Option<f64> = None;
        for env in self.envs(&[a, b]) {
            let (Some(x), Some(y)) = (self.float(a, &env)?, self.float(b, &env)?) else {
                continue;
            };
            let (zx, zy) = (x.abs() < 1e-12, y.abs() < 1e-12);
            if zx || zy {
                if zx != zy {
                    return Ok(false);
                }
                continue;
            }
            let k = x / y;
            match ratio {
                None => ratio = Some(k),
                Some(r) if (r - k).abs() > 1e-7 * r.abs().max(1.0) => return Ok(false),
                Some(_) => {}
            }
        }
        Ok(ratio.is_none_or(|k| !positive_only || k > 0.0))
    }

    fn set_equal(&mut self, a: &[Node], b: &[Node]) -> Res {
        if a.is_empty() || b.is_empty() || a.len() > 64 || b.len() > 64 {
            return Ok(a.is_empty() && b.is_empty());
        }
        for (xs, ys, gold_first) in [(a, b, true), (b, a, false)] {
            for x in xs {
                let mut hit = false;
                for y in ys {
                    let eq = if gold_first { self.equal_simplified(x, y)? } else { self.equal_simplified(y, x)? };
                    if eq {
                        hit = true;
                        break;
                    }
                }
                if !hit {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn seq_equal(&mut self, a: &[Node], b: &[Node]) -> Res {
        if a.len() != b.len() {
            return Ok(false);
        }
        for (x, y) in a.iter().zip(b) {
            if !self.equal_simplified(x, y)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn interval_equal(&mut self, g: &Node, p: &Node) -> Res {
        let parts = |n: &Node| match n {
            Node::Interval(lo, hi, lc, hc) => Some(((**lo).clone(), (**hi).clone(), *lc, *hc)),
            Node::Tuple(items) if items.len() == 2 => Some((items[0].clone(), items[1].clone(), false, false)),
            _ => None,
        };
        let (Some(a), Some(b)) = (parts(g), parts(p)) else {
            return Ok(false);
        };
        if a.2 != b.2 || a.3 != b.3 {
            return Ok(false);
        }
        Ok(self.endpoint_equal(&a.0, &b.0)? && self.endpoint_equal(&a.1, &b.1)?)
    }

    fn endpoint_equal(&mut self, a: &Node, b: &Node) -> Res {
        match (infinity_sign(a), infinity_sign(b)) {
            (Some(x), Some(y)) => Ok(x == y),
            (None, None) => self.equal_simplified(a, b),
            _ => Ok(false),
        }
    }

    fn scalar_equal(&mut self, g: &Node, p: &Node) -> Res {
        let tol = if has_decimal(g) || has_decimal(p) { Tol::decimal(self.opts.precision) } else { Tol::EXACTISH };
        let mut symbols = BTreeSet::new();
        collect_symbols(g, &mut symbols);
        collect_symbols(p, &mut symbols);
        if symbols.is_empty() {
            return self.constant_equal(g, p, tol);
        }
        let sampled = Tol { abs: tol.abs, rel: 1e-8 };
        let mut checked = 0;
        for env in self.envs(&[g, p]) {
            let (Some(x), Some(y)) = (self.float(g, &env)?, self.float(p, &env)?) else {
                continue;
            };
            if !sampled.close(x, y) {
                return Ok(false);
            }
            checked += 1;
        }
        Ok(checked > 0)
    }

    fn constant_equal(&mut self, g: &Node, p: &Node, tol: Tol) -> Res {
        let env = BTreeMap::new();
        let gv = self.value(g, &env)?;
        let pv = self.value(p, &env)?;
        match (gv, pv) {
            (Some(Val::R(a)), Some(Val::R(b))) if tol.abs == 0.0 => Ok(a == b),
            (Some(Val::R(a)), Some(Val::R(b))) => {
                let diff = (&a - &b).abs().to_f64().unwrap_or(f64::INFINITY);
                Ok(diff <= tol.abs)
            }
            (Some(Val::M(a)), Some(Val::M(b))) => Ok(matrix_close(&a, &b, tol)),
            (Some(a), Some(b)) => match (as_f64(&a), as_f64(&b)) {
                (Some(x), Some(y)) => Ok(tol.close(x, y)),
                _ => Ok(false),
            },
            _ => Ok(false),
        }
    }

    /// Evaluates; `Ok(None)` when the expression has no value (domain error, unsupported).
    fn value(&mut self, node: &Node, env: &BTreeMap<String, f64>) -> Result<Option<Val>, Undecided> {
        match eval(node, env, &mut self.budget) {
            Ok(v) => Ok(Some(v)),
            Err(EvalError::Budget(why)) => Err(Undecided(why)),
            Err(_) => Ok(None),
        }
    }

    fn float(&mut self, node: &Node, env: &BTreeMap<String, f64>) -> Result<Option<f64>, Undecided> {
        Ok(self.value(node, env)?.as_ref().and_then(as_f64))
    }

    fn envs(&self, nodes: &[&Node]) -> Vec<BTreeMap<String, f64>> {
        let mut symbols = BTreeSet::new();
        for n in nodes {
            collect_symbols(n, &mut symbols);
        }
        (0..SAMPLES).map(|k| symbols.iter().map(|s| (s.clone(), sample_value(s, k))).collect()).collect()
    }
}

fn int(n: i64) -> Node {
    Node::Num(BigRational::from_integer(n.into()), false)
}

/// A fixed pseudo-random value in [0.3, 2.3) per symbol and sample index.
fn sample_value(name: &str, k: usize) -> f64 {
    let h =
        name.bytes().chain([k as u8]).fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    0.3 + (h % 10_007) as f64 / 5003.5
}

/// A numeric tolerance: absolute plus relative (scaled by `max(1, |x|)`).
#[derive(Debug, Clone, Copy)]
struct Tol {
    abs: f64,
    rel: f64,
}

impl Tol {
    /// No decimal literal involved: floating-point noise only.
    const EXACTISH: Tol = Tol { abs: 0.0, rel: 1e-9 };

    /// A decimal literal involved: `precision` decimal places.
    fn decimal(precision: u32) -> Tol {
        Tol { abs: 10f64.powi(-(precision as i32)), rel: 1e-12 }
    }

    fn close(self, x: f64, y: f64) -> bool {
        (x - y).abs() <= self.abs + self.rel * x.abs().max(1.0)
    }
}

fn matrix_close(a: &[Vec<Val>], b: &[Vec<Val>], tol: Tol) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(r, s)| {
            r.len() == s.len()
                && r.iter().zip(s).all(|(x, y)| match (as_f64(x), as_f64(y)) {
                    (Some(x), Some(y)) => tol.close(x, y),
                    _ => false,
                })
        })
}

fn same_shape(a: &[Vec<Node>], b: &[Vec<Node>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(r, s)| r.len() == s.len())
}

fn is_collection(n: &Node) -> bool {
    matches!(n, Node::List(_) | Node::Set(_) | Node::Tuple(_) | Node::Interval(..) | Node::Union(_) | Node::Ratio(_))
}

fn infinity_sign(n: &Node) -> Option<bool> {
    match n {
        Node::Inf => Some(true),
        Node::Neg(inner) => infinity_sign(inner).map(|s| !s),
        _ => None,
    }
}

fn has_decimal(n: &Node) -> bool {
    let mut found = false;
    visit(n, &mut |m| found |= matches!(m, Node::Num(_, true)));
    found
}

fn collect_symbols(n: &Node, out: &mut BTreeSet<String>) {
    visit(n, &mut |m| {
        if let Node::Sym(s) = m {
            if s != "e" {
                out.insert(s.clone());
            }
        }
    });
}

/// Calls `f` on every node (pre-order).
pub fn visit(n: &Node, f: &mut dyn FnMut(&Node)) {
    f(n);
    match n {
        Node::Add(v)
        | Node::Mul(v)
        | Node::Tuple(v)
        | Node::List(v)
        | Node::Set(v)
        | Node::Union(v)
        | Node::Ratio(v)
        | Node::Rel(v, _) => v.iter().for_each(|c| visit(c, f)),
        Node::Neg(a) | Node::Func(_, a) | Node::Fact(a) | Node::Percent(a) | Node::Abs(a) => visit(a, f),
        Node::Div(a, b) | Node::Pow(a, b) | Node::Pm(a, b) | Node::Interval(a, b, _, _) => {
            visit(a, f);
            visit(b, f);
        }
        Node::Matrix(rows) => rows.iter().flatten().for_each(|c| visit(c, f)),
        Node::Num(..) | Node::Sym(_) | Node::Pi | Node::Inf | Node::Text(_) => {}
    }
}

/// Variable-like: no number anywhere and at least one symbol (`x`, `f(x)`, `|AB|`, `A:B`, `(p,q)`).
pub fn var_like(n: &Node) -> bool {
    let mut numbers = false;
    let mut symbols = false;
    visit(n, &mut |m| match m {
        Node::Num(..) => numbers = true,
        Node::Sym(_) | Node::Func(..) => symbols = true,
        _ => {}
    });
    symbols && !numbers
}

struct Link {
    op: RelOp,
    lhs: Node,
    rhs: Node,
}

/// A chain as links, with `>`/`≥` turned into `<`/`≤` by swapping sides.
fn links(parts: &[Node], ops: &[RelOp]) -> Vec<Link> {
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let (a, b) = (parts[i].clone(), parts[i + 1].clone());
            match op {
                RelOp::Gt => Link { op: RelOp::Lt, lhs: b, rhs: a },
                RelOp::Ge => Link { op: RelOp::Le, lhs: b, rhs: a },
                RelOp::Approx => Link { op: RelOp::Eq, lhs: a, rhs: b },
                _ => Link { op: *op, lhs: a, rhs: b },
            }
        })
        .collect()
}

/// `x > 1` → `(1, ∞)`, `-2 ≤ x ≤ 7` → `[-2, 7]`: one variable-like part bounded by constants.
fn relation_interval(parts: &[Node], ops: &[RelOp]) -> Option<Node> {
    let ls = links(parts, ops);
    let mut lo: Option<(Node, bool)> = None;
    let mut hi: Option<(Node, bool)> = None;
    let mut var: Option<Node> = None;
    for l in &ls {
        let closed = match l.op {
            RelOp::Lt => false,
            RelOp::Le => true,
            _ => return None,
        };
        if var_like(&l.rhs) && !var_like(&l.lhs) {
            if var.as_ref().is_some_and(|v| *v != l.rhs) {
                return None;
            }
            var = Some(l.rhs.clone());
            lo = Some((l.lhs.clone(), closed));
        } else if var_like(&l.lhs) && !var_like(&l.rhs) {
            if var.as_ref().is_some_and(|v| *v != l.lhs) {
                return None;
            }
            var = Some(l.lhs.clone());
            hi = Some((l.rhs.clone(), closed));
        } else {
            return None;
        }
    }
    var?;
    let (lo, lc) = lo.unwrap_or((Node::Neg(Box::new(Node::Inf)), false));
    let (hi, hc) = hi.unwrap_or((Node::Inf, false));
    Some(Node::Interval(Box::new(lo), Box::new(hi), lc, hc))
}

fn word_form(n: &Node) -> Option<String> {
    match n {
        Node::Text(s) => Some(s.chars().filter(|c| !c.is_whitespace() && *c != '(' && *c != ')').collect()),
        Node::Sym(s) => Some(s.clone()),
        Node::Mul(items) => items.iter().map(word_form).collect(),
        _ => None,
    }
}

fn text_equal(g: &Node, p: &Node) -> bool {
    match (word_form(g), word_form(p)) {
        (Some(a), Some(b)) => !a.is_empty() && a == b,
        _ => false,
    }
}
