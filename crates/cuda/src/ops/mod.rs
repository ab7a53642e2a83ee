//! One module per op: each `ops/<op>.rs` embeds `kernels/<op>.cu`, loads its
//! functions, and launches them through typed methods that own the grid, the
//! block, the shared memory and the argument order. `lib.rs` checks buffers
//! and calls one of these per [`metallic::backend::Backend`] op.
//!
//! Buffers are passed as device addresses (`u64`) already checked by the
//! caller for type and length.

pub(crate) mod add;
pub(crate) mod advance;
pub(crate) mod attention;
pub(crate) mod embed;
pub(crate) mod kv_store;
pub(crate) mod matmul_cublas;
pub(crate) mod matmul_fdot;
pub(crate) mod matmul_vecdot;
pub(crate) mod paged_attention;
pub(crate) mod rms_norm;
pub(crate) mod rope;
pub(crate) mod sample;
pub(crate) mod stream_read;
pub(crate) mod swiglu;

/// `kernels/<name>.cu`, embedded in the binary.
macro_rules! kernel_source {
    ($name:literal) => {
        $crate::compile::KernelSource {
            name: $name,
            text: include_str!(concat!("../../kernels/", $name, ".cu")),
        }
    };
}
pub(crate) use kernel_source;

/// Every kernel file (the compile test builds each for every architecture).
#[cfg(test)]
pub(crate) const SOURCES: &[&crate::compile::KernelSource] = &[
    &add::SOURCE,
    &advance::SOURCE,
    &attention::SOURCE,
    &embed::SOURCE,
    &kv_store::SOURCE,
    &matmul_cublas::SOURCE,
    &matmul_fdot::SOURCE,
    &matmul_vecdot::SOURCE,
    &paged_attention::SOURCE,
    &rms_norm::SOURCE,
    &rope::SOURCE,
    &sample::SOURCE,
    &stream_read::SOURCE,
    &swiglu::SOURCE,
];

/// Threads of the one-thread-per-element kernels.
pub(crate) const EW_BLOCK: u32 = 256;

/// Blocks of `EW_BLOCK` threads covering `len` elements (at least one).
pub(crate) fn ew_grid(len: usize) -> (u32, u32, u32) {
    (len.div_ceil(EW_BLOCK as usize).max(1) as u32, 1, 1)
}
