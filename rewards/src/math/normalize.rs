//! String-level normalisation of LaTeX / plain-text answers before parsing.

/// Longer answers are not normalised (they cannot parse anyway; keeps work bounded).
pub const MAX_INPUT: usize = 2000;

/// Words dropped when they trail a number ("5 cm", "12 dollars", "3 square units").
const UNITS: &[&str] = &[
    "units",
    "unit",
    "sq",
    "square",
    "cubic",
    "cm",
    "mm",
    "km",
    "meters",
    "meter",
    "metres",
    "metre",
    "centimeters",
    "centimeter",
    "millimeters",
    "kilometers",
    "kilometer",
    "inches",
    "inch",
    "in",
    "feet",
    "foot",
    "ft",
    "yards",
    "yard",
    "yd",
    "miles",
    "mile",
    "mi",
    "mph",
    "kg",
    "grams",
    "gram",
    "kilograms",
    "pounds",
    "pound",
    "lbs",
    "lb",
    "ounces",
    "ounce",
    "oz",
    "liters",
    "liter",
    "litres",
    "ml",
    "gallons",
    "gallon",
    "seconds",
    "second",
    "sec",
    "minutes",
    "minute",
    "min",
    "hours",
    "hour",
    "hr",
    "hrs",
    "days",
    "day",
    "weeks",
    "week",
    "months",
    "month",
    "years",
    "year",
    "dollars",
    "dollar",
    "cents",
    "cent",
    "euros",
    "euro",
    "degrees",
    "degree",
    "deg",
    "radians",
    "radian",
    "rad",
    "percent",
    "pct",
    "usd",
    "eur",
    "gbp",
    "points",
    "point",
    "people",
    "students",
    "apples",
    "marbles",
    "cookies",
    "pages",
    "books",
    "times",
    "ways",
    "steps",
    "hours.",
    "items",
    "per",
];

/// One- or two-letter unit symbols (`12 m`, `40 s`, `3.5 g`): dropped only when what
/// precedes them is a plain number, since elsewhere they are usually variables.
const SHORT_UNITS: &[&str] = &["m", "g", "s", "h", "l", "kl", "dm", "mg", "ms", "t", "cl"];

/// Commands whose braced argument is kept as text: `\text{cm}` -> ` cm `.
const TEXT_CMDS: &[&str] = &[
    "\\text",
    "\\textbf",
    "\\textit",
    "\\textrm",
    "\\mathrm",
    "\\mathbf",
    "\\mathit",
    "\\mathsf",
    "\\mathtt",
    "\\mbox",
    "\\operatorname",
    "\\textnormal",
    "\\boldsymbol",
    "\\bm",
    "\\mathnormal",
    "\\hbox",
];

/// Pieces removed outright (order matters: longer first).
const DROP: &[&str] = &[
    "\\displaystyle",
    "\\textstyle",
    "\\limits",
    "\\left.",
    "\\right.",
    "\\left",
    "\\right",
    "\\bigl",
    "\\bigr",
    "\\Bigl",
    "\\Bigr",
    "\\biggl",
    "\\biggr",
    "\\big",
    "\\Big",
    "\\qquad",
    "\\quad",
    "\\!",
    "\\,",
    "\\;",
    "\\:",
    "\\ ",
    "^{\\circ}",
    "^\\circ",
    "^{\\circ }",
    "\\circ",
    "\\degree",
    "°",
    "\\%",
    "%",
    "\\$",
    "$",
    "€",
    "£",
    "¥",
    "₹",
    "\\euro",
    "\\pounds",
    "\\angle",
    "\\measuredangle",
    "\\(",
    "\\)",
    "\\[",
    "\\]",
    "\\dollar",
];

/// Unwraps `\text{..}`-like commands, keeping their content surrounded by spaces.
pub(crate) fn unwrap_text_cmds(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    'outer: while let Some(pos) = rest.find('\\') {
        for cmd in TEXT_CMDS {
            if rest[pos..].starts_with(cmd) {
                let after = &rest[pos + cmd.len()..];
                // must not be a longer command name (\textbf vs \text)
                if after.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
                    continue;
                }
                let after_ws = after.trim_start();
                if let Some(inner) = after_ws.strip_prefix('{') {
                    if let Some(close) = crate::text::matching_brace(inner) {
                        out.push_str(&rest[..pos]);
                        out.push(' ');
                        out.push_str(&unwrap_text_cmds(&inner[..close]));
                        out.push(' ');
                        rest = &inner[close + 1..];
                        continue 'outer;
                    }
                }
            }
        }
        out.push_str(&rest[..pos + 1]);
        rest = &rest[pos + 1..];
    }
    out.push_str(rest);
    out
}

/// `\begin{pmatrix} a & b \\ c & d \end{pmatrix}` -> `((a, b), (c, d))` (compared as
/// nested tuples; a column vector becomes a tuple).
fn matrices(s: &str) -> String {
    let mut out = s.to_string();
    // `\begin{array}{cc} ... \end{array}`: drop the column specification
    while let Some(p) = out.find("\\begin{array}{") {
        let spec = p + "\\begin{array}{".len();
        match crate::text::matching_brace(&out[spec..]) {
            Some(c) => out.replace_range(p..spec + c + 1, "\\begin{matrix}"),
            None => break,
        }
    }
    out = out.replace("\\end{array}", "\\end{matrix}");
    // a trailing `\\` before `\end{...}` ends the last row: no empty row after it
    let mut from = 0;
    while let Some(q) = out[from..].find("\\end{") {
        let p = from + q;
        if let Some(h) = out[..p].trim_end().strip_suffix("\\\\") {
            let h = h.len();
            out.replace_range(h..p, " ");
            from = h + 1 + "\\end{".len();
        } else {
            from = p + "\\end{".len();
        }
    }
    for env in ["pmatrix", "bmatrix", "Bmatrix", "vmatrix", "smallmatrix", "matrix"] {
        out = out.replace(&format!("\\begin{{{env}}}"), "((").replace(&format!("\\end{{{env}}}"), "))");
    }
    out.replace("\\\\", "),(").replace('&', ",")
}

/// Separators allowed between consecutive `\boxed{}` answers (`\boxed{1}, \boxed{2}`,
/// `\boxed{1} \text{ and } \boxed{2}`).
const BOX_GAP: &[&str] =
    &[",", ";", ".", "$", "\\quad", "\\qquad", "\\,", "\\;", "\\ ", "\\(", "\\)", "and", "or", "\\text{", "\\textrm{", "\\mbox{", "}"];

/// Whether `gap` (the text between two boxes) holds only separators; `Some(true)` when
/// it holds no comma-like separator (`\boxed{1}\boxed{2}`), so one must be added.
pub(crate) fn box_gap(gap: &str) -> Option<bool> {
    let mut g = gap.trim_start();
    let mut bare = true;
    while !g.is_empty() {
        let p = BOX_GAP.iter().find(|p| g.starts_with(**p))?;
        if !matches!(*p, "$" | "\\quad" | "\\qquad" | "\\," | "\\;" | "\\ " | "\\(" | "\\)") {
            bare = false;
        }
        g = g[p.len()..].trim_start();
    }
    Some(bare)
}

/// `\boxed{1}\boxed{2}` -> `1, 2`; a single `\boxed{x}` -> `x` (also `\fbox`).
fn unwrap_boxes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut prev_box_end: Option<usize> = None; // index in `out` after the last box
    loop {
        let pos = match (rest.find("\\boxed"), rest.find("\\fbox")) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        let len = if rest[pos..].starts_with("\\boxed") { 6 } else { 5 };
        let after = rest[pos + len..].trim_start();
        let Some(inner) = after.strip_prefix('{') else {
            out.push_str(&rest[..pos + len]);
            rest = &rest[pos + len..];
            continue;
        };
        let Some(close) = crate::text::matching_brace(inner) else {
            break;
        };
        let gap = &rest[..pos];
        out.push_str(gap);
        if prev_box_end == Some(out.len() - gap.len()) && box_gap(gap) == Some(true) {
            out.push_str(", ");
        }
        out.push_str(&inner[..close]);
        prev_box_end = Some(out.len());
        rest = &inner[close + 1..];
    }
    out.push_str(rest);
    out
}

/// `11,\! 111` / `11,\,111`: a comma followed by LaTeX spacing and exactly three digits
/// (after a digit) is a thousands separator; the spacing is removed so that `11,111`
/// remains. A plain space (`1, 222`) is left alone: that is a list.
fn tight_thousands(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == b',' && i > 0 && b[i - 1].is_ascii_digit() && b.get(i + 1) == Some(&b'\\') {
            let mut j = i + 1;
            let mut spaced = false;
            while j + 1 < b.len() && b[j] == b'\\' && matches!(b[j + 1], b'!' | b',' | b';' | b' ' | b':') {
                j += 2;
                spaced = true;
                while j < b.len() && b[j] == b' ' {
                    j += 1;
                }
            }
            let digits = b[j..].iter().take_while(|c| c.is_ascii_digit()).count();
            if spaced && digits == 3 {
                out.push_str(&s[last..=i]);
                last = j;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[last..]);
    out
}

fn is_plain_number(s: &str) -> bool {
    let s = s.trim();
    let s = s.strip_prefix('-').unwrap_or(s);
    !s.is_empty() && s.bytes().any(|c| c.is_ascii_digit()) && s.bytes().all(|c| c.is_ascii_digit() || c == b'.' || c == b',')
}

/// `12 km/h`, `12 m/s`: a trailing `unit/unit` token after a number.
fn strip_compound_unit(t: &str) -> Option<&str> {
    let (before, tok) = t.rsplit_once(' ')?;
    let (u1, u2) = tok.split_once('/')?;
    let unit = |u: &str| {
        let l = u.to_ascii_lowercase();
        !u.is_empty() && u.bytes().all(|c| c.is_ascii_alphabetic()) && (UNITS.contains(&l.as_str()) || SHORT_UNITS.contains(&l.as_str()))
    };
    (unit(u1) && unit(u2) && is_plain_number(before)).then_some(before.trim_end())
}

fn is_thousands_number(s: &str) -> bool {
    // -?\d{1,3}(,\d{3})+(\.\d+)?
    let s = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    if let Some(f) = frac {
        if f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    let groups: Vec<&str> = int.split(',').collect();
    groups.len() >= 2
        && (1..=3).contains(&groups[0].len())
        && groups.iter().all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
}

/// Normalises an answer string (LaTeX or plain text) for parsing.
pub fn normalize(ans: &str) -> String {
    if ans.len() > MAX_INPUT {
        // far too long to be a final answer: compared as text only
        return ans.trim().to_string();
    }
    let mut s = ans.trim().to_string();
    let latex = s.contains('\\');
    if latex && s.contains("frac") {
        s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\cfrac", "\\frac");
    }
    if latex && s.contains("binom") {
        s = s.replace("\\dbinom", "\\binom").replace("\\tbinom", "\\binom");
    }
    if s.contains("{,}") {
        s = s.replace("{,}", ",");
    }
    if s.contains("\\boxed") || s.contains("\\fbox") {
        s = unwrap_boxes(&s);
    }
    if s.contains(",\\") {
        s = tight_thousands(&s);
    }
    s = unwrap_text_cmds(&s);
    if s.contains("matrix}") || s.contains("array}") {
        s = matrices(&s);
    }
    // (a piece starting with `\\` needs a backslash in `s`, a non-ASCII one non-ASCII text)
    let (latex, ascii) = (s.contains('\\'), s.is_ascii());
    for d in DROP {
        let first = d.as_bytes()[0];
        if (first == b'\\' && !latex) || (first >= 0x80 && ascii) {
            continue;
        }
        if s.contains(d) {
            s = s.replace(d, " ");
        }
    }
    // "1 000" style was turned into "1  000" by `\,` removal: join digit groups later in the parser.
    if !s.is_ascii() {
        s = s
            .replace('\u{2212}', "-")
            .replace('\u{00d7}', "\\times ")
            .replace('\u{00f7}', "\\div ")
            .replace('\u{221a}', "\\sqrt")
            .replace('\u{03c0}', "\\pi ")
            .replace('\u{221e}', "\\infty ")
            .replace('\u{00b2}', "^2")
            .replace('\u{00b3}', "^3")
            .replace('\u{2260}', "\\neq ");
    }
    // trailing full stops, markdown bold
    let mut t = s.trim().trim_end_matches(['.', ' ']).trim().trim_matches('*').trim().to_string();
    // a trailing remark in parentheses: "1/2 (simplified)"
    if t.ends_with(')') {
        if let Some(open) = t.rfind('(') {
            let inner = &t[open + 1..t.len() - 1];
            if open > 0 && inner.bytes().all(|b| b.is_ascii_alphabetic() || b == b' ') && inner.split(' ').any(|w| w.len() >= 4) {
                t = t[..open].trim_end().to_string();
            }
        }
    }
    // strip trailing unit words ("5 cm", "18 square units", "4 cm^2", "12 km/h")
    if t.contains('/') {
        if let Some(b) = strip_compound_unit(&t) {
            t = b.to_string();
        }
    }
    loop {
        let trimmed = t.trim_end();
        let cut = trimmed.trim_end_matches(['^', '2', '3', '{', '}']).trim_end();
        let cut = if cut.len() < trimmed.len() && cut.ends_with(|c: char| c.is_ascii_alphabetic()) { cut } else { trimmed };
        let word_start = cut.char_indices().rev().find(|(_, c)| !c.is_ascii_alphabetic()).map_or(0, |(i, c)| i + c.len_utf8());
        let word = &cut[word_start..];
        if word.is_empty() || word_start == 0 {
            break;
        }
        let before = cut[..word_start].trim_end();
        let lw = word.to_ascii_lowercase();
        // only after a number, a closing bracket or another unit word, and preceded by a space
        let prev_ok = before.ends_with(|c: char| c.is_ascii_digit() || c == ')' || c == '}' || c == ' ')
            || before.ends_with(|c: char| c.is_ascii_alphabetic());
        let known = UNITS.contains(&lw.as_str()) || (SHORT_UNITS.contains(&lw.as_str()) && is_plain_number(before));
        if known && cut[..word_start].ends_with(' ') && prev_ok && !before.is_empty() {
            t = before.to_string();
        } else {
            break;
        }
    }
    let t = t.trim();
    // number bases: "1011_2", "A3_{16}" -> the digits
    if let Some((digits, base)) = t.split_once('_') {
        let base = base.trim_start_matches('{').trim_end_matches('}');
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_hexdigit())
            && digits.bytes().any(|b| b.is_ascii_digit())
            && !base.is_empty()
            && base.bytes().all(|b| b.is_ascii_digit())
        {
            return digits.to_string();
        }
    }
    if is_thousands_number(t) {
        return t.replace(',', "");
    }
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn basics() {
        assert_eq!(normalize("$\\dfrac{1}{2}$"), "\\frac{1}{2}");
        assert_eq!(normalize("5\\text{ cm}"), "5");
        assert_eq!(normalize("1,000"), "1000");
        assert_eq!(normalize("1{,}000"), "1000");
        assert_eq!(normalize("\\text{(B)}"), "(B)");
        assert_eq!(normalize("90^\\circ"), "90");
        assert_eq!(normalize("18 square units"), "18");
        assert_eq!(normalize("50\\%"), "50");
        assert_eq!(normalize("\\$18.50"), "18.50");
        assert_eq!(normalize("4 cm^2"), "4");
        assert_eq!(normalize("\\left( 1, 2 \\right]").replace(" ", ""), "(1,2]");
    }
}
