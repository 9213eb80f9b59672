//! A budgeted evaluator: exact rationals while they stay small, `f64` beyond, errors instead of
//! unbounded work.
//!
//! Bounds: at most [`Budget::ops`] node visits; a rational whose numerator plus denominator exceed
//! [`MAX_BITS`] bits becomes a float; an exact integer power only when the result fits that bound;
//! factorials only up to [`MAX_FACTORIAL`]. A non-finite float result is an error. So `9^{9^{9}}`,
//! `(10^6)!` and `10^{5^{5^5}}` all return an error in microseconds.

use super::parser::Node;
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};
use std::collections::BTreeMap;

/// Largest exact rational size, in bits (numerator + denominator).
pub const MAX_BITS: u64 = 20_000;
/// Largest exact factorial argument.
pub const MAX_FACTORIAL: u64 = 1000;

/// A value.
#[derive(Debug, Clone)]
pub enum Val {
    /// Exact.
    R(BigRational),
    /// Approximate.
    F(f64),
    /// A matrix of values.
    M(Vec<Vec<Val>>),
}

/// Why evaluation stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalError {
    /// The work budget or a size cap was exceeded.
    Budget(String),
    /// Division by zero, log of a negative, a non-finite result.
    Domain,
    /// Something without a numeric value (text, a set, a free symbol without a value).
    Unsupported(String),
}

/// The work budget of one comparison.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Remaining node visits.
    pub ops: u64,
}

type E = Result<Val, EvalError>;

/// Evaluates `node` with `env` giving values to free symbols.
pub fn eval(node: &Node, env: &BTreeMap<String, f64>, budget: &mut Budget) -> E {
    if budget.ops == 0 {
        return Err(EvalError::Budget("operation budget exhausted".into()));
    }
    budget.ops -= 1;
    let v = match node {
        Node::Num(r, _) => Val::R(r.clone()),
        Node::Sym(name) => symbol(name, env)?,
        Node::Pi => Val::F(std::f64::consts::PI),
        Node::Add(items) => fold(items, env, budget, add)?,
        Node::Mul(items) => fold(items, env, budget, mul)?,
        Node::Neg(a) => neg(eval(a, env, budget)?)?,
        Node::Div(a, b) => div(eval(a, env, budget)?, eval(b, env, budget)?)?,
        Node::Pow(a, b) => pow(eval(a, env, budget)?, eval(b, env, budget)?)?,
        Node::Func(name, arg) => func(name, eval(arg, env, budget)?)?,
        Node::Fact(a) => factorial(eval(a, env, budget)?, budget)?,
        Node::Percent(a) => div(eval(a, env, budget)?, Val::R(BigRational::from_integer(100.into())))?,
        Node::Abs(a) => abs(eval(a, env, budget)?)?,
        Node::Matrix(rows) => Val::M(
            rows.iter()
                .map(|r| r.iter().map(|x| eval(x, env, budget)).collect::<Result<_, _>>())
                .collect::<Result<_, _>>()?,
        ),
        Node::Tuple(items) if items.len() == 1 => eval(&items[0], env, budget)?,
        other => return Err(EvalError::Unsupported(format!("{other:?}").chars().take(40).collect())),
    };
    check(v)
}

fn check(v: Val) -> E {
    match v {
        Val::F(f) if !f.is_finite() => Err(EvalError::Domain),
        Val::R(r) if bits(&r) > MAX_BITS => Ok(Val::F(to_f64(&r))),
        other => Ok(other),
    }
}

fn bits(r: &BigRational) -> u64 {
    r.numer().bits() + r.denom().bits()
}

/// A rational as `f64` (via the ratio of scaled parts, so huge numerators do not overflow early).
pub fn to_f64(r: &BigRational) -> f64 {
    r.to_f64().unwrap_or(f64::NAN)
}

/// A value as `f64`, if scalar.
pub fn as_f64(v: &Val) -> Option<f64> {
    match v {
        Val::R(r) => Some(to_f64(r)),
        Val::F(f) => Some(*f),
        Val::M(_) => None,
    }
}

fn symbol(name: &str, env: &BTreeMap<String, f64>) -> E {
    if let Some(v) = env.get(name) {
        return Ok(Val::F(*v));
    }
    if name == "e" {
        return Ok(Val::F(std::f64::consts::E));
    }
    Err(EvalError::Unsupported(format!("free symbol {name}")))
}

fn fold(items: &[Node], env: &BTreeMap<String, f64>, budget: &mut Budget, op: fn(Val, Val) -> E) -> E {
    let mut it = items.iter();
    let mut acc = match it.next() {
        Some(first) => eval(first, env, budget)?,
        None => return Err(EvalError::Unsupported("empty".into())),
    };
    for x in it {
        acc = check(op(acc, eval(x, env, budget)?)?)?;
    }
    Ok(acc)
}

fn scalar2(a: Val, b: Val, exact: fn(BigRational, BigRational) -> E, float: fn(f64, f64) -> f64) -> E {
    match (a, b) {
        (Val::R(x), Val::R(y)) => exact(x, y),
        (x, y) => match (as_f64(&x), as_f64(&y)) {
            (Some(x), Some(y)) => Ok(Val::F(float(x, y))),
            _ => Err(EvalError::Unsupported("matrix operand".into())),
        },
    }
}

fn add(a: Val, b: Val) -> E {
    match (a, b) {
        (Val::M(x), Val::M(y)) => zip_mat(x, y),
        (a, b) => scalar2(a, b, |x, y| Ok(Val::R(x + y)), |x, y| x + y),
    }
}

fn zip_mat(x: Vec<Vec<Val>>, y: Vec<Vec<Val>>) -> E {
    if x.len() != y.len() || x.iter().zip(&y).any(|(r, s)| r.len() != s.len()) {
        return Err(EvalError::Domain);
    }
    let rows = x
        .into_iter()
        .zip(y)
        .map(|(r, s)| r.into_iter().zip(s).map(|(a, b)| add(a, b)).collect::<Result<Vec<_>, _>>())
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Val::M(rows))
}

fn mul(a: Val, b: Val) -> E {
    match (a, b) {
        (Val::M(x), Val::M(y)) => mat_mul(&x, &y),
        (Val::M(m), s) | (s, Val::M(m)) => {
            let rows = m
                .into_iter()
                .map(|r| r.into_iter().map(|v| mul(v, s.clone())).collect::<Result<Vec<_>, _>>())
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Val::M(rows))
        }
        (a, b) => scalar2(a, b, |x, y| Ok(Val::R(x * y)), |x, y| x * y),
    }
}

fn mat_mul(x: &[Vec<Val>], y: &[Vec<Val>]) -> E {
    let inner = y.len();
    if x.iter().any(|r| r.len() != inner) || inner == 0 || x.len() * inner * y[0].len() > 10_000 {
        return Err(EvalError::Domain);
    }
    let mut rows = Vec::with_capacity(x.len());
    for r in x {
        let mut row = Vec::with_capacity(y[0].len());
        for j in 0..y[0].len() {
            let mut acc = Val::R(BigRational::zero());
            for (a, y_row) in r.iter().zip(y) {
                acc = add(acc, mul(a.clone(), y_row[j].clone())?)?;
            }
            row.push(acc);
        }
        rows.push(row);
    }
    Ok(Val::M(rows))
}

fn neg(a: Val) -> E {
    mul(a, Val::R(-BigRational::one()))
}

fn div(a: Val, b: Val) -> E {
    match (a, b) {
        (_, Val::R(y)) if y.is_zero() => Err(EvalError::Domain),
        (a, Val::R(y)) => mul(a, Val::R(y.recip())),
        (a, Val::F(y)) => mul(a, Val::F(1.0 / y)),
        _ => Err(EvalError::Unsupported("division by a matrix".into())),
    }
}

fn abs(a: Val) -> E {
    match a {
        Val::R(r) => Ok(Val::R(r.abs())),
        Val::F(f) => Ok(Val::F(f.abs())),
        Val::M(_) => Err(EvalError::Unsupported("|matrix|".into())),
    }
}

fn pow(base: Val, exp: Val) -> E {
    if let (Val::R(b), Val::R(e)) = (&base, &exp) {
        if let Some(v) = exact_pow(b, e) {
            return v;
        }
    }
    match (as_f64(&base), as_f64(&exp)) {
        (Some(b), Some(e)) => {
            let r = b.powf(e);
            if r.is_nan() {
                Err(EvalError::Domain)
            } else if r.is_infinite() {
                Err(EvalError::Budget("power overflows".into()))
            } else {
                Ok(Val::F(r))
            }
        }
        _ => Err(EvalError::Unsupported("matrix power".into())),
    }
}

/// Exact `b^e` for integer `e` (result within [`MAX_BITS`]) or a perfect root; `None` to fall back.
fn exact_pow(b: &BigRational, e: &BigRational) -> Option<E> {
    if e.is_integer() {
        let n = e.to_integer().to_i64()?;
        if b.is_zero() && n < 0 {
            return Some(Err(EvalError::Domain));
        }
        let unit = b.is_zero() || b.abs().is_one();
        let size = bits(b).saturating_mul(n.unsigned_abs());
        if !unit && size > MAX_BITS {
            return None;
        }
        let p = num_traits::pow(b.clone(), n.unsigned_abs() as usize);
        return Some(Ok(Val::R(if n < 0 { p.recip() } else { p })));
    }
    let q = e.denom().to_u32()?;
    if b.is_negative() || q > 16 || bits(b) > 2000 {
        return None;
    }
    let rn = b.numer().nth_root(q);
    let rd = b.denom().nth_root(q);
    if num_traits::pow(rn.clone(), q as usize) != *b.numer() || num_traits::pow(rd.clone(), q as usize) != *b.denom() {
        return None;
    }
    let root = BigRational::new(rn, rd);
    let p = BigRational::from_integer(e.numer().clone());
    exact_pow(&root, &p)
}

fn func(name: &str, arg: Val) -> E {
    let x = as_f64(&arg).ok_or_else(|| EvalError::Unsupported("function of a matrix".into()))?;
    let base = name.split_once('_').map(|(_, b)| b);
    let y = match name.split('_').next().unwrap_or(name) {
        "sin" => x.sin(),
        "cos" => x.cos(),
        "tan" => x.tan(),
        "sec" => 1.0 / x.cos(),
        "csc" => 1.0 / x.sin(),
        "cot" => 1.0 / x.tan(),
        "arcsin" => x.asin(),
        "arccos" => x.acos(),
        "arctan" => x.atan(),
        "sinh" => x.sinh(),
        "cosh" => x.cosh(),
        "tanh" => x.tanh(),
        "exp" => x.exp(),
        "ln" => x.ln(),
        "lg" => x.log10(),
        "log" => match base.and_then(|b| b.parse::<f64>().ok()) {
            Some(b) => x.ln() / b.ln(),
            None => x.ln(),
        },
        _ => unknown_function(name, x),
    };
    if y.is_finite() {
        Ok(Val::F(y))
    } else {
        Err(EvalError::Domain)
    }
}

/// An unknown function (`f`, `W`, `\sum…`) is a fixed pseudo-random smooth function of its name,
/// so `f(x)` equals `f(x)` but not `f(y)` or `g(x)`.
fn unknown_function(name: &str, x: f64) -> f64 {
    let h = name.bytes().fold(1469598103934665603u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
    let a = 0.5 + (h % 1000) as f64 / 997.0;
    let c = ((h >> 20) % 1000) as f64 / 311.0;
    (a * x + c).sin() * 3.0 + a
}

fn factorial(a: Val, budget: &mut Budget) -> E {
    let Val::R(r) = a else {
        return Err(EvalError::Unsupported("factorial of a non-integer".into()));
    };
    if !r.is_integer() || r.is_negative() {
        return Err(EvalError::Domain);
    }
    let n = r
        .to_integer()
        .to_u64()
        .filter(|n| *n <= MAX_FACTORIAL)
        .ok_or_else(|| EvalError::Budget("factorial argument too large".into()))?;
    budget.ops = budget.ops.saturating_sub(n);
    let mut acc = BigInt::one();
    for k in 2..=n {
        acc *= k;
    }
    Ok(Val::R(BigRational::from_integer(acc)))
}
