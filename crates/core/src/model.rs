//! The transformer forward pass shared by Qwen2 and Llama.
//!
//! One token: embedding -> per layer [rms_norm + fused QKV (+bias) + rope +
//! kv-cache write -> attention -> o_proj + residual add -> rms_norm + fused
//! gate|up + SwiGLU -> down + residual add] -> final rms_norm + lm_head.
//! Prefill runs the same path over `m` rows with causal attention.
//!
//! Each `+` is one fused op where the backend fuses it (`Exec::matmul_fused`,
//! `Exec::matmul_rope_kv_store`, `Exec::rope_kv_store`); elsewhere the parts
//! run one after the other through the scratch buffers named at each call,
//! with the same results.

mod batched;

use std::sync::Arc;

use metallic_gguf::GgufFile;

use crate::backend::{
    Backend, DType, Epilogue, FusedScratch, KvLayer, NormPrologue, QkvLayout, Rope, WeightView,
};
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::profiler::{OpKind, Phase};

pub use batched::{BatchRow, BatchState};

struct Layer<B: Backend> {
    attn_norm: B::Tensor,
    qkv: B::Linear,
    wo: B::Linear,
    ffn_norm: B::Tensor,
    gate_up: B::Linear,
    down: B::Linear,
}

/// Weights of a model, uploaded to a backend.
pub struct Model<B: Backend> {
    pub config: ModelConfig,
    embed: B::Linear,
    output: Option<B::Linear>,
    output_norm: B::Tensor,
    rope_freqs: Option<B::Tensor>,
    layers: Vec<Layer<B>>,
}

fn weight(file: &Arc<GgufFile>, name: &str) -> Result<WeightView> {
    let info = file.tensor(name).ok_or_else(|| Error::Weight {
        name: name.to_string(),
        reason: "missing".into(),
    })?;
    Ok(WeightView::new(file.clone(), info.clone()))
}

fn expect_shape(w: &WeightView, cols: usize, rows: usize) -> Result<()> {
    if w.cols() != cols || w.rows() != rows || w.info().dims.len() > 2 {
        return Err(Error::Weight {
            name: w.name().to_string(),
            reason: format!("shape {:?}, expected [{cols}, {rows}]", w.info().dims),
        });
    }
    Ok(())
}

impl<B: Backend> Model<B> {
    pub fn load(backend: &B, file: &Arc<GgufFile>) -> Result<Model<B>> {
        let config = ModelConfig::from_gguf(file)?;
        let c = &config;
        let vector = |name: &str, len: usize| -> Result<B::Tensor> {
            let w = weight(file, name)?;
            if w.n_elements() != len {
                return Err(Error::Weight {
                    name: name.into(),
                    reason: format!("{} elements, expected {len}", w.n_elements()),
                });
            }
            backend.upload_vector(&w)
        };
        let matrix = |name: &str, cols: usize, rows: usize| -> Result<WeightView> {
            let w = weight(file, name)?;
            expect_shape(&w, cols, rows)?;
            Ok(w)
        };

        let embed_w = matrix("token_embd.weight", c.hidden, c.vocab)?;
        let embed = backend.upload_linear(&[embed_w], None)?;
        let output = if c.tied_embeddings {
            None
        } else {
            let w = matrix("output.weight", c.hidden, c.vocab)?;
            Some(backend.upload_linear(&[w], None)?)
        };
        let output_norm = vector("output_norm.weight", c.hidden)?;
        let rope_freqs = if c.has_rope_freqs {
            Some(vector("rope_freqs.weight", c.rope_dim / 2)?)
        } else {
            None
        };

        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let p = |s: &str| format!("blk.{l}.{s}");
            let q = matrix(&p("attn_q.weight"), c.hidden, c.q_width())?;
            let k = matrix(&p("attn_k.weight"), c.hidden, c.kv_width())?;
            let v = matrix(&p("attn_v.weight"), c.hidden, c.kv_width())?;
            let biases = if c.qkv_bias {
                let bq = weight(file, &p("attn_q.bias"))?;
                let bk = weight(file, &p("attn_k.bias"))?;
                let bv = weight(file, &p("attn_v.bias"))?;
                for (b, n) in [(&bq, c.q_width()), (&bk, c.kv_width()), (&bv, c.kv_width())] {
                    if b.n_elements() != n {
                        return Err(Error::Weight {
                            name: b.name().into(),
                            reason: format!("{} elements, expected {n}", b.n_elements()),
                        });
                    }
                }
                Some(vec![bq, bk, bv])
            } else {
                None
            };
            let qkv = backend.upload_linear(&[q, k, v], biases.as_deref())?;
            let wo = matrix(&p("attn_output.weight"), c.q_width(), c.hidden)?;
            let gate = matrix(&p("ffn_gate.weight"), c.hidden, c.ffn)?;
            let up = matrix(&p("ffn_up.weight"), c.hidden, c.ffn)?;
            let down = matrix(&p("ffn_down.weight"), c.ffn, c.hidden)?;
            layers.push(Layer {
                attn_norm: vector(&p("attn_norm.weight"), c.hidden)?,
                qkv,
                wo: backend.upload_linear(&[wo], None)?,
                ffn_norm: vector(&p("ffn_norm.weight"), c.hidden)?,
                gate_up: backend.upload_linear(&[gate, up], None)?,
                down: backend.upload_linear(&[down], None)?,
            });
        }
        Ok(Model {
            config,
            embed,
            output,
            output_norm,
            rope_freqs,
            layers,
        })
    }

    fn layout(&self) -> QkvLayout {
        QkvLayout {
            n_heads: self.config.n_heads,
            n_kv_heads: self.config.n_kv_heads,
            head_dim: self.config.head_dim,
        }
    }

    /// Run `m` tokens (ids and positions already in `st`) starting at
    /// position `start`. Logits of the last row land in `st.logits` row 0,
    /// or of every row when `all_logits` (then `m <= st.logits_rows`).
    pub fn forward(
        &self,
        ex: &mut Exec<'_, B>,
        st: &mut State<B>,
        m: usize,
        start: usize,
        all_logits: bool,
    ) -> Result<()> {
        let c = &self.config;
        if m == 0 || m > st.max_batch {
            return Err(Error::InvalidArgument(format!(
                "batch of {m} tokens (this state holds 1..={})",
                st.max_batch
            )));
        }
        if all_logits && m > st.logits_rows {
            return Err(Error::InvalidArgument(format!(
                "logits for {m} rows requested, the state holds {}",
                st.logits_rows
            )));
        }
        let kv_len = start + m;
        if kv_len > st.capacity {
            return Err(Error::ContextFull {
                needed: kv_len,
                limit: st.capacity,
                model_limit: c.context_length,
            });
        }
        let layout = self.layout();
        let rope = Rope {
            style: c.rope_style,
            theta: c.rope_theta,
            dim: c.rope_dim,
            pos_scale: match c.rope_scaling {
                RopeScaling::None => 1.0,
                RopeScaling::Linear { factor } => 1.0 / factor,
            },
            freq_factors: self.rope_freqs.as_ref(),
        };
        let b_name = ex.backend.name();
        let h = c.hidden;

        ex.set_layer(None);
        ex.op(OpKind::Embed, b_name, None, |b| {
            b.embed(&self.embed, &st.ids, m, &mut st.x)
        })?;
        // Each fused product names the scratch its parts use where a backend
        // runs them apart (`FusedScratch`): h[m, hidden] for the normed input
        // or the plain product, gate_up[m, 2 ffn] for the gate|up product.
        for (l, layer) in self.layers.iter().enumerate() {
            ex.set_layer(Some(l));
            let attn_norm = NormPrologue {
                weight: &layer.attn_norm,
                eps: c.rms_eps,
            };
            // qkv[m, (heads + 2 kv_heads) hd] = rms_norm(x) Wqkv^T + b, then
            // the Q and K heads rotated in place and the K and V heads
            // written into the cache [kv_heads, capacity, hd] at pos.
            ex.matmul_rope_kv_store(
                &st.x,
                attn_norm,
                &layer.qkv,
                m,
                &mut st.qkv,
                FusedScratch::normed(&mut st.h),
                &st.pos,
                &layout,
                &rope,
                &mut st.kv[l],
                st.capacity,
            )?;
            // attn[m, heads hd]
            ex.op(OpKind::Attention, b_name, None, |b| {
                b.attention(
                    &st.qkv,
                    &st.kv[l],
                    st.capacity,
                    &st.pos,
                    m,
                    kv_len,
                    &layout,
                    &mut st.attn,
                )
            })?;
            // x[m, hidden] += attn Wo^T
            ex.matmul_fused(
                &st.attn,
                None,
                &layer.wo,
                m,
                Epilogue::AddInto,
                &mut st.x,
                FusedScratch::product(&mut st.h),
            )?;
            let ffn_norm = NormPrologue {
                weight: &layer.ffn_norm,
                eps: c.rms_eps,
            };
            // act[m, ffn] = swiglu(rms_norm(x) [Wgate | Wup]^T)
            ex.matmul_fused(
                &st.x,
                Some(ffn_norm),
                &layer.gate_up,
                m,
                Epilogue::SwiGlu,
                &mut st.act,
                FusedScratch::both(&mut st.h, &mut st.gate_up),
            )?;
            // x[m, hidden] += act Wdown^T
            ex.matmul_fused(
                &st.act,
                None,
                &layer.down,
                m,
                Epilogue::AddInto,
                &mut st.x,
                FusedScratch::product(&mut st.h),
            )?;
        }
        ex.set_layer(None);
        let lm_head = self.output.as_ref().unwrap_or(&self.embed);
        let out_norm = || NormPrologue {
            weight: &self.output_norm,
            eps: c.rms_eps,
        };
        if all_logits {
            // logits[m, vocab] = rms_norm(x) W^T
            ex.matmul_fused(
                &st.x,
                Some(out_norm()),
                lm_head,
                m,
                Epilogue::Store,
                &mut st.logits,
                FusedScratch::normed(&mut st.h),
            )?;
        } else {
            // Only the last row's logits are needed to continue:
            // logits[1, vocab] = rms_norm(x[m - 1]) W^T
            let last = if m > 1 {
                ex.op(OpKind::Copy, b_name, None, |b| {
                    b.copy(&st.x, (m - 1) * h, &mut st.h, 0, h)
                })?;
                &st.h
            } else {
                &st.x
            };
            ex.matmul_fused(
                last,
                Some(out_norm()),
                lm_head,
                1,
                Epilogue::Store,
                &mut st.logits,
                FusedScratch::normed(&mut st.attn),
            )?;
        }
        Ok(())
    }
}

/// Per-sequence buffers: KV cache, inputs and activations for up to
/// `max_batch` rows. Allocated once; a step allocates nothing.
pub struct State<B: Backend> {
    pub capacity: usize,
    pub max_batch: usize,
    pub logits_rows: usize,
    pub kv: Vec<KvLayer<B::Tensor>>,
    pub ids: B::Tensor,
    pub pos: B::Tensor,
    x: B::Tensor,
    h: B::Tensor,
    qkv: B::Tensor,
    attn: B::Tensor,
    gate_up: B::Tensor,
    act: B::Tensor,
    pub logits: B::Tensor,
    /// Positions filled in the cache (host view).
    pub n_past: usize,
}

impl<B: Backend> State<B> {
    /// `capacity`: context positions; `max_batch`: rows per step;
    /// `logits_rows`: rows of logits kept (1 unless all-row logits are wanted).
    pub fn new(
        backend: &B,
        cfg: &ModelConfig,
        capacity: usize,
        max_batch: usize,
        logits_rows: usize,
    ) -> Result<State<B>> {
        if capacity == 0 || max_batch == 0 || logits_rows == 0 {
            return Err(Error::InvalidArgument(
                "context size, batch size and logits rows must be positive".into(),
            ));
        }
        let f32t = |len: usize, what: &str| backend.alloc(DType::F32, len, what);
        let too_large = || {
            Error::InvalidArgument(format!(
                "context size {capacity} x batch {max_batch} overflows the buffer sizes; \
                 lower --ctx-size or --batch-size"
            ))
        };
        let kv_len = cfg
            .n_kv_heads
            .checked_mul(capacity)
            .and_then(|v| v.checked_mul(cfg.head_dim))
            .ok_or_else(too_large)?;
        // Everything this state allocates, in elements of 4 bytes, checked before the first
        // allocation so that a request the device cannot hold is one clear error.
        let mb = max_batch;
        let per_row = cfg.hidden
            + cfg.hidden.max(cfg.q_width())
            + cfg.qkv_width()
            + cfg.q_width().max(cfg.hidden)
            + 3 * cfg.ffn
            + 2;
        let total_elems = kv_len
            .checked_mul(2 * cfg.n_layers)
            .zip(mb.checked_mul(per_row))
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|v| v.checked_add(logits_rows.checked_mul(cfg.vocab)?))
            .ok_or_else(too_large)?;
        let total_bytes = total_elems as u128 * 4;
        if let Some(mem) = backend.memory() {
            if total_bytes > mem.free as u128 {
                return Err(Error::InvalidArgument(format!(
                    "the KV cache and activations for context {capacity} and batch {max_batch} \
                     need {:.2} GiB, but {} has {:.2} GiB free; lower --ctx-size or --batch-size",
                    total_bytes as f64 / (1u64 << 30) as f64,
                    backend.name(),
                    mem.free as f64 / (1u64 << 30) as f64
                )));
            }
        }
        let mut kv = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            kv.push(KvLayer {
                k: backend.alloc(DType::F32, kv_len, &format!("KV cache (layer {l} keys)"))?,
                v: backend.alloc(DType::F32, kv_len, &format!("KV cache (layer {l} values)"))?,
            });
        }
        Ok(State {
            capacity,
            max_batch,
            logits_rows,
            kv,
            ids: backend.alloc(DType::I32, mb, "token ids")?,
            pos: backend.alloc(DType::I32, mb, "positions")?,
            x: f32t(mb * cfg.hidden, "residual stream")?,
            h: f32t(mb * cfg.hidden.max(cfg.q_width()), "hidden scratch")?,
            qkv: f32t(mb * cfg.qkv_width(), "qkv activations")?,
            attn: f32t(mb * cfg.q_width().max(cfg.hidden), "attention output")?,
            gate_up: f32t(mb * 2 * cfg.ffn, "gate/up activations")?,
            act: f32t(mb * cfg.ffn, "ffn activations")?,
            logits: f32t(logits_rows * cfg.vocab, "logits")?,
            n_past: 0,
        })
    }

    /// Write `tokens` and their positions (`n_past..`) into the input buffers,
    /// rejecting ids outside the vocabulary. `tokens` must fit `max_batch`.
    pub fn stage(&mut self, backend: &B, tokens: &[u32], vocab: usize) -> Result<()> {
        if tokens.len() > self.max_batch {
            return Err(Error::InvalidArgument(format!(
                "{} tokens in one step (this state holds {})",
                tokens.len(),
                self.max_batch
            )));
        }
        let start = self.n_past;
        let mut ids = Vec::with_capacity(tokens.len());
        for &t in tokens {
            if t as usize >= vocab {
                return Err(Error::InvalidArgument(format!(
                    "token id {t} outside the vocabulary of {vocab}"
                )));
            }
            ids.push(t as i32);
        }
        let pos: Vec<i32> = (start..start + tokens.len()).map(|p| p as i32).collect();
        backend.write_i32(&mut self.ids, 0, &ids)?;
        backend.write_i32(&mut self.pos, 0, &pos)
    }

    /// Forget the sequence; the cache is overwritten from position 0.
    pub fn reset(&mut self) {
        self.n_past = 0;
    }
}

/// Phase helper for callers that step the model.
pub fn phase_of(m: usize, start: usize) -> Phase {
    if m == 1 && start > 0 {
        Phase::Decode
    } else {
        Phase::Prefill
    }
}
