//! The one dispatch point every op of the forward pass goes through.
//!
//! It picks matmul implementations and, when a recorder is attached, records
//! each op with host and backend time. Without the `profiling` feature the
//! recording code is compiled out; with it but no recorder attached the cost
//! is one branch per op.

use std::time::Instant;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::autotune::{self, Entry, Mode, TuneCache};
use crate::backend::{
    Backend, Epilogue, FusedScratch, KvLayer, MatmulOp, MatmulShape, NormPrologue, PagedLayout,
    QkvLayout, Rope,
};
use crate::dispatch::MatmulDispatch;
use crate::error::{Error, Result};
#[cfg(feature = "profiling")]
use crate::profiler::{OpEvent, StepEvent};
use crate::profiler::{OpKind, Phase, Recorder};

pub struct Exec<'b, B: Backend> {
    pub backend: &'b B,
    pub dispatch: MatmulDispatch,
    recorder: Option<Recorder<B::Mark>>,
    layer: Option<u32>,
    phase: Phase,
    step: u32,
    #[cfg_attr(not(feature = "profiling"), allow(dead_code))]
    step_start: Option<(u64, Option<B::Mark>, u32)>,
    /// The autotune cache, opened at the first shape that needs it.
    tune_cache: Option<TuneCache>,
    tune_cache_opened: bool,
    /// Shapes timed in this run, and shapes whose winner came from the cache.
    pub tuned_now: usize,
    pub tuned_from_cache: usize,
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
            tune_cache: None,
            tune_cache_opened: false,
            tuned_now: 0,
            tuned_from_cache: 0,
        }
    }

    /// Whether new shapes are timed as they appear (so steps must run op by
    /// op, not replayed from a captured graph).
    pub fn is_autotuning(&self) -> bool {
        self.dispatch.autotune() == Mode::Tune
    }

    /// The autotune cache in use, once a shape needed it.
    pub fn tune_cache(&self) -> Option<&TuneCache> {
        self.tune_cache.as_ref()
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

    /// The shape of `x[m, k] w^T` and the implementation that runs it:
    /// already chosen, else resolved now (autotuned on these operands when
    /// tuning is on, writing into `out`).
    fn resolve(
        &mut self,
        x: &B::Tensor,
        w: &B::Linear,
        m: usize,
        out: &mut B::Tensor,
    ) -> Result<(MatmulShape, usize)> {
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
        let imp = match self.dispatch.chosen(&shape) {
            Some(i) => i,
            None => {
                self.tuned_choice(&shape, x, w, m, out)?;
                self.dispatch.choose(&shape, |s| b.default_matmul_impl(s))?
            }
        };
        Ok((shape, imp))
    }

    /// `out = x w^T (+ bias)` through the matmul dispatcher.
    pub fn matmul(
        &mut self,
        x: &B::Tensor,
        w: &B::Linear,
        m: usize,
        out: &mut B::Tensor,
    ) -> Result<()> {
        let (shape, imp) = self.resolve(x, w, m, out)?;
        let name = self.dispatch.impl_name(imp);
        self.op(OpKind::Matmul(shape.op), name, Some(shape), |b| {
            b.matmul(imp, x, w, m, out)
        })
    }

    /// `out = epilogue(norm(x) w^T (+ bias))` ([`Backend::matmul_fused`])
    /// through the matmul dispatcher: the implementation is chosen for the
    /// product's shape as in [`matmul`](Self::matmul). Where the backend
    /// fuses it, one op is recorded (a matmul: the norm and the epilogue are
    /// in its time); else the norm, the product and the epilogue run and are
    /// recorded one by one, through `scratch`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_fused(
        &mut self,
        x: &B::Tensor,
        norm: Option<NormPrologue<'_, B::Tensor>>,
        w: &B::Linear,
        m: usize,
        epilogue: Epilogue,
        out: &mut B::Tensor,
        scratch: FusedScratch<'_, B::Tensor>,
    ) -> Result<()> {
        let FusedScratch {
            normed,
            mut product,
        } = scratch;
        // Autotuning writes the plain product: into `out` only where that is
        // what `out` holds.
        let (shape, imp) = match (epilogue, product.as_deref_mut()) {
            (Epilogue::Store, _) => self.resolve(x, w, m, out)?,
            (_, Some(p)) => self.resolve(x, w, m, p)?,
            (_, None) => {
                return Err(Error::InvalidArgument(
                    "matmul_fused: an epilogue needs a `product` scratch buffer".into(),
                ))
            }
        };
        self.matmul_fused_as(
            shape,
            imp,
            x,
            norm,
            w,
            m,
            epilogue,
            out,
            FusedScratch { normed, product },
        )
    }

    /// [`matmul_fused`](Self::matmul_fused) with the shape and
    /// implementation already resolved.
    #[allow(clippy::too_many_arguments)]
    fn matmul_fused_as(
        &mut self,
        shape: MatmulShape,
        imp: usize,
        x: &B::Tensor,
        norm: Option<NormPrologue<'_, B::Tensor>>,
        w: &B::Linear,
        m: usize,
        epilogue: Epilogue,
        out: &mut B::Tensor,
        scratch: FusedScratch<'_, B::Tensor>,
    ) -> Result<()> {
        let name = self.dispatch.impl_name(imp);
        let b_name = self.backend.name();
        let kind = OpKind::Matmul(shape.op);
        if self.backend.fuses(imp, w, m, norm.is_some(), epilogue) {
            return self.op(kind, name, Some(shape), |b| {
                b.matmul_fused(imp, x, norm.as_ref(), w, m, epilogue, out, scratch)
            });
        }
        let FusedScratch { normed, product } = scratch;
        // The same ops as `matmul_composed`, each recorded as itself.
        let input: &B::Tensor = match (&norm, normed) {
            (None, _) => x,
            (Some(nm), Some(h)) => {
                self.op(OpKind::RmsNorm, b_name, None, |b| {
                    b.rms_norm(x, nm.weight, m, shape.k, nm.eps, h)
                })?;
                h
            }
            (Some(_), None) => {
                return Err(Error::InvalidArgument(
                    "matmul_fused: a norm needs a `normed` scratch buffer".into(),
                ))
            }
        };
        let mm = |b: &B, o: &mut B::Tensor| b.matmul(imp, input, w, m, o);
        match (epilogue, product) {
            (Epilogue::Store, _) => self.op(kind, name, Some(shape), |b| mm(b, out)),
            (Epilogue::AddInto, Some(p)) => {
                self.op(kind, name, Some(shape), |b| mm(b, p))?;
                self.op(OpKind::Add, b_name, None, |b| b.add(out, p, m * shape.n))
            }
            (Epilogue::SwiGlu, Some(p)) => {
                self.op(kind, name, Some(shape), |b| mm(b, p))?;
                self.op(OpKind::Swiglu, b_name, None, |b| {
                    b.swiglu(p, m, shape.n / 2, out)
                })
            }
            (_, None) => Err(Error::InvalidArgument(
                "matmul_fused: an epilogue needs a `product` scratch buffer".into(),
            )),
        }
    }

    /// Rotary embedding and the KV-cache write ([`Backend::rope_kv_store`]):
    /// one op (recorded as rope) where the backend fuses them, else the two.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv_store(
        &mut self,
        qkv: &mut B::Tensor,
        pos: &B::Tensor,
        m: usize,
        layout: &QkvLayout,
        rope: &Rope<'_, B::Tensor>,
        cache: &mut KvLayer<B::Tensor>,
        capacity: usize,
    ) -> Result<()> {
        let b_name = self.backend.name();
        if self.backend.fuses_rope_kv_store(cache) {
            return self.op(OpKind::Rope, b_name, None, |b| {
                b.rope_kv_store(qkv, pos, m, layout, rope, cache, capacity)
            });
        }
        self.op(OpKind::Rope, b_name, None, |b| {
            b.rope(qkv, pos, m, layout, rope)
        })?;
        self.op(OpKind::KvCacheWrite, b_name, None, |b| {
            b.kv_store(qkv, cache, capacity, pos, m, layout)
        })
    }

    /// The QKV product with its norm, then rotary embedding and the
    /// KV-cache write ([`Backend::matmul_rope_kv_store`]): one op (recorded
    /// as the matmul: rope and the store are in its time) where the backend
    /// fuses the three, else [`matmul_fused`](Self::matmul_fused) then
    /// [`rope_kv_store`](Self::rope_kv_store), through `scratch`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_rope_kv_store(
        &mut self,
        x: &B::Tensor,
        norm: NormPrologue<'_, B::Tensor>,
        w: &B::Linear,
        m: usize,
        qkv: &mut B::Tensor,
        scratch: FusedScratch<'_, B::Tensor>,
        pos: &B::Tensor,
        layout: &QkvLayout,
        rope: &Rope<'_, B::Tensor>,
        cache: &mut KvLayer<B::Tensor>,
        capacity: usize,
    ) -> Result<()> {
        let (shape, imp) = self.resolve(x, w, m, qkv)?;
        if self
            .backend
            .fuses_matmul_rope_kv_store(imp, w, m, layout, cache)
        {
            let name = self.dispatch.impl_name(imp);
            return self.op(OpKind::Matmul(shape.op), name, Some(shape), |b| {
                b.matmul_rope_kv_store(imp, x, &norm, w, m, qkv, pos, layout, rope, cache, capacity)
            });
        }
        self.matmul_fused_as(
            shape,
            imp,
            x,
            Some(norm),
            w,
            m,
            Epilogue::Store,
            qkv,
            scratch,
        )?;
        self.rope_kv_store(qkv, pos, m, layout, rope, cache, capacity)
    }

    /// The paged cache's [`rope_kv_store`](Self::rope_kv_store): one op
    /// where the backend fuses it, else rope and paged_kv_store recorded
    /// apart.
    #[allow(clippy::too_many_arguments)]
    pub fn paged_rope_kv_store(
        &mut self,
        qkv: &mut B::Tensor,
        pos: &B::Tensor,
        m: usize,
        layout: &QkvLayout,
        rope: &Rope<'_, B::Tensor>,
        cache: &mut KvLayer<B::Tensor>,
        paged: &PagedLayout,
        tables: &B::Tensor,
    ) -> Result<()> {
        let b_name = self.backend.name();
        if self.backend.fuses_paged_rope_kv_store(cache) {
            return self.op(OpKind::Rope, b_name, None, |b| {
                b.paged_rope_kv_store(qkv, pos, m, layout, rope, cache, paged, tables)
            });
        }
        self.op(OpKind::Rope, b_name, None, |b| {
            b.rope(qkv, pos, m, layout, rope)
        })?;
        self.op(OpKind::KvCacheWrite, b_name, None, |b| {
            b.paged_kv_store(qkv, cache, paged, tables, pos, m, layout)
        })
    }

    /// At a shape's first call: take its winner from the autotune cache, or
    /// time every eligible implementation on these operands (autotune on).
    fn tuned_choice(
        &mut self,
        shape: &MatmulShape,
        x: &B::Tensor,
        w: &B::Linear,
        m: usize,
        out: &mut B::Tensor,
    ) -> Result<()> {
        let mode = self.dispatch.autotune();
        if mode == Mode::Off || self.dispatch.is_forced(shape.op) || self.dispatch.is_tuned(shape) {
            return Ok(());
        }
        if !self.tune_cache_opened {
            self.tune_cache_opened = true;
            let names: Vec<&str> = self.dispatch.impls().iter().map(|i| i.name).collect();
            self.tune_cache = TuneCache::open_default(&self.backend.device_description(), &names)?;
        }
        if let Some(e) = self.tune_cache.as_ref().and_then(|c| c.get(shape)) {
            if let Some(i) = self.dispatch.impl_index(&e.winner) {
                if (self.dispatch.impls()[i].supports)(shape) {
                    self.dispatch.set_tuned(*shape, i);
                    self.tuned_from_cache += 1;
                    return Ok(());
                }
            }
        }
        if mode != Mode::Tune {
            return Ok(());
        }
        let eligible = self.dispatch.eligible(shape);
        if eligible.len() < 2 {
            return Ok(());
        }
        let mut times = BTreeMap::new();
        let mut best = (f64::INFINITY, eligible[0]);
        for &i in &eligible {
            let t = self.time_matmul(i, x, w, m, out)?;
            times.insert(self.dispatch.impl_name(i).to_string(), t);
            if t < best.0 {
                best = (t, i);
            }
        }
        self.dispatch.set_tuned(*shape, best.1);
        self.tuned_now += 1;
        if let Some(c) = &mut self.tune_cache {
            c.insert(
                shape,
                Entry {
                    winner: self.dispatch.impl_name(best.1).to_string(),
                    median_ms: times,
                },
            )?;
        }
        Ok(())
    }

    /// Median backend time of implementation `imp` on these operands: one
    /// warm-up, then up to 7 runs or about 50 ms, whichever comes first.
    fn time_matmul(
        &self,
        imp: usize,
        x: &B::Tensor,
        w: &B::Linear,
        m: usize,
        out: &mut B::Tensor,
    ) -> Result<f64> {
        let b = self.backend;
        b.matmul(imp, x, w, m, out)?;
        b.synchronize()?;
        let started = Instant::now();
        let mut v = Vec::with_capacity(7);
        for r in 0..7 {
            let m0 = b.mark()?;
            b.matmul(imp, x, w, m, out)?;
            let m1 = b.mark()?;
            v.push(b.elapsed_ms(&m0, &m1)?);
            if r >= 2 && started.elapsed() > Duration::from_millis(50) {
                break;
            }
        }
        Ok(autotune::median(v))
    }
}
