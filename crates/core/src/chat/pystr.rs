//! Python `str` semantics the chat templates rely on where Rust's differ: Python's
//! whitespace set (for `strip()`, `split()`, `|trim`), `str.title`, float `repr`, and
//! `str()`/`repr()` of template values (what `{{ value }}` prints in Jinja2).

use std::fmt::Write;

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// `str.isspace` for one character: Rust's `White_Space` set plus the four ASCII
/// information separators U+001C..U+001F that Python also counts as whitespace.
pub(crate) fn is_py_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Which ends `strip` works on.
#[derive(Clone, Copy)]
pub(crate) enum Ends {
    Both,
    Start,
    End,
}

/// `str.strip` / `lstrip` / `rstrip` with an optional set of characters.
pub(crate) fn py_strip<'a>(s: &'a str, chars: Option<&str>, ends: Ends) -> &'a str {
    let matches = |c: char| match chars {
        Some(set) => set.contains(c),
        None => is_py_whitespace(c),
    };
    match ends {
        Ends::Both => s.trim_matches(matches),
        Ends::Start => s.trim_start_matches(matches),
        Ends::End => s.trim_end_matches(matches),
    }
}

/// `str.split(sep, maxsplit)`. `None` for `sep` splits on runs of whitespace and drops
/// empty pieces, following CPython's `split_whitespace` (the remainder after `maxsplit`
/// splits keeps its trailing whitespace). An empty `sep` is a `ValueError` in Python.
pub(crate) fn py_split(s: &str, sep: Option<&str>, maxsplit: i64) -> Result<Vec<String>, String> {
    let max = if maxsplit < 0 {
        usize::MAX
    } else {
        maxsplit as usize
    };
    match sep {
        Some("") => Err("empty separator".to_string()),
        Some(sep) => Ok(s
            .splitn(max.saturating_add(1), sep)
            .map(str::to_string)
            .collect()),
        None => {
            let mut out = Vec::new();
            let mut rest = s.trim_start_matches(is_py_whitespace);
            let mut splits = 0;
            while !rest.is_empty() {
                if splits == max {
                    out.push(rest.to_string());
                    break;
                }
                let end = rest.find(is_py_whitespace).unwrap_or(rest.len());
                out.push(rest[..end].to_string());
                rest = rest[end..].trim_start_matches(is_py_whitespace);
                splits += 1;
            }
            Ok(out)
        }
    }
}

/// `str.rsplit(sep, maxsplit)`: like [`py_split`] but splitting from the right, so the
/// unsplit remainder (and its leading whitespace) is at the front.
pub(crate) fn py_rsplit(s: &str, sep: Option<&str>, maxsplit: i64) -> Result<Vec<String>, String> {
    let max = if maxsplit < 0 {
        usize::MAX
    } else {
        maxsplit as usize
    };
    let mut out: Vec<String> = match sep {
        Some("") => return Err("empty separator".to_string()),
        Some(sep) => s
            .rsplitn(max.saturating_add(1), sep)
            .map(str::to_string)
            .collect(),
        None => {
            let mut out = Vec::new();
            let mut rest = s.trim_end_matches(is_py_whitespace);
            let mut splits = 0;
            while !rest.is_empty() {
                if splits == max {
                    out.push(rest.to_string());
                    break;
                }
                let start = rest
                    .char_indices()
                    .rev()
                    .find(|(_, c)| is_py_whitespace(*c))
                    .map_or(0, |(i, c)| i + c.len_utf8());
                out.push(rest[start..].to_string());
                rest = rest[..start].trim_end_matches(is_py_whitespace);
                splits += 1;
            }
            out
        }
    };
    out.reverse();
    Ok(out)
}

/// `str.title`: a cased character is upper-cased when it follows an uncased one and
/// lower-cased otherwise (so "they're" becomes "They'Re", as in Python).
pub(crate) fn py_title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut previous_is_cased = false;
    for c in s.chars() {
        if c.is_uppercase() {
            if previous_is_cased {
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
            previous_is_cased = true;
        } else if c.is_lowercase() {
            if previous_is_cased {
                out.push(c);
            } else {
                out.extend(c.to_uppercase());
            }
            previous_is_cased = true;
        } else {
            out.push(c);
            previous_is_cased = false;
        }
    }
    out
}

/// Python's `repr(float)` for finite values: the shortest round-tripping digits, in
/// positional notation when the decimal exponent is in [-4, 16), else scientific with a
/// signed, at least two-digit exponent ("1e-05", "1.5e+16"); integral values get ".0".
pub(crate) fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".to_string();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.to_string();
    }
    // `{:e}` gives the shortest round-trip digits, e.g. "-1.2345e-7" or "0e0".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    // Position of the decimal point relative to the first digit, as CPython counts it.
    let decpt = exp + 1;
    let mut out = String::from(sign);
    if (-3..=16).contains(&decpt) {
        if decpt <= 0 {
            out.push_str("0.");
            for _ in 0..(-decpt) {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let decpt = decpt as usize;
            if digits.len() <= decpt {
                out.push_str(&digits);
                for _ in digits.len()..decpt {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..decpt]);
                out.push('.');
                out.push_str(&digits[decpt..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    out
}

/// Characters that Python's `str.isprintable` rejects and `repr` therefore escapes:
/// controls, separators other than the ASCII space, and the common format characters.
/// (Python consults the full Unicode database; unassigned and private-use code points are
/// not covered here.)
fn py_repr_escapes(c: char) -> bool {
    let u = c as u32;
    u < 0x20
        || (0x7f..=0xa0).contains(&u)
        || u == 0xad
        || u == 0x1680
        || (0x2000..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x205f..=0x206f).contains(&u)
        || u == 0x3000
        || u == 0xfeff
        || (0xfff9..=0xfffb).contains(&u)
}

/// Python's `repr(str)`: single quotes unless the text has a single quote and no double
/// quote; backslash, the chosen quote, `\n`, `\r`, `\t` and non-printables escaped.
fn py_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if py_repr_escapes(c) => {
                let u = c as u32;
                let _ = if u <= 0xff {
                    write!(out, "\\x{u:02x}")
                } else {
                    write!(out, "\\u{u:04x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// Longest text one printed value or `tojson` result may become, and the deepest nesting
/// printed: a template can build a list that contains itself many times over (`[l, l]`
/// doubled in a loop shares storage, so it costs no fuel) whose text is exponentially long,
/// or a list nested 100,000 deep that would overflow the stack when printed.
pub(crate) const MAX_VALUE_TEXT: usize = 16 << 20;
pub(crate) const MAX_VALUE_DEPTH: usize = 128;

/// The error for a value past [`MAX_VALUE_TEXT`] or [`MAX_VALUE_DEPTH`]; reported as the
/// template exceeding its sandbox.
pub(crate) fn too_large() -> Error {
    Error::from(ErrorKind::OutOfFuel)
}

/// `str(value)` as Jinja2 prints it: `None`, `True`/`False`, Python float repr, and
/// containers in Python's `repr` form. Undefined prints nothing. Values whose text would
/// pass [`MAX_VALUE_TEXT`] or nest past [`MAX_VALUE_DEPTH`] are an error.
pub(crate) fn write_py_str(value: &Value, out: &mut String) -> Result<(), Error> {
    match value.kind() {
        ValueKind::String => {
            out.push_str(value.as_str().unwrap_or_default());
            Ok(())
        }
        _ => write_py_repr(value, out),
    }
}

/// `repr(value)` for the JSON-like values templates see (limits as [`write_py_str`]).
pub(crate) fn write_py_repr(value: &Value, out: &mut String) -> Result<(), Error> {
    repr_at(value, out, 0)
}

fn repr_at(value: &Value, out: &mut String, depth: usize) -> Result<(), Error> {
    if depth > MAX_VALUE_DEPTH || out.len() > MAX_VALUE_TEXT {
        return Err(too_large());
    }
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(f) => out.push_str(&py_float_repr(f)),
            Err(_) => {
                let _ = write!(out, "{value}");
            }
        },
        ValueKind::String => py_str_repr(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq => {
            out.push('[');
            if let Ok(items) = value.try_iter() {
                for (i, item) in items.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    repr_at(&item, out, depth + 1)?;
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(keys) = value.try_iter() {
                for (i, key) in keys.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    repr_at(&key, out, depth + 1)?;
                    out.push_str(": ");
                    if let Ok(item) = value.get_item(&key) {
                        repr_at(&item, out, depth + 1)?;
                    }
                }
            }
            out.push('}');
        }
        // Integers, bytes and engine objects (macros, namespaces, iterators) have no JSON
        // counterpart in chat inputs; print them the engine's way.
        _ => {
            let _ = write!(out, "{value}");
        }
    }
    if out.len() > MAX_VALUE_TEXT {
        return Err(too_large());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e-5, "1e-05"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789.125, "123456789.125"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (5e-324, "5e-324"),
        ];
        for (f, want) in cases {
            assert_eq!(py_float_repr(f), want, "{f:e}");
        }
    }

    #[test]
    fn split_matches_python() {
        assert_eq!(py_split("  a b\t c  ", None, -1).unwrap(), ["a", "b", "c"]);
        assert_eq!(py_split(" a b c ", None, 1).unwrap(), ["a", "b c "]);
        assert_eq!(py_split("a,,b", Some(","), -1).unwrap(), ["a", "", "b"]);
        assert_eq!(py_split("a,b,c", Some(","), 1).unwrap(), ["a", "b,c"]);
        assert!(py_split("abc", Some(""), -1).is_err());
        assert!(py_split("   ", None, -1).unwrap().is_empty());
    }

    #[test]
    fn rsplit_matches_python() {
        assert_eq!(py_rsplit("  a b\t c  ", None, -1).unwrap(), ["a", "b", "c"]);
        assert_eq!(py_rsplit(" a b c ", None, 1).unwrap(), [" a b", "c"]);
        assert_eq!(py_rsplit("a,b,c", Some(","), 1).unwrap(), ["a,b", "c"]);
        assert_eq!(py_rsplit("ab", Some("b"), -1).unwrap(), ["a", ""]);
        assert!(py_rsplit("", None, -1).unwrap().is_empty());
    }

    #[test]
    fn strip_uses_python_whitespace() {
        assert_eq!(py_strip("\u{1c} x \u{a0}", None, Ends::Both), "x");
        assert_eq!(py_strip("\n\nx\n", Some("\n"), Ends::Start), "x\n");
    }

    #[test]
    fn title_matches_python() {
        assert_eq!(
            py_title("hello wORLD they're 3rd"),
            "Hello World They'Re 3Rd"
        );
    }

    #[test]
    fn repr_matches_python() {
        let v = Value::from(vec![
            Value::from("it's"),
            Value::from("a'b\"c\n"),
            Value::from(true),
            Value::from(()),
            Value::from(1.5),
        ]);
        let mut s = String::new();
        write_py_repr(&v, &mut s).unwrap();
        assert_eq!(s, r#"["it's", 'a\'b"c\n', True, None, 1.5]"#);
    }
}
