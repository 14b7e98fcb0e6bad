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
    "\\(",
    "\\)",
    "\\[",
    "\\]",
    "\\dollar",
];

/// Unwraps `\text{..}`-like commands, keeping their content surrounded by spaces.
fn unwrap_text_cmds(s: &str) -> String {
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
                if after
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                {
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
    for env in [
        "pmatrix",
        "bmatrix",
        "Bmatrix",
        "vmatrix",
        "smallmatrix",
        "matrix",
    ] {
        out = out
            .replace(&format!("\\begin{{{env}}}"), "((")
            .replace(&format!("\\end{{{env}}}"), "))");
    }
    out.replace("\\\\", "),(").replace('&', ",")
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
        && groups
            .iter()
            .all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
        && groups[1..].iter().all(|g| g.len() == 3)
}

/// Normalises an answer string (LaTeX or plain text) for parsing.
pub fn normalize(ans: &str) -> String {
    if ans.len() > MAX_INPUT {
        // far too long to be a final answer: compared as text only
        return ans.trim().to_string();
    }
    let mut s = ans.trim().to_string();
    s = s
        .replace("\\dfrac", "\\frac")
        .replace("\\tfrac", "\\frac")
        .replace("\\cfrac", "\\frac");
    s = s
        .replace("\\dbinom", "\\binom")
        .replace("\\tbinom", "\\binom");
    s = s.replace("{,}", ",");
    s = unwrap_text_cmds(&s);
    if s.contains("matrix}") {
        s = matrices(&s);
    }
    for d in DROP {
        if s.contains(d) {
            s = s.replace(d, " ");
        }
    }
    // "1 000" style was turned into "1  000" by `\,` removal: join digit groups later in the parser.
    s = s
        .replace('\u{2212}', "-")
        .replace('\u{00d7}', "\\times ")
        .replace('\u{00f7}', "\\div ");
    s = s
        .replace('\u{221a}', "\\sqrt")
        .replace('\u{03c0}', "\\pi ")
        .replace('\u{221e}', "\\infty ");
    let mut t = s.trim().trim_end_matches(['.', ' ']).trim().to_string();
    // markdown bold
    t = t.trim_matches('*').trim().to_string();
    // a trailing remark in parentheses: "1/2 (simplified)"
    if t.ends_with(')') {
        if let Some(open) = t.rfind('(') {
            let inner = &t[open + 1..t.len() - 1];
            if open > 0
                && inner.bytes().all(|b| b.is_ascii_alphabetic() || b == b' ')
                && inner.split(' ').any(|w| w.len() >= 4)
            {
                t = t[..open].trim_end().to_string();
            }
        }
    }
    // strip trailing unit words ("5 cm", "18 square units", "4 cm^2")
    loop {
        let trimmed = t.trim_end();
        let cut = trimmed
            .trim_end_matches(['^', '2', '3', '{', '}'])
            .trim_end();
        let cut = if cut.len() < trimmed.len() && cut.ends_with(|c: char| c.is_ascii_alphabetic()) {
            cut
        } else {
            trimmed
        };
        let word_start = cut
            .char_indices()
            .rev()
            .find(|(_, c)| !c.is_ascii_alphabetic())
            .map_or(0, |(i, c)| i + c.len_utf8());
        let word = &cut[word_start..];
        if word.is_empty() || word_start == 0 {
            break;
        }
        let before = cut[..word_start].trim_end();
        let lw = word.to_ascii_lowercase();
        // only after a number, a closing bracket or another unit word, and preceded by a space
        let prev_ok = before
            .ends_with(|c: char| c.is_ascii_digit() || c == ')' || c == '}' || c == ' ')
            || before.ends_with(|c: char| c.is_ascii_alphabetic());
        if UNITS.contains(&lw.as_str())
            && cut[..word_start].ends_with(' ')
            && prev_ok
            && !before.is_empty()
        {
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
