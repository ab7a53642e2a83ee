//! The end-of-run report of `generate` and `chat`: which model, how long it
//! took to load and to answer, how fast, how much memory, which settings.

use metallic::backend::MemoryInfo;
use metallic::generate::Generation;
use metallic::sampler::SamplerParams;
use serde_json::json;

use crate::common::{peak_host_memory, ModelSummary};
use crate::generate::sampling_line;

pub struct RunInfo {
    pub model: ModelSummary,
    pub device: String,
    /// Tokenizer, weights and buffers, host monotonic clock.
    pub load_ms: f64,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

impl RunInfo {
    pub fn timings_json(&self, g: &Generation) -> serde_json::Value {
        json!({
            "clock": "host monotonic",
            "load_ms": self.load_ms,
            "time_to_first_token_ms": g.prefill_time.as_secs_f64() * 1e3,
            "prefill_ms": g.prefill_time.as_secs_f64() * 1e3,
            "decode_ms": g.decode_time.as_secs_f64() * 1e3,
            "prefill_tokens": g.prefilled_tokens(),
            "reused_tokens": g.reused_tokens,
            "prefill_tokens_per_s": g.prefill_tok_s(),
            "decode_tokens_per_s": g.decode_tok_s(),
        })
    }

    pub fn memory_json(device: Option<&MemoryInfo>) -> serde_json::Value {
        json!({
            "peak_host_bytes": peak_host_memory(),
            "device_used_bytes": device.map(|m| m.used_by_us),
            "device_free_bytes": device.map(|m| m.free),
            "device_total_bytes": device.map(|m| m.total),
        })
    }

    /// Host (and device) memory in words, e.g. `peak host 312 MiB`.
    pub fn memory_line(device: Option<&MemoryInfo>) -> String {
        let mut s = match peak_host_memory() {
            Some(b) => format!("peak host {:.0} MiB", mib(b)),
            None => "peak host n/a".to_string(),
        };
        if let Some(m) = device {
            s.push_str(&format!(
                ", device {:.0} MiB used ({:.1} of {:.1} GiB free)",
                mib(m.used_by_us),
                m.free as f64 / (1u64 << 30) as f64,
                m.total as f64 / (1u64 << 30) as f64
            ));
        }
        s
    }

    /// The line printed on stderr when a generation ends.
    pub fn end_line(
        &self,
        g: &Generation,
        params: &SamplerParams,
        device: Option<&MemoryInfo>,
        color: bool,
    ) -> String {
        let (bold, dim, reset) = if color {
            ("\x1b[1m", "\x1b[2m", "\x1b[0m")
        } else {
            ("", "", "")
        };
        format!(
            "{dim}metallic:{reset} {bold}{}{reset} | load {:.0} ms | ttft {:.1} ms | \
             {} prompt tokens ({} new), prefill {bold}{:.1}{reset} tok/s; \
             {} generated, decode {bold}{:.1}{reset} tok/s ({}) | {} | {} {dim}(host clock){reset}",
            self.model.line(),
            self.load_ms,
            g.prefill_time.as_secs_f64() * 1e3,
            g.prompt_tokens,
            g.prefilled_tokens(),
            g.prefill_tok_s(),
            g.ids.len(),
            g.decode_tok_s(),
            g.stop_reason.name(),
            Self::memory_line(device),
            sampling_line(params),
        )
    }
}
