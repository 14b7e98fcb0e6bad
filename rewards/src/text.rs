//! Text helpers: tags, `\boxed{}`, balanced braces.

/// Byte index of the last occurrence of `needle` in `hay`.
pub fn rfind(hay: &str, needle: &str) -> Option<usize> {
    hay.rfind(needle)
}

/// The content of the last `<tag>...</tag>` block. When the last opening tag is not
/// closed, returns the text after it (with `closed = false`).
pub fn last_tag_block<'a>(text: &'a str, tag: &str) -> Option<(&'a str, bool)> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = text.rfind(&open)? + open.len();
    let rest = &text[start..];
    match rest.find(&close) {
        Some(end) => Some((&rest[..end], true)),
        None => Some((rest, false)),
    }
}

/// Given `s` starting just after an opening `{`, returns the byte index of the matching
/// `}` (escaped `\{` and `\}` do not count).
pub fn matching_brace(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 1usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                i += 2;
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The content of the last `\boxed{...}` or `\fbox{...}` (balanced braces) in `text`;
/// also `\boxed 5` (a bare token after a space). Earlier boxes are used when the last one
/// is unbalanced.
pub fn last_boxed(text: &str) -> Option<&str> {
    let mut end = text.len();
    // bounded: at most 8 unbalanced boxes are skipped (keeps adversarial input linear)
    for _ in 0..8 {
        let hay = &text[..end];
        let pos_b = hay.rfind("\\boxed");
        let pos_f = hay.rfind("\\fbox");
        let (pos, len) = match (pos_b, pos_f) {
            (Some(b), Some(f)) if f > b => (f, 5),
            (Some(b), _) => (b, 6),
            (None, Some(f)) => (f, 5),
            (None, None) => return None,
        };
        let after = &text[pos + len..];
        let trimmed = after.trim_start();
        if let Some(inner) = trimmed.strip_prefix('{') {
            if let Some(close) = matching_brace(inner) {
                return Some(&inner[..close]);
            }
        } else if after.starts_with(' ') {
            let tok_end = trimmed.find(|c: char| c.is_whitespace() || c == '$').unwrap_or(trimmed.len());
            if tok_end > 0 {
                return Some(&trimmed[..tok_end]);
            }
        }
        end = pos;
    }
    None
}

/// Counts non-overlapping occurrences of `needle`.
pub fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}
