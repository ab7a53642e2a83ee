//! Every op of the CUDA backend against the CPU backend, one op at a time,
//! through the same generic `Backend` code on both: embed for every weight
//! type, rms_norm, rope in both styles (with and without frequency factors,
//! partial rotation), kv_store, attention for decode and prefill at lengths
//! that are and are not multiples of the kernels' tiles, swiglu and add.
//! (Each matmul implementation per weight type: `tests/matmul.rs`.)
//!
//! Skipped with a message where no GPU can be used; METALLIC_REQUIRE_GPU=1
//! makes that a failure.

mod common;

use common::*;
use metallic::backend::{Backend, DType, KvLayer, QkvLayout, Rope};
use metallic::config::RopeStyle;
use metallic_cpu::CpuBackend;
use metallic_gguf::GgmlType;

fn cpu() -> CpuBackend {
    CpuBackend::new(2).expect("cpu backend")
}

fn check(what: &str, got: &[f32], want: &[f32], tol: f64) {
    let err = rel_l2(got, want);
    eprintln!("{what}: rel_l2={err:.2e} (tol {tol:.0e})");
    assert!(err <= tol, "{what}: rel_l2 {err:.3e} > {tol:.0e}");
}

fn positions<B: Backend>(b: &B, pos: &[i32]) -> B::Tensor {
    let mut t = b.alloc(DType::I32, pos.len(), "pos").unwrap();
    b.write_i32(&mut t, 0, pos).unwrap();
    t
}

fn vector<B: Backend>(b: &B, vals: &[f32]) -> B::Tensor {
    let f = tensor_file(&[("v", GgmlType::F32, vals.len(), 1, vals.to_vec())]);
    b.upload_vector(&view(&f, "v")).unwrap()
}

// ---------------------------------------------------------------- embed

fn embed_rows<B: Backend>(b: &B, ty: GgmlType, rows: usize, k: usize, ids: &[i32]) -> Vec<f32> {
    let f = tensor_file(&[("t", ty, k, rows, randn(rows * k, 40 + ty as u64))]);
    let table = b.upload_linear(&[view(&f, "t")], None).unwrap();
    let idt = positions(b, ids);
    let mut out = b.alloc(DType::F32, ids.len() * k, "out").unwrap();
    b.embed(&table, &idt, ids.len(), &mut out).unwrap();
    read(b, &out, ids.len() * k)
}

/// Embedding rows decode with the reference dequantisation's operations, so
/// they equal the CPU's to the last bit, for every weight type.
#[test]
fn embed_matches_cpu_for_every_weight_type() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = cpu();
    let ids = [0, 37, 5, 63, 37];
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let want = embed_rows(&cpu, ty, 64, 512, &ids);
        let got = embed_rows(&gpu, ty, 64, 512, &ids);
        assert_eq!(got, want, "embed {} differs from the CPU", ty.name());
    }
}

// ---------------------------------------------------------------- rms_norm

fn rms_norm_rows<B: Backend>(b: &B, m: usize, n: usize) -> Vec<f32> {
    let x = activations(b, &randn(m * n, 7 + n as u64), m, n);
    let w = vector(b, &randn(n, 8));
    let mut out = b.alloc(DType::F32, m * n, "out").unwrap();
    b.rms_norm(&x, &w, m, n, 1e-6, &mut out).unwrap();
    read(b, &out, m * n)
}

/// Short rows (256 threads a block) and long ones (1024), including lengths
/// that are not a multiple of the block.
#[test]
fn rms_norm_matches_cpu() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = cpu();
    for (m, n) in [(1, 896), (3, 1000), (2, 5000)] {
        let what = format!("rms_norm m={m} n={n}");
        check(
            &what,
            &rms_norm_rows(&gpu, m, n),
            &rms_norm_rows(&cpu, m, n),
            1e-6,
        );
    }
}

// ---------------------------------------------------------------- rope

const LAYOUT: QkvLayout = QkvLayout {
    n_heads: 4,
    n_kv_heads: 2,
    head_dim: 64,
};

fn rope_rows<B: Backend>(
    b: &B,
    style: RopeStyle,
    dim: usize,
    factors: Option<&[f32]>,
    pos: &[i32],
) -> Vec<f32> {
    let (m, w) = (pos.len(), LAYOUT.row_width());
    let mut qkv = activations(b, &randn(m * w, 11), m, w);
    let p = positions(b, pos);
    let f = factors.map(|v| vector(b, v));
    let rope = Rope {
        style,
        theta: 10000.0,
        dim,
        pos_scale: 0.5,
        freq_factors: f.as_ref(),
    };
    b.rope(&mut qkv, &p, m, &LAYOUT, &rope).unwrap();
    read(b, &qkv, m * w)
}

/// Both pair layouts, whole and partial rotation, with and without
/// per-frequency divisors, at small and large positions; V heads untouched.
#[test]
fn rope_matches_cpu_in_both_styles() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = cpu();
    let pos = [0, 1, 7, 100, 3000];
    let factors: Vec<f32> = (0..16).map(|i| 1.0 + i as f32 * 0.25).collect();
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        for (dim, fac) in [(64, None), (32, Some(&factors[..]))] {
            let what = format!("rope {style:?} dim={dim} factors={}", fac.is_some());
            let want = rope_rows(&cpu, style, dim, fac, &pos);
            let got = rope_rows(&gpu, style, dim, fac, &pos);
            check(&what, &got, &want, 1e-5);
        }
    }
}

// ---------------------------------------------------------------- kv_store and attention

struct Attn {
    layout: QkvLayout,
    capacity: usize,
    /// Positions already in the cache before the step.
    prior: usize,
    /// Query rows of the step (1: decode).
    m: usize,
}

fn new_cache<B: Backend>(b: &B, a: &Attn) -> KvLayer<B::Tensor> {
    let need = a.layout.n_kv_heads * a.capacity * a.layout.head_dim;
    KvLayer {
        k: b.alloc(DType::F32, need, "k").unwrap(),
        v: b.alloc(DType::F32, need, "v").unwrap(),
    }
}

/// Store `rows` random QKV rows at positions `start..`; the rows.
fn store<B: Backend>(
    b: &B,
    a: &Attn,
    cache: &mut KvLayer<B::Tensor>,
    start: usize,
    rows: usize,
    seed: u64,
) -> (B::Tensor, B::Tensor) {
    let w = a.layout.row_width();
    let qkv = activations(b, &randn(rows * w, seed), rows, w);
    let pos: Vec<i32> = (start as i32..(start + rows) as i32).collect();
    let p = positions(b, &pos);
    b.kv_store(&qkv, cache, a.capacity, &p, rows, &a.layout)
        .unwrap();
    (qkv, p)
}

/// The caches after storing the prior rows and the step's rows, then the
/// attention output of the step's rows.
fn attention_rows<B: Backend>(b: &B, a: &Attn) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut cache = new_cache(b, a);
    if a.prior > 0 {
        store(b, a, &mut cache, 0, a.prior, 21);
    }
    let (qkv, p) = store(b, a, &mut cache, a.prior, a.m, 22);
    let l = &a.layout;
    let n = a.m * l.n_heads * l.head_dim;
    let mut out = b.alloc(DType::F32, n, "out").unwrap();
    b.attention(
        &qkv,
        &cache,
        a.capacity,
        &p,
        a.m,
        a.prior + a.m,
        l,
        &mut out,
    )
    .unwrap();
    let need = l.n_kv_heads * a.capacity * l.head_dim;
    (
        read(b, &out, n),
        read(b, &cache.k, need),
        read(b, &cache.v, need),
    )
}

/// Rows land at their positions in both caches, and nothing else is written.
#[test]
fn kv_store_matches_cpu() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = cpu();
    let a = Attn {
        layout: LAYOUT,
        capacity: 40,
        prior: 3,
        m: 5,
    };
    let (_, kc, vc) = attention_rows(&cpu, &a);
    let (_, kg, vg) = attention_rows(&gpu, &a);
    assert_eq!(kg, kc, "k cache");
    assert_eq!(vg, vc, "v cache");
}

fn attention_case(gpu: &impl Backend, a: &Attn) {
    let cpu = cpu();
    let (want, _, _) = attention_rows(&cpu, a);
    let (got, _, _) = attention_rows(gpu, a);
    let l = &a.layout;
    let what = format!(
        "attention heads {}/{} dim {} capacity {} prior {} rows {}",
        l.n_heads, l.n_kv_heads, l.head_dim, a.capacity, a.prior, a.m
    );
    check(&what, &got, &want, 3e-5);
}

/// Decode (one query row) at filled lengths around the kernels' tiles (32
/// keys a warp, 256 keys a split at least), in one block or merged from
/// several, for head dimensions 64 and 128 (compiled for) and 80 (generic).
#[test]
fn decode_attention_matches_cpu_at_many_lengths() {
    let Some(gpu) = cuda_or_skip() else { return };
    for hd in [64, 80, 128] {
        let layout = QkvLayout {
            head_dim: hd,
            ..LAYOUT
        };
        for (capacity, len) in [
            (64, 1),
            (64, 31),
            (64, 64),
            (256, 33),
            (256, 65),
            (256, 200),
            (4096, 129),
            (512, 300),
            (2048, 777),
            (4096, 1000),
            (4096, 4096),
        ] {
            let a = Attn {
                layout,
                capacity,
                prior: len - 1,
                m: 1,
            };
            attention_case(&gpu, &a);
        }
    }
}

/// Prefill (many query rows) over an empty cache and over one that already
/// holds positions, at row counts that are not multiples of the kernels'
/// blocks (8 rows f32, 64 rows f16) and lengths that are not multiples of
/// their key tiles (32, 64): the f32 kernel within 3e-5 of the CPU, and with
/// f16 prefill on (`set_attention_f16`), where the tensor-core kernel takes 16 or
/// more rows of head dimension 64 or 128, within 4e-3 (Q, K, V and the
/// probabilities rounded to f16, ~5e-4 each) and not bit-identical to f32.
#[test]
fn prefill_attention_matches_cpu_at_many_lengths() {
    let Some(gpu) = cuda_or_skip() else { return };
    let default = gpu.attention_f16();
    let cpu = cpu();
    for hd in [64, 80, 128] {
        let layout = QkvLayout {
            head_dim: hd,
            ..LAYOUT
        };
        for (prior, m) in [
            (0, 2),
            (0, 13),
            (0, 64),
            (5, 37),
            (50, 8),
            (300, 19),
            (0, 130),
            (70, 200),
        ] {
            let a = Attn {
                layout,
                capacity: 512,
                prior,
                m,
            };
            let (want, _, _) = attention_rows(&cpu, &a);
            gpu.set_attention_f16(false);
            let (f32_rows, _, _) = attention_rows(&gpu, &a);
            gpu.set_attention_f16(true);
            let (f16_rows, _, _) = attention_rows(&gpu, &a);
            gpu.set_attention_f16(default);
            let what = format!("prefill attention dim {hd} prior {prior} rows {m}");
            check(&format!("{what}, f32"), &f32_rows, &want, 3e-5);
            check(&format!("{what}, f16"), &f16_rows, &want, 4e-3);
            if matches!(hd, 64 | 128) && m >= 16 && gpu.compute_capability().0 >= 8 {
                assert_ne!(f16_rows, f32_rows, "{what}: the f16 kernel did not run");
            }
        }
    }
}

// ---------------------------------------------------------------- swiglu and add

fn swiglu_rows<B: Backend>(b: &B, m: usize, ffn: usize) -> Vec<f32> {
    let gu = activations(b, &randn(m * 2 * ffn, 31), m, 2 * ffn);
    let mut out = b.alloc(DType::F32, m * ffn, "out").unwrap();
    b.swiglu(&gu, m, ffn, &mut out).unwrap();
    read(b, &out, m * ffn)
}

#[test]
fn swiglu_matches_cpu() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = cpu();
    for (m, ffn) in [(1, 4864), (3, 1000)] {
        let what = format!("swiglu m={m} ffn={ffn}");
        check(
            &what,
            &swiglu_rows(&gpu, m, ffn),
            &swiglu_rows(&cpu, m, ffn),
            1e-6,
        );
    }
}

fn add_rows<B: Backend>(b: &B, len: usize) -> Vec<f32> {
    let mut x = activations(b, &randn(len, 41), 1, len);
    let y = activations(b, &randn(len, 42), 1, len);
    b.add(&mut x, &y, len).unwrap();
    read(b, &x, len)
}

/// The residual add is one f32 addition per value: equal to the last bit.
#[test]
fn add_matches_cpu() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = cpu();
    for len in [1, 896, 1237] {
        assert_eq!(add_rows(&gpu, len), add_rows(&cpu, len), "add len={len}");
    }
}
