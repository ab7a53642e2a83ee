//! `metallic probe`: time every matmul implementation of a backend on the
//! Qwen2.5 shapes of the seed profile (`docs/seed_profile_qwen25_05b.md`) (or on a recorded profile's shapes),
//! against a memory-bandwidth floor measured in the same run.
//!
//! Weights are random, quantised once and copied until the copies span
//! `--rotate-mb`; successive repetitions use successive copies, so a weight
//! matrix is not in cache when its product runs (as in a real forward pass,
//! where every layer's weights are new). Times are backend intervals (device
//! events on a GPU, the host clock on the CPU).
//!
//! Each implementation is timed two ways: one launch between two marks
//! (`median_ms`, which includes the launch on a GPU), and back to back
//! inside one replayable step of [`CHAIN`] products (`chained_ms`, per
//! product): on CUDA that step is captured once as a graph and replayed, as
//! a decode step runs, so the per-shape figure predicts the step's time.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use metallic::backend::{Backend, DType, MatmulOp, MatmulShape, WeightView};
use metallic::config::Arch;
use metallic::percentile::nearest_rank;
use metallic_gguf::{quant, GgmlType, GgufFile, GgufWriter};
use serde::Serialize;

use crate::common::{check_host_memory, count_in, Device};
use crate::device::{on_device, OnBackend};

#[derive(Args, Debug, Clone)]
pub struct ProbeArgs {
    /// Where the matmuls run: cpu, or cuda (the first NVIDIA GPU).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// CPU threads (0: all cores).
    #[arg(short, long, default_value_t = 0)]
    pub threads: usize,
    /// Model whose shapes to probe: qwen2.5-0.5b, qwen2.5-1.5b or qwen2.5-3b.
    #[arg(long, default_value = "qwen2.5-0.5b")]
    pub preset: String,
    /// Probe the matmul shapes of a recorded profile (METALLIC_METRICS_JSONL_PATH output).
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Weight types, comma-separated (ignored with --from, which records them).
    #[arg(long, default_value = "q8_0")]
    pub dtype: String,
    /// Rows of the prefill shapes (0: decode shapes only; at most 16384).
    #[arg(long, default_value_t = 128, value_parser = count_in(0, 16_384))]
    pub prefill_m: usize,
    /// Timed repetitions per implementation and shape (at most; 1 to 100000).
    #[arg(long, default_value_t = 30, value_parser = count_in(1, 100_000))]
    pub reps: usize,
    /// Time budget per implementation and shape, in ms (at least 3 repetitions run).
    #[arg(long, default_value_t = 400)]
    pub budget_ms: u64,
    /// Total size of the weight copies rotated through, in MiB (beyond the last-level cache;
    /// 1 to 65536, and what the machine's memory holds).
    #[arg(long, default_value_t = 1024, value_parser = count_in(1, 65_536))]
    pub rotate_mb: usize,
    /// Size of the streaming-read buffer for the bandwidth floor, in MiB (1 to 65536, and
    /// what the machine's memory holds).
    #[arg(long, default_value_t = 1024, value_parser = count_in(1, 65_536))]
    pub stream_mb: usize,
    /// Only these implementations (comma-separated names).
    #[arg(long)]
    pub impls: Option<String>,
    /// Write every timing (shape, implementation, median, GB/s, % of floor) as CSV here.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write the whole report (machine, floor, every timing) as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// SVG chart of time per shape per implementation.
    #[arg(long)]
    pub chart: Option<PathBuf>,
}

/// A shape to probe and where it comes from.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeShape {
    pub label: String,
    pub op: &'static str,
    pub dtype: &'static str,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    #[serde(skip)]
    pub shape: MatmulShape,
}

/// One implementation on one shape.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeRow {
    pub shape: ProbeShape,
    pub imp: String,
    pub reps: usize,
    pub median_ms: f64,
    pub p10_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    /// Median time per product of [`CHAIN`] back-to-back products replayed
    /// as one step (a CUDA graph on the GPU).
    pub chained_ms: f64,
    pub bytes: u64,
    pub gb_s: f64,
    pub gflop_s: f64,
    /// Achieved bandwidth as a percentage of the streaming-read floor.
    pub pct_of_floor: f64,
    pub winner: bool,
}

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub command: String,
    pub device: String,
    pub backend: String,
    pub timing: String,
    pub stream_gb_s: f64,
    pub stream_mb: usize,
    pub rotate_mb: usize,
    pub rows: Vec<ProbeRow>,
}

fn shape(op: MatmulOp, dtype: GgmlType, m: usize, n: usize, k: usize) -> MatmulShape {
    MatmulShape {
        op,
        dtype,
        batch: 1,
        m,
        n,
        k,
        ta: false,
        tb: true,
    }
}

fn probe_shape(label: &str, s: MatmulShape) -> ProbeShape {
    ProbeShape {
        label: label.to_string(),
        op: s.op.name(),
        dtype: s.dtype.name(),
        m: s.m,
        n: s.n,
        k: s.k,
        shape: s,
    }
}

/// The seed's Qwen2.5 shapes of a preset: the decode products (m = 1) and the
/// per-layer products of a prefill of `prefill_m` rows (the lm_head runs on
/// the last row only, so it stays m = 1).
pub fn preset_shapes(name: &str, dtypes: &[GgmlType], prefill_m: usize) -> Result<Vec<ProbeShape>> {
    let p = metallic::synth::preset(Arch::Qwen2, name)?;
    let hd = p.hidden / p.heads;
    let qkv = (p.heads + 2 * p.kv_heads) * hd;
    let layer = [
        ("qkv", MatmulOp::MatmulBiasAdd, qkv, p.hidden),
        ("o_proj", MatmulOp::Matmul, p.hidden, p.heads * hd),
        ("gate_up", MatmulOp::Matmul, 2 * p.ffn, p.hidden),
        ("down", MatmulOp::Matmul, p.hidden, p.ffn),
    ];
    let mut out = Vec::new();
    for &dt in dtypes {
        for &(label, op, n, k) in &layer {
            out.push(probe_shape(
                &format!("{label} decode"),
                shape(op, dt, 1, n, k),
            ));
        }
        out.push(probe_shape(
            "lm_head decode",
            shape(MatmulOp::Matmul, dt, 1, p.vocab, p.hidden),
        ));
        if prefill_m > 1 {
            for &(label, op, n, k) in &layer {
                out.push(probe_shape(
                    &format!("{label} prefill"),
                    shape(op, dt, prefill_m, n, k),
                ));
            }
        }
    }
    Ok(out)
}

/// The distinct matmul shapes of a JSONL profile, in order of first use.
pub fn profile_shapes(path: &std::path::Path) -> Result<Vec<ProbeShape>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut skipped = HashSet::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        if v["type"] != "op" || v.get("n").is_none() {
            continue;
        }
        let op = match v["op"].as_str() {
            Some("matmul") => MatmulOp::Matmul,
            Some("matmul_bias_add") => MatmulOp::MatmulBiasAdd,
            Some(other) => {
                skipped.insert(other.to_string());
                continue;
            }
            None => continue,
        };
        let num = |k: &str| {
            v[k].as_u64()
                .map(|x| x as usize)
                .with_context(|| format!("{} line {}: no `{k}`", path.display(), i + 1))
        };
        let dt = v["dtype"]
            .as_str()
            .and_then(GgmlType::from_name)
            .with_context(|| format!("{} line {}: unknown dtype", path.display(), i + 1))?;
        let (batch, ta, tb) = (num("batch")?, num("tA")?, num("tB")?);
        if batch != 1 || ta != 0 || tb != 1 {
            skipped.insert(format!("{} batch={batch} tA={ta} tB={tb}", op.name()));
            continue;
        }
        let s = shape(op, dt, num("m")?, num("n")?, num("k")?);
        if seen.insert(s) {
            let phase = v["phase"].as_str().unwrap_or("");
            out.push(probe_shape(&format!("{} {phase}", op.name()), s));
        }
    }
    for s in skipped {
        eprintln!("probe: skipping `{s}` ops of the profile (only weight products are probed)");
    }
    if out.is_empty() {
        bail!(
            "{}: no matmul events (record one with METALLIC_METRICS_JSONL_PATH)",
            path.display()
        );
    }
    Ok(out)
}

/// Random weights of one shape, copied `copies` times, plus a bias and a
/// table the activations are embedded from, in one in-memory GGUF.
fn weights_file(s: &MatmulShape, copies: usize, seed: u64) -> Result<Arc<GgufFile>> {
    let ty = s.dtype;
    let mut st = seed | 1;
    let mut rnd = move || {
        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        (st >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let row_bytes = ty
        .row_bytes(s.k)
        .with_context(|| format!("k={} is not a multiple of the {} block", s.k, ty.name()))?;
    // Quantise 256 distinct rows and tile them: quantising 1 GiB would dominate the run.
    let distinct = s.n.min(256);
    let vals: Vec<f32> = (0..distinct * s.k).map(|_| rnd() * 0.05).collect();
    let block = quant::quantize(ty, &vals)?;
    let mut w = GgufWriter::new();
    for c in 0..copies {
        let mut bytes = Vec::with_capacity(s.n * row_bytes);
        while bytes.len() < s.n * row_bytes {
            let need = s.n * row_bytes - bytes.len();
            bytes.extend_from_slice(&block[..need.min(block.len())]);
        }
        w.add_tensor(format!("w{c}"), ty, &[s.k as u64, s.n as u64], bytes)?;
    }
    let f32_bytes = |v: Vec<f32>| {
        v.into_iter()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>()
    };
    let bias: Vec<f32> = (0..s.n).map(|_| rnd() * 0.1).collect();
    w.add_tensor("bias", GgmlType::F32, &[s.n as u64], f32_bytes(bias))?;
    let table_rows = s.m.clamp(1, 64);
    let table: Vec<f32> = (0..table_rows * s.k).map(|_| rnd()).collect();
    w.add_tensor(
        "x",
        GgmlType::F32,
        &[s.k as u64, table_rows as u64],
        f32_bytes(table),
    )?;
    let mut buf = Vec::new();
    w.write_to(&mut buf)?;
    Ok(Arc::new(GgufFile::from_bytes(buf)?))
}

fn view(file: &Arc<GgufFile>, name: &str) -> Result<WeightView> {
    let info = file
        .tensor(name)
        .with_context(|| format!("no tensor {name}"))?;
    Ok(WeightView::new(file.clone(), info.clone()))
}

/// Products per replayed chain in the back-to-back timing.
pub const CHAIN: usize = 16;

/// Time `f` with backend marks, `reps` times at most or until `budget_ms`
/// (at least 3 times), after two warm-up runs.
fn time_reps<B: Backend>(
    b: &B,
    reps: usize,
    budget_ms: u64,
    mut f: impl FnMut(usize) -> metallic::error::Result<()>,
) -> Result<Vec<f64>> {
    f(0)?;
    f(1)?;
    b.synchronize()?;
    let start = Instant::now();
    let mut v = Vec::with_capacity(reps);
    for r in 0..reps.max(3) {
        let m0 = b.mark()?;
        f(r + 2)?;
        let m1 = b.mark()?;
        v.push(b.elapsed_ms(&m0, &m1)?);
        if r + 1 >= 3 && start.elapsed().as_millis() as u64 >= budget_ms {
            break;
        }
    }
    Ok(v)
}

/// Streaming-read bandwidth (GB/s) of a `mb` MiB buffer: median of 9 reads.
/// The values written into the streaming-read buffer: one per word, wrapping.
/// Above 2^31 words (8 GiB) a range of `i32` (`0..words as i32`) would be empty
/// and the buffer would be read without ever being written (a wrong, too-high
/// floor), so the count is kept in `usize`.
fn stream_fill(words: usize) -> impl ExactSizeIterator<Item = i32> {
    (0..words).map(|i| i as i32)
}

fn stream_floor<B: Backend>(b: &B, mb: usize) -> Result<(f64, usize)> {
    let words = mb.max(1) << 18;
    // The host copy and, on the CPU, the buffer itself.
    check_host_memory(2 * words as u128 * 4, "--stream-mb buffers").context("lower --stream-mb")?;
    let mut buf = b.alloc(DType::I32, words, "stream buffer")?;
    let host: Vec<i32> = stream_fill(words).collect();
    b.write_i32(&mut buf, 0, &host)?;
    drop(host);
    let mut t = time_reps(b, 9, 2_000, |_| b.stream_read(&buf, words))
        .context("measuring the streaming-read floor")?;
    t.sort_by(f64::total_cmp);
    Ok(((words * 4) as f64 / (nearest_rank(&t, 50.0) * 1e6), t.len()))
}

struct Job {
    args: ProbeArgs,
    shapes: Vec<ProbeShape>,
    command: String,
}

impl OnBackend for Job {
    type Out = ProbeReport;
    fn run<B: Backend>(self, b: B) -> Result<ProbeReport> {
        let args = &self.args;
        // The floor: a streaming read of a buffer far beyond the caches. A
        // backend without the kernel still gets its implementations timed.
        let stream_gb_s = match stream_floor(&b, args.stream_mb) {
            Ok((gb_s, n)) => {
                eprintln!(
                    "probe: {} — streaming read {:.1} GB/s ({} MiB, median of {n})",
                    b.device_description(),
                    gb_s,
                    args.stream_mb
                );
                gb_s
            }
            Err(e) => {
                eprintln!("probe: no bandwidth floor on this backend ({e:#}); %floor left empty");
                f64::NAN
            }
        };

        let only: Option<Vec<String>> = args
            .impls
            .as_ref()
            .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
        let impls = b.matmul_impls().to_vec();
        if let Some(o) = &only {
            for name in o {
                if !impls.iter().any(|i| i.name == name) {
                    let known: Vec<_> = impls.iter().map(|i| i.name).collect();
                    bail!(
                        "unknown implementation `{name}` (known: {})",
                        known.join(", ")
                    );
                }
            }
        }
        let mut rows = Vec::new();
        let bar = crate::progress::bar(self.shapes.len() as u64, "probe");
        for (si, ps) in self.shapes.iter().enumerate() {
            let s = ps.shape;
            bar.set_message(format!("{} m={} n={} k={}", s.dtype, s.m, s.n, s.k));
            let row_bytes = s.dtype.row_bytes(s.k).unwrap_or(0);
            let w_bytes = s.n * row_bytes;
            let copies = (args.rotate_mb << 20)
                .div_ceil(w_bytes.max(1))
                .clamp(2, 4096);
            // The in-memory file holds every copy; the backend uploads them again.
            check_host_memory(
                2 * copies as u128 * w_bytes as u128,
                &format!(
                    "{copies} weight copies of {ps:?} for --rotate-mb",
                    ps = ps.label
                ),
            )
            .context("lower --rotate-mb")?;
            let file = weights_file(&s, copies, 0x5eed + si as u64)?;
            let bias = (s.op == MatmulOp::MatmulBiasAdd)
                .then(|| view(&file, "bias"))
                .transpose()?;
            let mut ws = Vec::with_capacity(copies);
            for c in 0..copies {
                let part = view(&file, &format!("w{c}"))?;
                ws.push(b.upload_linear(&[part], bias.as_ref().map(std::slice::from_ref))?);
            }
            let table = b.upload_linear(&[view(&file, "x")?], None)?;
            let table_rows = s.m.clamp(1, 64);
            let mut ids = b.alloc(DType::I32, s.m, "ids")?;
            let id_host: Vec<i32> = (0..s.m).map(|i| (i % table_rows) as i32).collect();
            b.write_i32(&mut ids, 0, &id_host)?;
            let mut x = b.alloc(DType::F32, s.m * s.k, "activations")?;
            b.embed(&table, &ids, s.m, &mut x)?;
            let mut out = b.alloc(DType::F32, s.m * s.n, "output")?;

            let bytes = (w_bytes + s.m * s.k * 4 + s.m * s.n * 4) as u64;
            let first = rows.len();
            for (idx, imp) in impls.iter().enumerate() {
                if !(imp.supports)(&s)
                    || only
                        .as_ref()
                        .is_some_and(|o| !o.iter().any(|n| n == imp.name))
                {
                    continue;
                }
                let mut v = time_reps(&b, args.reps, args.budget_ms, |r| {
                    b.matmul(idx, &x, &ws[r % copies], s.m, &mut out)
                })
                .with_context(|| format!("{} on {}", imp.name, s))?;
                v.sort_by(f64::total_cmp);
                let med = nearest_rank(&v, 50.0);
                // A distinct replay key per shape and implementation: the
                // chain is captured once and replayed for every repetition.
                let key = 0x7072_6f62_0000_0000 ^ ((si as u64) << 8) ^ idx as u64;
                let mut chain = time_reps(&b, args.reps, args.budget_ms, |r| {
                    b.replayable(key, &mut || {
                        for c in 0..CHAIN {
                            b.matmul(idx, &x, &ws[(r + c) % copies], s.m, &mut out)?;
                        }
                        Ok(())
                    })
                })
                .with_context(|| format!("{} on {}, chained", imp.name, s))?;
                chain.sort_by(f64::total_cmp);
                let chained_ms = nearest_rank(&chain, 50.0) / CHAIN as f64;
                let gb_s = bytes as f64 / (med * 1e6);
                rows.push(ProbeRow {
                    shape: ps.clone(),
                    imp: imp.name.to_string(),
                    reps: v.len(),
                    median_ms: med,
                    p10_ms: nearest_rank(&v, 10.0),
                    p90_ms: nearest_rank(&v, 90.0),
                    min_ms: v[0],
                    chained_ms,
                    bytes,
                    gb_s,
                    gflop_s: 2.0 * (s.m * s.n * s.k) as f64 / (med * 1e6),
                    pct_of_floor: 100.0 * gb_s / stream_gb_s,
                    winner: false,
                });
            }
            bar.inc(1);
            if let Some(best) = rows[first..]
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.median_ms.total_cmp(&b.1.median_ms))
                .map(|(i, _)| first + i)
            {
                rows[best].winner = true;
            }
        }
        bar.finish();
        Ok(ProbeReport {
            command: self.command,
            device: b.device_description(),
            backend: b.name().to_string(),
            timing: match b.timing_kind() {
                metallic::backend::TimingKind::Device => "device events".into(),
                metallic::backend::TimingKind::Host => "host monotonic clock".into(),
            },
            stream_gb_s,
            stream_mb: args.stream_mb,
            rotate_mb: args.rotate_mb,
            rows,
        })
    }
}

fn shape_text(s: &ProbeShape) -> String {
    format!("{} m={} n={} k={}", s.op, s.m, s.n, s.k)
}

/// The terminal table.
pub fn table(r: &ProbeReport) -> String {
    let mut o = String::new();
    let floor = if r.stream_gb_s.is_finite() {
        format!("{:.1} GB/s", r.stream_gb_s)
    } else {
        "none (the backend has no stream_read)".to_string()
    };
    o.push_str(&format!(
        "device: {} | backend: {} | timing: {} | streaming-read floor: {floor}\n",
        r.device, r.backend, r.timing
    ));
    o.push_str(&format!(
        "{:<16} {:<34} {:<6} {:<8} {:>10} {:>21} {:>10} {:>8} {:>9} {:>7}  {}\n",
        "shape",
        "op m n k",
        "dtype",
        "impl",
        "median_ms",
        "p10..p90 ms",
        "chained_ms",
        "GB/s",
        "GFLOP/s",
        "%floor",
        "winner"
    ));
    for row in &r.rows {
        o.push_str(&format!(
            "{:<16} {:<34} {:<6} {:<8} {:>10.4} {:>21} {:>10.4} {:>8.2} {:>9.2} {:>7}  {}\n",
            row.shape.label,
            shape_text(&row.shape),
            row.shape.dtype,
            row.imp,
            row.median_ms,
            format!("{:.4}..{:.4}", row.p10_ms, row.p90_ms),
            row.chained_ms,
            row.gb_s,
            row.gflop_s,
            if row.pct_of_floor.is_finite() {
                format!("{:.1}%", row.pct_of_floor)
            } else {
                "-".to_string()
            },
            if row.winner { "*" } else { "" }
        ));
    }
    o
}

/// `v` with `digits` decimals, or nothing when there is no value (no floor).
fn finite(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        String::new()
    }
}

pub fn csv(r: &ProbeReport) -> String {
    let mut o = String::from(
        "label,op,dtype,m,n,k,impl,reps,median_ms,p10_ms,p90_ms,min_ms,chained_ms,bytes,gb_s,gflop_s,pct_of_floor,stream_gb_s,winner\n",
    );
    for row in &r.rows {
        let s = &row.shape;
        o.push_str(&format!(
            "{},{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{},{:.3},{:.3},{},{},{}\n",
            s.label,
            s.op,
            s.dtype,
            s.m,
            s.n,
            s.k,
            row.imp,
            row.reps,
            row.median_ms,
            row.p10_ms,
            row.p90_ms,
            row.min_ms,
            row.chained_ms,
            row.bytes,
            row.gb_s,
            row.gflop_s,
            finite(row.pct_of_floor, 2),
            finite(r.stream_gb_s, 3),
            row.winner as u8
        ));
    }
    o
}

pub fn run(args: ProbeArgs) -> Result<()> {
    let shapes = match &args.from {
        Some(p) => profile_shapes(p)?,
        None => {
            let mut dts = Vec::new();
            for d in args.dtype.split(',') {
                dts.push(
                    GgmlType::from_name(d.trim())
                        .with_context(|| format!("unknown weight type `{d}`"))?,
                );
            }
            preset_shapes(&args.preset, &dts, args.prefill_m)?
        }
    };
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let job = Job {
        args: args.clone(),
        shapes,
        command,
    };
    let report = on_device(args.device, args.threads, job)?;
    print!("{}", table(&report));
    if let Some(p) = &args.csv {
        std::fs::write(p, csv(&report)).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.chart {
        std::fs::write(p, crate::probe_chart::svg(&report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qwen25_05b_preset_gives_the_seed_profile_shapes() {
        let s = preset_shapes("qwen2.5-0.5b", &[GgmlType::Q8_0], 128).unwrap();
        let decode: Vec<(&str, usize, usize, usize)> = s
            .iter()
            .filter(|p| p.m == 1)
            .map(|p| (p.op, p.m, p.n, p.k))
            .collect();
        // docs/seed_profile_qwen25_05b.md: fused qkv with bias, o_proj, gate|up, down, tied lm_head.
        assert_eq!(
            decode,
            vec![
                ("matmul_bias_add", 1, 1152, 896),
                ("matmul", 1, 896, 896),
                ("matmul", 1, 9728, 896),
                ("matmul", 1, 896, 4864),
                ("matmul", 1, 151936, 896),
            ]
        );
        assert_eq!(s.iter().filter(|p| p.m == 128).count(), 4);
        assert!(s
            .iter()
            .all(|p| p.dtype == "Q8_0" && p.shape.tb && !p.shape.ta));
        assert!(preset_shapes("qwen2.5-7b", &[GgmlType::Q8_0], 0).is_err());
    }

    #[test]
    fn the_stream_buffer_is_filled_past_two_gigawords() {
        // --stream-mb 8192 and above: 2^31 words and more.
        let words = (1usize << 31) + 5;
        assert_eq!(super::stream_fill(words).len(), words);
    }
}
