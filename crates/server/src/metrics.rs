//! Counters, gauges and latency histograms, written in the Prometheus text
//! format by hand: a dozen fixed series do not need a metrics registry.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub struct Histogram {
    inner: Mutex<HistInner>,
}

#[derive(Default)]
struct HistInner {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (i, &le) in BUCKETS.iter().enumerate() {
            if seconds <= le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, le) in BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", h.counts[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
    }
}

/// State shared by the HTTP handlers and the engine thread.
#[derive(Default)]
pub struct Shared {
    /// The model is loaded and the engine takes requests.
    pub ready: AtomicBool,
    /// Shutting down: new requests are refused.
    pub draining: AtomicBool,
    /// Requests submitted and not yet admitted to a batch.
    pub queued: AtomicU64,
    pub running: AtomicU64,
    pub kv_blocks_used: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub kv_blocks_cached_idle: AtomicU64,
    pub requests_ok: AtomicU64,
    pub requests_error: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    /// Steps queued before the previous step's tokens were read.
    pub steps_ahead: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
}

impl Shared {
    pub fn prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        one(
            "metallic_ready",
            "gauge",
            "1 once the model is loaded.",
            self.ready.load(Relaxed) as u64,
        );
        one(
            "metallic_queue_depth",
            "gauge",
            "Requests waiting for a batch slot.",
            self.queued.load(Relaxed),
        );
        one(
            "metallic_running_sequences",
            "gauge",
            "Sequences in the running batch.",
            self.running.load(Relaxed),
        );
        one(
            "metallic_kv_blocks_used",
            "gauge",
            "KV cache blocks held by sequences.",
            self.kv_blocks_used.load(Relaxed),
        );
        one(
            "metallic_kv_blocks_total",
            "gauge",
            "KV cache blocks in the pool.",
            self.kv_blocks_total.load(Relaxed),
        );
        one(
            "metallic_kv_blocks_cached_idle",
            "gauge",
            "Prefix-cached KV blocks no sequence holds (reusable, evictable).",
            self.kv_blocks_cached_idle.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP metallic_requests_total Finished requests by outcome.\n\
             # TYPE metallic_requests_total counter\n\
             metallic_requests_total{{outcome=\"ok\"}} {}\n\
             metallic_requests_total{{outcome=\"error\"}} {}\n\
             metallic_requests_total{{outcome=\"rejected\"}} {}\n\
             metallic_requests_total{{outcome=\"cancelled\"}} {}",
            self.requests_ok.load(Relaxed),
            self.requests_error.load(Relaxed),
            self.requests_rejected.load(Relaxed),
            self.requests_cancelled.load(Relaxed),
        );
        let mut one = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        one(
            "metallic_prompt_tokens_total",
            "Prompt tokens of admitted requests.",
            self.prompt_tokens.load(Relaxed),
        );
        one(
            "metallic_prompt_tokens_cached_total",
            "Prompt tokens served from the prefix cache.",
            self.cached_prompt_tokens.load(Relaxed),
        );
        one(
            "metallic_generation_tokens_total",
            "Tokens generated.",
            self.generated_tokens.load(Relaxed),
        );
        one(
            "metallic_preemptions_total",
            "Sequences preempted (KV freed, recomputed later) for lack of blocks.",
            self.preemptions.load(Relaxed),
        );
        one(
            "metallic_engine_steps_total",
            "Batched forward steps run.",
            self.steps.load(Relaxed),
        );
        one(
            "metallic_engine_steps_queued_ahead_total",
            "Decode steps queued before the previous step's tokens were read (look-ahead).",
            self.steps_ahead.load(Relaxed),
        );
        self.ttft.write(
            &mut out,
            "metallic_time_to_first_token_seconds",
            "From request arrival to its first generated token (host monotonic clock).",
        );
        self.itl.write(
            &mut out,
            "metallic_inter_token_latency_seconds",
            "Between consecutive generated tokens of a request (host monotonic clock).",
        );
        out
    }
}
