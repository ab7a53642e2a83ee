//! Chrome trace (JSON object format, loads in Perfetto and chrome://tracing)
//! of a recorded run: on one track, forward steps (prefill chunks, decoded
//! tokens) contain layer slices, which contain op slices. Slices use the host
//! clock; each op's backend interval is in its `args.device_ms`.

use serde_json::{json, Value};

use crate::backend::TimingKind;
use crate::profiler::{Phase, Recorder};

const PID: u32 = 1;
const TID: u32 = 1;

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

fn slice(name: String, cat: &str, start_ns: u64, dur_ns: u64, args: Value) -> Value {
    json!({
        "name": name,
        "cat": cat,
        "ph": "X",
        "ts": us(start_ns),
        "dur": us(dur_ns),
        "pid": PID,
        "tid": TID,
        "args": args,
    })
}

/// The trace as a JSON value (`{"traceEvents": [...]}`).
pub fn chrome_trace<M>(rec: &Recorder<M>) -> Value {
    let mut events: Vec<(u64, u64, Value)> = Vec::new();
    for s in &rec.steps {
        let name = match s.phase {
            Phase::Prefill => format!("prefill step {} ({} tokens)", s.step, s.tokens),
            Phase::Decode => format!("decode token {}", s.step),
        };
        let args = json!({"step": s.step, "tokens": s.tokens, "device_ms": s.device_ms});
        events.push((
            s.host_start_ns,
            s.host_ns,
            slice(name, "step", s.host_start_ns, s.host_ns, args),
        ));
    }
    // Ops of one layer within one step are contiguous: one layer slice spans them.
    let mut i = 0;
    let ops = &rec.ops;
    while i < ops.len() {
        let e = &ops[i];
        if let Some(layer) = e.layer {
            let mut j = i;
            let (mut start, mut end) = (u64::MAX, 0u64);
            while j < ops.len() && ops[j].layer == Some(layer) && ops[j].step == e.step {
                start = start.min(ops[j].host_start_ns);
                end = end.max(ops[j].host_start_ns + ops[j].host_ns);
                j += 1;
            }
            let args = json!({"layer": layer, "step": e.step, "ops": j - i});
            events.push((
                start,
                end - start,
                slice(format!("layer {layer}"), "layer", start, end - start, args),
            ));
            i = j;
        } else {
            i += 1;
        }
    }
    for e in ops {
        let mut args = json!({
            "impl": e.imp,
            "device_ms": e.device_ms,
            "step": e.step,
            "phase": e.phase.name(),
        });
        if let Some(s) = e.shape {
            args["shape"] = json!(s.to_string());
        }
        if let Some(l) = e.layer {
            args["layer"] = json!(l);
        }
        events.push((
            e.host_start_ns,
            e.host_ns,
            slice(
                e.op.name().to_string(),
                "op",
                e.host_start_ns,
                e.host_ns,
                args,
            ),
        ));
    }
    // Parents first: by start, then longest first.
    events.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let clock = match rec.timing {
        TimingKind::Device => "host clock; device_ms from device events",
        TimingKind::Host => "host clock (CPU backend: device_ms is the same clock)",
    };
    let mut all = vec![
        json!({"name": "process_name", "ph": "M", "pid": PID,
               "args": {"name": format!("metallic {} — {}", rec.backend_name, rec.device)}}),
        json!({"name": "thread_name", "ph": "M", "pid": PID, "tid": TID,
               "args": {"name": format!("forward ({clock})")}}),
    ];
    all.extend(events.into_iter().map(|e| e.2));
    json!({ "traceEvents": all, "displayTimeUnit": "ms" })
}
