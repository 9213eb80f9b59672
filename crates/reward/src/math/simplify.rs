//! Top-level clean-up of a parsed answer before comparison: set membership, `\approx` chains,
//! equation chains, `±` expansion, `var = value` list items.

use super::compare::{var_like, visit};
use super::lexer::RelOp;
use super::parser::Node;

/// Top-level clean-up: `x \in S` → `S`; `\approx` after an equation is dropped; equation chains of
/// three or more parts keep their first and last; `±` expands into a list; list elements that are
/// `var = value` become the value; one-element lists unwrap.
pub fn simplify(n: &Node) -> Node {
    match n {
        Node::Rel(parts, ops) => simplify_rel(parts, ops),
        Node::List(items) | Node::Set(items) => {
            let mut out = Vec::new();
            for item in items {
                let s = simplify(item);
                let s = match s {
                    Node::Rel(ref parts, ref ops) if ops.iter().all(|o| *o == RelOp::Eq) && var_like(&parts[0]) => {
                        parts[parts.len() - 1].clone()
                    }
                    other => other,
                };
                match s {
                    Node::List(inner) if matches!(n, Node::Set(_)) => out.extend(inner),
                    other => out.push(other),
                }
            }
            if out.len() == 1 && matches!(n, Node::List(_)) {
                return out.remove(0);
            }
            if matches!(n, Node::Set(_)) {
                Node::Set(out)
            } else {
                Node::List(out)
            }
        }
        other => {
            let expanded = expand_pm(other, 0);
            if expanded.len() > 1 {
                Node::List(expanded)
            } else {
                other.clone()
            }
        }
    }
}

fn simplify_rel(parts: &[Node], ops: &[RelOp]) -> Node {
    let mut parts = parts.to_vec();
    let mut ops = ops.to_vec();
    if ops.len() == 1 && ops[0] == RelOp::In && var_like(&parts[0]) {
        return simplify(&parts[1]);
    }
    if let Some(i) = ops.iter().position(|o| *o == RelOp::Approx) {
        if ops[..i].contains(&RelOp::Eq) {
            parts.truncate(i + 1);
            ops.truncate(i);
        } else {
            ops[i] = RelOp::Eq;
        }
    }
    if ops.len() >= 2 && ops.iter().all(|o| *o == RelOp::Eq) {
        let last = parts.pop().unwrap_or(Node::Inf);
        parts.truncate(1);
        if !var_like(&parts[0]) {
            // A chain such as `1 = y = x = 0`: its answer is the last part.
            parts[0] = Node::Sym("\\chain".into());
        }
        parts.push(last);
        ops.truncate(1);
        return Node::Rel(parts, ops);
    }
    let parts = parts.iter().map(simplify).collect();
    Node::Rel(parts, ops)
}

/// All sign choices of the `±` inside `n` (at most 2^4).
fn expand_pm(n: &Node, depth: usize) -> Vec<Node> {
    if depth > 4 {
        return vec![n.clone()];
    }
    let mut target = None;
    visit(n, &mut |m| {
        if target.is_none() {
            if let Node::Pm(a, b) = m {
                target = Some(((**a).clone(), (**b).clone()));
            }
        }
    });
    let Some((a, b)) = target else {
        return vec![n.clone()];
    };
    let plus = replace_first_pm(n, &Node::Add(vec![a.clone(), b.clone()]));
    let minus = replace_first_pm(n, &Node::Add(vec![a, Node::Neg(Box::new(b))]));
    let mut out = expand_pm(&plus, depth + 1);
    out.extend(expand_pm(&minus, depth + 1));
    out
}

fn replace_first_pm(n: &Node, with: &Node) -> Node {
    let mut done = false;
    replace_rec(n, with, &mut done)
}

fn replace_rec(n: &Node, with: &Node, done: &mut bool) -> Node {
    if *done {
        return n.clone();
    }
    let mut r = |c: &Node| replace_rec(c, with, done);
    match n {
        Node::Pm(..) => {
            *done = true;
            with.clone()
        }
        Node::Add(v) => Node::Add(v.iter().map(&mut r).collect()),
        Node::Mul(v) => Node::Mul(v.iter().map(&mut r).collect()),
        Node::Neg(a) => Node::Neg(Box::new(r(a))),
        Node::Div(a, b) => {
            let a = r(a);
            Node::Div(Box::new(a), Box::new(r(b)))
        }
        Node::Pow(a, b) => {
            let a = r(a);
            Node::Pow(Box::new(a), Box::new(r(b)))
        }
        Node::Func(f, a) => Node::Func(f.clone(), Box::new(r(a))),
        Node::Tuple(v) => Node::Tuple(v.iter().map(&mut r).collect()),
        other => other.clone(),
    }
}
