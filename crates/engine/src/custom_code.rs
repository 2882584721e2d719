//! ArmoRM's gate pattern, `token_pattern = [..]` in `modeling_custom.py`, read as Python text and
//! never run. transformers runs that file, so its list is what the model uses: a literal we
//! cannot read is refused by line rather than replaced by a pattern derived some other way.

use std::path::Path;

use crate::error::{EngineError, Result};

/// The pattern `modeling_custom.py` assigns, with the line of the assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodePattern {
    pub ids: Vec<u32>,
    pub line: usize,
}

const NAME: &str = "token_pattern";

/// `Ok(None)` when the file is absent or assigns no `token_pattern`.
pub(crate) fn read_token_pattern(path: &Path) -> Result<Option<CodePattern>> {
    if path.symlink_metadata().is_err() {
        return Ok(None);
    }
    let text = crate::weights::read_text(path)?;
    parse(&text).map_err(|(line, why)| EngineError::ConfigField {
        path: path.to_path_buf(),
        field: NAME.into(),
        message: format!("line {line}: {why}"),
    })
}

type Parsed<T> = std::result::Result<T, (usize, String)>;

/// Every statement that starts with `token_pattern`, found by a small Python lexer (strings,
/// comments and brackets skipped, so a docstring mentioning the name is not an assignment).
fn parse(text: &str) -> Parsed<Option<CodePattern>> {
    let c: Vec<char> = text.chars().collect();
    let lines: Vec<&str> = text.lines().collect();
    let mut found: Vec<CodePattern> = Vec::new();
    let (mut i, mut line, mut depth, mut at_start) = (0usize, 1usize, 0usize, true);
    while i < c.len() {
        if at_start {
            while i < c.len() && matches!(c[i], ' ' | '\t' | '\x0c') {
                i += 1;
            }
            at_start = false;
            if is_word_at(&c, i, NAME) {
                if let Some(p) = statement(&c, i + NAME.len(), line, &lines)? {
                    found.push(p);
                }
            }
            continue;
        }
        match c[i] {
            '\n' => {
                line += 1;
                i += 1;
                at_start = depth == 0;
            }
            ';' if depth == 0 => {
                i += 1;
                at_start = true;
            }
            '\\' => {
                if c.get(i + 1) == Some(&'\n') {
                    line += 1;
                }
                i += 2;
            }
            '#' => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '\'' | '"' => i = skip_string(&c, i, &mut line),
            '(' | '[' | '{' => {
                depth += 1;
                i += 1;
            }
            ')' | ']' | '}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    // Python keeps the last assignment that runs; which one that is cannot be told from the text.
    if let Some(first) = found.first() {
        if let Some(other) = found.iter().find(|p| p.ids != first.ids) {
            return Err((
                first.line,
                format!(
                    "`{NAME}` is assigned different lists (lines {} and {}); reward-lens reads this file without \
                     running it and cannot tell which one the model uses",
                    first.line, other.line
                ),
            ));
        }
    }
    Ok(found.pop())
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

fn is_word_at(c: &[char], i: usize, word: &str) -> bool {
    let n = word.chars().count();
    i + n <= c.len()
        && c[i..i + n].iter().copied().eq(word.chars())
        && (i == 0 || !is_ident(c[i - 1]))
        && c.get(i + n).is_none_or(|&ch| !is_ident(ch))
}

/// Past a string literal starting at `i` (its quote), counting the newlines inside.
fn skip_string(c: &[char], i: usize, line: &mut usize) -> usize {
    let q = c[i];
    let triple = c.get(i + 1) == Some(&q) && c.get(i + 2) == Some(&q);
    let mut j = if triple { i + 3 } else { i + 1 };
    while j < c.len() {
        match c[j] {
            '\\' => {
                if c.get(j + 1) == Some(&'\n') {
                    *line += 1;
                }
                j += 2;
                continue;
            }
            '\n' => {
                *line += 1;
                if !triple {
                    return j;
                }
            }
            ch if ch == q && (!triple || (c.get(j + 1) == Some(&q) && c.get(j + 2) == Some(&q))) => {
                return j + if triple { 3 } else { 1 };
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// Spaces, tabs and backslash continuations within one logical line.
fn skip_inline(c: &[char], mut i: usize, line: &mut usize) -> usize {
    loop {
        match c.get(i) {
            Some(' ' | '\t' | '\x0c' | '\r') => i += 1,
            Some('\\') if c.get(i + 1) == Some(&'\n') => {
                *line += 1;
                i += 2;
            }
            _ => return i,
        }
    }
}

fn shown(lines: &[&str], line: usize) -> String {
    let s = lines.get(line - 1).map_or("", |l| l.trim());
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s.to_string()
    }
}

/// The statement after the name at `i`: an assignment's list, `None` for anything that neither
/// assigns nor changes the name, an error for a change we cannot follow.
fn statement(c: &[char], i: usize, line: usize, lines: &[&str]) -> Parsed<Option<CodePattern>> {
    let mut l = line;
    let k = skip_inline(c, i, &mut l);
    let rest: String = c[k..c.len().min(k + 4)].iter().collect();
    let cannot_follow = || {
        Err((
            line,
            format!(
                "`{}` changes `{NAME}` after it is built; reward-lens reads the file as text and needs the list as one \
                 literal (e.g. `{NAME} = [128009, 128006]`)",
                shown(lines, line)
            ),
        ))
    };
    if rest.starts_with('=') && !rest.starts_with("==") {
        return list_literal(c, k + 1, line, lines).map(Some);
    }
    if rest.starts_with(':') {
        // `token_pattern: list[int] = [..]`; a bare annotation assigns nothing.
        let (mut j, mut depth) = (k + 1, 0usize);
        while j < c.len() {
            match c[j] {
                '[' | '(' | '{' => depth += 1,
                ']' | ')' | '}' => depth = depth.saturating_sub(1),
                '\n' | ';' | '#' if depth == 0 => return Ok(None),
                '=' if depth == 0 && c.get(j + 1) != Some(&'=') => {
                    return list_literal(c, j + 1, line, lines).map(Some);
                }
                _ => {}
            }
            j += 1;
        }
        return Ok(None);
    }
    let augmented = ["+=", "-=", "*=", "/=", "//=", "%=", "&=", "|=", "^=", "@=", "**=", ">>=", "<<="];
    if augmented.iter().any(|op| rest.starts_with(op)) {
        return cannot_follow();
    }
    if rest.starts_with('.') {
        let mut l2 = l;
        let m = skip_inline(c, k + 1, &mut l2);
        let method: String = c[m..].iter().take_while(|&&ch| is_ident(ch)).collect();
        if ["append", "extend", "insert", "pop", "remove", "clear", "reverse", "sort"].contains(&method.as_str()) {
            return cannot_follow();
        }
    }
    if rest.starts_with('[') {
        // `token_pattern[0] = ..` replaces an entry.
        let (mut j, mut depth) = (k, 0usize);
        while j < c.len() {
            match c[j] {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        let mut l2 = l;
        let m = skip_inline(c, j + 1, &mut l2);
        if c.get(m) == Some(&'=') && c.get(m + 1) != Some(&'=') {
            return cannot_follow();
        }
    }
    Ok(None)
}

/// A Python list of integer literals starting at `i` (after the `=`): any layout Python accepts
/// (lines, comments, a trailing comma), and nothing after it but a comment or another statement.
fn list_literal(c: &[char], i: usize, line: usize, lines: &[&str]) -> Parsed<CodePattern> {
    let fail = |why: &str| -> Parsed<CodePattern> {
        Err((
            line,
            format!(
                "cannot read `{}` as a list of token ids ({why}); reward-lens reads this file without running it and \
                 needs a literal such as `{NAME} = [128009, 128006]`",
                shown(lines, line)
            ),
        ))
    };
    let mut l = line;
    let mut k = skip_inline(c, i, &mut l);
    if c.get(k) != Some(&'[') {
        return fail("the value is not a list literal");
    }
    k += 1;
    let (mut ids, mut want_value) = (Vec::new(), true);
    loop {
        // Inside brackets newlines and comments are free.
        loop {
            match c.get(k) {
                Some(ch) if ch.is_whitespace() => k += 1,
                Some('\\') if c.get(k + 1) == Some(&'\n') => k += 2,
                Some('#') => {
                    while k < c.len() && c[k] != '\n' {
                        k += 1;
                    }
                }
                _ => break,
            }
        }
        match c.get(k) {
            None => return fail("the list is not closed"),
            // After a value or a trailing comma, as Python allows (`[,]` fails at the comma).
            Some(']') => {
                k += 1;
                break;
            }
            Some(',') if !want_value => {
                want_value = true;
                k += 1;
            }
            Some(ch) if ch.is_ascii_digit() && want_value => {
                let lit: String = c[k..].iter().take_while(|&&ch| is_ident(ch)).collect();
                k += lit.chars().count();
                let Some(n) = int_literal(&lit) else {
                    return fail(&format!("`{lit}` is not an integer literal"));
                };
                let Ok(id) = u32::try_from(n) else {
                    return fail(&format!("{n} is beyond the largest token id, {}", u32::MAX));
                };
                ids.push(id);
                want_value = false;
            }
            Some(&ch) => return fail(&format!("unexpected `{ch}`")),
        }
    }
    let mut l2 = l;
    let k = skip_inline(c, k, &mut l2);
    match c.get(k) {
        None | Some('\n' | '#' | ';') => Ok(CodePattern { ids, line }),
        Some(_) => fail("the list is followed by more of the expression"),
    }
}

/// A Python integer literal (decimal, 0x, 0o, 0b, with `_` between digits).
fn int_literal(s: &str) -> Option<u64> {
    let lower = s.to_ascii_lowercase();
    let (digits, radix) = match lower.get(..2) {
        Some("0x") => (&lower[2..], 16),
        Some("0o") => (&lower[2..], 8),
        Some("0b") => (&lower[2..], 2),
        _ => (lower.as_str(), 10),
    };
    // Python allows one `_` after the base prefix and single `_` between digits.
    let digits = if radix != 10 { digits.strip_prefix('_').unwrap_or(digits) } else { digits };
    if digits.is_empty() || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__") {
        return None;
    }
    let digits = digits.replace('_', "");
    // A decimal with a leading zero (`0205`) is a syntax error in Python 3.
    if radix == 10 && digits.len() > 1 && digits.starts_with('0') && digits.chars().any(|d| d != '0') {
        return None;
    }
    u64::from_str_radix(&digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(src: &str) -> Option<Vec<u32>> {
        parse(src).unwrap().map(|p| p.ids)
    }

    #[test]
    fn python_list_layouts() {
        assert_eq!(ids("token_pattern = [4, 205]\n"), Some(vec![4, 205]));
        assert_eq!(ids("token_pattern = [4, 205,]\n"), Some(vec![4, 205]));
        assert_eq!(ids("token_pattern=[\n    4,  # end\n    205,\n]  # gate\n"), Some(vec![4, 205]));
        assert_eq!(ids("x = 1; token_pattern = [0x4, 2_05]"), Some(vec![4, 205]));
        assert_eq!(ids("token_pattern: list[int] = [4, 205]"), Some(vec![4, 205]));
        assert_eq!(ids("token_pattern = \\\n  [4, 205]"), Some(vec![4, 205]));
        assert_eq!(ids("token_pattern = []"), Some(vec![]));
        assert_eq!(parse("t = 1\ntoken_pattern = [1,\n 2]\n").unwrap().unwrap().line, 2);
    }

    #[test]
    fn mentions_are_not_assignments() {
        let doc =
            "\"\"\"\ntoken_pattern = [1, 2] in the docs\n\"\"\"\n# token_pattern = [3]\ns = 'token_pattern = [5]'\n";
        assert_eq!(ids(doc), None);
        assert_eq!(ids("my_token_pattern = [1]\ntoken_patterns = [2]\nn = len(token_pattern)\n"), None);
        assert_eq!(ids("def f():\n    if token_pattern == [1]:\n        pass\n"), None);
        assert_eq!(ids(&format!("{doc}token_pattern = [7]\n")), Some(vec![7]));
        assert_eq!(ids("token_pattern: list[int]\n"), None);
    }

    #[test]
    fn unreadable_assignments_name_the_line() {
        for (src, why) in [
            ("\n\ntoken_pattern = tok.encode('x')\n", "not a list literal"),
            ("\n\ntoken_pattern = [4, , 205]\n", "unexpected `,`"),
            ("\n\ntoken_pattern = [4 205]\n", "unexpected `2`"),
            ("\n\ntoken_pattern = [4, 205] + [1]\n", "followed by"),
            ("\n\ntoken_pattern = [4, -205]\n", "unexpected `-`"),
            ("\n\ntoken_pattern = [4, 0205]\n", "`0205`"),
            ("\n\ntoken_pattern = [4, 4294967296]\n", "4294967296"),
            ("\n\ntoken_pattern = (4, 205)\n", "not a list literal"),
            ("\n\ntoken_pattern = [4, 205\n", "not closed"),
            ("\n\ntoken_pattern = [4]\ntoken_pattern += [205]\n", "changes `token_pattern`"),
            ("\n\ntoken_pattern = [4]\ntoken_pattern.append(205)\n", "changes `token_pattern`"),
            ("\n\ntoken_pattern = [4]\ntoken_pattern[0] = 5\n", "changes `token_pattern`"),
        ] {
            let (line, msg) = parse(src).unwrap_err();
            assert!(line >= 3, "{src:?}: line {line}");
            assert!(msg.contains(why), "{src:?}: {msg}");
        }
        let (line, msg) = parse("token_pattern = [1]\nif x:\n    token_pattern = [2]\n").unwrap_err();
        assert_eq!(line, 1);
        assert!(msg.contains("lines 1 and 3"), "{msg}");
        assert_eq!(ids("token_pattern = [1]\ntoken_pattern = [1,]\n"), Some(vec![1]));
    }
}
