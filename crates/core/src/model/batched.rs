//! The batched forward pass over a paged KV cache: one step runs rows of
//! several sequences together (a decode row for each running sequence plus
//! prefill chunks of newly admitted ones), so every weight matrix is read
//! once for all of them. Same op order as [`Model::forward`]; only the cache
//! ops differ (paged store and attention through per-row block tables).
//!
//! Batch invariance: every op of the step is row-independent (embedding, RMS
//! norm, rope, SwiGLU and add are per row; paged attention is per (row, head)
//! over the row's own sequence, its sums in an order fixed by that sequence's
//! length alone, on the CPU and in the CUDA kernel). The matmuls are too when
//! the caller forces [`Backend::batch_invariant_matmul`]: on the CPU `decode`
//! (`vecdot` or `fdot` per weight type and role, each output row computed
//! alone in an order that depends only on `k`; the server always forces it
//! there), on CUDA `vecdot_chunked` (`vecdot` in
//! launches of at most 8 rows, each row quantised and reduced the same way
//! whatever the launch's row count; `metallic serve --deterministic`). Then
//! a row's values do not depend on which other rows share the step, nor on
//! how a prompt was split into chunks. CUDA's default matmuls (cuBLAS above 8
//! rows) are not: their algorithm depends on `m`.
//!
//! The paged cache holds f32 or f16 ([`BatchState::new`]'s `kv_type`);
//! arithmetic is f32 either way.

use crate::backend::{
    Backend, DType, Epilogue, FusedScratch, KvLayer, NormPrologue, PagedLayout, Rope,
};
use crate::config::{ModelConfig, RopeScaling};
use crate::error::{Error, Result};
use crate::exec::Exec;
use crate::profiler::OpKind;

use super::Model;

/// Graph keys of batched decode steps: this plus the row count.
const DECODE_GRAPH_KEY_BASE: u64 = 0xba7c_4ed0_0000_0000;

/// One row of a batched step: `token` at `pos` of the sequence whose block
/// table is `table`.
#[derive(Clone, Copy, Debug)]
pub struct BatchRow<'a> {
    pub token: u32,
    pub pos: usize,
    pub table: &'a [u32],
}

/// Buffers of batched steps: the shared paged KV cache and activations for up
/// to `max_rows` rows, logits for up to `max_logits` of them. Allocated once.
pub struct BatchState<B: Backend> {
    pub paged: PagedLayout,
    /// Element type of the paged cache: f32 or f16.
    pub kv_type: DType,
    /// Replay decode steps as graphs where the backend can (on by default).
    pub replay_decode: bool,
    pub max_rows: usize,
    pub max_logits: usize,
    /// Per layer K and V: `[n_blocks, kv_heads, block_size, head_dim]`.
    kv: Vec<KvLayer<B::Tensor>>,
    ids: B::Tensor,
    pos: B::Tensor,
    /// `[max_rows, table_stride]` block ids.
    tables: B::Tensor,
    x: B::Tensor,
    h: B::Tensor,
    qkv: B::Tensor,
    attn: B::Tensor,
    gate_up: B::Tensor,
    act: B::Tensor,
    /// `[max_logits, hidden]` rows picked for the lm head.
    picked: B::Tensor,
    /// `[max_logits, vocab]`.
    pub logits: B::Tensor,
    /// Host staging of the step's inputs (reused).
    host_ids: Vec<i32>,
    host_pos: Vec<i32>,
    host_tables: Vec<i32>,
}

impl<B: Backend> BatchState<B> {
    pub fn new(
        backend: &B,
        cfg: &ModelConfig,
        paged: PagedLayout,
        kv_type: DType,
        max_rows: usize,
        max_logits: usize,
    ) -> Result<BatchState<B>> {
        if kv_type == DType::I32 {
            return Err(Error::InvalidArgument(
                "paged KV cache of i32: use f32 or f16".into(),
            ));
        }
        if paged.block_size == 0 || paged.n_blocks == 0 || paged.table_stride == 0 {
            return Err(Error::InvalidArgument(
                "paged KV cache: block size, block count and table stride must be positive".into(),
            ));
        }
        // Block ids and positions travel as i32.
        let positions = paged.table_stride.checked_mul(paged.block_size);
        if paged.n_blocks > i32::MAX as usize || positions.is_none_or(|p| p > i32::MAX as usize) {
            return Err(Error::InvalidArgument(format!(
                "paged KV cache of {} blocks, {} per sequence of {} positions: too large",
                paged.n_blocks, paged.table_stride, paged.block_size
            )));
        }
        if max_rows == 0 || max_logits == 0 || max_logits > max_rows {
            return Err(Error::InvalidArgument(format!(
                "batch of {max_rows} rows with {max_logits} logits rows (need 1 <= logits <= rows)"
            )));
        }
        let layer_len = paged
            .n_blocks
            .checked_mul(cfg.n_kv_heads * paged.block_size * cfg.head_dim)
            .ok_or_else(|| Error::InvalidArgument("paged KV cache too large".into()))?;
        let mut kv = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            kv.push(KvLayer {
                k: backend.alloc(kv_type, layer_len, &format!("paged KV (layer {l} keys)"))?,
                v: backend.alloc(kv_type, layer_len, &format!("paged KV (layer {l} values)"))?,
            });
        }
        let f32t = |len: usize, what: &str| backend.alloc(DType::F32, len, what);
        let mr = max_rows;
        Ok(BatchState {
            paged,
            kv_type,
            replay_decode: true,
            max_rows,
            max_logits,
            kv,
            ids: backend.alloc(DType::I32, mr, "batch token ids")?,
            pos: backend.alloc(DType::I32, mr, "batch positions")?,
            tables: backend.alloc(DType::I32, mr * paged.table_stride, "block tables")?,
            x: f32t(mr * cfg.hidden, "batch residual stream")?,
            h: f32t(mr * cfg.hidden.max(cfg.q_width()), "batch hidden scratch")?,
            qkv: f32t(mr * cfg.qkv_width(), "batch qkv activations")?,
            attn: f32t(mr * cfg.q_width().max(cfg.hidden), "batch attention output")?,
            gate_up: f32t(mr * 2 * cfg.ffn, "batch gate/up activations")?,
            act: f32t(mr * cfg.ffn, "batch ffn activations")?,
            picked: f32t(max_logits * cfg.hidden, "batch lm-head rows")?,
            logits: f32t(max_logits * cfg.vocab, "batch logits")?,
            host_ids: Vec::with_capacity(mr),
            host_pos: Vec::with_capacity(mr),
            host_tables: Vec::with_capacity(mr * paged.table_stride),
        })
    }

    /// Bytes of KV cache one block holds over all layers (K and V of `kv_type`).
    pub fn block_bytes(cfg: &ModelConfig, block_size: usize, kv_type: DType) -> usize {
        2 * cfg.n_layers * cfg.n_kv_heads * block_size * cfg.head_dim * kv_type.size()
    }
}

impl<B: Backend> Model<B> {
    /// Run one batched step over `rows` (any mix of sequences; a sequence's
    /// rows in position order, its earlier positions already in the cache).
    /// Logits of the rows listed in `logit_rows` land in `bs.logits`, row `j`
    /// for `logit_rows[j]`.
    pub fn forward_batch(
        &self,
        ex: &mut Exec<'_, B>,
        bs: &mut BatchState<B>,
        rows: &[BatchRow<'_>],
        logit_rows: &[usize],
    ) -> Result<()> {
        self.forward_rows(ex, bs, rows, logit_rows, None)
    }

    /// [`Model::forward_batch`] for a step queued before the host knows its
    /// tokens: row `i`'s token is `ids[i]` on the device (the ids the step
    /// before sampled; `rows[i].token` is ignored), its position and block
    /// table from `rows` as usual. The serve engine's look-ahead.
    pub fn forward_batch_after(
        &self,
        ex: &mut Exec<'_, B>,
        bs: &mut BatchState<B>,
        rows: &[BatchRow<'_>],
        logit_rows: &[usize],
        ids: &B::Tensor,
    ) -> Result<()> {
        self.forward_rows(ex, bs, rows, logit_rows, Some(ids))
    }

    fn forward_rows(
        &self,
        ex: &mut Exec<'_, B>,
        bs: &mut BatchState<B>,
        rows: &[BatchRow<'_>],
        logit_rows: &[usize],
        device_ids: Option<&B::Tensor>,
    ) -> Result<()> {
        let c = &self.config;
        let m = rows.len();
        let n_out = logit_rows.len();
        if m == 0 || m > bs.max_rows {
            return Err(Error::InvalidArgument(format!(
                "batched step of {m} rows (this state holds 1..={})",
                bs.max_rows
            )));
        }
        if n_out > bs.max_logits || logit_rows.iter().any(|&r| r >= m) {
            return Err(Error::InvalidArgument(format!(
                "logits of rows {logit_rows:?} requested from {m} rows (at most {} logits rows)",
                bs.max_logits
            )));
        }
        // Stage ids, positions and per-row block tables.
        let stride = bs.paged.table_stride;
        bs.host_ids.clear();
        bs.host_pos.clear();
        bs.host_tables.clear();
        let mut max_kv_len = 0;
        for (i, r) in rows.iter().enumerate() {
            if device_ids.is_none() && r.token as usize >= c.vocab {
                return Err(Error::InvalidArgument(format!(
                    "token id {} outside the vocabulary of {}",
                    r.token, c.vocab
                )));
            }
            let needed = r.pos / bs.paged.block_size + 1;
            if r.table.len() < needed || r.table.len() > stride {
                return Err(Error::InvalidArgument(format!(
                    "row {i}: position {} needs {needed} blocks, its table has {} (at most {stride})",
                    r.pos,
                    r.table.len()
                )));
            }
            // Checked here for every backend: a kernel cannot report it.
            if let Some(&bad) = r.table.iter().find(|&&b| b as usize >= bs.paged.n_blocks) {
                return Err(Error::InvalidArgument(format!(
                    "row {i}: block {bad} outside the cache of {} blocks",
                    bs.paged.n_blocks
                )));
            }
            bs.host_ids.push(r.token as i32);
            bs.host_pos.push(r.pos as i32);
            bs.host_tables.extend(r.table.iter().map(|&b| b as i32));
            bs.host_tables
                .extend(std::iter::repeat_n(-1, stride - r.table.len()));
            max_kv_len = max_kv_len.max(r.pos + 1);
        }
        let b = ex.backend;
        match device_ids {
            // Sampled ids are inside the vocabulary (and an embedding never
            // reads past its table: the CPU rejects such an id, CUDA gives
            // it a zero row).
            Some(ids) => b.copy(ids, 0, &mut bs.ids, 0, m)?,
            None => b.write_i32(&mut bs.ids, 0, &bs.host_ids)?,
        }
        b.write_i32(&mut bs.pos, 0, &bs.host_pos)?;
        b.write_i32(&mut bs.tables, 0, &bs.host_tables)?;

        // A decode step (every row wants its logits) takes no host values
        // but its row count: the same launches for every step of that batch
        // size, so on CUDA it is captured once per size and replayed as a
        // graph (the backend re-captures if anything else changed). Prefill
        // steps vary in shape and run directly.
        let decode = n_out == m && logit_rows.iter().enumerate().all(|(j, &r)| r == j);
        if decode && bs.replay_decode {
            let key = DECODE_GRAPH_KEY_BASE + m as u64;
            b.replayable(key, &mut || {
                self.batch_ops(ex, bs, m, logit_rows, max_kv_len)
            })
        } else {
            self.batch_ops(ex, bs, m, logit_rows, max_kv_len)
        }
    }

    /// The ops of a batched step over the staged rows.
    fn batch_ops(
        &self,
        ex: &mut Exec<'_, B>,
        bs: &mut BatchState<B>,
        m: usize,
        logit_rows: &[usize],
        max_kv_len: usize,
    ) -> Result<()> {
        let c = &self.config;
        let n_out = logit_rows.len();

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
        let paged = bs.paged;

        // x[m, hidden] = embed(ids)
        ex.set_layer(None);
        ex.op(OpKind::Embed, b_name, None, |b| {
            b.embed(&self.embed, &bs.ids, m, &mut bs.x)
        })?;
        // Each product is fused with its norm and epilogue exactly as in
        // `Model::forward` (the backend fuses by shape, else composes the
        // same ops through the scratch named): h[m, hidden] for the normed
        // input or the plain product, gate_up[m, 2 ffn] for gate|up.
        for (l, layer) in self.layers.iter().enumerate() {
            ex.set_layer(Some(l));
            let attn_norm = NormPrologue {
                weight: &layer.attn_norm,
                eps: c.rms_eps,
            };
            // qkv[m, (heads + 2 kv_heads) * head_dim] = rms_norm(x) Wqkv^T + b
            ex.matmul_fused(
                &bs.x,
                Some(attn_norm),
                &layer.qkv,
                m,
                Epilogue::Store,
                &mut bs.qkv,
                FusedScratch::normed(&mut bs.h),
            )?;
            // Q and K heads rotated in place; K and V heads into the cache
            // through each row's block table.
            let cache = &mut bs.kv[l];
            ex.paged_rope_kv_store(
                &mut bs.qkv,
                &bs.pos,
                m,
                &layout,
                &rope,
                cache,
                &paged,
                &bs.tables,
            )?;
            // attn[m, heads * head_dim]
            ex.op(OpKind::Attention, b_name, None, |b| {
                b.paged_attention(
                    &bs.qkv,
                    &bs.kv[l],
                    &paged,
                    &bs.tables,
                    &bs.pos,
                    m,
                    max_kv_len,
                    &layout,
                    &mut bs.attn,
                )
            })?;
            // x[m, hidden] += attn Wo^T
            ex.matmul_fused(
                &bs.attn,
                None,
                &layer.wo,
                m,
                Epilogue::AddInto,
                &mut bs.x,
                FusedScratch::product(&mut bs.h),
            )?;
            let ffn_norm = NormPrologue {
                weight: &layer.ffn_norm,
                eps: c.rms_eps,
            };
            // act[m, ffn] = swiglu(rms_norm(x) [Wgate | Wup]^T)
            ex.matmul_fused(
                &bs.x,
                Some(ffn_norm),
                &layer.gate_up,
                m,
                Epilogue::SwiGlu,
                &mut bs.act,
                FusedScratch::both(&mut bs.h, &mut bs.gate_up),
            )?;
            // x[m, hidden] += act Wdown^T
            ex.matmul_fused(
                &bs.act,
                None,
                &layer.down,
                m,
                Epilogue::AddInto,
                &mut bs.x,
                FusedScratch::product(&mut bs.h),
            )?;
        }
        ex.set_layer(None);
        if n_out == 0 {
            return Ok(());
        }
        // picked[n_out, hidden] = x[logit_rows]; a decode step wants every
        // row in order and reads x itself (no copy per row).
        let every_row = n_out == m && logit_rows.iter().enumerate().all(|(j, &r)| r == j);
        if !every_row {
            for (j, &r) in logit_rows.iter().enumerate() {
                ex.op(OpKind::Copy, b_name, None, |b| {
                    b.copy(&bs.x, r * h, &mut bs.picked, j * h, h)
                })?;
            }
        }
        let rows_in = if every_row { &bs.x } else { &bs.picked };
        // logits[n_out, vocab] = rms_norm(picked) W^T
        let lm_head = self.output.as_ref().unwrap_or(&self.embed);
        let out_norm = NormPrologue {
            weight: &self.output_norm,
            eps: c.rms_eps,
        };
        ex.matmul_fused(
            rows_in,
            Some(out_norm),
            lm_head,
            n_out,
            Epilogue::Store,
            &mut bs.logits,
            FusedScratch::normed(&mut bs.h),
        )
    }
}
