//! Profiling end to end: the real binary on a tiny synthetic Qwen2 model.
//! The summary is parsed with patterns built from the seed profile's lines
//! (`docs/seed_profile_qwen25_05b.md`), its counts are checked against the number of calls
//! the forward pass makes, and the Chrome trace's nesting is checked.

#![cfg(feature = "profiling")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use metallic::backend::{MatmulOp, MatmulShape};
use metallic::synth::{self, SynthOptions};
use metallic::tokenizer::TokenizerSpec;
use metallic_cpu::matmul::{default_impl_for, Role, IMPLS};
use metallic_gguf::GgmlType;
use regex::Regex;
use serde_json::Value;

/// Layers, hidden size, FFN size and vocabulary of the `tiny` preset.
const LAYERS: usize = 2;
const HIDDEN: usize = 64;
const FFN: usize = 128;
const VOCAB: usize = 151936;
/// Q heads (4 x 16) plus K and V heads (2 x 16 each).
const QKV: usize = 128;

/// GPT-2's byte-to-character table: a byte-level BPE vocabulary of the 256 bytes.
fn byte_level_alphabet() -> Vec<String> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable.contains(&b) {
                char::from_u32(b).unwrap().to_string()
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap().to_string()
            }
        })
        .collect()
}

/// Cargo's scratch space for integration tests (inside target/), reused across runs.
fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("profiling");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tiny model (Q8_0 weights), written once per test binary.
fn model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let mut tokens = byte_level_alphabet();
        tokens.push("<|endoftext|>".into());
        let spec = TokenizerSpec {
            model: "gpt2".into(),
            pre: "qwen2".into(),
            token_types: vec![1; tokens.len()],
            eos_id: Some(256),
            tokens,
            ..Default::default()
        };
        let preset = synth::preset(metallic::config::Arch::Qwen2, "tiny").unwrap();
        let path = scratch().join("tiny-q8_0.gguf");
        synth::write(
            &SynthOptions {
                preset,
                dtype: GgmlType::Q8_0,
                tokenizer: &spec,
                chat_template: None,
                seed: 1,
            },
            &path,
        )
        .unwrap();
        path
    })
}

fn metallic(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_metallic"));
    c.args(args);
    // Hermetic: no autotune cache of the user's (tests that want one set their own).
    c.env("XDG_CACHE_HOME", scratch().join("empty-cache"));
    for k in [
        "METALLIC_CACHE_DIR",
        "METALLIC_PROFILING_ENABLED",
        "METALLIC_METRICS_JSONL_PATH",
        "METALLIC_MATMUL_BACKEND",
        "METALLIC_MATMUL_AUTOTUNE",
    ] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "metallic {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `generate` on the tiny model: `n` tokens, greedy, EOS ignored.
fn generate(n: usize, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let m = model().to_str().unwrap();
    let n = n.to_string();
    let mut args = vec![
        "generate",
        "--model",
        m,
        "hello",
        "-n",
        &n,
        "--temp",
        "0",
        "--ignore-eos",
        "-t",
        "2",
    ];
    args.extend_from_slice(extra);
    metallic(&args, env)
}

/// The seed's stats tail: `count=9120 | total=1794.58ms | avg=0.197ms | min=0.105ms | max=2.613ms | p95_ms=0.241ms, p99_ms=0.282ms`.
const STATS: &str = r"count=(\d+) \| total=(\d+\.\d{2})ms \| avg=(\d+\.\d{3})ms \| min=(\d+\.\d{3})ms \| max=(\d+\.\d{3})ms \| p95_ms=(\d+\.\d{3})ms, p99_ms=(\d+\.\d{3})ms";

#[derive(Debug, Clone, Copy)]
struct Row {
    count: usize,
    total: f64,
    min: f64,
    max: f64,
    p95: f64,
    p99: f64,
}

fn row(c: &regex::Captures<'_>, at: usize) -> Row {
    let f = |i: usize| c[at + i].parse::<f64>().unwrap();
    Row {
        count: c[at].parse().unwrap(),
        total: f(1),
        min: f(3),
        max: f(4),
        p95: f(5),
        p99: f(6),
    }
}

/// op, batch, m, n, k, tA, tB of a shape line.
type ShapeKey = (String, usize, usize, usize, usize, u8, u8);

/// The three seed sections, parsed; every line of them must match a seed pattern.
struct Summary {
    backends: Vec<(String, Row)>,
    ops: Vec<(String, String, Row)>,
    /// (op, batch, m, n, k, tA, tB) -> rows per backend.
    shapes: Vec<(ShapeKey, Vec<(String, Row)>)>,
}

fn section<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    let start = text
        .find(header)
        .unwrap_or_else(|| panic!("no `{header}` in:\n{text}"));
    text[start + header.len()..]
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect()
}

fn parse_summary(text: &str) -> Summary {
    let backend = Regex::new(&format!(r"^  backend=(\S+): {STATS}$")).unwrap();
    let op = Regex::new(&format!(r"^  (\S+) @ (\S+): {STATS}$")).unwrap();
    let shape = Regex::new(
        r"^  op=(\S+) \| batch=(\d+) \| m=(\d+) \| n=(\d+) \| k=(\d+) \| tA=([01]) \| tB=([01]):$",
    )
    .unwrap();
    let shape_backend = Regex::new(&format!(r"^    backend=(\S+): {STATS}$")).unwrap();

    let backends = section(text, "Matmul backend summary:")
        .into_iter()
        .map(|l| {
            let c = backend
                .captures(l)
                .unwrap_or_else(|| panic!("not a seed line: {l:?}"));
            (c[1].to_string(), row(&c, 2))
        })
        .collect();
    let ops = section(text, "Matmul op/backend summary:")
        .into_iter()
        .map(|l| {
            let c = op
                .captures(l)
                .unwrap_or_else(|| panic!("not a seed line: {l:?}"));
            (c[1].to_string(), c[2].to_string(), row(&c, 3))
        })
        .collect();
    let mut shapes: Vec<(_, Vec<(String, Row)>)> = Vec::new();
    for l in section(text, "Matmul shape backend summary:") {
        if let Some(c) = shape.captures(l) {
            let n = |i: usize| c[i].parse::<usize>().unwrap();
            let key = (
                c[1].to_string(),
                n(2),
                n(3),
                n(4),
                n(5),
                c[6].parse().unwrap(),
                c[7].parse().unwrap(),
            );
            shapes.push((key, Vec::new()));
        } else {
            let c = shape_backend
                .captures(l)
                .unwrap_or_else(|| panic!("not a seed line: {l:?}"));
            shapes
                .last_mut()
                .expect("a backend line follows a shape line")
                .1
                .push((c[1].to_string(), row(&c, 2)));
        }
    }
    Summary {
        backends,
        ops,
        shapes,
    }
}

fn assert_sorted_by_total(totals: &[f64], what: &str) {
    assert!(
        totals.windows(2).all(|w| w[0] >= w[1]),
        "{what} not sorted by total descending: {totals:?}"
    );
}

fn assert_row_consistent(r: &Row) {
    // Rounded to the printed precision.
    assert!(
        r.min <= r.p95 + 1e-3 && r.p95 <= r.p99 + 1e-3 && r.p99 <= r.max + 1e-3,
        "{r:?}"
    );
    assert!(r.total + 0.01 >= r.min * r.count as f64 - 0.01, "{r:?}");
}

#[test]
fn profiling_summary_has_the_seed_format_and_one_count_per_call() {
    let n = 7; // tokens generated: 1 from the prefill step, then n - 1 decode steps
    let decode_steps = n - 1;
    let out = generate(n, &[], &[("METALLIC_PROFILING_ENABLED", "yes")]);
    let err = String::from_utf8(out.stderr).unwrap();
    let s = parse_summary(&err);

    // One implementation per shape, the one the CPU's default rule names.
    let shape_count = |op: &str, m: usize, n_: usize, k: usize| -> usize {
        s.shapes
            .iter()
            .filter(|(key, _)| key.0 == op && key.2 == m && key.3 == n_ && key.4 == k)
            .flat_map(|(_, rows)| rows.iter().map(|(_, r)| r.count))
            .sum()
    };
    // Per layer and decode step: fused QKV (with bias), o_proj, gate|up, down.
    assert_eq!(
        shape_count("matmul_bias_add", 1, QKV, HIDDEN),
        LAYERS * decode_steps
    );
    assert_eq!(
        shape_count("matmul", 1, HIDDEN, HIDDEN),
        LAYERS * decode_steps
    );
    assert_eq!(
        shape_count("matmul", 1, 2 * FFN, HIDDEN),
        LAYERS * decode_steps
    );
    assert_eq!(shape_count("matmul", 1, HIDDEN, FFN), LAYERS * decode_steps);
    // lm_head: once per step, the prefill step included.
    assert_eq!(shape_count("matmul", 1, VOCAB, HIDDEN), decode_steps + 1);
    for (key, rows) in &s.shapes {
        assert_eq!((key.1, key.5, key.6), (1, 0, 1), "{key:?}");
        let op = if key.0 == "matmul" {
            MatmulOp::Matmul
        } else {
            MatmulOp::MatmulBiasAdd
        };
        let shape = MatmulShape {
            op,
            dtype: GgmlType::Q8_0,
            batch: 1,
            m: key.2,
            n: key.3,
            k: key.4,
            ta: false,
            tb: true,
        };
        // The lm_head (the tied embedding here) is the output projection:
        // the CPU knows it by name and may keep it in float32 activations.
        let role = if key.3 == VOCAB {
            Role::Output
        } else {
            Role::Layer
        };
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].0,
            IMPLS[default_impl_for(&shape, role)].name,
            "{key:?}"
        );
    }

    // The three sections count the same calls.
    let total: usize = s.backends.iter().map(|b| b.1.count).sum();
    let by_op: usize = s.ops.iter().map(|o| o.2.count).sum();
    let by_shape: usize = s.shapes.iter().flat_map(|x| &x.1).map(|r| r.1.count).sum();
    let prompt_rows = s.shapes.iter().filter(|(k, _)| k.2 > 1).count();
    assert_eq!(prompt_rows, 4, "one prefill shape per layer matmul");
    assert_eq!(total, by_op);
    assert_eq!(total, by_shape);
    assert_eq!(total, LAYERS * 4 * (decode_steps + 1) + decode_steps + 1);

    assert_sorted_by_total(
        &s.backends.iter().map(|b| b.1.total).collect::<Vec<_>>(),
        "backends",
    );
    assert_sorted_by_total(&s.ops.iter().map(|b| b.2.total).collect::<Vec<_>>(), "ops");
    let shape_totals: Vec<f64> = s
        .shapes
        .iter()
        .map(|(_, r)| r.iter().map(|x| x.1.total).sum())
        .collect();
    // Shape totals are sums of rounded totals: allow the rounding.
    assert!(
        shape_totals.windows(2).all(|w| w[0] + 0.01 >= w[1]),
        "{shape_totals:?}"
    );
    for r in s.backends.iter().map(|b| &b.1) {
        assert_row_consistent(r);
    }

    // Per-op, per-layer and per-token sections.
    let op_line = Regex::new(r"(?m)^  op=(\S+) @ (\S+): count=(\d+) \|.*p50_ms=").unwrap();
    let op_counts: HashMap<String, usize> = op_line
        .captures_iter(&err)
        .map(|c| (c[1].to_string(), c[3].parse().unwrap()))
        .collect();
    let steps = decode_steps + 1;
    // A decode step's ffn norm and SwiGLU run inside the gate|up product
    // on the CPU's team (`vecdot_swiglu`, one op); the prompt step's apart.
    assert_eq!(
        op_counts["rms_norm"],
        2 * LAYERS + 1 + (LAYERS + 1) * decode_steps
    );
    assert_eq!(op_counts["swiglu"], LAYERS);
    assert_eq!(op_counts["attention"], LAYERS * steps);
    assert_eq!(op_counts["sample"], steps);
    assert_eq!(op_counts["detokenize"], n);
    assert_eq!(op_counts["embed"], steps);
    let layer_line = Regex::new(r"(?m)^  layer=(\d+): ops=(\d+) \| total=").unwrap();
    let layers: Vec<(usize, usize)> = layer_line
        .captures_iter(&err)
        .map(|c| (c[1].parse().unwrap(), c[2].parse().unwrap()))
        .collect();
    // 12 ops per layer in the prompt step (2 norms, 4 matmuls, rope, kv
    // write, attention, swiglu, 2 adds), 10 in a decode step (the ffn norm
    // and swiglu inside the gate|up product).
    assert_eq!(
        layers,
        (0..LAYERS)
            .map(|l| (l, 12 + 10 * decode_steps))
            .collect::<Vec<_>>()
    );
    let decode = Regex::new(r"(?m)^  decode: steps=(\d+) \| tokens=(\d+) \| count=\d+ .*p50_ms=(\S+)ms, p95_ms=(\S+)ms, p99_ms=(\S+)ms \| tok/s=").unwrap();
    let c = decode.captures(&err).expect("decode token line");
    assert_eq!(c[1].parse::<usize>().unwrap(), decode_steps);
    let prefill = Regex::new(r"(?m)^  prefill: steps=1 \| tokens=(\d+) \|").unwrap();
    assert!(prefill.is_match(&err), "{err}");
    assert!(err.contains("host and device time are the same clock"));
}

#[test]
fn jsonl_has_every_event_and_the_trace_nests_tokens_layers_ops() {
    let dir = scratch();
    let jsonl = dir.join("events.jsonl");
    let trace = dir.join("trace.json");
    let n = 4;
    generate(
        n,
        &["--trace", trace.to_str().unwrap()],
        &[("METALLIC_METRICS_JSONL_PATH", jsonl.to_str().unwrap())],
    );
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "run");
    assert_eq!(lines[0]["device_clock"], "host");
    let ops: Vec<&Value> = lines.iter().filter(|v| v["type"] == "op").collect();
    let steps: Vec<&Value> = lines.iter().filter(|v| v["type"] == "step").collect();
    assert_eq!(steps.len(), n);
    let down: Vec<&&Value> = ops
        .iter()
        .filter(|v| v["op"] == "matmul" && v["m"] == 1 && v["n"] == HIDDEN && v["k"] == FFN)
        .collect();
    assert_eq!(down.len(), LAYERS * (n - 1));
    for v in &down {
        assert_eq!(v["dtype"], "Q8_0");
        assert_eq!(
            (v["batch"].as_u64(), v["tA"].as_u64(), v["tB"].as_u64()),
            (Some(1), Some(0), Some(1))
        );
        assert!(v["host_ms"].as_f64().unwrap() > 0.0 && v["device_ms"].as_f64().unwrap() > 0.0);
    }

    let t: Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    let ev = t["traceEvents"].as_array().unwrap();
    let slices = |cat: &str| -> Vec<(f64, f64, &Value)> {
        ev.iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == cat)
            .map(|e| {
                let ts = e["ts"].as_f64().unwrap();
                (ts, ts + e["dur"].as_f64().unwrap(), e)
            })
            .collect()
    };
    let (tokens, layers, ops) = (slices("step"), slices("layer"), slices("op"));
    assert_eq!(tokens.len(), n);
    assert_eq!(
        tokens
            .iter()
            .filter(|t| t.2["name"].as_str().unwrap().starts_with("decode token"))
            .count(),
        n - 1
    );
    assert_eq!(layers.len(), LAYERS * n);
    // Times are whole nanoseconds printed in microseconds: compare to half a nanosecond.
    let inside =
        |a: &(f64, f64, &Value), b: &(f64, f64, &Value)| a.0 >= b.0 - 5e-4 && a.1 <= b.1 + 5e-4;
    for l in &layers {
        assert!(
            tokens.iter().any(|t| inside(l, t)),
            "layer slice outside every token: {}",
            l.2
        );
    }
    let mut in_layers = 0;
    for o in &ops {
        if let Some(layer) = o.2["args"]["layer"].as_u64() {
            in_layers += 1;
            assert!(
                layers
                    .iter()
                    .any(|l| l.2["args"]["layer"] == layer && inside(o, l)),
                "op outside its layer slice: {}",
                o.2
            );
        }
    }
    assert_eq!(in_layers, 12 * LAYERS + 10 * LAYERS * (n - 1));
}

#[test]
fn autotune_times_each_new_shape_once_and_later_runs_use_the_cache() {
    let cache_home = scratch().join("autotune-cache");
    let _ = std::fs::remove_dir_all(&cache_home);
    let home = cache_home.to_str().unwrap();
    let file = cache_home.join("metallic").join("matmul-autotune.json");
    let tune = [("XDG_CACHE_HOME", home), ("METALLIC_MATMUL_AUTOTUNE", "1")];

    generate(3, &[], &tune);
    let first = std::fs::read_to_string(&file).expect("autotune wrote its cache");
    let v: Value = serde_json::from_str(&first).unwrap();
    let tables = v["tables"].as_object().unwrap();
    assert_eq!(tables.len(), 1);
    let (key, table) = tables.iter().next().unwrap();
    let names: Vec<&str> = IMPLS.iter().map(|i| i.name).collect();
    assert!(key.contains(&format!("impls {}", names.join(","))), "{key}");
    // Decode: 4 layer shapes + lm_head; prefill: the 4 layer shapes at m = prompt length.
    let shapes = table.as_object().unwrap();
    assert_eq!(shapes.len(), 9, "{first}");
    for (shape, e) in shapes {
        assert!(shape.contains("dtype=Q8_0"), "{shape}");
        let times = e["median_ms"].as_object().unwrap();
        // Every implementation supports these Q8_0 shapes on the CPU.
        assert_eq!(
            times.len(),
            IMPLS.len(),
            "every implementation timed: {shape}"
        );
        let winner = e["winner"].as_str().unwrap();
        let best = times
            .iter()
            .map(|t| t.1.as_f64().unwrap())
            .fold(f64::INFINITY, f64::min);
        assert_eq!(times[winner].as_f64().unwrap(), best, "{shape}");
    }

    // Same shapes again: nothing is re-timed, so the file is untouched.
    generate(3, &[], &tune);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), first);

    // Later runs follow the cache even without autotune: make gemv win everywhere.
    let mut forced = v.clone();
    for e in forced["tables"][key.as_str()]
        .as_object_mut()
        .unwrap()
        .values_mut()
    {
        e["winner"] = "gemv".into();
    }
    std::fs::write(&file, serde_json::to_string(&forced).unwrap()).unwrap();
    let out = generate(
        3,
        &[],
        &[
            ("XDG_CACHE_HOME", home),
            ("METALLIC_PROFILING_ENABLED", "1"),
        ],
    );
    let s = parse_summary(&String::from_utf8(out.stderr).unwrap());
    assert_eq!(s.backends.len(), 1);
    assert_eq!(s.backends[0].0, "gemv");
    // METALLIC_MATMUL_AUTOTUNE=0 ignores the cache: back to the default rule.
    let out = generate(
        3,
        &[],
        &[
            ("XDG_CACHE_HOME", home),
            ("METALLIC_PROFILING_ENABLED", "1"),
            ("METALLIC_MATMUL_AUTOTUNE", "0"),
        ],
    );
    let s = parse_summary(&String::from_utf8(out.stderr).unwrap());
    assert!(s.backends.iter().all(|b| b.0 != "gemv"), "{:?}", s.backends);
}

#[test]
fn metallic_cache_dir_holds_the_autotune_cache_ahead_of_xdg_cache_home() {
    let root = scratch().join("cache-dir-override");
    let _ = std::fs::remove_dir_all(&root);
    let (own, xdg) = (root.join("own"), root.join("xdg"));
    generate(
        2,
        &[],
        &[
            ("METALLIC_CACHE_DIR", own.to_str().unwrap()),
            ("XDG_CACHE_HOME", xdg.to_str().unwrap()),
            ("METALLIC_MATMUL_AUTOTUNE", "1"),
        ],
    );
    assert!(own.join("matmul-autotune.json").is_file());
    assert!(!xdg.exists(), "nothing written under XDG_CACHE_HOME");
}

#[test]
fn forcing_an_unknown_matmul_implementation_fails_with_the_known_names() {
    let m = model().to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_metallic"))
        .args(["generate", "--model", m, "hi", "-n", "2"])
        .env("METALLIC_MATMUL_BACKEND", "mps")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let names: Vec<&str> = IMPLS.iter().map(|i| i.name).collect();
    assert!(
        err.contains("unknown matmul implementation `mps`") && err.contains(&names.join(", ")),
        "{err}"
    );
}

#[test]
fn probe_times_every_impl_on_a_recorded_profile_and_writes_csv_json_svg() {
    let dir = scratch().join("probe");
    std::fs::create_dir_all(&dir).unwrap();
    let jsonl = dir.join("profile.jsonl");
    generate(
        3,
        &[],
        &[("METALLIC_METRICS_JSONL_PATH", jsonl.to_str().unwrap())],
    );
    let (csv, json, svg) = (dir.join("p.csv"), dir.join("p.json"), dir.join("p.svg"));
    let p = |x: &PathBuf| x.to_str().unwrap().to_string();
    let args = [
        "probe",
        "--from",
        &p(&jsonl),
        "-t",
        "2",
        "--reps",
        "3",
        "--budget-ms",
        "1",
        "--rotate-mb",
        "1",
        "--stream-mb",
        "8",
        "--csv",
        &p(&csv),
        "--json",
        &p(&json),
        "--chart",
        &p(&svg),
    ];
    let out = metallic(&args, &[]);
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("streaming-read floor"), "{table}");

    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let floor = v["stream_gb_s"].as_f64().unwrap();
    assert!(floor > 0.0);
    // The profile's 9 distinct shapes (decode + prefill), each on every implementation.
    let k = IMPLS.len();
    assert_eq!(rows.len(), 9 * k);
    let mut per_shape: HashMap<String, (usize, usize)> = HashMap::new();
    for r in rows {
        let s = &r["shape"];
        let key = format!("{} {} {} {}", s["op"], s["m"], s["n"], s["k"]);
        let e = per_shape.entry(key).or_default();
        e.0 += 1;
        e.1 += r["winner"].as_bool().unwrap() as usize;
        let (med, p10, p90) = (
            r["median_ms"].as_f64().unwrap(),
            r["p10_ms"].as_f64().unwrap(),
            r["p90_ms"].as_f64().unwrap(),
        );
        assert!(
            p10 <= med && med <= p90 && r["reps"].as_u64().unwrap() >= 3,
            "{r}"
        );
        // The back-to-back figure is per product of a replayed chain: a
        // positive time, on the CPU of the same order as one call, or at
        // worst a few scheduler time slices when the machine is loaded
        // (another test, another program): these tiny products take
        // microseconds, a preempted thread milliseconds.
        let chained = r["chained_ms"].as_f64().unwrap();
        assert!(chained > 0.0 && chained < (20.0 * p90).max(10.0), "{r}");
        let gb_s = r["gb_s"].as_f64().unwrap();
        assert!((gb_s - r["bytes"].as_f64().unwrap() / (med * 1e6)).abs() < 1e-6 * gb_s);
        assert!((r["pct_of_floor"].as_f64().unwrap() - 100.0 * gb_s / floor).abs() < 1e-6 * gb_s);
    }
    assert_eq!(per_shape.len(), 9);
    assert!(
        per_shape.values().all(|&(n, w)| n == k && w == 1),
        "{per_shape:?}"
    );

    let csv = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(csv.lines().count(), 1 + 9 * k);
    assert!(csv.starts_with("label,op,dtype,m,n,k,impl,"));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(
        svg.matches("<rect x=").count() - k,
        9 * k,
        "one bar per row plus the legend"
    );
}
