//! The machine a measurement ran on, for benchmark reports.

use metallic::backend::Backend;
use serde_json::{json, Value};

pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub simd: &'static str,
    /// Worker threads the CPU backend uses (all cores unless -t).
    pub threads: usize,
    pub backend: &'static str,
    /// The backend's own description (the GPU for CUDA).
    pub device: String,
    pub os: String,
    /// CUDA GPUs seen by driver discovery (or why none).
    pub gpu: String,
}

/// What the CUDA driver reports, without creating a context.
fn gpu_summary() -> String {
    match metallic_cuda::discover_driver() {
        Ok(d) => format!(
            "{} CUDA device(s), driver {}.{}",
            d.devices,
            d.version / 1000,
            (d.version % 1000) / 10
        ),
        // The first clause of the error is enough here ("no CUDA driver", ...).
        Err(e) => format!("none ({})", e.to_string().split(':').next().unwrap_or("")),
    }
}

/// `threads`: what the user asked for, 0 meaning every core.
pub fn describe<B: Backend>(backend: &B, threads: usize) -> Machine {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if threads == 0 { cores } else { threads };
    Machine {
        cpu: metallic_cpu::cpu_model(),
        cores,
        simd: metallic_cpu::simd_level(),
        threads,
        backend: backend.name(),
        device: backend.device_description(),
        os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        gpu: gpu_summary(),
    }
}

impl Machine {
    pub fn to_line(&self) -> String {
        format!(
            "machine: {} ({} cores, {}), {}; GPU: {}; backend {}: {}",
            self.cpu, self.cores, self.simd, self.os, self.gpu, self.backend, self.device
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cpu": self.cpu, "cores": self.cores, "simd": self.simd, "os": self.os,
            "backend": self.backend, "device": self.device, "gpu": self.gpu,
        })
    }
}
