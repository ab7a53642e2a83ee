//! Python `json.dumps` over template values: the `tojson` filter of transformers' chat
//! environment is `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//! sort_keys=False)`, so tool schemas and tool-call arguments must be printed exactly the
//! way Python prints them (", " and ": " separators, raw non-ASCII, Python float repr).

use std::fmt::Write;

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind};

use super::pystr::py_float_repr;

/// Options of `json.dumps` that templates can pass to `tojson`.
#[derive(Debug, Clone)]
pub(crate) struct DumpOptions {
    pub ensure_ascii: bool,
    /// `None`: single line. `Some(s)`: newline + `s` per nesting level (Python turns an
    /// integer indent into that many spaces, a string indent is used as is).
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl DumpOptions {
    /// Python picks the item separator from `indent` when `separators` is not given:
    /// `", "` on one line, `","` with an indent (so lines carry no trailing space).
    pub fn new(
        ensure_ascii: bool,
        indent: Option<String>,
        separators: Option<(String, String)>,
        sort_keys: bool,
    ) -> Self {
        let (item_separator, key_separator) = separators.unwrap_or_else(|| {
            if indent.is_some() {
                (",".to_string(), ": ".to_string())
            } else {
                (", ".to_string(), ": ".to_string())
            }
        });
        DumpOptions {
            ensure_ascii,
            indent,
            item_separator,
            key_separator,
            sort_keys,
        }
    }
}

/// Serializes `value` like Python's `json.dumps` with `opts`.
pub(crate) fn dumps(value: &Value, opts: &DumpOptions) -> Result<String, Error> {
    let mut out = String::new();
    write_value(&mut out, value, opts, 0)?;
    Ok(out)
}

fn not_serializable(value: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("Object of type {} is not JSON serializable", value.kind()),
    )
}

fn newline_indent(out: &mut String, opts: &DumpOptions, level: usize) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

fn write_value(
    out: &mut String,
    value: &Value,
    opts: &DumpOptions,
    level: usize,
) -> Result<(), Error> {
    if level > super::pystr::MAX_VALUE_DEPTH || out.len() > super::pystr::MAX_VALUE_TEXT {
        return Err(super::pystr::too_large());
    }
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value)?,
        ValueKind::String => write_string(out, value.as_str().unwrap_or_default(), opts),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_list(out, &items, opts, level)?;
        }
        ValueKind::Map => write_map(out, value, opts, level)?,
        // Python's json raises TypeError for Jinja's Undefined, bytes and arbitrary objects.
        _ => return Err(not_serializable(value)),
    }
    Ok(())
}

fn write_number(out: &mut String, value: &Value) -> Result<(), Error> {
    if value.is_integer() {
        // Integers (i64, u64 and i128 alike) print in decimal.
        write!(out, "{value}").map_err(|_| not_serializable(value))?;
    } else {
        let f = f64::try_from(value.clone())?;
        // json.dumps spells non-finite floats the JavaScript way (allow_nan=True).
        if f.is_nan() {
            out.push_str("NaN");
        } else if f.is_infinite() {
            out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            out.push_str(&py_float_repr(f));
        }
    }
    Ok(())
}

fn write_list(
    out: &mut String,
    items: &[Value],
    opts: &DumpOptions,
    level: usize,
) -> Result<(), Error> {
    if items.is_empty() {
        out.push_str("[]");
        return Ok(());
    }
    out.push('[');
    newline_indent(out, opts, level + 1);
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_separator);
            newline_indent(out, opts, level + 1);
        }
        write_value(out, item, opts, level + 1)?;
    }
    newline_indent(out, opts, level);
    out.push(']');
    Ok(())
}

/// Python converts non-string keys to strings (`True` -> "true", `None` -> "null", floats
/// by repr) and rejects other key types.
fn key_string(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_string()),
        ValueKind::None => Ok("null".to_string()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_string()),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key)?;
            Ok(s)
        }
        _ => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!(
                "keys must be str, int, float, bool or None, not {}",
                key.kind()
            ),
        )),
    }
}

fn write_map(out: &mut String, map: &Value, opts: &DumpOptions, level: usize) -> Result<(), Error> {
    let mut entries = Vec::new();
    for key in map.try_iter()? {
        let item = map.get_item(&key)?;
        entries.push((key_string(&key)?, item));
    }
    if entries.is_empty() {
        out.push_str("{}");
        return Ok(());
    }
    if opts.sort_keys {
        // Python sorts the original keys; for string keys that is code-point order, which
        // Rust's `str` ordering (UTF-8 byte order) also gives.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
    }
    out.push('{');
    newline_indent(out, opts, level + 1);
    for (i, (key, item)) in entries.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_separator);
            newline_indent(out, opts, level + 1);
        }
        write_string(out, key, opts);
        out.push_str(&opts.key_separator);
        write_value(out, item, opts, level + 1)?;
    }
    newline_indent(out, opts, level);
    out.push('}');
    Ok(())
}

/// JSON string escaping as CPython's encoder does it: `"`, `\`, and the C0 controls are
/// escaped (`\n`, `\r`, `\t`, `\b`, `\f` by name, the rest as `\u00XX`); everything else is
/// raw unless `ensure_ascii`, which writes non-ASCII as `\uXXXX` (surrogate pairs above
/// the BMP). DEL and U+2028/U+2029 stay raw, as in Python.
fn write_string(out: &mut String, s: &str, opts: &DumpOptions) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if opts.ensure_ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact() -> DumpOptions {
        DumpOptions::new(false, None, None, false)
    }

    #[test]
    fn escapes_like_cpython() {
        let v = Value::from("a\"b\\c\nd\u{1}é😀\u{7f}");
        assert_eq!(
            dumps(&v, &compact()).unwrap(),
            "\"a\\\"b\\\\c\\nd\\u0001é😀\u{7f}\""
        );
        let ascii = DumpOptions::new(true, None, None, false);
        assert_eq!(
            dumps(&Value::from("é😀"), &ascii).unwrap(),
            "\"\\u00e9\\ud83d\\ude00\""
        );
    }

    #[test]
    fn indent_uses_compact_item_separator_and_empty_containers_stay_inline() {
        let v = Value::from_pairs([
            ("a", Value::from(vec![Value::from(1), Value::from(2)])),
            ("b", Value::from(Vec::<Value>::new())),
        ]);
        let opts = DumpOptions::new(false, Some("  ".into()), None, false);
        assert_eq!(
            dumps(&v, &opts).unwrap(),
            "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": []\n}"
        );
        assert_eq!(dumps(&v, &compact()).unwrap(), "{\"a\": [1, 2], \"b\": []}");
    }

    #[test]
    fn undefined_is_not_serializable() {
        assert!(dumps(&Value::UNDEFINED, &compact()).is_err());
    }
}
