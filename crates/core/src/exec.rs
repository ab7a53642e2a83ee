//! The one dispatch point every op of the forward pass goes through.
//!
//! It picks matmul implementations and, when a recorder is attached, records
//! each op with host and backend time. Without the `profiling` feature the
//! recording code is compiled out; with it but no recorder attached the cost
//! is one branch per op.

use std::time::Instant;

use crate::backend::{Backend, MatmulOp, MatmulShape};
use crate::dispatch::MatmulDispatch;
use crate::error::Result;
use crate::profiler::{OpEvent, OpKind, Phase, Recorder, StepEvent};

pub struct Exec<'b, B: Backend> {
    pub backend: &'b B,
    pub dispatch: MatmulDispatch,
    recorder: Option<Recorder<B::Mark>>,
    layer: Option<u32>,
    phase: Phase,
    step: u32,
    step_start: Option<(u64, Option<B::Mark>, u32)>,
}

impl<'b, B: Backend> Exec<'b, B> {
    pub fn new(backend: &'b B, dispatch: MatmulDispatch) -> Self {
        Exec {
            backend,
            dispatch,
            recorder: None,
            layer: None,
            phase: Phase::Prefill,
            step: 0,
            step_start: None,
        }
    }

    /// Attach a recorder; ops are recorded from now on.
    pub fn record(&mut self) {
        if cfg!(feature = "profiling") {
            self.recorder = Some(Recorder::new(
                self.backend.timing_kind(),
                self.backend.name(),
                self.backend.device_description(),
            ));
        }
    }

    pub fn is_recording(&self) -> bool {
        cfg!(feature = "profiling") && self.recorder.is_some()
    }

    pub fn recorder(&self) -> Option<&Recorder<B::Mark>> {
        self.recorder.as_ref()
    }

    pub fn take_recorder(&mut self) -> Option<Recorder<B::Mark>> {
        self.recorder.take()
    }

    pub fn set_layer(&mut self, layer: Option<usize>) {
        self.layer = layer.map(|l| l as u32);
    }

    /// Start a forward step of `tokens` tokens.
    pub fn begin_step(&mut self, phase: Phase, tokens: usize) -> Result<()> {
        self.phase = phase;
        #[cfg(feature = "profiling")]
        if let Some(rec) = &self.recorder {
            let t = rec.now_ns();
            let mark = Some(self.backend.mark()?);
            self.step_start = Some((t, mark, tokens as u32));
        }
        let _ = tokens;
        Ok(())
    }

    /// End the step begun last; resolves its device times.
    pub fn end_step(&mut self) -> Result<()> {
        #[cfg(feature = "profiling")]
        if let (Some(rec), Some((t0, m0, tokens))) = (&mut self.recorder, self.step_start.take()) {
            let m1 = self.backend.mark()?;
            let now = rec.now_ns();
            rec.push_step(
                StepEvent {
                    step: self.step,
                    phase: self.phase,
                    tokens,
                    host_start_ns: t0,
                    host_ns: now - t0,
                    device_ms: 0.0,
                },
                m0.map(|m0| (m0, m1)),
            );
            rec.flush(self.backend)?;
        }
        self.step += 1;
        Ok(())
    }

    /// Run `f` as op `op`, recorded when a recorder is attached.
    #[inline]
    pub fn op<R>(
        &mut self,
        op: OpKind,
        imp: &'static str,
        shape: Option<MatmulShape>,
        f: impl FnOnce(&B) -> Result<R>,
    ) -> Result<R> {
        #[cfg(feature = "profiling")]
        if let Some(rec) = &mut self.recorder {
            let m0 = self.backend.mark()?;
            let t0 = Instant::now();
            let start = rec.now_ns();
            let r = f(self.backend)?;
            let host_ns = t0.elapsed().as_nanos() as u64;
            let m1 = self.backend.mark()?;
            rec.push_op(
                OpEvent {
                    op,
                    imp,
                    shape,
                    layer: self.layer,
                    step: self.step,
                    phase: self.phase,
                    host_start_ns: start,
                    host_ns,
                    device_ms: 0.0,
                },
                Some((m0, m1)),
            );
            return Ok(r);
        }
        let _ = (op, imp, shape);
        f(self.backend)
    }

    /// Record work done on the host outside the backend (detokenising).
    pub fn host_op(&mut self, op: OpKind, started: Instant) {
        #[cfg(feature = "profiling")]
        if let Some(rec) = &mut self.recorder {
            let host_ns = started.elapsed().as_nanos() as u64;
            let start = rec.now_ns().saturating_sub(host_ns);
            rec.push_op(
                OpEvent {
                    op,
                    imp: "host",
                    shape: None,
                    layer: None,
                    step: self.step.saturating_sub(1),
                    phase: self.phase,
                    host_start_ns: start,
                    host_ns,
                    device_ms: host_ns as f64 / 1e6,
                },
                None,
            );
        }
        let _ = (op, started);
    }

    /// `out = x w^T (+ bias)` through the matmul dispatcher.
    pub fn matmul(
        &mut self,
        x: &B::Tensor,
        w: &B::Linear,
        m: usize,
        out: &mut B::Tensor,
    ) -> Result<()> {
        let b = self.backend;
        let info = b.linear_info(w);
        let shape = MatmulShape {
            op: if info.has_bias {
                MatmulOp::MatmulBiasAdd
            } else {
                MatmulOp::Matmul
            },
            dtype: info.dtype,
            batch: 1,
            m,
            n: info.n,
            k: info.k,
            ta: false,
            tb: true,
        };
        let imp = self.dispatch.choose(&shape, |s| b.default_matmul_impl(s))?;
        let name = self.dispatch.impl_name(imp);
        self.op(OpKind::Matmul(shape.op), name, Some(shape), |b| {
            b.matmul(imp, x, w, m, out)
        })
    }
}
