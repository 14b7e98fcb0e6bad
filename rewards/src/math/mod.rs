//! Math answers: extraction from completions and references, and equivalence.
//!
//! * [`extract_answer`]: the last `\boxed{...}` / `\fbox{...}` inside the last
//!   `<answer>` block, else that block's content (or the answer phrase inside it), else
//!   the last `\boxed{}` anywhere, else an explicit phrase ("the answer is", "final
//!   answer:"), else (optionally) the last number.
//! * [`extract_reference`]: GSM8K `#### 72`, a `\boxed{}` in a MATH solution, or the
//!   whole string.
//! * [`equivalent`]: normalises LaTeX and compares numbers (exact rationals, decimals
//!   with a relative tolerance), symbolic expressions (random-point evaluation), tuples
//!   and intervals (ordered, brackets matter), sets (unordered), multiple-choice letters,
//!   equations (`x=5` against `5`) and, last, normalised text.

pub mod eval;
pub mod normalize;
pub mod num;
pub mod parse;

use eval::{eval, has_decimal, vars};
use num::C;
use parse::{Node, Rel};

/// Where an extracted answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    BoxedInAnswerTag,
    AnswerTag,
    Boxed,
    Phrase,
    LastNumber,
}

const PHRASES: &[&str] = &[
    "final answer is",
    "final answer:",
    "final answer",
    "the answer is",
    "answer is",
    "answer:",
];

/// Finds the last answer phrase (ASCII case-insensitive) and returns the text after it.
fn after_phrase(text: &str) -> Option<&str> {
    let lower = text.to_ascii_lowercase();
    let mut best: Option<(usize, usize)> = None;
    for p in PHRASES {
        if let Some(pos) = lower.rfind(p) {
            let end = pos + p.len();
            if best.is_none_or(|(_, e)| end > e) {
                best = Some((pos, end));
            }
        }
    }
    let (_, end) = best?;
    let mut rest =
        text[end..].trim_start_matches(|c: char| c == ':' || c == '*' || c.is_whitespace());
    rest = rest.strip_prefix("is").map(str::trim_start).unwrap_or(rest);
    rest = rest.trim_start_matches(|c: char| c == ':' || c == '*' || c.is_whitespace());
    if let Some(b) = crate::text::last_boxed(rest) {
        return Some(b);
    }
    let line = rest.split('\n').next().unwrap_or("");
    // $...$ or \(...\) right after the phrase
    for (o, c) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
        if let Some(inner) = line.strip_prefix(o) {
            // the closing delimiter, skipping escaped `\$`
            let e = inner
                .match_indices(c)
                .map(|(i, _)| i)
                .find(|&i| c != "$" || !inner[..i].ends_with('\\'));
            if let Some(e) = e {
                return Some(inner[..e].trim()).filter(|s| !s.is_empty());
            }
        }
    }
    let mut cut = line.len();
    for stop in [". ", " because", " since", " which", " so ", " as ", "**"] {
        if let Some(p) = line.find(stop) {
            cut = cut.min(p);
        }
    }
    let ans = line[..cut].trim().trim_end_matches('.').trim();
    (!ans.is_empty()).then_some(ans)
}

fn last_number(text: &str) -> Option<&str> {
    let b = text.as_bytes();
    let mut i = b.len();
    while i > 0 {
        i -= 1;
        if b[i].is_ascii_digit() {
            let end = i + 1;
            let mut st = i;
            while st > 0
                && (b[st - 1].is_ascii_digit()
                    || b[st - 1] == b'.'
                    || b[st - 1] == b','
                    || b[st - 1] == b'/')
            {
                st -= 1;
            }
            while st < end && !b[st].is_ascii_digit() {
                st += 1;
            }
            if st > 0 && b[st - 1] == b'-' {
                st -= 1;
            }
            return Some(&text[st..end]);
        }
    }
    None
}

/// Extracts the final answer of a completion, or says why there is none.
pub fn extract_answer(
    completion: &str,
    last_number_fallback: bool,
) -> Result<(&str, Source), String> {
    if let Some((block, _closed)) = crate::text::last_tag_block(completion, "answer") {
        if let Some(b) = crate::text::last_boxed(block) {
            if !b.trim().is_empty() {
                return Ok((b.trim(), Source::BoxedInAnswerTag));
            }
        }
        let t = block.trim();
        if !t.is_empty() {
            if let Some(p) = after_phrase(t) {
                return Ok((p, Source::AnswerTag));
            }
            return Ok((t, Source::AnswerTag));
        }
    }
    if let Some(b) = crate::text::last_boxed(completion) {
        if !b.trim().is_empty() {
            return Ok((b.trim(), Source::Boxed));
        }
    }
    if let Some(p) = after_phrase(completion) {
        return Ok((p, Source::Phrase));
    }
    if last_number_fallback {
        if let Some(n) = last_number(completion) {
            return Ok((n, Source::LastNumber));
        }
    }
    Err(if completion.contains("\\boxed") {
        "unbalanced or empty \\boxed{}".to_string()
    } else if completion.contains("<answer>") {
        "empty <answer> block".to_string()
    } else {
        "no \\boxed{}, <answer> block or answer phrase".to_string()
    })
}

/// The answer part of a reference: after the last `####` (GSM8K), the last `\boxed{}`
/// (MATH solutions), else the whole string.
pub fn extract_reference(reference: &str) -> &str {
    if let Some(p) = reference.rfind("####") {
        return reference[p + 4..].trim();
    }
    if let Some(b) = crate::text::last_boxed(reference) {
        return b.trim();
    }
    reference.trim()
}

/// Comparison options.
#[derive(Clone, Copy, Debug)]
pub struct EquivOptions {
    /// Relative tolerance for decimals and symbolic evaluation.
    pub rel_tol: f64,
}

impl Default for EquivOptions {
    fn default() -> Self {
        EquivOptions { rel_tol: 1e-6 }
    }
}

/// A parsed answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    Math(Node),
    Choice(char),
    Text(String),
}

fn choice_letter(s: &str) -> Option<char> {
    let t = s.trim();
    let t = t
        .strip_prefix("Option")
        .or_else(|| t.strip_prefix("option"))
        .unwrap_or(t)
        .trim();
    let b = t.as_bytes();
    let (letter, rest) = if b.first() == Some(&b'(') && b.len() >= 3 && b[2] == b')' {
        (b[1], &t[3..])
    } else if !b.is_empty() && b[0].is_ascii() {
        (b[0], &t[1..])
    } else {
        return None;
    };
    if !(b'A'..=b'J').contains(&letter) {
        return None;
    }
    let rest = rest.trim_start_matches(')');
    if rest.is_empty() || rest.starts_with([' ', ':', '.', ',']) {
        Some(letter as char)
    } else {
        None
    }
}

fn text_key(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '{' && *c != '}' && *c != '\\')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Parses a (normalised) answer string.
pub fn parse_answer(raw: &str) -> Answer {
    let n = normalize::normalize(raw);
    if let Some(node) = parse::parse(&n) {
        return Answer::Math(node);
    }
    Answer::Text(text_key(&n))
}

fn close(x: C, y: C, tol: f64) -> bool {
    if !x.is_finite() || !y.is_finite() {
        return x.re == y.re && x.im == y.im && !x.re.is_nan();
    }
    let d = x.sub(y).abs();
    d <= tol * x.abs().max(y.abs()) || d <= 1e-12
}

/// Evaluation points: deterministic, irrational-looking, positive (avoids branch cuts).
fn point(var: usize, k: usize) -> f64 {
    let h = ((var as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (k as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
    .rotate_left(29)
    .wrapping_mul(0x1656_67B1_9E37_79F9);
    0.35 + 2.3 * ((h >> 11) as f64 / (1u64 << 53) as f64)
}

fn scalar_equiv(a: &Node, b: &Node, o: &EquivOptions) -> bool {
    let mut vs = Vec::new();
    vars(a, &mut vs);
    vars(b, &mut vs);
    if vs.is_empty() {
        let (x, y) = match (eval(a, &[]), eval(b, &[])) {
            (Some(x), Some(y)) => (x, y),
            _ => return false,
        };
        if let (Some(p), Some(q)) = (x.q, y.q) {
            if !has_decimal(a) && !has_decimal(b) {
                return p == q;
            }
        }
        return close(x.c, y.c, o.rel_tol);
    }
    if vs.len() > 8 {
        return false;
    }
    let mut ok = 0;
    let mut env: Vec<(String, C)> = vs.iter().map(|v| (v.clone(), C::real(0.0))).collect();
    for k in 0..8 {
        for (j, e) in env.iter_mut().enumerate() {
            e.1 = C::real(point(j, k));
        }
        let (x, y) = match (eval(a, &env), eval(b, &env)) {
            (Some(x), Some(y)) => (x.c, y.c),
            _ => return false,
        };
        if !x.is_finite() && !y.is_finite() {
            continue;
        }
        if !close(x, y, o.rel_tol.max(1e-9)) {
            return false;
        }
        ok += 1;
        if ok == 5 {
            break;
        }
    }
    ok >= 3
}

fn is_scalar(n: &Node) -> bool {
    !matches!(
        n,
        Node::Bracket(..)
            | Node::Set(_)
            | Node::List(_)
            | Node::Union(_)
            | Node::Rel(..)
            | Node::EmptySet
            | Node::PlusMinus(..)
    )
}

fn multiset_equiv(a: &[Node], b: &[Node], o: &EquivOptions) -> bool {
    if a.len() != b.len() || a.len() > 64 {
        return false;
    }
    let mut used = vec![false; b.len()];
    'outer: for x in a {
        for (j, y) in b.iter().enumerate() {
            if !used[j] && node_equiv(x, y, o) {
                used[j] = true;
                continue 'outer;
            }
        }
        return false;
    }
    true
}

fn expand_pm(n: &Node) -> Option<Vec<Node>> {
    if let Node::PlusMinus(a, b) = n {
        Some(vec![
            Node::Add(a.clone(), b.clone()),
            Node::Sub(a.clone(), b.clone()),
        ])
    } else {
        None
    }
}

fn eq_sides(n: &Node) -> Option<&[Node]> {
    match n {
        Node::Rel(sides, rels) if rels.iter().all(|r| *r == Rel::Eq) => Some(sides),
        _ => None,
    }
}

fn flip(r: Rel) -> Rel {
    match r {
        Rel::Lt => Rel::Gt,
        Rel::Gt => Rel::Lt,
        Rel::Le => Rel::Ge,
        Rel::Ge => Rel::Le,
        x => x,
    }
}

/// Structural / numeric equivalence of two parsed answers (`a` predicted, `b` reference).
pub fn node_equiv(a: &Node, b: &Node, o: &EquivOptions) -> bool {
    use Node::*;
    match (a, b) {
        (Rel(ps, pr), Rel(rs, rr)) => {
            if pr.len() == 1 && rr.len() == 1 && pr[0] == parse::Rel::Eq && rr[0] == parse::Rel::Eq
            {
                if let (Var(x), Var(y)) = (&ps[0], &rs[0]) {
                    if x == y {
                        return node_equiv(&ps[1], &rs[1], o);
                    }
                }
                // same equation up to a non-zero factor: (l1 - r1) = k (l2 - r2)
                return proportional(
                    &Sub(Box::new(ps[0].clone()), Box::new(ps[1].clone())),
                    &Sub(Box::new(rs[0].clone()), Box::new(rs[1].clone())),
                    o,
                );
            }
            if pr.len() != rr.len() {
                return false;
            }
            let same = pr == rr && ps.iter().zip(rs).all(|(x, y)| node_equiv(x, y, o));
            let rev = pr.iter().rev().map(|r| flip(*r)).eq(rr.iter().copied())
                && ps.iter().rev().zip(rs).all(|(x, y)| node_equiv(x, y, o));
            same || rev
        }
        (Rel(..), _) => {
            // "x = 5" or "6/2 = 3" against "3": the last side (or the first, for "5 = x")
            match eq_sides(a) {
                Some(s) => {
                    let last = s.last().unwrap();
                    if matches!(last, Var(_)) && s.len() == 2 {
                        node_equiv(&s[0], b, o)
                    } else {
                        node_equiv(last, b, o)
                    }
                }
                None => false,
            }
        }
        (_, Rel(rs, rr)) => {
            rr.len() == 1
                && rr[0] == parse::Rel::Eq
                && matches!(rs[0], Var(_))
                && node_equiv(a, &rs[1], o)
        }
        (PlusMinus(..), _) => match b {
            Set(items) | List(items) => multiset_equiv(&expand_pm(a).unwrap(), items, o),
            PlusMinus(..) => multiset_equiv(&expand_pm(a).unwrap(), &expand_pm(b).unwrap(), o),
            _ => false,
        },
        (Set(items) | List(items), PlusMinus(..)) => {
            multiset_equiv(items, &expand_pm(b).unwrap(), o)
        }
        (Bracket(o1, c1, x), Bracket(o2, c2, y)) => {
            o1 == o2
                && c1 == c2
                && x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| node_equiv(p, q, o))
        }
        (Set(x) | List(x), Set(y) | List(y)) => multiset_equiv(x, y, o),
        (Union(x), Union(y)) => multiset_equiv(x, y, o),
        (EmptySet, EmptySet) => true,
        (Set(x), y) if x.len() == 1 && is_scalar(y) => node_equiv(&x[0], y, o),
        (x, Set(y)) if y.len() == 1 && is_scalar(x) => node_equiv(x, &y[0], o),
        _ if is_scalar(a) && is_scalar(b) => scalar_equiv(a, b, o),
        _ => false,
    }
}

fn proportional(a: &Node, b: &Node, o: &EquivOptions) -> bool {
    let mut vs = Vec::new();
    vars(a, &mut vs);
    vars(b, &mut vs);
    if vs.is_empty() || vs.len() > 8 {
        return false;
    }
    let mut env: Vec<(String, C)> = vs.iter().map(|v| (v.clone(), C::real(0.0))).collect();
    let mut ratio: Option<C> = None;
    let mut ok = 0;
    for k in 0..8 {
        for (j, e) in env.iter_mut().enumerate() {
            e.1 = C::real(point(j, k));
        }
        let (x, y) = match (eval(a, &env), eval(b, &env)) {
            (Some(x), Some(y)) => (x.c, y.c),
            _ => return false,
        };
        if !x.is_finite() || !y.is_finite() || y.abs() < 1e-12 {
            if x.abs() < 1e-12 && y.abs() < 1e-12 {
                continue;
            }
            return false;
        }
        let r = x.div(y);
        match ratio {
            None => ratio = Some(r),
            Some(r0) => {
                if !close(r, r0, o.rel_tol.max(1e-9)) {
                    return false;
                }
            }
        }
        ok += 1;
    }
    ok >= 3 && ratio.is_some_and(|r| r.abs() > 1e-12)
}

/// Result of comparing a predicted answer with a reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Correct,
    Wrong,
    /// The reference could not be parsed (the reason is given).
    UnparseableReference(String),
}

fn looks_mathy(s: &str) -> bool {
    s.is_empty()
        || s.bytes().any(|c| {
            matches!(
                c,
                b'\\' | b'^' | b'_' | b'{' | b'}' | b'=' | b'+' | b'*' | b'/'
            )
        })
        || s.bytes().any(|c| c.is_ascii_digit())
}

/// Compares a predicted answer string with a reference answer string (both already
/// extracted).
pub fn equivalent(pred: &str, reference: &str, o: &EquivOptions) -> Verdict {
    let rn = normalize::normalize(reference);
    if let Some(letter) = choice_letter(&rn) {
        if rn.trim_start_matches('(').trim_end_matches(')').len() == 1 {
            let pn = normalize::normalize(pred);
            return if choice_letter(&pn) == Some(letter) {
                Verdict::Correct
            } else {
                Verdict::Wrong
            };
        }
    }
    let rnode = parse::parse(&rn);
    let pn = normalize::normalize(pred);
    match rnode {
        Some(r) => {
            if let Some(p) = parse::parse(&pn) {
                if node_equiv(&p, &r, o) {
                    return Verdict::Correct;
                }
                return Verdict::Wrong;
            }
            if text_key(&pn) == text_key(&rn) {
                Verdict::Correct
            } else {
                Verdict::Wrong
            }
        }
        None => {
            let eq = text_key(&pn) == text_key(&rn);
            if looks_mathy(&rn) && !eq {
                return Verdict::UnparseableReference(format!(
                    "cannot parse reference `{}`",
                    truncate(reference, 80)
                ));
            }
            if eq {
                Verdict::Correct
            } else {
                Verdict::Wrong
            }
        }
    }
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether a completion's final answer matches the reference (extraction + equivalence).
pub fn grade(
    completion: &str,
    reference: &str,
    last_number_fallback: bool,
    o: &EquivOptions,
) -> Result<Verdict, String> {
    let (ans, _) = extract_answer(completion, last_number_fallback)?;
    Ok(equivalent(ans, extract_reference(reference), o))
}
