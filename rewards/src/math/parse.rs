//! Tokenizer and recursive-descent parser for LaTeX / plain-text math answers.

use super::num::Q;

#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// A number literal: its text, exact value, and whether it had a decimal point / exponent.
    Num(String),
    Ident(String),
    Func(String),
    Cmd(String),
    Op(char),
    Open(char),
    Close(char),
    SetOpen,
    SetClose,
}

const FUNCS: &[&str] =
    &["sin", "cos", "tan", "cot", "sec", "csc", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "log", "ln", "exp", "lg"];
const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Sigma",
    "Phi",
    "Psi",
    "Omega",
];

pub const MAX_LEN: usize = 400;
const MAX_DEPTH: usize = 64;

/// Tokenizes; `None` when the text contains something we do not understand.
pub fn tokenize(s: &str) -> Option<Vec<(Tok, bool)>> {
    let b = s.as_bytes();
    let mut out: Vec<(Tok, bool)> = Vec::new();
    let mut i = 0;
    let mut space = false;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            space = true;
            i += 1;
            continue;
        }
        let sp = space;
        space = false;
        if c.is_ascii_digit() || (c == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit()) {
            let st = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i < b.len() && b[i] == b'.' && i + 1 < b.len() && b[i + 1].is_ascii_digit() {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            } else if i < b.len() && b[i] == b'.' && (i + 1 == b.len() || !b[i + 1].is_ascii_alphabetic()) {
                // "5." trailing point
                i += 1;
            }
            // scientific notation: 1.5e-3, 2E10 (digits must follow)
            if i + 1 < b.len() && (b[i] == b'e' || b[i] == b'E') {
                let mut j = i + 1;
                if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                    j += 1;
                }
                if j < b.len() && b[j].is_ascii_digit() {
                    while j < b.len() && b[j].is_ascii_digit() {
                        j += 1;
                    }
                    i = j;
                }
            }
            out.push((Tok::Num(s[st..i].trim_end_matches('.').to_string()), sp));
            continue;
        }
        if c.is_ascii_alphabetic() {
            let st = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let w = &s[st..i];
            let lw = w.to_ascii_lowercase();
            if FUNCS.contains(&lw.as_str()) || lw == "sqrt" {
                out.push((Tok::Func(lw), sp));
            } else if lw == "pi" {
                out.push((Tok::Cmd("pi".into()), sp));
            } else if lw == "inf" || lw == "infty" || lw == "infinity" || lw == "oo" {
                out.push((Tok::Cmd("infty".into()), sp));
            } else if lw == "and" || lw == "or" {
                out.push((Tok::Op(','), sp));
            } else if w.len() <= 3 {
                for (k, ch) in w.chars().enumerate() {
                    out.push((Tok::Ident(ch.to_string()), sp && k == 0));
                }
            } else {
                return None;
            }
            continue;
        }
        if c == b'\\' {
            i += 1;
            if i < b.len() && (b[i] == b'{' || b[i] == b'}') {
                out.push((if b[i] == b'{' { Tok::SetOpen } else { Tok::SetClose }, sp));
                i += 1;
                continue;
            }
            if i < b.len() && b[i] == b'|' {
                out.push((Tok::Op('|'), sp));
                i += 1;
                continue;
            }
            let st = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let name = &s[st..i];
            let tok = match name {
                "" => return None,
                "frac" | "sqrt" | "binom" | "pi" | "infty" | "pm" | "mp" | "cup" | "cap" | "emptyset" | "varnothing" | "in" | "neq"
                | "ne" | "approx" => Tok::Cmd(name.to_string()),
                // `W(x) \equiv 1`: an identity, compared as an equation
                "equiv" => Tok::Op('='),
                "cdot" | "times" | "ast" => Tok::Op('*'),
                "div" => Tok::Op('/'),
                "le" | "leq" | "leqslant" => Tok::Op('≤'),
                "ge" | "geq" | "geqslant" => Tok::Op('≥'),
                "lt" => Tok::Op('<'),
                "gt" => Tok::Op('>'),
                "langle" => Tok::Open('('),
                "rangle" => Tok::Close(')'),
                "lfloor" => Tok::Open('⌊'),
                "rfloor" => Tok::Close('⌊'),
                "lceil" => Tok::Open('⌈'),
                "rceil" => Tok::Close('⌈'),
                "lvert" | "rvert" | "vert" | "mid" => Tok::Op('|'),
                "ldots" | "cdots" | "dots" => Tok::Cmd("dots".into()),
                n if FUNCS.contains(&n) => Tok::Func(n.to_string()),
                n if GREEK.contains(&n) => Tok::Ident(n.to_string()),
                _ => return None,
            };
            out.push((tok, sp));
            continue;
        }
        let tok = match c {
            b'+' | b'-' | b'*' | b'/' | b'^' | b'_' | b'!' | b'=' | b'<' | b'>' | b',' | b';' | b'|' => {
                if c == b'!' && b.get(i + 1) == Some(&b'=') && (sp || i == 0 || b[i - 1].is_ascii_alphabetic()) {
                    // `x != 3`, `x!=3` (but `5!=120` is a factorial then `=`)
                    i += 2;
                    out.push((Tok::Cmd("neq".into()), sp));
                    continue;
                } else if c == b'<' && b.get(i + 1) == Some(&b'=') {
                    i += 1;
                    Tok::Op('≤')
                } else if c == b'>' && b.get(i + 1) == Some(&b'=') {
                    i += 1;
                    Tok::Op('≥')
                } else if c == b'*' && b.get(i + 1) == Some(&b'*') {
                    i += 1;
                    Tok::Op('^')
                } else {
                    Tok::Op(c as char)
                }
            }
            b'(' | b'[' | b'{' => Tok::Open(c as char),
            b')' | b']' | b'}' => Tok::Close(c as char),
            b'\'' => return None,
            _ => {
                // non-ASCII: a few symbols, else give up
                let ch = s[i..].chars().next()?;
                let t = match ch {
                    '≤' => Tok::Op('≤'),
                    '≥' => Tok::Op('≥'),
                    '≠' => Tok::Cmd("neq".into()),
                    '·' | '⋅' => Tok::Op('*'),
                    'π' => Tok::Cmd("pi".into()),
                    '∞' => Tok::Cmd("infty".into()),
                    _ => return None,
                };
                i += ch.len_utf8();
                out.push((t, sp));
                continue;
            }
        };
        i += 1;
        out.push((tok, sp));
    }
    Some(out)
}

/// Relations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rel {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
    Ne,
}

/// The parsed answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Num(Q, bool),
    Float(f64),
    Var(String),
    Pi,
    E,
    I,
    Inf,
    Neg(Box<Node>),
    Add(Box<Node>, Box<Node>),
    Sub(Box<Node>, Box<Node>),
    Mul(Box<Node>, Box<Node>),
    Div(Box<Node>, Box<Node>),
    Pow(Box<Node>, Box<Node>),
    Fact(Box<Node>),
    Binom(Box<Node>, Box<Node>),
    Root(Box<Node>, Box<Node>),
    Func(String, Box<Node>),
    Log(Box<Node>, Box<Node>),
    Abs(Box<Node>),
    Floor(Box<Node>),
    Ceil(Box<Node>),
    /// `a \pm b`: the set {a+b, a-b}.
    PlusMinus(Box<Node>, Box<Node>),
    /// `(a, b]` etc: a tuple or an interval.
    Bracket(char, char, Vec<Node>),
    /// `\{a, b\}`
    Set(Vec<Node>),
    /// a bare comma list `a, b` (unordered, as "all solutions")
    List(Vec<Node>),
    /// `a \cup b`
    Union(Vec<Node>),
    /// relation chain `a = b < c`
    Rel(Vec<Node>, Vec<Rel>),
    EmptySet,
}

struct P {
    t: Vec<(Tok, bool)>,
    i: usize,
    depth: usize,
}

type R = Option<Node>;

fn b(n: Node) -> Box<Node> {
    Box::new(n)
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i).map(|x| &x.0)
    }
    fn peek_space(&self) -> bool {
        self.t.get(self.i).is_some_and(|x| x.1)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.t.get(self.i).map(|x| x.0.clone());
        self.i += 1;
        t
    }
    fn eat_op(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Op(c)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            None
        } else {
            Some(())
        }
    }

    /// list := union ((',' | ';') union)*
    fn list(&mut self) -> R {
        self.enter()?;
        let mut items = vec![self.union()?];
        while matches!(self.peek(), Some(Tok::Op(',')) | Some(Tok::Op(';'))) {
            self.i += 1;
            if matches!(self.peek(), Some(Tok::Cmd(c)) if c == "dots") {
                return None;
            }
            items.push(self.union()?);
        }
        self.depth -= 1;
        Some(if items.len() == 1 { items.pop().unwrap() } else { Node::List(items) })
    }

    fn union(&mut self) -> R {
        let mut items = vec![self.relation()?];
        while matches!(self.peek(), Some(Tok::Cmd(c)) if c == "cup") {
            self.i += 1;
            items.push(self.relation()?);
        }
        Some(if items.len() == 1 { items.pop().unwrap() } else { Node::Union(items) })
    }

    fn relation(&mut self) -> R {
        // "x \in [1, 2]" -> the set
        if let (Some(Tok::Ident(_)), Some((Tok::Cmd(c), _))) = (self.peek(), self.t.get(self.i + 1)) {
            if c == "in" {
                self.i += 2;
                return self.expr();
            }
        }
        let first = self.expr()?;
        let mut sides = vec![first];
        let mut rels = Vec::new();
        loop {
            let r = match self.peek() {
                Some(Tok::Op('=')) => Rel::Eq,
                Some(Tok::Op('<')) => Rel::Lt,
                Some(Tok::Op('>')) => Rel::Gt,
                Some(Tok::Op('≤')) => Rel::Le,
                Some(Tok::Op('≥')) => Rel::Ge,
                Some(Tok::Cmd(c)) if c == "neq" || c == "ne" => Rel::Ne,
                Some(Tok::Cmd(c)) if c == "approx" => Rel::Eq,
                _ => break,
            };
            self.i += 1;
            rels.push(r);
            sides.push(self.expr()?);
        }
        Some(if rels.is_empty() { sides.pop().unwrap() } else { Node::Rel(sides, rels) })
    }

    /// expr := term (('+' | '-' | '\pm') term)*
    fn expr(&mut self) -> R {
        self.enter()?;
        let mut lhs = if matches!(self.peek(), Some(Tok::Cmd(c)) if c == "pm") {
            self.i += 1;
            let t = self.term()?;
            Node::PlusMinus(b(Node::Num(Q::int(0), false)), b(t))
        } else {
            self.term()?
        };
        loop {
            match self.peek() {
                Some(Tok::Op('+')) => {
                    self.i += 1;
                    lhs = Node::Add(b(lhs), b(self.term()?));
                }
                Some(Tok::Op('-')) => {
                    self.i += 1;
                    lhs = Node::Sub(b(lhs), b(self.term()?));
                }
                Some(Tok::Cmd(c)) if c == "pm" || c == "mp" => {
                    self.i += 1;
                    lhs = Node::PlusMinus(b(lhs), b(self.term()?));
                }
                _ => break,
            }
        }
        self.depth -= 1;
        Some(lhs)
    }

    fn starts_factor(&self) -> bool {
        match self.peek() {
            Some(Tok::Num(_)) | Some(Tok::Ident(_)) | Some(Tok::Func(_)) | Some(Tok::Open(_)) | Some(Tok::SetOpen) => true,
            Some(Tok::Cmd(c)) => matches!(c.as_str(), "frac" | "sqrt" | "binom" | "pi" | "infty"),
            _ => false,
        }
    }

    /// term := unary (('*' | '/') unary | implicit unary)*
    fn term(&mut self) -> R {
        let mut lhs = self.unary()?;
        loop {
            match self.peek() {
                Some(Tok::Op('*')) => {
                    self.i += 1;
                    lhs = Node::Mul(b(lhs), b(self.unary()?));
                }
                Some(Tok::Op('/')) => {
                    self.i += 1;
                    lhs = Node::Div(b(lhs), b(self.unary()?));
                }
                _ if self.starts_factor() => {
                    // thousands groups separated by spaces: "10 000"
                    if let (Node::Num(q, false), Some(Tok::Num(t))) = (&lhs, self.peek()) {
                        if self.peek_space() && t.len() == 3 && t.bytes().all(|c| c.is_ascii_digit()) && q.is_int() {
                            let joined = format!("{}{}", q.num, t);
                            self.i += 1;
                            lhs = Node::Num(Q::parse(&joined)?, false);
                            continue;
                        }
                        // mixed number "3 1/2"
                        if q.is_int() && self.peek_space() {
                            if let (Some((Tok::Op('/'), _)), Some((Tok::Num(d), _))) = (self.t.get(self.i + 1), self.t.get(self.i + 2)) {
                                let n = Q::parse(t)?;
                                let d = Q::parse(d)?;
                                if n.is_int() && d.is_int() && n.num < d.num {
                                    self.i += 3;
                                    lhs = Node::Add(b(lhs), b(Node::Div(b(Node::Num(n, false)), b(Node::Num(d, false)))));
                                    continue;
                                }
                            }
                        }
                    }
                    // mixed number "3\frac{1}{2}"
                    if let Node::Num(q, false) = &lhs {
                        if q.is_int() && matches!(self.peek(), Some(Tok::Cmd(c)) if c == "frac") {
                            let save = self.i;
                            let f = self.unary()?;
                            if let Node::Div(n, d) = &f {
                                if let (Node::Num(nq, false), Node::Num(dq, false)) = (&**n, &**d) {
                                    if nq.is_int() && dq.is_int() && nq.num < dq.num && q.num >= 0 {
                                        lhs = Node::Add(b(lhs), b(f));
                                        continue;
                                    }
                                }
                            }
                            let _ = save;
                            lhs = Node::Mul(b(lhs), b(f));
                            continue;
                        }
                    }
                    lhs = Node::Mul(b(lhs), b(self.power()?));
                }
                _ => break,
            }
        }
        Some(lhs)
    }

    fn unary(&mut self) -> R {
        self.enter()?;
        let r = match self.peek() {
            Some(Tok::Op('-')) => {
                self.i += 1;
                Node::Neg(b(self.unary()?))
            }
            Some(Tok::Op('+')) => {
                self.i += 1;
                self.unary()?
            }
            _ => self.power()?,
        };
        self.depth -= 1;
        Some(r)
    }

    /// power := postfix ('^' exponent)?   (right associative)
    fn power(&mut self) -> R {
        let base = self.postfix()?;
        if self.eat_op('^') {
            let e = self.exponent()?;
            let mut r = Node::Pow(b(base), b(e));
            while matches!(self.peek(), Some(Tok::Op('!'))) {
                self.i += 1;
                r = Node::Fact(b(r));
            }
            return Some(r);
        }
        Some(base)
    }

    fn exponent(&mut self) -> R {
        self.enter()?;
        let r = match self.peek() {
            Some(Tok::Open('{')) => self.arg()?,
            Some(Tok::Op('-')) => {
                self.i += 1;
                Node::Neg(b(self.exponent()?))
            }
            Some(Tok::Num(_)) if self.is_latex_single_digit_context() => self.arg()?,
            _ => self.power()?,
        };
        self.depth -= 1;
        Some(r)
    }

    fn is_latex_single_digit_context(&self) -> bool {
        // `x^23` in LaTeX means x^2 * 3; plain "x^23" means x^23. We follow plain text.
        false
    }

    fn postfix(&mut self) -> R {
        let mut n = self.primary()?;
        while self.eat_op('!') {
            n = Node::Fact(b(n));
        }
        Some(n)
    }

    /// A LaTeX argument: `{...}` or a single token (`\frac12` -> 1 and 2).
    fn arg(&mut self) -> R {
        self.enter()?;
        let r = match self.peek().cloned() {
            Some(Tok::Open('{')) => {
                self.i += 1;
                let e = self.list()?;
                if self.next()? != Tok::Close('}') {
                    return None;
                }
                e
            }
            Some(Tok::Num(t)) => {
                // a single digit when more follow without a point
                if t.len() > 1 && t.bytes().all(|c| c.is_ascii_digit()) {
                    self.t[self.i].0 = Tok::Num(t[1..].to_string());
                    self.t[self.i].1 = false;
                    Node::Num(Q::parse(&t[..1])?, false)
                } else {
                    self.i += 1;
                    num_node(&t)?
                }
            }
            Some(Tok::Ident(_)) | Some(Tok::Cmd(_)) => self.primary()?,
            _ => return None,
        };
        self.depth -= 1;
        Some(r)
    }

    fn group_until(&mut self, open: char) -> R {
        // after an opening bracket: list, then any closing bracket
        let e = self.list()?;
        let close = match self.next()? {
            Tok::Close(c) => c,
            _ => return None,
        };
        let items = match e {
            Node::List(items) => items,
            single => {
                return match (open, close) {
                    ('(', ')') | ('[', ']') | ('{', '}') => Some(single),
                    ('⌊', '⌊') => Some(Node::Floor(b(single))),
                    ('⌈', '⌈') => Some(Node::Ceil(b(single))),
                    _ => None,
                }
            }
        };
        if open == '{' && close == '}' {
            return Some(Node::List(items));
        }
        if !matches!(open, '(' | '[') || !matches!(close, ')' | ']') {
            return None;
        }
        Some(Node::Bracket(open, close, items))
    }

    fn primary(&mut self) -> R {
        self.enter()?;
        let r = match self.next()? {
            Tok::Num(t) => num_node(&t)?,
            Tok::Ident(name) => {
                let v = match name.as_str() {
                    "e" => Node::E,
                    "i" => Node::I,
                    _ => Node::Var(name),
                };
                // subscripts: x_1, a_{n}
                if self.eat_op('_') {
                    let sub = self.arg()?;
                    let label = format!("{:?}", sub);
                    Node::Var(format!(
                        "{}_{}",
                        match v {
                            Node::Var(n) => n,
                            Node::E => "e".into(),
                            _ => "i".into(),
                        },
                        label
                    ))
                } else {
                    v
                }
            }
            Tok::Open(c) => self.group_until(c)?,
            Tok::SetOpen => {
                if self.peek() == Some(&Tok::SetClose) {
                    self.i += 1;
                    Node::EmptySet
                } else {
                    let e = self.list()?;
                    if self.next()? != Tok::SetClose {
                        return None;
                    }
                    match e {
                        Node::List(items) => Node::Set(items),
                        single => Node::Set(vec![single]),
                    }
                }
            }
            Tok::Op('|') => {
                let e = self.expr()?;
                if !self.eat_op('|') {
                    return None;
                }
                Node::Abs(b(e))
            }
            Tok::Cmd(c) => match c.as_str() {
                "pi" => Node::Pi,
                "infty" => Node::Inf,
                "emptyset" | "varnothing" => Node::EmptySet,
                "frac" => {
                    let n = self.arg()?;
                    let d = self.arg()?;
                    Node::Div(b(n), b(d))
                }
                "binom" => {
                    let n = self.arg()?;
                    let k = self.arg()?;
                    Node::Binom(b(n), b(k))
                }
                "sqrt" => self.sqrt()?,
                _ => return None,
            },
            Tok::Func(f) => {
                if f == "sqrt" {
                    self.sqrt()?
                } else {
                    self.func(f)?
                }
            }
            _ => return None,
        };
        self.depth -= 1;
        Some(r)
    }

    fn sqrt(&mut self) -> R {
        // \sqrt[n]{x}
        if self.peek() == Some(&Tok::Open('[')) {
            self.i += 1;
            let n = self.expr()?;
            if self.next()? != Tok::Close(']') {
                return None;
            }
            let x = self.arg()?;
            return Some(Node::Root(b(n), b(x)));
        }
        let x = if self.peek() == Some(&Tok::Open('(')) { self.postfix()? } else { self.arg()? };
        Some(Node::Root(b(Node::Num(Q::int(2), false)), b(x)))
    }

    fn func(&mut self, f: String) -> R {
        // optional base for log: \log_2 x, \log_{10}(x)
        let mut base = None;
        if self.eat_op('_') {
            base = Some(self.arg()?);
        }
        // \sin^2 x
        let mut pow = None;
        if self.eat_op('^') {
            pow = Some(self.exponent()?);
        }
        let arg = match self.peek() {
            Some(Tok::Open('(')) => self.postfix()?,
            _ => {
                // `\sin 2x`, `\sin 2\pi`: a product of simple factors
                let mut a = self.power()?;
                while matches!(self.peek(), Some(Tok::Ident(_))) || matches!(self.peek(), Some(Tok::Cmd(c)) if c == "pi") {
                    a = Node::Mul(b(a), b(self.power()?));
                }
                a
            }
        };
        let mut n = match (f.as_str(), base) {
            ("log", Some(bn)) => Node::Log(b(bn), b(arg)),
            ("log", None) | ("lg", None) => Node::Log(b(Node::Num(Q::int(10), false)), b(arg)),
            (_, Some(_)) => return None,
            _ => Node::Func(f, b(arg)),
        };
        if let Some(p) = pow {
            n = Node::Pow(b(n), b(p));
        }
        Some(n)
    }
}

fn num_node(t: &str) -> R {
    match Q::parse(t) {
        Some(q) => Some(Node::Num(q, t.contains('.') || t.contains(['e', 'E']))),
        None => t.parse::<f64>().ok().map(Node::Float),
    }
}

/// Parses a normalised answer string.
pub fn parse(s: &str) -> Option<Node> {
    if s.len() > MAX_LEN || s.is_empty() {
        return None;
    }
    let t = tokenize(s)?;
    if t.is_empty() {
        return None;
    }
    let mut p = P { t, i: 0, depth: 0 };
    let n = p.list()?;
    if p.i != p.t.len() {
        return None;
    }
    Some(n)
}
