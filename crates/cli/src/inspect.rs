//! `metallic inspect FILE [--json]`: a GGUF file's header, metadata and tensor table.
//!
//! Text mode is for reading, like gguf-py's gguf-dump: strings are shown escaped and cut to
//! [`TEXT_STRING_CHARS`] characters (with their full length), arrays show their first
//! [`TEXT_ARRAY_ITEMS`] elements and their length. Shapes are in ggml order (innermost, i.e.
//! row length, first), as GGUF stores them.
//!
//! `--json` is for tools: strings are always complete; arrays up to [`JSON_ARRAY_ITEMS`]
//! elements are complete, longer ones (token lists, merges) are summarised as their first
//! [`JSON_ARRAY_ITEMS`] elements plus `"len"` and `"truncated": true`, so a 150k-token vocab
//! does not turn into megabytes of output. Non-finite floats, which JSON cannot hold, are
//! written as the strings `"NaN"`, `"inf"` and `"-inf"`.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;
use metallic_gguf::{GgmlType, GgufFile, TensorInfo, Value};
use serde_json::{json, Map, Value as Json};

/// Characters of a string value shown in text mode.
pub const TEXT_STRING_CHARS: usize = 60;
/// Array elements shown in text mode.
pub const TEXT_ARRAY_ITEMS: usize = 6;
/// Array elements written in JSON mode before the array is summarised.
pub const JSON_ARRAY_ITEMS: usize = 1024;

/// Prints the file's description to stdout. Errors (unreadable or invalid file) come back with
/// the path in their context; a closed pipe (`metallic inspect f | head`) is not an error.
pub fn run(path: &Path, json: bool) -> anyhow::Result<()> {
    let file =
        GgufFile::open(path).with_context(|| format!("cannot inspect {}", path.display()))?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let written = if json {
        serde_json::to_writer_pretty(&mut out, &to_json(path, &file))
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write_text(&mut out, path, &file)
    };
    match written.and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}

fn write_text(out: &mut impl Write, path: &Path, file: &GgufFile) -> io::Result<()> {
    writeln!(out, "{}", path.display())?;
    writeln!(
        out,
        "GGUF v{}, {} bytes, alignment {}, data section at offset {}",
        file.version(),
        file.len(),
        file.alignment(),
        file.data_offset()
    )?;

    let metadata = file.metadata();
    writeln!(out, "\nMetadata ({} entries):", metadata.len())?;
    let key_width = metadata.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let types: Vec<String> = metadata.iter().map(|(_, v)| type_label(v)).collect();
    let type_width = types.iter().map(String::len).max().unwrap_or(0);
    for (i, ((key, value), ty)) in metadata.iter().zip(&types).enumerate() {
        writeln!(
            out,
            "{:>5}  {ty:<type_width$}  {key:<key_width$}  {}",
            i + 1,
            text_value(value)
        )?;
    }

    let tensors = file.tensors();
    writeln!(
        out,
        "\nTensors ({}; shape in ggml order, innermost first):",
        tensors.len()
    )?;
    let rows: Vec<[String; 6]> = tensors
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.ggml_type.name().to_owned(),
                shape(t),
                t.n_elements.to_string(),
                t.n_bytes.to_string(),
                t.offset.to_string(),
            ]
        })
        .collect();
    let header = ["name", "type", "shape", "elements", "bytes", "offset"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let [wn, wt, ws, we, wb, wo] = widths;
    writeln!(
        out,
        "{:>5}  {:<wn$}  {:<wt$}  {:<ws$}  {:>we$}  {:>wb$}  {:>wo$}",
        "#", header[0], header[1], header[2], header[3], header[4], header[5]
    )?;
    for (i, [n, t, s, e, b, o]) in rows.iter().enumerate() {
        writeln!(
            out,
            "{:>5}  {n:<wn$}  {t:<wt$}  {s:<ws$}  {e:>we$}  {b:>wb$}  {o:>wo$}",
            i + 1
        )?;
    }

    let total: u64 = tensors.iter().map(|t| t.n_bytes).sum();
    let by_type = by_type(tensors);
    let summary: Vec<String> = by_type
        .iter()
        .map(|(ty, n, bytes)| format!("{ty} x{n} ({}, {bytes} B)", human_bytes(*bytes)))
        .collect();
    writeln!(
        out,
        "\nTensor data: {} in {} tensors: {}",
        human_bytes(total),
        tensors.len(),
        summary.join(", ")
    )?;
    Ok(())
}

/// Tensor count and data bytes per type, in order of first appearance.
fn by_type(tensors: &[TensorInfo]) -> Vec<(GgmlType, usize, u64)> {
    let mut by_type: Vec<(GgmlType, usize, u64)> = Vec::new();
    for t in tensors {
        match by_type.iter_mut().find(|(ty, _, _)| *ty == t.ggml_type) {
            Some((_, n, bytes)) => {
                *n += 1;
                *bytes += t.n_bytes;
            }
            None => by_type.push((t.ggml_type, 1, t.n_bytes)),
        }
    }
    by_type
}

fn shape(t: &TensorInfo) -> String {
    let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
    if dims.is_empty() {
        "scalar".into()
    } else {
        dims.join(" x ")
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `str`, `u32`, `[str; 49152]`, `[[u8; 2]; 3]` (inner length from the first element).
fn type_label(v: &Value) -> String {
    match v {
        Value::Array(elem, items) => {
            let inner = match items.first() {
                Some(first @ Value::Array(..)) => type_label(first),
                _ => elem.name().to_owned(),
            };
            format!("[{inner}; {}]", items.len())
        }
        other => other.value_type().name().to_owned(),
    }
}

fn text_value(v: &Value) -> String {
    let mut s = String::new();
    push_text(&mut s, v);
    s
}

fn push_text(s: &mut String, v: &Value) {
    match v {
        Value::String(text) => {
            let n_chars = text.chars().count();
            if n_chars <= TEXT_STRING_CHARS {
                let _ = write!(s, "{text:?}");
            } else {
                let head: String = text.chars().take(TEXT_STRING_CHARS).collect();
                let _ = write!(s, "{head:?}... ({} bytes)", text.len());
            }
        }
        Value::Array(_, items) => {
            s.push('[');
            for (i, item) in items.iter().take(TEXT_ARRAY_ITEMS).enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                push_text(s, item);
            }
            if items.len() > TEXT_ARRAY_ITEMS {
                let _ = write!(s, ", ... {} total", items.len());
            }
            s.push(']');
        }
        Value::F32(x) => {
            let _ = write!(s, "{x}");
        }
        Value::F64(x) => {
            let _ = write!(s, "{x}");
        }
        other => {
            let _ = write!(s, "{}", scalar_json(other));
        }
    }
}

fn to_json(path: &Path, file: &GgufFile) -> Json {
    let metadata: Vec<Json> = file
        .metadata()
        .iter()
        .map(|(key, value)| {
            let mut entry = Map::new();
            entry.insert("key".into(), Json::from(key.as_str()));
            entry.insert("type".into(), Json::from(value.value_type().name()));
            if let Value::Array(elem, items) = value {
                entry.insert("elem_type".into(), Json::from(elem.name()));
                entry.insert("len".into(), Json::from(items.len()));
                if items.len() > JSON_ARRAY_ITEMS {
                    entry.insert("truncated".into(), Json::Bool(true));
                }
            }
            entry.insert("value".into(), json_value(value));
            Json::Object(entry)
        })
        .collect();
    let tensors: Vec<Json> = file
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ggml_type.name(),
                "shape": t.dims,
                "n_elements": t.n_elements,
                "n_bytes": t.n_bytes,
                "offset": t.offset,
            })
        })
        .collect();
    json!({
        "path": path.display().to_string(),
        "file_size": file.len(),
        "version": file.version(),
        "alignment": file.alignment(),
        "data_offset": file.data_offset(),
        "metadata": metadata,
        "tensors": tensors,
        "by_type": by_type(file.tensors())
            .into_iter()
            .map(|(ty, n, bytes)| json!({"type": ty.name(), "tensors": n, "bytes": bytes}))
            .collect::<Vec<_>>(),
    })
}

fn json_value(v: &Value) -> Json {
    match v {
        Value::Array(_, items) => Json::Array(
            items
                .iter()
                .take(JSON_ARRAY_ITEMS)
                .map(json_value)
                .collect(),
        ),
        other => scalar_json(other),
    }
}

fn json_float(x: f64) -> Json {
    if x.is_nan() {
        Json::from("NaN")
    } else if x.is_infinite() {
        Json::from(if x > 0.0 { "inf" } else { "-inf" })
    } else {
        Json::from(x)
    }
}

fn scalar_json(v: &Value) -> Json {
    match v {
        Value::U8(x) => Json::from(*x),
        Value::I8(x) => Json::from(*x),
        Value::U16(x) => Json::from(*x),
        Value::I16(x) => Json::from(*x),
        Value::U32(x) => Json::from(*x),
        Value::I32(x) => Json::from(*x),
        Value::U64(x) => Json::from(*x),
        Value::I64(x) => Json::from(*x),
        // Through the shortest f32 text so 0.1f32 prints as 0.1, not 0.10000000149011612.
        Value::F32(x) => json_float(x.to_string().parse().unwrap_or(f64::from(*x))),
        Value::F64(x) => json_float(*x),
        Value::Bool(x) => Json::from(*x),
        Value::String(s) => Json::from(s.as_str()),
        Value::Array(..) => json_value(v),
    }
}
