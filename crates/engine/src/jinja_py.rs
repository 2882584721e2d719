//! The Jinja filters and function transformers' chat templates see, reproduced for minijinja:
//! `tojson` (Python's `json.dumps`, not Jinja's HTML-escaping one), `escape`/`e` (markupsafe's
//! five characters and spellings), `strftime_now` (on a fixed date, so that scores are
//! reproducible), and `trim` with the string methods `strip`/`lstrip`/`rstrip`/`split`/`isspace`
//! by Python's whitespace.

use minijinja::value::{ArgType, Kwargs, Rest, Value, ValueKind};
use minijinja::{Error, ErrorKind};

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

/// Jinja2's `escape` (`e`), which is markupsafe's: `& < > ' "` as `&amp; &lt; &gt; &#39; &#34;`,
/// nothing else. minijinja's own writes `&#x27;`, `&quot;` and escapes `/` as well, so an escaped
/// text would tokenize differently. Safe strings pass unchanged, as markupsafe's `Markup` does.
pub fn escape(value: Value) -> Value {
    if value.is_safe() {
        return value;
    }
    // Python's str(): None is "None", booleans "True"/"False".
    let text = match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".to_string(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_string(),
        _ => value.to_string(),
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            '"' => out.push_str("&#34;"),
            c => out.push(c),
        }
    }
    Value::from_safe_string(out)
}

/// transformers' filter: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, its parameters taken by position or by name as Python takes them. What
/// `json.dumps` cannot serialize (undefined, functions, iterators, bytes) is an error, as in Python.
pub fn tojson(value: Value, args: Rest<Value>) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    let mut args = args.0;
    let kwargs = match args.last() {
        Some(last) if last.is_kwargs() => Some(Kwargs::from_value(args.pop().as_ref())?),
        _ => None,
    };
    if args.len() > NAMES.len() {
        return Err(invalid(format!("tojson() takes at most 4 arguments after the value ({} given)", args.len())));
    }
    let mut params: [Option<Value>; 4] = Default::default();
    for (slot, v) in params.iter_mut().zip(args) {
        *slot = Some(v);
    }
    if let Some(kwargs) = kwargs {
        for name in kwargs.args() {
            let Some(i) = NAMES.iter().position(|n| *n == name) else {
                return Err(invalid(format!("tojson() got an unexpected keyword argument '{name}'")));
            };
            if params[i].is_some() {
                return Err(invalid(format!("tojson() got multiple values for argument '{name}'")));
            }
            params[i] = Some(kwargs.get::<Value>(name)?);
        }
    }
    let [ensure_ascii, indent, separators, sort_keys] = params;
    // Python's truthiness, like json.dumps.
    let ensure_ascii = ensure_ascii.is_some_and(|v| v.is_true());
    let sort_keys = sort_keys.is_some_and(|v| v.is_true());
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.kind() {
            ValueKind::String => v.as_str().unwrap_or_default().to_string(),
            // `' ' * indent`: a negative count is no spaces; True is 1.
            ValueKind::Bool => " ".repeat(usize::from(v.is_true())),
            ValueKind::Number if v.is_integer() => {
                let n = i64::try_from(v.clone()).map_err(|_| invalid(format!("tojson(): indent {v} is too large")))?;
                " ".repeat(usize::try_from(n.clamp(0, 1024)).unwrap_or(0))
            }
            _ => return Err(invalid(format!("tojson(): indent must be an integer or a string, found {v:?}"))),
        }),
    };
    // Python's defaults: (", ", ": "), or ("," , ": ") with an indent.
    let (item_sep, key_sep) = match separators {
        None => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
        Some(v) if v.is_none() => (if indent.is_some() { "," } else { ", " }.to_string(), ": ".to_string()),
        Some(v) => {
            let parts: Vec<Value> = match v.kind() {
                ValueKind::Seq => v.try_iter()?.collect(),
                _ => Vec::new(),
            };
            match parts.as_slice() {
                [a, b] if a.kind() == ValueKind::String && b.kind() == ValueKind::String => {
                    (a.as_str().unwrap_or_default().to_string(), b.as_str().unwrap_or_default().to_string())
                }
                _ => return Err(invalid(format!("tojson(): separators must be two strings, found {v:?}"))),
            }
        }
    };
    let opts = JsonOpts { ensure_ascii, sort_keys, indent, item_sep, key_sep };
    let mut out = String::new();
    opts.write(&value, 0, &mut out)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
}

impl JsonOpts {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    }

    fn write(&self, v: &Value, level: usize, out: &mut String) -> Result<(), Error> {
        let not_serializable =
            |what: &str| invalid(format!("tojson(): Object of type {what} is not JSON serializable"));
        match v.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => out.push_str(&number(v)),
            ValueKind::String => write_str(v.as_str().unwrap_or_default(), self.ensure_ascii, out),
            ValueKind::Seq => {
                let items: Vec<Value> = v.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.write(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push(']');
            }
            ValueKind::Map => {
                let mut entries: Vec<(Value, Value)> =
                    v.try_iter()?.map(|k| v.get_item(&k).map(|x| (k, x))).collect::<Result<_, _>>()?;
                if entries.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    // Python sorts the keys themselves: strings, or numbers; a mix is a TypeError.
                    let kinds: Vec<ValueKind> = entries.iter().map(|(k, _)| k.kind()).collect();
                    if kinds.iter().all(|k| *k == ValueKind::String) {
                        entries.sort_by(|a, b| a.0.as_str().cmp(&b.0.as_str()));
                    } else if kinds.iter().all(|k| *k == ValueKind::Number) {
                        entries.sort_by(|a, b| a.0.cmp(&b.0));
                    } else {
                        return Err(invalid("tojson(): sort_keys with keys of different types"));
                    }
                }
                out.push('{');
                for (i, (k, item)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    // Python turns number, bool and None keys into strings.
                    let key = match k.kind() {
                        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
                        ValueKind::Number => number(k),
                        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).to_string(),
                        ValueKind::None => "null".to_string(),
                        _ => {
                            return Err(invalid(format!(
                                "tojson(): keys must be str, int, float, bool or None, not {k:?}"
                            )))
                        }
                    };
                    write_str(&key, self.ensure_ascii, out);
                    out.push_str(&self.key_sep);
                    self.write(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push('}');
            }
            ValueKind::Undefined => return Err(not_serializable("Undefined")),
            ValueKind::Bytes => return Err(not_serializable("bytes")),
            ValueKind::Iterable => return Err(not_serializable("iterator")),
            _ => return Err(not_serializable(&format!("{:?}", v.kind()))),
        }
        Ok(())
    }
}

/// A number as Python's `json.dumps` writes it: integers in decimal, floats as `float.__repr__`
/// (shortest round-trip digits, exponent form below 1e-4 and from 1e16) and NaN / Infinity.
fn number(v: &Value) -> String {
    if v.is_integer() {
        return v.to_string();
    }
    let x = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` gives the shortest round-trip digits: "-1.5e-7", "1e16".
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exp: i32 = exp.parse().expect("`{:e}` exponent is an integer");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if !(-4..16).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        return format!("{sign}{first}{frac}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{sign}{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        let (int, frac) = digits.split_at(point as usize);
        format!("{sign}{int}.{frac}")
    }
}

/// A JSON string as Python's json module writes it (lowercase `\u` escapes; with
/// `ensure_ascii`, everything outside printable ASCII escaped, as UTF-16 surrogate pairs above
/// the BMP).
fn write_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The date `strftime_now` formats: 2024-07-26 00:00:00 (a Friday), naive like transformers'
/// `datetime.now()` (so `%z` and `%Z` are empty). transformers prints the current time; a fixed
/// one keeps scores reproducible, and is the date Llama 3.1's template itself defaults to.
pub const FIXED_DATE: &str = "2024-07-26 00:00:00";

/// What Python's `datetime(2024, 7, 26).strftime("%" + c)` gives on Linux (glibc), for the
/// directives implemented; `numeric` ones also take glibc's `-` flag (no padding).
fn directive(c: char) -> Option<(&'static str, bool)> {
    Some(match c {
        'a' => ("Fri", false),
        'A' => ("Friday", false),
        'b' | 'h' => ("Jul", false),
        'B' => ("July", false),
        'c' => ("Fri Jul 26 00:00:00 2024", false),
        'C' => ("20", true),
        'd' | 'e' => ("26", true),
        'D' | 'x' => ("07/26/24", false),
        'F' => ("2024-07-26", false),
        'g' | 'y' => ("24", true),
        'G' | 'Y' => ("2024", true),
        'H' | 'M' | 'S' => ("00", true),
        'I' | 'l' => ("12", true),
        'j' => ("208", true),
        'k' => (" 0", true),
        'm' => ("07", true),
        'n' => ("\n", false),
        'p' => ("AM", false),
        'r' => ("12:00:00 AM", false),
        'R' => ("00:00", false),
        't' => ("\t", false),
        'T' | 'X' => ("00:00:00", false),
        'u' | 'w' => ("5", true),
        'U' => ("29", true),
        'V' | 'W' => ("30", true),
        'z' | 'Z' => ("", false),
        'f' => ("000000", false),
        '%' => ("%", false),
        _ => return None,
    })
}

/// `strftime_now(format)` on [`FIXED_DATE`]. A directive not implemented here (`%s`, which
/// depends on the machine's time zone, locale forms `%E…`/`%O…`, other flags or widths) is an
/// error naming it rather than text that could differ from Python's.
pub fn strftime_now(format: &str) -> Result<String, Error> {
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let refuse = |d: String| {
            invalid(format!(
                "strftime_now: directive {d:?} is not supported (reward-lens formats the fixed date {FIXED_DATE} \
                 with %a %A %b %B %c %C %d %D %e %f %F %g %G %h %H %I %j %k %l %m %M %n %p %r %R %S %t %T %u %U %V \
                 %w %W %x %X %y %Y %z %Z %% and the - flag on numbers)"
            ))
        };
        match chars.next() {
            Some('-') => match chars.next() {
                Some(d) => match directive(d) {
                    Some((text, true)) => {
                        let t = text.trim_start_matches([' ', '0']);
                        out.push_str(if t.is_empty() { "0" } else { t });
                    }
                    _ => return Err(refuse(format!("%-{d}"))),
                },
                None => return Err(refuse("%-".into())),
            },
            Some(d) => match directive(d) {
                Some((text, _)) => out.push_str(text),
                None => return Err(refuse(format!("%{d}"))),
            },
            None => return Err(refuse("%".into())),
        }
    }
    Ok(out)
}

/// Python's `str.isspace()` set, which `str.strip()`/`split()` and Jinja2's `trim` use: Unicode
/// White_Space plus the information separators U+001C–U+001F, which Rust's `char::is_whitespace`
/// (and so minijinja) leaves out. A text starting or ending with one would render differently.
pub fn py_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\u{1c}'..=' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// Python's `str(x)` for a value a string method or filter receives.
fn py_str(value: &Value) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".to_string(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.to_string(),
        _ => value.as_str().map_or_else(|| value.to_string(), str::to_string),
    }
}

/// A result keeps the input's safety, as markupsafe's `Markup` methods do.
fn like(value: &Value, s: &str) -> Value {
    if value.is_safe() {
        Value::from_safe_string(s.to_string())
    } else {
        Value::from(s)
    }
}

#[derive(Clone, Copy)]
enum Ends {
    Both,
    Start,
    End,
}

/// `str.strip(chars)` and its one-sided forms: whitespace by Python's set when `chars` is None,
/// else any of the characters of `chars`.
fn py_strip<'s>(s: &'s str, chars: Option<&Value>, ends: Ends, what: &str) -> Result<&'s str, Error> {
    let set: Option<Vec<char>> = match chars {
        None => None,
        Some(c) if c.is_none() || c.is_undefined() => None,
        Some(c) => match c.as_str() {
            Some(c) => Some(c.chars().collect()),
            None => return Err(invalid(format!("{what} arg must be None or str, not {}", c.kind()))),
        },
    };
    let strip = |c: char| set.as_ref().map_or_else(|| py_space(c), |set| set.contains(&c));
    Ok(match ends {
        Ends::Both => s.trim_matches(strip),
        Ends::Start => s.trim_start_matches(strip),
        Ends::End => s.trim_end_matches(strip),
    })
}

/// Jinja2's `trim(value, chars=None)`: `str(value).strip(chars)`.
pub fn trim(value: Value, chars: Option<Value>) -> Result<Value, Error> {
    let s = py_str(&value);
    Ok(like(&value, py_strip(&s, chars.as_ref(), Ends::Both, "trim()")?))
}

/// `str.split(sep=None, maxsplit=-1)`: without a separator, runs of Python whitespace split and
/// none is kept at either end (the part after the last allowed split keeps its trailing space).
fn py_split<'s>(s: &'s str, sep: Option<&str>, maxsplit: i64) -> Result<Vec<&'s str>, Error> {
    let limit = usize::try_from(maxsplit).ok();
    Ok(match sep {
        Some("") => return Err(invalid("split(): empty separator")),
        Some(sep) => match limit {
            Some(n) => s.splitn(n.saturating_add(1), sep).collect(),
            None => s.split(sep).collect(),
        },
        None => {
            let mut parts = Vec::new();
            let mut rest = s.trim_start_matches(py_space);
            while !rest.is_empty() {
                if limit == Some(parts.len()) {
                    parts.push(rest);
                    break;
                }
                match rest.find(py_space) {
                    Some(i) => {
                        parts.push(&rest[..i]);
                        rest = rest[i..].trim_start_matches(py_space);
                    }
                    None => {
                        parts.push(rest);
                        break;
                    }
                }
            }
            parts
        }
    })
}

/// Python's string methods where whitespace is Python's (`strip`, `lstrip`, `rstrip`, `split`,
/// `isspace`); every other method goes to minijinja-contrib's pycompat.
pub fn unknown_method(state: &minijinja::State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    let Some(s) = value.as_str().filter(|_| value.kind() == ValueKind::String) else {
        return minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args);
    };
    let positional = |max: usize| -> Result<&[Value], Error> {
        if args.last().is_some_and(Value::is_kwargs) {
            return Err(invalid(format!("{method}() takes no keyword arguments")));
        }
        if args.len() > max {
            return Err(invalid(format!("{method}() takes at most {max} argument(s) ({} given)", args.len())));
        }
        Ok(args)
    };
    match method {
        "strip" | "lstrip" | "rstrip" => {
            let args = positional(1)?;
            let ends = match method {
                "strip" => Ends::Both,
                "lstrip" => Ends::Start,
                _ => Ends::End,
            };
            Ok(like(value, py_strip(s, args.first(), ends, &format!("{method}()"))?))
        }
        "split" => {
            // Python takes `sep` and `maxsplit` by position or by name.
            let mut args = args.to_vec();
            let kwargs = match args.last() {
                Some(last) if last.is_kwargs() => Some(Kwargs::from_value(args.pop().as_ref())?),
                _ => None,
            };
            if args.len() > 2 {
                return Err(invalid(format!("split() takes at most 2 arguments ({} given)", args.len())));
            }
            let mut sep = args.first().cloned();
            let mut maxsplit = args.get(1).cloned();
            if let Some(kwargs) = kwargs {
                for (name, slot) in [("sep", &mut sep), ("maxsplit", &mut maxsplit)] {
                    if kwargs.has(name) {
                        if slot.is_some() {
                            return Err(invalid(format!("split() got multiple values for argument '{name}'")));
                        }
                        *slot = Some(kwargs.get::<Value>(name)?);
                    }
                }
                kwargs.assert_all_used()?;
            }
            let sep = match &sep {
                None => None,
                Some(v) if v.is_none() || v.is_undefined() => None,
                Some(v) => {
                    Some(v.as_str().ok_or_else(|| invalid(format!("split(): must be str or None, not {}", v.kind())))?)
                }
            };
            let maxsplit = match &maxsplit {
                None => -1,
                Some(v) => v
                    .as_i64()
                    .filter(|_| v.is_integer())
                    .ok_or_else(|| invalid(format!("split(): maxsplit must be an integer, not {v}")))?,
            };
            Ok(py_split(s, sep, maxsplit)?.into_iter().map(|p| like(value, p)).collect())
        }
        "isspace" => {
            positional(0)?;
            Ok(Value::from(!s.is_empty() && s.chars().all(py_space)))
        }
        _ => minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_whitespace_is_exactly_str_isspace() {
        // Python 3: [hex(ord(c)) for c in map(chr, range(0x110000)) if c.isspace()]
        let python: Vec<u32> = [
            0x9, 0xa, 0xb, 0xc, 0xd, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x85, 0xa0, 0x1680, 0x2000, 0x2001, 0x2002, 0x2003,
            0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200a, 0x2028, 0x2029, 0x202f, 0x205f, 0x3000,
        ]
        .to_vec();
        let ours: Vec<u32> =
            (0..=0x10ffffu32).filter_map(char::from_u32).filter(|&c| py_space(c)).map(u32::from).collect();
        assert_eq!(ours, python);
    }

    #[test]
    fn split_as_python() {
        let s = " \u{1f}Fry\u{1e} it.\u{3000}\u{1f} ";
        assert_eq!(py_split(s, None, -1).unwrap(), ["Fry", "it."]);
        assert_eq!(py_split(s, None, 1).unwrap(), ["Fry", "it.\u{3000}\u{1f} "]);
        assert_eq!(py_split(s, None, 0).unwrap(), ["Fry\u{1e} it.\u{3000}\u{1f} "]);
        assert_eq!(py_split("  ", None, 0).unwrap(), Vec::<&str>::new());
        assert_eq!(py_split("a ", None, 1).unwrap(), ["a"]);
        assert_eq!(py_split("a,b,,c", Some(","), 2).unwrap(), ["a", "b", ",c"]);
        assert_eq!(py_split("", Some(","), -1).unwrap(), [""]);
        assert!(py_split("a", Some(""), -1).is_err());
    }
}
