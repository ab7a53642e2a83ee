//! Op-level recording: what ran, where, on which shape, and for how long.
//!
//! Each op gets a host interval (monotonic clock around the call) and a
//! backend interval between two marks. On a GPU the marks are device events,
//! so the backend interval is device execution time and the host interval is
//! only the launch cost; on the CPU both are host clocks. Device intervals
//! are resolved in batches (after each step) so recording adds no
//! synchronisation inside a step.

use std::time::Instant;

use crate::backend::{Backend, MatmulOp, MatmulShape, TimingKind};
use crate::error::Result;

/// The ops of the forward pass, named as in the seed profile
/// (`docs/seed_profile_qwen25_05b.md`) where it had them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Embed,
    RmsNorm,
    Matmul(MatmulOp),
    Rope,
    KvCacheWrite,
    Attention,
    Softmax,
    Swiglu,
    Add,
    Copy,
    Sample,
    Detokenize,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Embed => "embed",
            OpKind::RmsNorm => "rms_norm",
            OpKind::Matmul(op) => op.name(),
            OpKind::Rope => "rope",
            OpKind::KvCacheWrite => "kv_cache_write",
            OpKind::Attention => "attention",
            OpKind::Softmax => "softmax",
            OpKind::Swiglu => "swiglu",
            OpKind::Add => "add",
            OpKind::Copy => "copy",
            OpKind::Sample => "sample",
            OpKind::Detokenize => "detokenize",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Prefill,
    Decode,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }
}

/// One recorded op.
#[derive(Clone, Debug)]
pub struct OpEvent {
    pub op: OpKind,
    /// Implementation (backend or matmul kernel family) that ran it.
    pub imp: &'static str,
    pub shape: Option<MatmulShape>,
    pub layer: Option<u32>,
    pub step: u32,
    pub phase: Phase,
    /// Host clock at the call, ns since the recorder started.
    pub host_start_ns: u64,
    pub host_ns: u64,
    /// Backend interval in ms (device events on a GPU, host clock on the CPU).
    pub device_ms: f64,
}

/// One forward step (a prefill chunk or one decoded token).
#[derive(Clone, Debug)]
pub struct StepEvent {
    pub step: u32,
    pub phase: Phase,
    /// Tokens processed by the step.
    pub tokens: u32,
    pub host_start_ns: u64,
    pub host_ns: u64,
    pub device_ms: f64,
}

/// Collects events; device intervals are filled in by [`Recorder::flush`].
pub struct Recorder<M> {
    epoch: Instant,
    pub timing: TimingKind,
    pub backend_name: &'static str,
    /// The backend's device description, for report headers.
    pub device: String,
    pub ops: Vec<OpEvent>,
    pub steps: Vec<StepEvent>,
    pending_ops: Vec<(usize, M, M)>,
    pending_steps: Vec<(usize, M, M)>,
}

impl<M> Recorder<M> {
    pub fn new(timing: TimingKind, backend_name: &'static str, device: String) -> Self {
        Recorder {
            epoch: Instant::now(),
            timing,
            backend_name,
            device,
            ops: Vec::with_capacity(1 << 16),
            steps: Vec::new(),
            pending_ops: Vec::new(),
            pending_steps: Vec::new(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn push_op(&mut self, ev: OpEvent, marks: Option<(M, M)>) {
        let i = self.ops.len();
        self.ops.push(ev);
        if let Some((a, b)) = marks {
            self.pending_ops.push((i, a, b));
        }
    }

    pub fn push_step(&mut self, ev: StepEvent, marks: Option<(M, M)>) {
        let i = self.steps.len();
        self.steps.push(ev);
        if let Some((a, b)) = marks {
            self.pending_steps.push((i, a, b));
        }
    }

    /// Resolve pending backend intervals (waits for the device to reach them).
    pub fn flush<B: Backend<Mark = M>>(&mut self, backend: &B) -> Result<()> {
        for (i, a, b) in self.pending_ops.drain(..) {
            self.ops[i].device_ms = backend.elapsed_ms(&a, &b)?;
        }
        for (i, a, b) in self.pending_steps.drain(..) {
            self.steps[i].device_ms = backend.elapsed_ms(&a, &b)?;
        }
        Ok(())
    }
}
