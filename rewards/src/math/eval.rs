//! Numeric evaluation of parsed scalar expressions (complex, with exact rationals
//! tracked where every step is exact).

use super::num::{C, Q};
use super::parse::Node;

#[derive(Clone, Copy, Debug)]
pub struct Val {
    pub c: C,
    pub q: Option<Q>,
}

impl Val {
    fn exact(q: Q) -> Val {
        Val { c: C::real(q.to_f64()), q: Some(q) }
    }
    fn approx(c: C) -> Val {
        Val { c, q: None }
    }
}

/// Variable values for one evaluation point.
pub type Env<'a> = &'a [(String, C)];

fn fact(n: f64) -> f64 {
    if n < 0.0 || n.fract() != 0.0 || n > 170.0 {
        return f64::NAN;
    }
    (1..=n as u64).fold(1.0, |a, k| a * k as f64)
}

/// Evaluates a scalar node; `None` for non-scalar nodes (lists, sets, relations).
pub fn eval(n: &Node, env: Env) -> Option<Val> {
    Some(match n {
        Node::Num(q, _) => Val::exact(*q),
        Node::Float(f) => Val::approx(C::real(*f)),
        Node::Var(v) => Val::approx(env.iter().find(|(k, _)| k == v).map(|(_, c)| *c)?),
        Node::Pi => Val::approx(C::real(std::f64::consts::PI)),
        Node::E => Val::approx(C::real(std::f64::consts::E)),
        Node::I => Val::approx(C::new(0.0, 1.0)),
        Node::Inf => Val::approx(C::real(f64::INFINITY)),
        Node::Neg(a) => {
            let a = eval(a, env)?;
            Val { c: a.c.neg(), q: a.q.and_then(Q::neg) }
        }
        Node::Add(a, b) | Node::Sub(a, b) | Node::Mul(a, b) | Node::Div(a, b) => {
            let (x, y) = (eval(a, env)?, eval(b, env)?);
            let q = match (x.q, y.q) {
                (Some(p), Some(r)) => match n {
                    Node::Add(..) => p.add(r),
                    Node::Sub(..) => p.sub(r),
                    Node::Mul(..) => p.mul(r),
                    _ => p.div(r),
                },
                _ => None,
            };
            let c = match n {
                Node::Add(..) => x.c.add(y.c),
                Node::Sub(..) => x.c.sub(y.c),
                Node::Mul(..) => x.c.mul(y.c),
                _ => x.c.div(y.c),
            };
            match q {
                Some(q) => Val::exact(q),
                None => Val::approx(c),
            }
        }
        Node::Pow(a, b) => {
            let (x, y) = (eval(a, env)?, eval(b, env)?);
            if let (Some(p), Some(r)) = (x.q, y.q) {
                if r.is_int() {
                    if let Some(q) = p.powi(r.num) {
                        return Some(Val::exact(q));
                    }
                }
            }
            Val::approx(x.c.pow(y.c))
        }
        Node::Fact(a) => {
            let x = eval(a, env)?;
            if let Some(q) = x.q {
                if q.is_int() && (0..=33).contains(&q.num) {
                    return Some(Val::exact(Q::int((1..=q.num).product::<i128>().max(1))));
                }
            }
            if !x.c.is_real() {
                return Some(Val::approx(C::real(f64::NAN)));
            }
            Val::approx(C::real(fact(x.c.re)))
        }
        Node::Binom(a, b) => {
            let (x, y) = (eval(a, env)?, eval(b, env)?);
            if let (Some(p), Some(r)) = (x.q, y.q) {
                if p.is_int() && r.is_int() && p.num >= 0 && p.num <= 1000 {
                    let (nn, k) = (p.num, r.num);
                    if k < 0 || k > nn {
                        return Some(Val::exact(Q::int(0)));
                    }
                    let k = k.min(nn - k);
                    let mut acc = Q::int(1);
                    for j in 0..k {
                        acc = match acc.mul(Q::int(nn - j)).and_then(|v| v.div(Q::int(j + 1))) {
                            Some(v) => v,
                            None => return Some(Val::approx(C::real(fact(nn as f64) / (fact(k as f64) * fact((nn - k) as f64))))),
                        };
                    }
                    return Some(Val::exact(acc));
                }
            }
            let (n, k) = (x.c.re, y.c.re);
            Val::approx(C::real(fact(n) / (fact(k) * fact(n - k))))
        }
        Node::Root(k, a) => {
            let (k, x) = (eval(k, env)?, eval(a, env)?);
            // exact roots of perfect powers
            if let (Some(kq), Some(xq)) = (k.q, x.q) {
                if kq.is_int() && kq.num >= 2 && kq.num <= 12 && xq.num >= 0 {
                    let r = |v: i128| -> Option<i128> {
                        let f = (v as f64).powf(1.0 / kq.num as f64).round() as i128;
                        (f.checked_pow(kq.num as u32)? == v).then_some(f)
                    };
                    if let (Some(a), Some(b)) = (r(xq.num), r(xq.den)) {
                        return Some(Val::exact(Q::new(a, b)?));
                    }
                }
            }
            if k.c.re == 2.0 && k.c.im == 0.0 {
                Val::approx(x.c.sqrt())
            } else {
                Val::approx(x.c.pow(C::real(1.0).div(k.c)))
            }
        }
        Node::Func(f, a) => {
            let x = eval(a, env)?.c;
            let c = match f.as_str() {
                "sin" => x.sin(),
                "cos" => x.cos(),
                "tan" => x.sin().div(x.cos()),
                "cot" => x.cos().div(x.sin()),
                "sec" => C::real(1.0).div(x.cos()),
                "csc" => C::real(1.0).div(x.sin()),
                "ln" => x.ln(),
                "exp" => x.exp(),
                _ if x.is_real() => C::real(match f.as_str() {
                    "arcsin" => x.re.asin(),
                    "arccos" => x.re.acos(),
                    "arctan" => x.re.atan(),
                    "sinh" => x.re.sinh(),
                    "cosh" => x.re.cosh(),
                    "tanh" => x.re.tanh(),
                    _ => return None,
                }),
                _ => C::real(f64::NAN),
            };
            Val::approx(c)
        }
        Node::Log(base, a) => {
            let (bv, x) = (eval(base, env)?.c, eval(a, env)?.c);
            Val::approx(x.ln().div(bv.ln()))
        }
        Node::Abs(a) => {
            let x = eval(a, env)?;
            match x.q {
                Some(q) => Val::exact(Q { num: q.num.abs(), den: q.den }),
                None => Val::approx(C::real(x.c.abs())),
            }
        }
        Node::Floor(a) | Node::Ceil(a) => {
            let x = eval(a, env)?;
            let f = if matches!(n, Node::Floor(_)) { x.c.re.floor() } else { x.c.re.ceil() };
            if let Some(q) = x.q {
                let fl = q.num.div_euclid(q.den);
                let v = if matches!(n, Node::Floor(_)) || q.is_int() { fl } else { fl + 1 };
                return Some(Val::exact(Q::int(v)));
            }
            Val::approx(C::real(f))
        }
        _ => return None,
    })
}

/// Free variables of a node, sorted and deduplicated.
pub fn vars(n: &Node, out: &mut Vec<String>) {
    match n {
        Node::Var(v) if !out.contains(v) => {
            out.push(v.clone());
        }
        Node::Neg(a) | Node::Fact(a) | Node::Func(_, a) | Node::Abs(a) | Node::Floor(a) | Node::Ceil(a) => vars(a, out),
        Node::Add(a, b)
        | Node::Sub(a, b)
        | Node::Mul(a, b)
        | Node::Div(a, b)
        | Node::Pow(a, b)
        | Node::Binom(a, b)
        | Node::Root(a, b)
        | Node::Log(a, b)
        | Node::PlusMinus(a, b) => {
            vars(a, out);
            vars(b, out);
        }
        Node::Bracket(_, _, items) | Node::Set(items) | Node::List(items) | Node::Union(items) | Node::Rel(items, _) => {
            for i in items {
                vars(i, out);
            }
        }
        _ => {}
    }
}

/// Whether a node contains a decimal literal (then comparison uses the tolerance).
pub fn has_decimal(n: &Node) -> bool {
    match n {
        Node::Num(_, d) => *d,
        Node::Float(_) => true,
        Node::Neg(a) | Node::Fact(a) | Node::Func(_, a) | Node::Abs(a) | Node::Floor(a) | Node::Ceil(a) => has_decimal(a),
        Node::Add(a, b)
        | Node::Sub(a, b)
        | Node::Mul(a, b)
        | Node::Div(a, b)
        | Node::Pow(a, b)
        | Node::Binom(a, b)
        | Node::Root(a, b)
        | Node::Log(a, b)
        | Node::PlusMinus(a, b) => has_decimal(a) || has_decimal(b),
        _ => false,
    }
}
