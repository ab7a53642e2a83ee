//! Text and JSONL reports of a recorded run.
//!
//! The three matmul summaries keep the seed profile's exact format
//! (`docs/seed_profile_qwen25_05b.md`): `backend=` names the matmul implementation that ran,
//! times are the backend interval of each op (device events on a GPU; on the
//! CPU the host clock, said in the header line), groups are sorted by total
//! time, descending. Per-op, per-layer and per-token sections follow.
//! Percentiles: nearest rank, see [`crate::percentile`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write;

use serde_json::json;

use crate::backend::{MatmulShape, TimingKind};
use crate::percentile::Stats;
use crate::profiler::{OpKind, Phase, Recorder};

/// `count=… | total=…ms | avg=…ms | min=…ms | max=…ms | p95_ms=…ms, p99_ms=…ms`, as in the seed.
pub fn seed_stats(s: &Stats) -> String {
    format!(
        "count={} | total={:.2}ms | avg={:.3}ms | min={:.3}ms | max={:.3}ms | p95_ms={:.3}ms, p99_ms={:.3}ms",
        s.count, s.total, s.avg, s.min, s.max, s.p95, s.p99
    )
}

fn stats_with_p50(s: &Stats) -> String {
    format!(
        "count={} | total={:.2}ms | avg={:.3}ms | min={:.3}ms | max={:.3}ms | p50_ms={:.3}ms, p95_ms={:.3}ms, p99_ms={:.3}ms",
        s.count, s.total, s.avg, s.min, s.max, s.p50, s.p95, s.p99
    )
}

/// The seed's shape line, without the dtype (which it did not print).
pub fn seed_shape(s: &MatmulShape) -> String {
    format!(
        "op={} | batch={} | m={} | n={} | k={} | tA={} | tB={}",
        s.op.name(),
        s.batch,
        s.m,
        s.n,
        s.k,
        s.ta as u8,
        s.tb as u8
    )
}

/// Groups of samples, reported by total descending (name ascending on ties).
fn sorted_groups<K: Clone>(groups: Vec<(K, Vec<f64>)>) -> Vec<(K, Stats)> {
    let mut out: Vec<(K, Stats)> = groups
        .into_iter()
        .map(|(k, mut v)| (k, Stats::of(&mut v)))
        .collect();
    out.sort_by(|a, b| b.1.total.total_cmp(&a.1.total));
    out
}

/// Collect samples by key, keeping first-seen order (then sorted by total).
struct Grouper<K> {
    index: HashMap<K, usize>,
    groups: Vec<(K, Vec<f64>)>,
}

impl<K: std::hash::Hash + Eq + Clone> Grouper<K> {
    fn new() -> Self {
        Grouper {
            index: HashMap::new(),
            groups: Vec::new(),
        }
    }
    fn push(&mut self, k: K, v: f64) {
        let i = *self.index.entry(k.clone()).or_insert_with(|| {
            self.groups.push((k, Vec::new()));
            self.groups.len() - 1
        });
        self.groups[i].1.push(v);
    }
    fn sorted(self) -> Vec<(K, Stats)> {
        sorted_groups(self.groups)
    }
}

fn clock_line<M>(rec: &Recorder<M>) -> String {
    match rec.timing {
        TimingKind::Device => format!(
            "Profile: backend={} device=\"{}\"; op times are device time between events (host time in JSONL/trace)",
            rec.backend_name, rec.device
        ),
        TimingKind::Host => format!(
            "Profile: backend={} device=\"{}\"; op times are host monotonic clock: on the CPU backend host and device time are the same clock",
            rec.backend_name, rec.device
        ),
    }
}

/// The full text report.
pub fn summary<M>(rec: &Recorder<M>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}", clock_line(rec));
    o.push('\n');
    o.push_str(&matmul_summaries(rec));
    o.push('\n');
    o.push_str(&op_summary(rec));
    o.push('\n');
    o.push_str(&layer_summary(rec));
    o.push('\n');
    o.push_str(&token_summary(rec));
    o.push_str("Percentiles: nearest rank (the ceil(p/100*N)-th smallest of N samples).\n");
    o
}

/// The seed's three matmul sections.
pub fn matmul_summaries<M>(rec: &Recorder<M>) -> String {
    let mut by_backend = Grouper::new();
    let mut by_op = Grouper::new();
    let mut by_shape: Grouper<String> = Grouper::new();
    let mut shape_backend: HashMap<String, Grouper<&'static str>> = HashMap::new();
    for e in &rec.ops {
        let (OpKind::Matmul(op), Some(shape)) = (e.op, e.shape) else {
            continue;
        };
        by_backend.push(e.imp, e.device_ms);
        by_op.push((op.name(), e.imp), e.device_ms);
        let key = seed_shape(&shape);
        by_shape.push(key.clone(), e.device_ms);
        shape_backend
            .entry(key)
            .or_insert_with(Grouper::new)
            .push(e.imp, e.device_ms);
    }
    let mut o = String::new();
    o.push_str("Matmul backend summary:\n");
    for (b, s) in by_backend.sorted() {
        let _ = writeln!(o, "  backend={b}: {}", seed_stats(&s));
    }
    o.push_str("\nMatmul op/backend summary:\n");
    for ((op, b), s) in by_op.sorted() {
        let _ = writeln!(o, "  {op} @ {b}: {}", seed_stats(&s));
    }
    o.push_str("\nMatmul shape backend summary:\n");
    for (shape, _) in by_shape.sorted() {
        let _ = writeln!(o, "  {shape}:");
        if let Some(g) = shape_backend.remove(&shape) {
            for (b, s) in g.sorted() {
                let _ = writeln!(o, "    backend={b}: {}", seed_stats(&s));
            }
        }
    }
    o
}

/// Every op kind by implementation, backend interval.
pub fn op_summary<M>(rec: &Recorder<M>) -> String {
    let mut g = Grouper::new();
    let mut host = HashMap::new();
    for e in &rec.ops {
        g.push((e.op.name(), e.imp), e.device_ms);
        *host.entry((e.op.name(), e.imp)).or_insert(0.0) += e.host_ns as f64 / 1e6;
    }
    let mut o = String::from("Op summary:\n");
    for (k, s) in g.sorted() {
        let _ = writeln!(
            o,
            "  op={} @ {}: {} | host_total={:.2}ms",
            k.0,
            k.1,
            stats_with_p50(&s),
            host.get(&k).copied().unwrap_or(0.0)
        );
    }
    o
}

/// Total op time per layer, split by phase; ops outside the layers last.
pub fn layer_summary<M>(rec: &Recorder<M>) -> String {
    let mut layers: Vec<[f64; 3]> = Vec::new(); // prefill, decode, matmul
    let mut outside = [0.0f64; 3];
    let mut counts: Vec<usize> = Vec::new();
    for e in &rec.ops {
        let slot = match e.layer {
            Some(l) => {
                let l = l as usize;
                if layers.len() <= l {
                    layers.resize(l + 1, [0.0; 3]);
                    counts.resize(l + 1, 0);
                }
                counts[l] += 1;
                &mut layers[l]
            }
            None => &mut outside,
        };
        slot[if e.phase == Phase::Prefill { 0 } else { 1 }] += e.device_ms;
        if matches!(e.op, OpKind::Matmul(_)) {
            slot[2] += e.device_ms;
        }
    }
    let mut o = String::from("Layer summary:\n");
    for (l, t) in layers.iter().enumerate() {
        let _ = writeln!(
            o,
            "  layer={l}: ops={} | total={:.2}ms | prefill={:.2}ms | decode={:.2}ms | matmul={:.2}ms",
            counts[l],
            t[0] + t[1],
            t[0],
            t[1],
            t[2]
        );
    }
    let _ = writeln!(
        o,
        "  outside layers (embed, final norm, lm_head, sampling, detokenize): total={:.2}ms | prefill={:.2}ms | decode={:.2}ms | matmul={:.2}ms",
        outside[0] + outside[1],
        outside[0],
        outside[1],
        outside[2]
    );
    o
}

/// Forward step times (host clock: what a caller waits), prefill and decode.
pub fn token_summary<M>(rec: &Recorder<M>) -> String {
    let mut o = String::from("Token summary (forward step time, host clock):\n");
    for phase in [Phase::Prefill, Phase::Decode] {
        let steps: Vec<_> = rec.steps.iter().filter(|s| s.phase == phase).collect();
        let tokens: u64 = steps.iter().map(|s| s.tokens as u64).sum();
        let mut v: Vec<f64> = steps.iter().map(|s| s.host_ns as f64 / 1e6).collect();
        let s = Stats::of(&mut v);
        let tok_s = if s.total > 0.0 {
            tokens as f64 / (s.total / 1e3)
        } else {
            0.0
        };
        let _ = writeln!(
            o,
            "  {}: steps={} | tokens={} | {} | tok/s={:.1}",
            phase.name(),
            steps.len(),
            tokens,
            stats_with_p50(&s),
            tok_s
        );
        if rec.timing == TimingKind::Device && !steps.is_empty() {
            let mut d: Vec<f64> = steps.iter().map(|s| s.device_ms).collect();
            let _ = writeln!(
                o,
                "  {} (device time): {}",
                phase.name(),
                stats_with_p50(&Stats::of(&mut d))
            );
        }
    }
    o
}

/// Every event as one JSON object per line: a `run` header, then `op` and
/// `step` events in recording order. Times: `host_start_us` since the
/// recorder started, `host_ms` (host clock around the call), `device_ms`
/// (the backend interval; the host clock on the CPU, see `device_clock`).
pub fn write_jsonl<M>(rec: &Recorder<M>, w: &mut dyn Write) -> std::io::Result<()> {
    let clock = match rec.timing {
        TimingKind::Device => "device",
        TimingKind::Host => "host",
    };
    let head = json!({
        "type": "run",
        "backend": rec.backend_name,
        "device": rec.device,
        "device_clock": clock,
        "version": env!("CARGO_PKG_VERSION"),
    });
    writeln!(w, "{head}")?;
    for e in &rec.ops {
        let mut v = json!({
            "type": "op",
            "op": e.op.name(),
            "impl": e.imp,
            "backend": rec.backend_name,
            "layer": e.layer,
            "step": e.step,
            "phase": e.phase.name(),
            "host_start_us": e.host_start_ns as f64 / 1e3,
            "host_ms": e.host_ns as f64 / 1e6,
            "device_ms": e.device_ms,
        });
        if let Some(s) = e.shape {
            let m = v.as_object_mut().expect("object");
            m.insert("dtype".into(), json!(s.dtype.name()));
            m.insert("batch".into(), json!(s.batch));
            m.insert("m".into(), json!(s.m));
            m.insert("n".into(), json!(s.n));
            m.insert("k".into(), json!(s.k));
            m.insert("tA".into(), json!(s.ta as u8));
            m.insert("tB".into(), json!(s.tb as u8));
        }
        writeln!(w, "{v}")?;
    }
    for s in &rec.steps {
        let v = json!({
            "type": "step",
            "step": s.step,
            "phase": s.phase.name(),
            "tokens": s.tokens,
            "host_start_us": s.host_start_ns as f64 / 1e3,
            "host_ms": s.host_ns as f64 / 1e6,
            "device_ms": s.device_ms,
        });
        writeln!(w, "{v}")?;
    }
    Ok(())
}

/// Running totals of a recording, for a live view: each [`update`](Self::update)
/// adds only the ops recorded since the last one, so refreshing it every
/// token costs the new ops, not the whole history.
#[derive(Default)]
pub struct LiveProfile {
    seen: usize,
    /// (op name, implementation) -> (count, total backend ms).
    ops: HashMap<(&'static str, &'static str), (usize, f64)>,
    /// (matmul shape, implementation) -> (count, total backend ms).
    shapes: HashMap<(String, &'static str), (usize, f64)>,
    /// Whole-run total of every op's backend time.
    pub total_ms: f64,
}

/// One line of a live top list.
#[derive(Clone, Debug, PartialEq)]
pub struct LiveRow {
    pub name: String,
    pub imp: &'static str,
    pub count: usize,
    pub total_ms: f64,
}

impl LiveProfile {
    pub fn update<M>(&mut self, rec: &Recorder<M>) {
        for e in rec.ops.iter().skip(self.seen) {
            let o = self.ops.entry((e.op.name(), e.imp)).or_insert((0, 0.0));
            o.0 += 1;
            o.1 += e.device_ms;
            self.total_ms += e.device_ms;
            if let (OpKind::Matmul(_), Some(shape)) = (e.op, e.shape) {
                let key = format!(
                    "{} {} m={} n={} k={}",
                    shape.op.name(),
                    shape.dtype,
                    shape.m,
                    shape.n,
                    shape.k
                );
                let s = self.shapes.entry((key, e.imp)).or_insert((0, 0.0));
                s.0 += 1;
                s.1 += e.device_ms;
            }
        }
        self.seen = rec.ops.len();
    }

    fn top<K: Clone>(
        map: &HashMap<(K, &'static str), (usize, f64)>,
        n: usize,
        name: impl Fn(&K) -> String,
    ) -> Vec<LiveRow> {
        let mut rows: Vec<LiveRow> = map
            .iter()
            .map(|((k, imp), &(count, total_ms))| LiveRow {
                name: name(k),
                imp,
                count,
                total_ms,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.total_ms
                .total_cmp(&a.total_ms)
                .then_with(|| a.name.cmp(&b.name))
        });
        rows.truncate(n);
        rows
    }

    /// The `n` op kinds (by implementation) with the most time.
    pub fn top_ops(&self, n: usize) -> Vec<LiveRow> {
        Self::top(&self.ops, n, |k: &&'static str| k.to_string())
    }

    /// The `n` matmul shapes (by implementation) with the most time.
    pub fn top_shapes(&self, n: usize) -> Vec<LiveRow> {
        Self::top(&self.shapes, n, |k: &String| k.clone())
    }
}

#[cfg(test)]
mod live_tests {
    use super::*;
    use crate::backend::{MatmulOp, MatmulShape, TimingKind};
    use crate::profiler::{OpEvent, Phase, Recorder};
    use metallic_gguf::GgmlType;

    fn op(kind: OpKind, imp: &'static str, ms: f64, shape: Option<MatmulShape>) -> OpEvent {
        OpEvent {
            op: kind,
            imp,
            shape,
            layer: None,
            step: 0,
            phase: Phase::Decode,
            host_start_ns: 0,
            host_ns: 0,
            device_ms: ms,
        }
    }

    #[test]
    fn live_profile_adds_only_new_ops_and_ranks_by_total() {
        let mut rec: Recorder<()> = Recorder::new(TimingKind::Host, "cpu", "test".into());
        let shape = MatmulShape {
            op: MatmulOp::Matmul,
            dtype: GgmlType::Q8_0,
            batch: 1,
            m: 1,
            n: 64,
            k: 32,
            ta: false,
            tb: true,
        };
        rec.push_op(op(OpKind::RmsNorm, "cpu", 1.0, None), None);
        rec.push_op(
            op(OpKind::Matmul(MatmulOp::Matmul), "fdot", 2.0, Some(shape)),
            None,
        );
        let mut live = LiveProfile::default();
        live.update(&rec);
        live.update(&rec); // nothing new: no double counting
        assert_eq!(live.total_ms, 3.0);
        rec.push_op(op(OpKind::RmsNorm, "cpu", 4.0, None), None);
        live.update(&rec);
        let top = live.top_ops(1);
        assert_eq!(
            (top[0].name.as_str(), top[0].count, top[0].total_ms),
            ("rms_norm", 2, 5.0)
        );
        let shapes = live.top_shapes(5);
        assert_eq!(shapes.len(), 1);
        assert!(shapes[0].name.contains("n=64 k=32"), "{:?}", shapes[0]);
    }
}
