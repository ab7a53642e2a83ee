//! The Jinja environment transformers renders chat templates in, rebuilt on minijinja.
//!
//! transformers (`utils/chat_template_utils.py`, `_cached_compile_jinja_template`) uses an
//! `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
//! extensions=[AssistantTracker, loopcontrols])` with Jinja's defaults otherwise (no
//! autoescape, `keep_trailing_newline=False`, lenient `Undefined`), overrides the `tojson`
//! filter with `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
//! sort_keys=False)`, and adds the globals `raise_exception`, `strftime_now`, `dict` and
//! `namespace`. Everything below closes a gap between minijinja and that environment; the
//! parity tests in `tests/chat_template_parity.rs` hold it to transformers' output.

use std::fmt::Write as _;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{from_args, Kwargs, Rest, Value, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};

use super::pyjson::{dumps, DumpOptions};
use super::pystr::{py_rsplit, py_split, py_strip, py_title, write_py_str, Ends};

/// Marks an error raised by the template's own `raise_exception(...)`, so rendering can
/// report it as such rather than as an engine failure.
#[derive(Debug)]
pub(crate) struct RaisedByTemplate(pub String);

impl std::fmt::Display for RaisedByTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedByTemplate {}

/// Where `strftime_now` takes the time from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clock {
    /// Local wall-clock time, as Python's `datetime.now()`.
    Local,
    /// A fixed instant (seconds since the Unix epoch, UTC) for reproducible prompts.
    Fixed(i64),
}

/// The sandbox's instruction budget (minijinja fuel: one unit per instruction, plus the
/// bytes of the strings and lists a step creates, checked before they are created). A
/// model's chat template is code from an untrusted file: without a budget, nested loops run
/// for minutes and string doubling exhausts memory. The real templates (Qwen2.5 with tools,
/// Llama 3.x) rendering a conversation of a megabyte use a small fraction of it.
pub(crate) const FUEL: u64 = 2_000_000;

/// Deepest macro/include nesting allowed (minijinja's default is 500 frames, enough to
/// overflow a small thread stack; real templates nest a handful).
pub(crate) const RECURSION_LIMIT: usize = 100;

pub(crate) fn build(clock: Clock) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()?,
    );
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_formatter(|out, _state, value| {
        // Jinja2 prints values with Python's `str()`: True/False/None, Python reprs for
        // containers and floats.
        let mut s = String::new();
        write_py_str(value, &mut s)?;
        out.write_str(&s).map_err(Error::from)
    });
    env.set_unknown_method_callback(python_methods);

    env.add_filter("tojson", tojson);
    env.add_filter("join", join);
    env.add_filter("trim", trim);

    // Jinja2's tests are Python isinstance/duck-typing checks: strings and dicts are
    // sequences and iterables, booleans are numbers.
    env.add_test("sequence", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::String
                | ValueKind::Bytes
                | ValueKind::Seq
                | ValueKind::Map
                | ValueKind::Undefined
        )
    });
    env.add_test("iterable", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::String
                | ValueKind::Bytes
                | ValueKind::Seq
                | ValueKind::Map
                | ValueKind::Iterable
                | ValueKind::Undefined
        )
    });
    env.add_test("number", |v: &Value| {
        matches!(v.kind(), ValueKind::Number | ValueKind::Bool)
    });

    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message.clone())
                .with_source(RaisedByTemplate(message)))
        },
    );
    env.add_function("strftime_now", move |format: &str| {
        strftime_now(clock, format)
    });
    Ok(env)
}

/// Python string methods whose Rust counterparts differ (whitespace set, `split()` on
/// runs of whitespace, `title`) or that pycompat lacks (`rsplit`); everything else goes
/// to minijinja-contrib's pycompat.
fn python_methods(
    state: &mut State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let strip = |ends| -> Result<Value, Error> {
            let (chars,): (Option<&str>,) = from_args(args)?;
            Ok(Value::from(py_strip(s, chars, ends)))
        };
        match method {
            "strip" => return strip(Ends::Both),
            "lstrip" => return strip(Ends::Start),
            "rstrip" => return strip(Ends::End),
            "split" | "rsplit" => {
                let (sep, maxsplit): (Option<&str>, Option<i64>) = from_args(args)?;
                let split = if method == "split" {
                    py_split
                } else {
                    py_rsplit
                };
                let parts = split(s, sep, maxsplit.unwrap_or(-1))
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e))?;
                return Ok(Value::from(
                    parts.into_iter().map(Value::from).collect::<Vec<_>>(),
                ));
            }
            "title" => {
                let () = from_args(args)?;
                return Ok(Value::from(py_title(s)));
            }
            // `'{:>1000000000}'.format(x)` allocates its width before any fuel is charged.
            "format" if max_format_number(s) > MAX_FORMAT_WIDTH => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("str.format width or precision above {MAX_FORMAT_WIDTH}"),
                ));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Widest field `str.format` may pad to.
const MAX_FORMAT_WIDTH: u64 = 4096;

/// The largest number written inside a `{...}` replacement field of a format string.
fn max_format_number(fmt: &str) -> u64 {
    let mut max = 0u64;
    for field in fmt.split('{').skip(1) {
        let spec = field.split('}').next().unwrap_or_default();
        for digits in spec.split(|c: char| !c.is_ascii_digit()) {
            if !digits.is_empty() {
                max = max.max(digits.parse().unwrap_or(u64::MAX));
            }
        }
    }
    max
}

/// Jinja2's `join(d='', attribute=None)`: items as `str()`, refusing a result longer than
/// the sandbox allows (minijinja's own join charges no fuel with an empty separator, so
/// joining a list that holds one long string many times would be free).
fn join(value: &Value, d: Option<&str>, kwargs: Kwargs) -> Result<String, Error> {
    let attribute: Option<&str> = kwargs.get("attribute")?;
    kwargs.assert_all_used()?;
    let sep = d.unwrap_or("");
    let mut out = String::new();
    for (i, item) in value.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        let item = match attribute {
            None => item,
            Some(path) => {
                let mut v = item;
                for part in path.split('.') {
                    v = match part.parse::<i64>() {
                        Ok(n) => v.get_item(&Value::from(n))?,
                        Err(_) => v.get_attr(part)?,
                    };
                }
                v
            }
        };
        write_py_str(&item, &mut out)?;
        if out.len() > super::pystr::MAX_VALUE_TEXT {
            return Err(super::pystr::too_large());
        }
    }
    Ok(out)
}

/// `|trim` is `str.strip(chars)` in Jinja2.
fn trim(s: &str, chars: Option<&str>) -> String {
    py_strip(s, chars, Ends::Both).to_string()
}

/// Widest `tojson` indent accepted.
const MAX_INDENT: i64 = 1024;

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, positionally or by keyword.
fn tojson(value: &Value, args: Rest<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    const NAMES: [&str; 4] = ["ensure_ascii", "indent", "separators", "sort_keys"];
    if args.len() > NAMES.len() {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let mut params: [Value; 4] = Default::default();
    for (i, name) in NAMES.iter().enumerate() {
        let by_name: Option<Value> = kwargs.get(name)?;
        params[i] = match (args.get(i), by_name) {
            (Some(_), Some(_)) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson got multiple values for argument '{name}'"),
                ))
            }
            (Some(v), None) => v.clone(),
            (None, Some(v)) => v,
            (None, None) => Value::from(()),
        };
    }
    kwargs.assert_all_used()?;
    let [ensure_ascii, indent, separators, sort_keys] = params;
    let indent = match indent.kind() {
        ValueKind::None | ValueKind::Undefined => None,
        ValueKind::String => Some(indent.as_str().unwrap_or_default().to_string()),
        // Python: `' ' * indent` (a bool counts as 0 or 1; negative gives "").
        ValueKind::Number | ValueKind::Bool => {
            let n = if indent.kind() == ValueKind::Bool {
                i64::from(indent.is_true())
            } else {
                indent.as_i64().ok_or_else(|| {
                    Error::new(ErrorKind::InvalidOperation, "tojson indent must be an int")
                })?
            };
            // Python would build any width; a template asking for more than this is
            // broken, and refusing it keeps a huge allocation from aborting the process.
            if n > MAX_INDENT {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson indent {n} is larger than {MAX_INDENT}"),
                ));
            }
            Some(" ".repeat(n.max(0) as usize))
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson indent must be an int or a string",
            ))
        }
    };
    let separators = match separators.kind() {
        ValueKind::None | ValueKind::Undefined => None,
        _ => {
            let parts: Vec<Value> = separators.try_iter()?.collect();
            match parts.as_slice() {
                [item, key] if item.as_str().is_some() && key.as_str().is_some() => Some((
                    item.as_str().unwrap_or_default().to_string(),
                    key.as_str().unwrap_or_default().to_string(),
                )),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson separators must be a pair of strings",
                    ))
                }
            }
        }
    };
    let opts = DumpOptions::new(
        ensure_ascii.is_true(),
        indent,
        separators,
        sort_keys.is_true(),
    );
    Ok(Value::from(dumps(value, &opts)?))
}

/// Python's `datetime.now().strftime(format)`. chrono's specifiers follow C's strftime
/// in the C locale, which is what Python uses by default; an unknown specifier is an
/// error here (Python passes it to the platform libc).
pub(crate) fn strftime_now(clock: Clock, format: &str) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.iter().any(|item| matches!(item, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format {format:?}"),
        ));
    }
    let mut out = String::new();
    let written = match clock {
        Clock::Local => write!(
            out,
            "{}",
            chrono::Local::now().format_with_items(items.iter())
        ),
        Clock::Fixed(secs) => {
            let t = chrono::DateTime::from_timestamp(secs, 0).ok_or_else(|| {
                Error::new(ErrorKind::InvalidOperation, "fixed time out of range")
            })?;
            write!(out, "{}", t.naive_utc().format_with_items(items.iter()))
        }
    };
    written.map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: cannot format {format:?}"),
        )
    })?;
    Ok(out)
}
