//! `fdot`: matrix-vector products for up to [`MAX_M`] rows with f32
//! activations and weights decoded to f32 in registers (`kernels/matmul_fdot.cu`).
//! The same arithmetic as the CPU's `fdot`: no activation rounding.
//!
//! Float weights also take decode's fused QKV product
//! ([`Fdot::launch_rope`]: rope and the KV-cache write in the epilogue),
//! whose arguments [`rope_args`] builds for both it and `vecdot`'s.

use metallic::backend::{Epilogue, QkvLayout};

use super::kernel_source;
use super::rope::RopeParams;
use super::rope_kv_store::rotation_args;
use crate::compile::KernelSource;
use crate::device::{Arg, Device, Func};
use crate::error::{CudaError, CudaResult};
use crate::kernels::Loader;
use crate::linear::{CudaLinear, Segment};
use crate::wtype::WType;

pub(crate) const SOURCE: KernelSource = kernel_source!("matmul_fdot");

/// Largest batch of the matrix-vector kernels (`fdot` and `vecdot`).
pub(crate) const MAX_M: usize = 8;

/// Whether `fdot` reads rows of `k` values of type `t`: float rows are read
/// in 16-byte chunks, quantised ones by whole blocks (checked at upload).
pub(crate) fn supports_k(t: WType, k: usize) -> bool {
    match t {
        WType::F32 => k.is_multiple_of(4),
        WType::F16 | WType::BF16 => k.is_multiple_of(8),
        _ => true,
    }
}

pub(crate) struct Fdot {
    /// `fdot_<type>_m<M>`, by [`WType`] and `M - 1`.
    f: [[Func; MAX_M]; WType::COUNT],
    /// `fdot_<type>_rope_m1` for the float types (null for the others): the
    /// fused QKV product of decode.
    rope: [Func; WType::COUNT],
}

/// Warps per block and blocks for a matrix-vector launch over `rows` rows:
/// one warp per row; 8-warp blocks once every SM has plenty of rows.
pub(crate) fn matvec_grid(dev: &Device, rows: usize) -> (usize, usize) {
    let warps = if rows >= 16 * dev.sm_count as usize {
        8
    } else {
        4
    };
    (warps, rows.div_ceil(warps))
}

/// The fusion around a matrix-vector product (`nw`, `eps`, `epi` of
/// `MATVEC_ARGS` in common.cuh): an RMS norm of the input rows with weight
/// `norm` (0 for none), and what happens to the product.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fusion {
    pub norm: u64,
    pub eps: f32,
    pub epilogue: Epilogue,
}

impl Fusion {
    /// The plain product.
    pub const NONE: Fusion = Fusion {
        norm: 0,
        eps: 0.0,
        epilogue: Epilogue::Store,
    };

    pub fn is_none(&self) -> bool {
        self.norm == 0 && self.epilogue == Epilogue::Store
    }

    /// Weight rows a launch walks per output column: 2 (gate and up) for SwiGLU.
    pub fn rows_per_column(&self) -> usize {
        if self.epilogue == Epilogue::SwiGlu {
            2
        } else {
            1
        }
    }

    fn epi_code(&self) -> i32 {
        match self.epilogue {
            Epilogue::Store => 0,
            Epilogue::AddInto => 1,
            Epilogue::SwiGlu => 2,
        }
    }
}

/// The arguments every matrix-vector kernel takes (`MATVEC_ARGS` in
/// common.cuh): planes, rows, k, x, out at the segment's first column, the
/// row stride of out, the bias at the same column (0 for none), the fusion,
/// and the warps that share a row (`split`, 1 but for `vecdot`'s split-K).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matvec_args(
    seg: &Segment,
    k: usize,
    x: u64,
    out: u64,
    ldo: usize,
    bias: u64,
    fu: &Fusion,
    split: usize,
) -> [Arg; 14] {
    let p = seg.planes;
    let col = 4 * seg.row0 as u64;
    [
        Arg(p[0]),
        Arg(p[1]),
        Arg(p[2]),
        Arg(p[3]),
        Arg::from(seg.rows as i32),
        Arg::from(k as i32),
        Arg(x),
        Arg(out + col),
        Arg::from(ldo as i32),
        Arg(if bias == 0 { 0 } else { bias + col }),
        Arg(fu.norm),
        Arg::from(fu.eps),
        Arg::from(fu.epi_code()),
        Arg::from(split as i32),
    ]
}

/// Where a fused launch cannot run a linear: SwiGLU needs the gate and up
/// rows in one segment (one weight type) and an even count.
pub(crate) fn check_fusion(w: &CudaLinear, fu: &Fusion) -> CudaResult<()> {
    if fu.epilogue == Epilogue::SwiGlu && (w.segs.len() != 1 || !w.info.n.is_multiple_of(2)) {
        return Err(CudaError::Invalid(format!(
            "a fused SwiGLU needs gate|up rows of one type and an even count \
             ({} rows in {} parts)",
            w.info.n,
            w.segs.len()
        )));
    }
    Ok(())
}

/// `EPI_ROPE` in common.cuh: the fused QKV product's epilogue.
const EPI_ROPE: i32 = 3;

/// Whether a fused QKV product (`EPI_ROPE`) covers the rows of `w`: one
/// segment (one kernel), the rows of whole Q, K and V heads, heads of an
/// even size (a warp takes a pair of values).
pub(crate) fn rope_rows(w: &CudaLinear, layout: &QkvLayout) -> bool {
    w.segs.len() == 1 && w.info.n == layout.row_width() && layout.head_dim.is_multiple_of(2)
}

/// Where a fused QKV product's epilogue puts its values: the positions
/// `[1]`, the layout and rotary parameters (rope_kv_store.cu's), and the
/// layer's f32 caches `[kv_heads, capacity, head_dim]`.
#[derive(Clone, Copy)]
pub(crate) struct RopeStore<'a> {
    pub pos: u64,
    pub layout: &'a QkvLayout,
    pub params: &'a RopeParams,
    pub k_cache: u64,
    pub v_cache: u64,
    pub capacity: usize,
}

/// The arguments of a fused QKV product's kernel (`<impl>_<type>_rope_m1`,
/// common.cuh's `ROPE_KV_ARGS` after `MATVEC_ARGS`): `matvec` (from
/// [`matvec_args`]) with `EPI_ROPE` for the epilogue, the positions, then
/// `rope_kv_store`'s arguments from the head counts on.
pub(crate) fn rope_args(matvec: [Arg; 14], st: &RopeStore<'_>) -> [Arg; 26] {
    let mut args = [Arg(0); 26];
    args[..14].copy_from_slice(&matvec);
    args[12] = Arg::from(EPI_ROPE);
    args[14] = Arg(st.pos);
    args[15..23].copy_from_slice(&rotation_args(st.layout, st.params));
    args[23..].copy_from_slice(&[
        Arg(st.k_cache),
        Arg(st.v_cache),
        Arg::from(st.capacity as i32),
    ]);
    args
}

/// The error of a launcher asked for a fused QKV product it has no kernel for.
pub(crate) fn no_rope_product(who: &str, w: &CudaLinear) -> CudaError {
    CudaError::Invalid(format!(
        "{who}: no fused QKV product for {} rows of {} values in {} parts",
        w.info.n,
        w.info.k,
        w.segs.len()
    ))
}

pub(crate) fn check_m(m: usize) -> CudaResult<()> {
    if m == 0 || m > MAX_M {
        return Err(CudaError::Invalid(format!(
            "the matrix-vector kernels run 1..={MAX_M} rows, not {m}"
        )));
    }
    Ok(())
}

impl Fdot {
    pub fn load(l: &mut Loader) -> CudaResult<Fdot> {
        let module = l.module(&SOURCE)?;
        let mut f = [[Func::null(); MAX_M]; WType::COUNT];
        for t in WType::ALL {
            for m in 1..=MAX_M {
                f[t as usize][m - 1] = module.function(&format!("fdot_{}_m{m}", t.suffix()))?;
            }
        }
        let mut rope = [Func::null(); WType::COUNT];
        for t in WType::ALL.into_iter().filter(|t| !t.is_quantized()) {
            rope[t as usize] = module.function(&format!("fdot_{}_rope_m1", t.suffix()))?;
        }
        Ok(Fdot { f, rope })
    }

    /// One segment's columns of `out[m, ldo] = epilogue(norm(x)[m, k] W^T (+ bias))`.
    #[allow(clippy::too_many_arguments)]
    pub fn launch_segment(
        &self,
        dev: &Device,
        seg: &Segment,
        k: usize,
        m: usize,
        x: u64,
        out: u64,
        ldo: usize,
        bias: u64,
        fu: &Fusion,
    ) -> CudaResult<()> {
        check_m(m)?;
        let (warps, blocks) = matvec_grid(dev, seg.rows / fu.rows_per_column());
        dev.launch(
            self.f[seg.ty as usize][m - 1],
            (blocks as u32, 1, 1),
            (warps * 32) as u32,
            0,
            &matvec_args(seg, k, x, out, ldo, bias, fu, 1),
        )
    }

    /// `out = epilogue(norm(x)[m, k] W^T (+ bias))`: `out` is `[m, n]`, or
    /// `[m, n / 2]` for SwiGLU.
    pub fn launch(
        &self,
        dev: &Device,
        x: u64,
        w: &CudaLinear,
        m: usize,
        out: u64,
        fu: &Fusion,
    ) -> CudaResult<()> {
        check_fusion(w, fu)?;
        let bias = w.bias.as_ref().map_or(0, |b| b.ptr);
        let ldo = w.info.n / fu.rows_per_column();
        for seg in &w.segs {
            self.launch_segment(dev, seg, w.info.k, m, x, out, ldo, bias, fu)?;
        }
        Ok(())
    }

    /// Whether [`launch_rope`](Self::launch_rope) runs the product of `w`
    /// for one row: one segment of float weights whose rows `fdot` reads,
    /// rows in whole heads of an even size.
    pub fn supports_rope(w: &CudaLinear, layout: &QkvLayout) -> bool {
        rope_rows(w, layout) && !w.segs[0].ty.is_quantized() && supports_k(w.segs[0].ty, w.info.k)
    }

    /// The fused QKV product of one decode row on float weights: `qkv =
    /// norm(x) W^T (+ bias)` with the Q and K heads rotated and the K and V
    /// heads written into the f32 caches `[kv_heads, capacity, head_dim]` at
    /// `pos[0]` (not stored outside it): the bits of the product (as
    /// [`launch`](Self::launch) computes it) then `rope_kv_store`. One warp
    /// a pair of rows that rope moves together (`EPI_ROPE` in the kernel).
    #[allow(clippy::too_many_arguments)]
    pub fn launch_rope(
        &self,
        dev: &Device,
        x: u64,
        w: &CudaLinear,
        out: u64,
        norm: u64,
        eps: f32,
        st: &RopeStore<'_>,
    ) -> CudaResult<()> {
        if !Self::supports_rope(w, st.layout) {
            return Err(no_rope_product("fdot", w));
        }
        let (n, k) = (w.info.n, w.info.k);
        let seg = &w.segs[0];
        let bias = w.bias.as_ref().map_or(0, |b| b.ptr);
        // The plain product's block (over n rows), so that the norm's scale,
        // whose f64 sum follows the block's threads (rms_scales), has the
        // same bits; a warp takes a pair of rows, so half the warps.
        let (warps, _) = matvec_grid(dev, n);
        let blocks = (n / 2).div_ceil(warps);
        let fu = Fusion {
            norm,
            eps,
            epilogue: Epilogue::Store,
        };
        let mv = matvec_args(seg, k, x, out, n, bias, &fu, 1);
        dev.launch(
            self.rope[seg.ty as usize],
            (blocks as u32, 1, 1),
            (warps * 32) as u32,
            0,
            &rope_args(mv, st),
        )
    }
}
