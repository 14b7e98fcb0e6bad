//! Math answers: extraction from completions and references, and equivalence.
//!
//! * [`extract_answer`]: the last `\boxed{...}` / `\fbox{...}` inside the last
//!   `<answer>` block, else that block's content (or the answer phrase inside it), else
//!   the last `\boxed{}` anywhere, else an explicit phrase ("the answer is", "final
//!   answer:"), else (optionally) the last number. Boxes separated only by commas,
//!   `and`/`or` or spacing (`\boxed{1}\boxed{2}`) are one answer, a list.
//! * [`extract_reference`]: GSM8K `#### 72`, a `\boxed{}` in a MATH solution, or the
//!   whole string.
//! * [`equivalent`]: reduces a sentence to the value it states ("The largest $n$ is
//!   34."), normalises LaTeX and compares numbers (exact rationals, decimals with a
//!   relative tolerance, a decimal comma against a single number), symbolic expressions
//!   (random-point evaluation), tuples and intervals (ordered, brackets matter), sets
//!   (unordered), labelled answers (`AB=4, CD=5`), multiple-choice letters, equations
//!   (`x=5` against `5`, the last value of a chain), inequalities (up to a positive
//!   factor, or against the interval they describe), one-word answers (case-insensitive)
//!   and, last, normalised text.

pub mod eval;
pub mod normalize;
pub mod num;
pub mod parse;

use eval::{eval, has_decimal, vars};
use num::C;
use parse::Rel as Rl;
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

const PHRASES: &[&str] = &["final answer is", "final answer:", "final answer", "the answer is", "answer is", "answer:"];

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
    let mut rest = text[end..].trim_start_matches(|c: char| c == ':' || c == '*' || c.is_whitespace());
    rest = rest.strip_prefix("is").map(str::trim_start).unwrap_or(rest);
    rest = rest.trim_start_matches(|c: char| c == ':' || c == '*' || c.is_whitespace());
    if let Some(b) = boxed_group(rest) {
        return Some(b);
    }
    let line = rest.split('\n').next().unwrap_or("");
    // $...$ or \(...\) right after the phrase
    for (o, c) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
        if let Some(inner) = line.strip_prefix(o) {
            // the closing delimiter, skipping escaped `\$`
            let e = inner.match_indices(c).map(|(i, _)| i).find(|&i| c != "$" || !inner[..i].ends_with('\\'));
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
            while st > 0 && (b[st - 1].is_ascii_digit() || b[st - 1] == b'.' || b[st - 1] == b',' || b[st - 1] == b'/') {
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

/// The last `\boxed{}` of `text` (as [`crate::text::last_boxed`]) together with the boxes
/// right before it that are separated from it only by commas, `and`/`or` or spacing
/// (`\boxed{1}, \boxed{2}`): then the raw span from the first box to the end of the last
/// (normalisation reads it as a list, compared as a whole). One box, or several with the
/// same content: its content.
fn boxed_group(text: &str) -> Option<&str> {
    let last = crate::text::last_boxed(text)?;
    let base = text.as_ptr() as usize;
    let inner_start = last.as_ptr() as usize - base;
    let inner_end = inner_start + last.len();
    if !text[inner_end..].starts_with('}') {
        return Some(last); // `\boxed 5`
    }
    // where the box whose content starts at `inner` begins: `\boxed{`, `\boxed {`, `\fbox{`
    let box_start = |inner: usize| {
        let head = text[..inner].trim_end_matches('{').trim_end();
        if head.ends_with("\\boxed") {
            head.len() - 6
        } else if head.ends_with("\\fbox") {
            head.len() - 5
        } else {
            inner
        }
    };
    let first = box_start(inner_start);
    let mut start = first;
    let mut all_same = true;
    for _ in 0..16 {
        // quick reject: the text before the group must end with `}` after separators
        let head = text[..start].trim_end_matches(|c: char| c.is_whitespace() || matches!(c, '$' | ',' | ';' | '.' | '(' | ')' | '\\'));
        if !head.ends_with('}') && !head.ends_with("and") && !head.ends_with("or") && !head.ends_with("quad") {
            break;
        }
        let Some(prev) = crate::text::last_boxed(&text[..start]) else {
            break;
        };
        let p_start = prev.as_ptr() as usize - base;
        let p_end = p_start + prev.len();
        if !text[p_end..].starts_with('}') || normalize::box_gap(&text[p_end + 1..start]).is_none() {
            break;
        }
        all_same &= prev.trim() == last.trim();
        start = box_start(p_start);
    }
    if start == first || all_same {
        return Some(last);
    }
    Some(&text[start..=inner_end])
}

/// Extracts the final answer of a completion, or says why there is none.
pub fn extract_answer(completion: &str, last_number_fallback: bool) -> Result<(&str, Source), String> {
    if let Some((block, _closed)) = crate::text::last_tag_block(completion, "answer") {
        if let Some(b) = boxed_group(block) {
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
    if let Some(b) = boxed_group(completion) {
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
    let t = t.strip_prefix("Option").or_else(|| t.strip_prefix("option")).unwrap_or(t).trim();
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
    s.chars().filter(|c| !c.is_whitespace() && *c != '{' && *c != '}' && *c != '\\').flat_map(char::to_lowercase).collect()
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
    let h = ((var as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (k as u64 + 1).wrapping_mul(0xC2B2_AE3D_27D4_EB4F))
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
    !matches!(n, Node::Bracket(..) | Node::Set(_) | Node::List(_) | Node::Union(_) | Node::Rel(..) | Node::EmptySet | Node::PlusMinus(..))
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
        Some(vec![Node::Add(a.clone(), b.clone()), Node::Sub(a.clone(), b.clone())])
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

/// `lhs = a \pm b` -> the two equations `lhs = a+b`, `lhs = a-b` (`W(x) = \pm 1`).
fn expand_rel_pm(n: &Node) -> Option<Node> {
    if let Node::Rel(sides, rels) = n {
        if rels.len() == 1 && rels[0] == Rel::Eq {
            let pm = expand_pm(&sides[1])?;
            return Some(Node::List(pm.into_iter().map(|v| Node::Rel(vec![sides[0].clone(), v], vec![Rel::Eq])).collect()));
        }
    }
    None
}

/// A number without variables (`3`, `\frac{1}{\sqrt{6}}`, `-\infty`).
fn is_constant(n: &Node) -> bool {
    if !is_scalar(n) {
        return false;
    }
    let mut vs = Vec::new();
    vars(n, &mut vs);
    vs.is_empty()
}

fn open_bracket(strict: bool) -> char {
    if strict {
        '('
    } else {
        '['
    }
}

fn close_bracket(strict: bool) -> char {
    if strict {
        ')'
    } else {
        ']'
    }
}

/// The interval a one-variable inequality describes, with its variable: `x > 3` ->
/// `(3, \infty)`, `1 < x \le 3` -> `(1, 3]`, `x \ne 3` -> `(-\infty, 3) \cup (3, \infty)`;
/// a list of them (`x < -1 or x > 1`) -> their union.
fn rel_interval(n: &Node) -> Option<(&str, Node)> {
    use Node::*;
    let ninf = || Neg(Box::new(Inf));
    match n {
        Rel(s, r) if r.len() == 1 => {
            let (v, c, rel) = match (&s[0], &s[1]) {
                (Var(v), c) if is_constant(c) => (v, c, r[0]),
                (c, Var(v)) if is_constant(c) => (v, c, flip(r[0])),
                _ => return None,
            };
            let c = c.clone();
            let iv = match rel {
                Rl::Lt | Rl::Le => Bracket('(', close_bracket(rel == Rl::Lt), vec![ninf(), c]),
                Rl::Gt | Rl::Ge => Bracket(open_bracket(rel == Rl::Gt), ')', vec![c, Inf]),
                Rl::Ne => Union(vec![Bracket('(', ')', vec![ninf(), c.clone()]), Bracket('(', ')', vec![c, Inf])]),
                Rl::Eq => return None,
            };
            Some((v, iv))
        }
        Rel(s, r) if r.len() == 2 => {
            let Var(v) = &s[1] else { return None };
            if !is_constant(&s[0]) || !is_constant(&s[2]) {
                return None;
            }
            let lt = |r: Rl| matches!(r, Rl::Lt | Rl::Le);
            let gt = |r: Rl| matches!(r, Rl::Gt | Rl::Ge);
            let iv = if lt(r[0]) && lt(r[1]) {
                Bracket(open_bracket(r[0] == Rl::Lt), close_bracket(r[1] == Rl::Lt), vec![s[0].clone(), s[2].clone()])
            } else if gt(r[0]) && gt(r[1]) {
                Bracket(open_bracket(r[1] == Rl::Gt), close_bracket(r[0] == Rl::Gt), vec![s[2].clone(), s[0].clone()])
            } else {
                return None;
            };
            Some((v, iv))
        }
        List(items) if items.len() <= 16 => {
            let mut var: Option<&str> = None;
            let mut parts = Vec::new();
            for it in items {
                let (v, iv) = rel_interval(it)?;
                if var.is_some_and(|w| w != v) {
                    return None;
                }
                var = Some(v);
                match iv {
                    Union(u) => parts.extend(u),
                    x => parts.push(x),
                }
            }
            Some((var?, Union(parts)))
        }
        _ => None,
    }
}

/// The `(label, value)` pairs of a list whose items are all equations with pairwise
/// different left sides (`AB=4, CD=5`, `x=1, y=2`); `None` for anything else (in
/// particular `x=1, x=2`, a list of solutions).
fn labelled(items: &[Node]) -> Option<Vec<(&Node, &Node)>> {
    if items.len() < 2 || items.len() > 16 {
        return None;
    }
    let pairs: Vec<(&Node, &Node)> = items
        .iter()
        .map(|n| match n {
            Node::Rel(s, r) if r.len() == 1 && r[0] == Rel::Eq => Some((&s[0], &s[1])),
            _ => None,
        })
        .collect::<Option<_>>()?;
    for (i, (k, _)) in pairs.iter().enumerate() {
        if pairs[..i].iter().any(|(j, _)| j == k) {
            return None;
        }
    }
    Some(pairs)
}

fn pairwise_equiv<'a>(a: impl ExactSizeIterator<Item = &'a Node>, b: impl ExactSizeIterator<Item = &'a Node>, o: &EquivOptions) -> bool {
    a.len() == b.len() && a.zip(b).all(|(x, y)| node_equiv(x, y, o))
}

/// Two bare lists. Labelled answers keep their order against unlabelled ones
/// (`AB=4, CD=5` against `4, 5`, not against `5, 4`) and are matched by label against
/// labelled ones (the labels must be the same); everything else is compared as a
/// multiset ("all solutions").
fn list_equiv(x: &[Node], y: &[Node], o: &EquivOptions) -> bool {
    match (labelled(x), labelled(y)) {
        (Some(lx), Some(ly)) => {
            lx.len() == ly.len() && lx.iter().all(|(k, v)| ly.iter().find(|(j, _)| j == k).is_some_and(|(_, w)| node_equiv(v, w, o)))
        }
        (Some(lx), None) => pairwise_equiv(lx.iter().map(|p| p.1), y.iter(), o),
        (None, Some(ly)) => pairwise_equiv(x.iter(), ly.iter().map(|p| p.1), o),
        (None, None) => multiset_equiv(x, y, o),
    }
}

/// `l1 R1 r1` against `l2 R2 r2` (and chains).
fn rel_equiv(ps: &[Node], pr: &[Rel], rs: &[Node], rr: &[Rel], o: &EquivOptions) -> bool {
    use Node::*;
    if pr.len() == 1 && rr.len() == 1 {
        let (p, r) = (pr[0], rr[0]);
        let diff = |s: &[Node]| Sub(Box::new(s[0].clone()), Box::new(s[1].clone()));
        if matches!(p, Rl::Eq | Rl::Ne) || matches!(r, Rl::Eq | Rl::Ne) {
            if p != r {
                return false;
            }
            // the same label: compare the values (`x = 5`, `(p, q) = (3, 2)`)
            if ps[0] == rs[0] && is_label(&ps[0]) {
                return node_equiv(&ps[1], &rs[1], o);
            }
            if p == Rl::Ne && rel_equiv_structural(ps, pr, rs, rr, o) {
                return true;
            }
            // the same equation up to a non-zero factor: (l1 - r1) = k (l2 - r2)
            return ratio(&diff(ps), &diff(rs), o).is_some_and(|k| k.abs() > 1e-12);
        }
        // inequalities as `e < 0` or `e <= 0`: the same up to a positive factor
        let canon = |s: &[Node], r: Rl| match r {
            Rl::Lt | Rl::Le => (diff(s), r == Rl::Lt),
            _ => (Sub(Box::new(s[1].clone()), Box::new(s[0].clone())), r == Rl::Gt),
        };
        let ((e1, strict1), (e2, strict2)) = (canon(ps, p), canon(rs, r));
        if strict1 != strict2 {
            return false;
        }
        if rel_equiv_structural(ps, pr, rs, rr, o) {
            return true;
        }
        return ratio(&e1, &e2, o).is_some_and(|k| k.re > 1e-12 && k.im.abs() <= 1e-9 * k.re);
    }
    rel_equiv_structural(ps, pr, rs, rr, o)
}

/// Side by side, or reversed with flipped relations (`1 < x < 3` = `3 > x > 1`).
fn rel_equiv_structural(ps: &[Node], pr: &[Rel], rs: &[Node], rr: &[Rel], o: &EquivOptions) -> bool {
    if pr.len() != rr.len() {
        return false;
    }
    let same = pr == rr && ps.iter().zip(rs).all(|(x, y)| node_equiv(x, y, o));
    same || (pr.iter().rev().map(|r| flip(*r)).eq(rr.iter().copied()) && ps.iter().rev().zip(rs).all(|(x, y)| node_equiv(x, y, o)))
}

/// The left side of a reference written `label = value`: a variable (`x`), a product
/// or ratio of variables (`AB`, `\frac{NO}{BO}`), a tuple of variables (`(p, q)`) or a
/// function value (`f(x)`).
fn is_label(n: &Node) -> bool {
    match n {
        Node::Var(_) => true,
        Node::Mul(a, b) | Node::Div(a, b) => is_label(a) && is_label(b),
        Node::Bracket('(', ')', items) => items.iter().all(|i| matches!(i, Node::Var(_))),
        _ => false,
    }
}

/// A relation `a` against a value `b` (not a relation): an inequality against the
/// interval it describes (`x > 3` against `(3, \infty)`), else a labelled value or a chain
/// (`x = 5`, `(p,q) = (3,2)`, `x = 5+5+1 = 11`: the last side; `5 = x`: the first).
fn rel_value_equiv(a: &Node, b: &Node, o: &EquivOptions) -> bool {
    if matches!(b, Node::Bracket(..) | Node::Union(..)) {
        if let Some((_, iv)) = rel_interval(a) {
            return node_equiv(&iv, b, o);
        }
    }
    match eq_sides(a) {
        Some(s) => {
            let last = s.last().unwrap();
            if matches!(last, Node::Var(_)) && s.len() == 2 {
                node_equiv(&s[0], b, o)
            } else {
                node_equiv(last, b, o)
            }
        }
        None => false,
    }
}

/// Structural / numeric equivalence of two parsed answers (`a` predicted, `b` reference).
pub fn node_equiv(a: &Node, b: &Node, o: &EquivOptions) -> bool {
    use Node::*;
    if let Some(x) = expand_rel_pm(a) {
        return node_equiv(&x, b, o);
    }
    if let Some(y) = expand_rel_pm(b) {
        return node_equiv(a, &y, o);
    }
    match (a, b) {
        (Rel(ps, pr), Rel(rs, rr)) => rel_equiv(ps, pr, rs, rr, o),
        (Rel(..), _) => rel_value_equiv(a, b, o),
        (_, Rel(rs, rr)) => {
            if matches!(a, Bracket(..) | Union(..)) {
                if let Some((_, iv)) = rel_interval(b) {
                    return node_equiv(a, &iv, o);
                }
            }
            // "5" against "x = 5", "(3,2)" against "(p,q) = (3,2)"
            rr.len() == 1 && rr[0] == parse::Rel::Eq && is_label(&rs[0]) && node_equiv(a, &rs[1], o)
        }
        // labelled coordinates against a point: `x=1, y=2` against `(1, 2)`
        (List(x), Bracket('(', ')', y)) => labelled(x).is_some_and(|l| pairwise_equiv(l.iter().map(|p| p.1), y.iter(), o)),
        (Bracket('(', ')', x), List(y)) => labelled(y).is_some_and(|l| pairwise_equiv(x.iter(), l.iter().map(|p| p.1), o)),
        // `x < -1 or x > 1` against a union of intervals
        (List(_), Union(_)) => rel_interval(a).is_some_and(|(_, iv)| node_equiv(&iv, b, o)),
        (Union(_), List(_)) => rel_interval(b).is_some_and(|(_, iv)| node_equiv(a, &iv, o)),
        (PlusMinus(..), _) => match b {
            Set(items) | List(items) => multiset_equiv(&expand_pm(a).unwrap(), items, o),
            PlusMinus(..) => multiset_equiv(&expand_pm(a).unwrap(), &expand_pm(b).unwrap(), o),
            _ => false,
        },
        (Set(items) | List(items), PlusMinus(..)) => multiset_equiv(items, &expand_pm(b).unwrap(), o),
        (Bracket(o1, c1, x), Bracket(o2, c2, y)) => {
            o1 == o2 && c1 == c2 && x.len() == y.len() && x.iter().zip(y).all(|(p, q)| node_equiv(p, q, o))
        }
        (List(x), List(y)) => list_equiv(x, y, o),
        (Set(x) | List(x), Set(y) | List(y)) => multiset_equiv(x, y, o),
        (Union(x), Union(y)) => multiset_equiv(x, y, o),
        (EmptySet, EmptySet) => true,
        (Set(x), y) if x.len() == 1 && is_scalar(y) => node_equiv(&x[0], y, o),
        (x, Set(y)) if y.len() == 1 && is_scalar(x) => node_equiv(x, &y[0], o),
        _ if is_scalar(a) && is_scalar(b) => scalar_equiv(a, b, o),
        _ => false,
    }
}

/// The constant `k` with `a = k b` at every evaluation point (`None` when there is
/// none, or no variable).
fn ratio(a: &Node, b: &Node, o: &EquivOptions) -> Option<C> {
    let mut vs = Vec::new();
    vars(a, &mut vs);
    vars(b, &mut vs);
    if vs.is_empty() || vs.len() > 8 {
        return None;
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
            _ => return None,
        };
        if !x.is_finite() || !y.is_finite() || y.abs() < 1e-12 {
            if x.abs() < 1e-12 && y.abs() < 1e-12 {
                continue;
            }
            return None;
        }
        let r = x.div(y);
        match ratio {
            None => ratio = Some(r),
            Some(r0) => {
                if !close(r, r0, o.rel_tol.max(1e-9)) {
                    return None;
                }
            }
        }
        ok += 1;
    }
    if ok >= 3 {
        ratio
    } else {
        None
    }
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
        || s.bytes().any(|c| matches!(c, b'\\' | b'^' | b'_' | b'{' | b'}' | b'=' | b'+' | b'*' | b'/'))
        || s.bytes().any(|c| c.is_ascii_digit())
}

/// Copulas after which prose gives its value: "the largest $n$ is 34".
const COPULAS: &[&str] = &[" is ", " are ", " equals ", " was ", " be ", " is: "];

/// Whether an answer reads as a sentence rather than a bare value.
fn looks_like_prose(raw: &str) -> bool {
    if !raw.contains(' ') {
        return false;
    }
    let l = raw.to_ascii_lowercase();
    COPULAS.iter().any(|c| l.contains(c)) || ["answer", "therefore", "thus", "hence", "so ", "we get", "the "].iter().any(|w| l.contains(w))
}

fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphabetic()).any(|w| w.eq_ignore_ascii_case(word))
}

/// `(inner_start, inner_end, span_start, span_end)` of the math spans `$...$`, `$$...$$`,
/// `\(...\)`, `\[...\]` of `t` (at most 5; `\$` is not a delimiter).
fn math_spans(t: &str) -> Vec<(usize, usize, usize, usize)> {
    let mut out = Vec::new();
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() && out.len() < 5 {
        let (open, close): (&str, &str) = if b[i..].starts_with(b"$$") {
            ("$$", "$$")
        } else if b[i] == b'$' && (i == 0 || b[i - 1] != b'\\') {
            ("$", "$")
        } else if b[i..].starts_with(b"\\(") {
            ("\\(", "\\)")
        } else if b[i..].starts_with(b"\\[") {
            ("\\[", "\\]")
        } else {
            i += 1;
            continue;
        };
        let from = i + open.len();
        let end = t[from..].match_indices(close).map(|(k, _)| from + k).find(|&k| close != "$" || b[k - 1] != b'\\');
        let Some(end) = end else { break };
        out.push((from, end, i, end + close.len()));
        i = end + close.len();
    }
    out
}

/// The content of the only math span of `t`, when the text around it is prose without
/// digits or alternatives ("Therefore, $9$."; not "$3$, or maybe 4").
fn single_math_span(t: &str) -> Option<&str> {
    let spans = math_spans(t);
    let [(a, b, s, e)] = spans[..] else {
        return None;
    };
    let outside = format!("{} {}", &t[..s], &t[e..]);
    if outside.bytes().any(|c| c.is_ascii_digit()) || has_word(&outside, "or") {
        return None;
    }
    Some(&t[a..b])
}

fn strip_prefix_ci<'a>(t: &'a str, p: &str) -> Option<&'a str> {
    (t.len() >= p.len() && t.is_char_boundary(p.len()) && t[..p.len()].eq_ignore_ascii_case(p)).then(|| &t[p.len()..])
}

/// The value stated by a sentence: after an answer phrase ("Final Answer: 9"), after the
/// last copula ("The largest $n$ is 34."), or the only math span ("Answer $ 9 $"). Text
/// offering alternatives before the copula ("either", "or") gives nothing.
fn strip_prose(raw: &str) -> Option<String> {
    let unwrapped = normalize::unwrap_text_cmds(raw);
    let mut t = unwrapped.trim().trim_matches('*').trim();
    if let Some(p) = after_phrase(t) {
        t = p;
    } else if let Some(r) = strip_prefix_ci(t, "final answer").or_else(|| strip_prefix_ci(t, "answer")) {
        t = r.trim_start_matches(|c: char| c == ':' || c == '*' || c.is_whitespace());
    }
    let parses = |v: &str| parse::parse(&normalize::normalize(v)).is_some();
    let lower = t.to_ascii_lowercase();
    let copula = COPULAS.iter().filter_map(|c| lower.rfind(c).map(|p| (p, c.len()))).max_by_key(|(p, l)| p + l);
    if let Some((p, l)) = copula {
        let before = &lower[..p];
        if !has_word(before, "or") && !has_word(before, "either") {
            let v = t[p + l..].trim();
            if parses(v) || is_word(&normalize::normalize(v)) {
                return Some(v.to_string());
            }
            if let Some(span) = single_math_span(v) {
                return Some(span.to_string());
            }
        }
        return None;
    }
    if let Some(span) = single_math_span(t) {
        return Some(span.to_string());
    }
    parses(t).then(|| t.to_string())
}

/// A one-word answer (`odd`, `Yes`, `neither`): ASCII letters only, at least two.
fn is_word(n: &str) -> bool {
    n.len() >= 2 && n.bytes().all(|c| c.is_ascii_alphabetic())
}

/// An answer's normalised text and parse. A sentence is reduced to the value it states
/// ([`strip_prose`]) when that value parses or is one word.
fn read_answer(raw: &str, n: String) -> (String, Option<parse::Node>) {
    let prose = looks_like_prose(raw);
    if !prose {
        if let Some(node) = parse::parse(&n) {
            return (n, Some(node));
        }
    }
    if raw.len() <= normalize::MAX_INPUT {
        if let Some(v) = strip_prose(raw) {
            let vn = normalize::normalize(&v);
            if let Some(node) = parse::parse(&vn) {
                return (vn, Some(node));
            }
            if is_word(&vn) {
                return (vn, None);
            }
        }
    }
    let node = if prose { parse::parse(&n) } else { None };
    (n, node)
}

/// `1,22` -> `1.22`: one comma between digits, no space, not followed by exactly three
/// digits (that is a thousands separator, already removed by normalisation).
fn decimal_comma(n: &str) -> Option<String> {
    let body = n.strip_prefix('-').unwrap_or(n);
    let (a, b) = body.split_once(',')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    (digits(a) && digits(b) && b.len() != 3).then(|| n.replacen(',', ".", 1))
}

/// A two-item list written `1,22` is read as the decimal `1.22` when the other side is a
/// single number (see the README: a list `1, 22` with a space, or against a list, stays
/// a list).
fn reread_decimal_comma(text: &str, node: &mut Option<parse::Node>, other: &Option<parse::Node>) {
    if let (Some(parse::Node::List(items)), Some(o)) = (node.as_ref(), other) {
        if items.len() == 2 && is_constant(o) {
            if let Some(d) = decimal_comma(text) {
                if let Some(n) = parse::parse(&d) {
                    *node = Some(n);
                }
            }
        }
    }
}

/// An extracted reference answer as the grader reads it.
enum Reference {
    /// A lone multiple-choice letter (`B`, `(B)`, `Option B`).
    Choice(char),
    /// Its normalised text and parse (`None`: it did not parse).
    Value(String, Option<parse::Node>),
}

fn read_reference(reference: &str) -> Reference {
    let rn = normalize::normalize(reference);
    if let Some(letter) = choice_letter(&rn) {
        if rn.trim_start_matches('(').trim_end_matches(')').len() == 1 {
            return Reference::Choice(letter);
        }
    }
    let (rn, node) = read_answer(reference, rn);
    Reference::Value(rn, node)
}

/// Compares a predicted answer string with a reference answer string (both already
/// extracted).
pub fn equivalent(pred: &str, reference: &str, o: &EquivOptions) -> Verdict {
    let (rn, mut rnode) = match read_reference(reference) {
        Reference::Choice(letter) => {
            let pn = normalize::normalize(pred);
            return if choice_letter(&pn) == Some(letter) { Verdict::Correct } else { Verdict::Wrong };
        }
        Reference::Value(rn, node) => (rn, node),
    };
    let (pn, mut pnode) = read_answer(pred, normalize::normalize(pred));
    // one-word answers: case does not matter, letters are not reordered (`yes` != `sey`)
    if is_word(&pn) && is_word(&rn) {
        if pn.eq_ignore_ascii_case(&rn) {
            return Verdict::Correct;
        }
        if pn.len() >= 3 || rn.len() >= 3 {
            return Verdict::Wrong;
        }
    }
    if pn.contains(',') || rn.contains(',') {
        let p0 = pnode.clone();
        reread_decimal_comma(&pn, &mut pnode, &rnode);
        reread_decimal_comma(&rn, &mut rnode, &p0);
    }
    match rnode {
        Some(r) => {
            if let Some(p) = pnode {
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
                return Verdict::UnparseableReference(format!("cannot parse reference `{}`", truncate(reference, 80)));
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

/// Whether a dataset's reference answer can be graded: `Err` says why not (empty, or a
/// mathematical-looking value the parser cannot read). Run on every row before training so
/// a data problem is reported with its line instead of scoring every sample 0.
pub fn check_reference(reference: &str) -> Result<(), String> {
    let r = extract_reference(reference);
    if r.is_empty() {
        return Err(if reference.trim().is_empty() {
            "empty reference answer".into()
        } else {
            format!("empty reference answer after extraction from `{}`", truncate(reference.trim(), 60))
        });
    }
    // The same reading `equivalent` grades with: an unparsed value that looks mathematical
    // would make it return `UnparseableReference` for every completion.
    match read_reference(r) {
        Reference::Value(rn, None) if looks_mathy(&rn) => Err(format!("cannot parse the reference answer `{}`", truncate(r, 80))),
        _ => Ok(()),
    }
}

/// Whether a completion's final answer matches the reference (extraction + equivalence).
pub fn grade(completion: &str, reference: &str, last_number_fallback: bool, o: &EquivOptions) -> Result<Verdict, String> {
    let (ans, _) = extract_answer(completion, last_number_fallback)?;
    Ok(equivalent(ans, extract_reference(reference), o))
}
