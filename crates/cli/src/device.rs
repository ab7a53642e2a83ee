//! Running a command on the backend the user chose.

use anyhow::{Context, Result};
use metallic::backend::Backend;
use metallic_cpu::CpuBackend;

use crate::common::Device;

/// A command body that works on any backend.
pub trait OnBackend {
    type Out;
    fn run<B: Backend>(self, backend: B) -> Result<Self::Out>;
}

pub fn on_device<W: OnBackend>(device: Device, threads: usize, work: W) -> Result<W::Out> {
    let threads = crate::common::cap_threads(threads);
    match device {
        Device::Cpu => work.run(cpu(threads)?),
        Device::Cuda => {
            // A typed error (no driver, no GPU, NVRTC missing) names the cause.
            let b = metallic_cuda::CudaBackend::new(0).context("starting the CUDA backend")?;
            work.run(b)
        }
    }
}

/// The CPU backend (`threads == 0`: every core).
pub fn cpu(threads: usize) -> Result<CpuBackend> {
    CpuBackend::new(threads).context("starting the CPU backend")
}
