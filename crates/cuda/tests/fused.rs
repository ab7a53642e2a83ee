//! The fused decode kernels against the separate ones on the same device:
//! rms_norm folded into the product, the residual-add and SwiGLU epilogues,
//! rope + kv_store, and a whole greedy decode with fusion on and off
//! (`CudaBackend::set_fusion`).

mod common;

use std::sync::Arc;

use common::*;
use metallic::backend::{
    Backend, DType, Epilogue, FusedScratch, KvLayer, NormPrologue, PagedLayout, QkvLayout, Rope,
};
use metallic::config::{Arch, RopeStyle};
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::generate::{generate, prefill, GenerateOptions};
use metallic::model::{Model, State};
use metallic::sampler::SamplerParams;
use metallic::tokenizer::Tokenizer;
use metallic_cuda::CudaBackend;
use metallic_gguf::{GgmlType, GgufFile};

/// Index of an implementation in the CUDA registry.
fn imp(b: &CudaBackend, name: &str) -> usize {
    b.matmul_impls()
        .iter()
        .position(|i| i.name == name)
        .expect("implementation registered")
}

fn positions(b: &CudaBackend, pos: &[i32]) -> <CudaBackend as Backend>::Tensor {
    let mut t = b.alloc(DType::I32, pos.len(), "pos").unwrap();
    b.write_i32(&mut t, 0, pos).unwrap();
    t
}

fn vector(b: &CudaBackend, vals: &[f32]) -> <CudaBackend as Backend>::Tensor {
    let f = tensor_file(&[("v", GgmlType::F32, vals.len(), 1, vals.to_vec())]);
    b.upload_vector(&view(&f, "v")).unwrap()
}

struct Case {
    ty: GgmlType,
    /// Output features of the product (for SwiGLU: gate and up rows together).
    n: usize,
    k: usize,
    m: usize,
    norm: bool,
    bias: bool,
    epilogue: Epilogue,
}

/// `matmul_fused` of `case` with implementation `name`, fusion on or off: the output.
fn run_case(gpu: &CudaBackend, case: &Case, name: &str, fused: bool) -> Vec<f32> {
    let Case {
        ty,
        n,
        k,
        m,
        norm,
        bias,
        epilogue,
    } = *case;
    let mut tensors = vec![("w", ty, k, n, randn(n * k, 1))];
    if bias {
        tensors.push(("b", GgmlType::F32, n, 1, randn(n, 2)));
    }
    let f = tensor_file(&tensors);
    let biases = bias.then(|| vec![view(&f, "b")]);
    let w = gpu
        .upload_linear(&[view(&f, "w")], biases.as_deref())
        .unwrap();
    // Activations of a few hundred in magnitude, as a residual stream has.
    let xs: Vec<f32> = randn(m * k, 3).iter().map(|v| v * 40.0).collect();
    let x = activations(gpu, &xs, m, k);
    let nw_vals: Vec<f32> = randn(k, 4).iter().map(|v| 1.0 + 0.3 * v).collect();
    let nw = vector(gpu, &nw_vals);
    let out_n = if epilogue == Epilogue::SwiGlu {
        n / 2
    } else {
        n
    };
    let mut out = activations(gpu, &randn(m * out_n, 5), m, out_n);
    let mut normed = gpu.alloc(DType::F32, m * k, "normed").unwrap();
    let mut product = gpu.alloc(DType::F32, m * n, "product").unwrap();
    gpu.set_fusion(fused);
    let i = imp(gpu, name);
    assert_eq!(
        gpu.fuses(i, &w, m, norm, epilogue),
        fused,
        "{name} should fuse this case exactly when fusion is on"
    );
    let prologue = norm.then_some(NormPrologue {
        weight: &nw,
        eps: 1e-6,
    });
    gpu.matmul_fused(
        i,
        &x,
        prologue.as_ref(),
        &w,
        m,
        epilogue,
        &mut out,
        FusedScratch {
            normed: Some(&mut normed),
            product: Some(&mut product),
        },
    )
    .unwrap();
    gpu.set_fusion(true);
    read(gpu, &out, m * out_n)
}

fn check_cases(cases: &[Case]) {
    let Some(gpu) = cuda_or_skip() else { return };
    for case in cases {
        for name in ["fdot", "vecdot"] {
            let fused = run_case(&gpu, case, name, true);
            let separate = run_case(&gpu, case, name, false);
            let e = rel_l2(&fused, &separate);
            eprintln!(
                "{name} {:?} m={} n={} k={} norm={} bias={} {:?}: rel_l2 {e:.2e}",
                case.ty, case.m, case.n, case.k, case.norm, case.bias, case.epilogue
            );
            // The same operations in the same order: equal but for the norm's
            // scale in a rare tie of its f64 sum order (then a quant may flip).
            assert!(
                e < 1e-5,
                "{name} {:?} m={} {:?}: fused differs from separate kernels (rel_l2 {e:.2e})",
                case.ty,
                case.m,
                case.epilogue
            );
        }
    }
}

const TYPES: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_K,
    GgmlType::F16,
    GgmlType::Q5_K,
];

/// rms_norm folded into the product (QKV with bias, lm_head without), ragged
/// row counts, one to eight activation rows.
#[test]
fn norm_prologue_matches_rms_norm_then_matmul() {
    let mut cases = Vec::new();
    for ty in TYPES {
        for (m, n, bias) in [(1, 333, true), (3, 200, false), (8, 77, true)] {
            cases.push(Case {
                ty,
                n,
                k: 512,
                m,
                norm: true,
                bias,
                epilogue: Epilogue::Store,
            });
        }
    }
    check_cases(&cases);
}

/// The residual add in the product's epilogue (O and down), in place.
#[test]
fn add_epilogue_matches_matmul_then_add() {
    let mut cases = Vec::new();
    for ty in TYPES {
        for (m, n, k) in [(1, 300, 768), (2, 129, 256), (8, 64, 1280)] {
            cases.push(Case {
                ty,
                n,
                k,
                m,
                norm: false,
                bias: false,
                epilogue: Epilogue::AddInto,
            });
        }
    }
    check_cases(&cases);
}

/// SwiGLU in the gate|up product's epilogue, with and without the norm.
#[test]
fn swiglu_epilogue_matches_matmul_then_swiglu() {
    let mut cases = Vec::new();
    for ty in TYPES {
        for (m, ffn, norm) in [(1, 150, true), (4, 97, false), (8, 256, true)] {
            cases.push(Case {
                ty,
                n: 2 * ffn,
                k: 512,
                m,
                norm,
                bias: false,
                epilogue: Epilogue::SwiGlu,
            });
        }
    }
    check_cases(&cases);
}

/// The q, k and v values and both caches after rope + kv_store in one kernel
/// equal those of the two kernels: both styles, partial rotation, divisors,
/// a position outside the cache (rotated, not stored).
#[test]
fn rope_kv_store_matches_rope_then_kv_store() {
    let Some(gpu) = cuda_or_skip() else { return };
    let layout = QkvLayout {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
    };
    let capacity = 16;
    let pos = [5, 0, 15, 40];
    let factors: Vec<f32> = (0..32).map(|i| 1.0 + i as f32 * 0.25).collect();
    for style in [RopeStyle::Normal, RopeStyle::Neox] {
        for (dim, with_factors) in [(64, false), (32, false), (64, true)] {
            let run = |fused: bool| {
                gpu.set_fusion(fused);
                let (m, w) = (pos.len(), layout.row_width());
                let mut qkv = activations(&gpu, &randn(m * w, 11), m, w);
                let p = positions(&gpu, &pos);
                let f = with_factors.then(|| vector(&gpu, &factors[..dim / 2]));
                let need = layout.n_kv_heads * capacity * layout.head_dim;
                let mut cache = KvLayer {
                    k: activations(&gpu, &randn(need, 12), 1, need),
                    v: activations(&gpu, &randn(need, 13), 1, need),
                };
                assert_eq!(gpu.fuses_rope_kv_store(&cache), fused);
                let rope = Rope {
                    style,
                    theta: 10000.0,
                    dim,
                    pos_scale: 0.5,
                    freq_factors: f.as_ref(),
                };
                gpu.rope_kv_store(&mut qkv, &p, m, &layout, &rope, &mut cache, capacity)
                    .unwrap();
                gpu.set_fusion(true);
                (
                    read(&gpu, &qkv, m * w),
                    read(&gpu, &cache.k, need),
                    read(&gpu, &cache.v, need),
                )
            };
            let (a, b) = (run(true), run(false));
            let what = format!("{style:?} dim {dim} factors {with_factors}");
            assert_eq!(a.0, b.0, "{what}: qkv differs");
            assert_eq!(a.1, b.1, "{what}: K cache differs");
            assert_eq!(a.2, b.2, "{what}: V cache differs");
        }
    }
}

/// The decode QKV product with rope and the KV-cache write in its epilogue
/// (`matmul_rope_kv_store`, one kernel) equals the normed product then
/// rope_kv_store bit for bit: qkv and both caches, both rope styles, a
/// partial rotary dimension, frequency factors, a position outside the
/// cache (rotated, not stored), with and without a bias. Quantised weight
/// types with and without preloaded units (`vecdot`'s dp4a kernels), and
/// F16, BF16 and F32 weights (the `fdot` kernels) under both `vecdot` and
/// `fdot`, with rows of one chunk a lane and of several batches of chunks.
#[test]
fn qkv_product_with_rope_and_store_matches_product_then_rope_kv_store() {
    let Some(gpu) = cuda_or_skip() else { return };
    let layout = QkvLayout {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
    };
    let capacity = 16;
    let n = layout.row_width();
    let factors: Vec<f32> = (0..32).map(|i| 1.0 + i as f32 * 0.25).collect();
    let (vecdot, fdot) = (imp(&gpu, "vecdot"), imp(&gpu, "fdot"));
    let default = gpu.rope_fusion();
    for (ty, k) in [
        (GgmlType::Q8_0, 256),
        (GgmlType::Q4_0, 256),
        (GgmlType::Q5_1, 256),
        (GgmlType::Q4_K, 256),
        (GgmlType::F16, 256),
        (GgmlType::F16, 1088),
        (GgmlType::BF16, 256),
        (GgmlType::BF16, 1088),
        (GgmlType::F32, 256),
        (GgmlType::F32, 1088),
    ] {
        let float = matches!(ty, GgmlType::F16 | GgmlType::BF16 | GgmlType::F32);
        // `fdot` multiplies quantised rows with its own kernels, not
        // `vecdot`'s: no fused product there.
        let imps = if float {
            vec![vecdot, fdot]
        } else {
            vec![vecdot]
        };
        for (im, bias) in imps.iter().flat_map(|&i| [(i, true), (i, false)]) {
            let mut tensors = vec![("w", ty, k, n, randn(n * k, 21))];
            if bias {
                tensors.push(("b", GgmlType::F32, n, 1, randn(n, 22)));
            }
            let f = tensor_file(&tensors);
            let biases = bias.then(|| vec![view(&f, "b")]);
            let w = gpu
                .upload_linear(&[view(&f, "w")], biases.as_deref())
                .unwrap();
            let xs: Vec<f32> = randn(k, 23).iter().map(|v| v * 40.0).collect();
            let x = activations(&gpu, &xs, 1, k);
            let nw_vals: Vec<f32> = randn(k, 24).iter().map(|v| 1.0 + 0.3 * v).collect();
            let nw = vector(&gpu, &nw_vals);
            let norm = NormPrologue {
                weight: &nw,
                eps: 1e-6,
            };
            for style in [RopeStyle::Normal, RopeStyle::Neox] {
                for (dim, with_factors, at) in [(64, false, 5), (32, false, 15), (64, true, 40)] {
                    let run = |fused: bool| {
                        gpu.set_rope_fusion(fused);
                        let mut qkv = activations(&gpu, &randn(n, 25), 1, n);
                        let p = positions(&gpu, &[at]);
                        let fac = with_factors.then(|| vector(&gpu, &factors[..dim / 2]));
                        let need = layout.n_kv_heads * capacity * layout.head_dim;
                        let mut cache = KvLayer {
                            k: activations(&gpu, &randn(need, 26), 1, need),
                            v: activations(&gpu, &randn(need, 27), 1, need),
                        };
                        let rope = Rope {
                            style,
                            theta: 10000.0,
                            dim,
                            pos_scale: 0.5,
                            freq_factors: fac.as_ref(),
                        };
                        assert_eq!(
                            gpu.fuses_matmul_rope_kv_store(im, &w, 1, &layout, &cache),
                            fused,
                            "{ty:?} imp {im}: the fused QKV product should be used exactly when on"
                        );
                        if !float {
                            assert!(!gpu.fuses_matmul_rope_kv_store(fdot, &w, 1, &layout, &cache));
                        }
                        if fused {
                            gpu.matmul_rope_kv_store(
                                im, &x, &norm, &w, 1, &mut qkv, &p, &layout, &rope, &mut cache,
                                capacity,
                            )
                            .unwrap();
                        } else {
                            let mut normed = gpu.alloc(DType::F32, k, "normed").unwrap();
                            gpu.matmul_fused(
                                im,
                                &x,
                                Some(&norm),
                                &w,
                                1,
                                Epilogue::Store,
                                &mut qkv,
                                FusedScratch::normed(&mut normed),
                            )
                            .unwrap();
                            gpu.rope_kv_store(
                                &mut qkv, &p, 1, &layout, &rope, &mut cache, capacity,
                            )
                            .unwrap();
                        }
                        gpu.set_rope_fusion(default);
                        (
                            read(&gpu, &qkv, n),
                            read(&gpu, &cache.k, need),
                            read(&gpu, &cache.v, need),
                        )
                    };
                    let (a, b) = (run(true), run(false));
                    let what = format!(
                        "{ty:?} k {k} imp {im} bias {bias} {style:?} dim {dim} \
                         factors {with_factors} pos {at}"
                    );
                    assert_eq!(a.0, b.0, "{what}: qkv differs");
                    assert_eq!(a.1, b.1, "{what}: K cache differs");
                    assert_eq!(a.2, b.2, "{what}: V cache differs");
                }
            }
        }
    }
}

/// The paged cache's rope + store in one kernel equals rope then
/// paged_kv_store, for f32 and f16 caches: q, k, v and both caches, both
/// styles, rows of several sequences through scattered block tables
/// (blocks of 5 positions), a row whose position lies past its table
/// (rotated, not stored).
#[test]
fn paged_rope_kv_store_matches_rope_then_paged_kv_store() {
    let Some(gpu) = cuda_or_skip() else { return };
    let layout = QkvLayout {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 64,
    };
    let paged = PagedLayout {
        block_size: 5,
        n_blocks: 13,
        table_stride: 4,
    };
    // Rows: (position, block table); the last position is past 4 * 5.
    let rows: [(i32, [i32; 4]); 4] = [
        (7, [3, 9, 0, 12]),
        (0, [5, 1, 2, 4]),
        (19, [6, 7, 8, 10]),
        (20, [11, 0, 1, 2]),
    ];
    let pos: Vec<i32> = rows.iter().map(|r| r.0).collect();
    let tables: Vec<i32> = rows.iter().flat_map(|r| r.1).collect();
    for kv in [DType::F32, DType::F16] {
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let run = |fused: bool| {
                gpu.set_fusion(fused);
                let (m, w) = (rows.len(), layout.row_width());
                let mut qkv = activations(&gpu, &randn(m * w, 21), m, w);
                let p = positions(&gpu, &pos);
                let t = positions(&gpu, &tables);
                let need = paged.layer_len(&layout);
                let mut cache = KvLayer {
                    k: gpu.alloc(kv, need, "k").unwrap(),
                    v: gpu.alloc(kv, need, "v").unwrap(),
                };
                assert_eq!(gpu.fuses_paged_rope_kv_store(&cache), fused);
                let rope = Rope {
                    style,
                    theta: 10000.0,
                    dim: 64,
                    pos_scale: 1.0,
                    freq_factors: None,
                };
                gpu.paged_rope_kv_store(&mut qkv, &p, m, &layout, &rope, &mut cache, &paged, &t)
                    .unwrap();
                gpu.set_fusion(true);
                // An f16 cache is compared through what attention reads
                // from it (every row's keys and values up to its position).
                let n = m * layout.n_heads * layout.head_dim;
                let mut out = gpu.alloc(DType::F32, n, "out").unwrap();
                gpu.paged_attention(&qkv, &cache, &paged, &t, &p, m, 21, &layout, &mut out)
                    .unwrap();
                let caches = (kv == DType::F32)
                    .then(|| (read(&gpu, &cache.k, need), read(&gpu, &cache.v, need)));
                (read(&gpu, &qkv, m * w), read(&gpu, &out, n), caches)
            };
            let (a, b) = (run(true), run(false));
            let what = format!("{kv:?} cache, {style:?}");
            assert_eq!(a.0, b.0, "{what}: qkv differs");
            assert_eq!(a.1, b.1, "{what}: attention over the caches differs");
            assert_eq!(a.2, b.2, "{what}: caches differ");
        }
    }
}

/// Greedy tokens through `generate` (decode graphs) with fusion on or off.
fn greedy(gpu: &CudaBackend, file: &Arc<GgufFile>, forced: &str, fused: bool) -> Vec<u32> {
    gpu.set_fusion(fused);
    let model = Model::load(gpu, file).unwrap();
    let tok = Tokenizer::from_gguf(file).unwrap();
    let cfg = DispatchConfig {
        all: Some(forced.to_string()),
        ..Default::default()
    };
    let dispatch = MatmulDispatch::new(gpu.matmul_impls(), &cfg).unwrap();
    let mut ex = Exec::new(gpu, dispatch);
    let mut st = State::new(gpu, &model.config, 256, 8, 1).unwrap();
    let opts = GenerateOptions {
        max_tokens: 24,
        sampler: SamplerParams::greedy(),
        ignore_eos: true,
        ..GenerateOptions::default()
    };
    let prompt = [300u32, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310];
    let g = generate(&mut ex, &model, &mut st, &tok, &prompt, &opts, &mut |_| {}).unwrap();
    gpu.set_fusion(true);
    g.ids
}

/// The last-row logits after a prefill of `prompt` in chunks of 8 rows.
fn logits(gpu: &CudaBackend, file: &Arc<GgufFile>, forced: &str, fused: bool) -> Vec<f32> {
    gpu.set_fusion(fused);
    let model = Model::load(gpu, file).unwrap();
    let cfg = DispatchConfig {
        all: Some(forced.to_string()),
        ..Default::default()
    };
    let dispatch = MatmulDispatch::new(gpu.matmul_impls(), &cfg).unwrap();
    let mut ex = Exec::new(gpu, dispatch);
    let mut st = State::new(gpu, &model.config, 256, 8, 1).unwrap();
    let prompt: Vec<u32> = (256..275).collect();
    for chunk in prompt.chunks(8) {
        prefill(&mut ex, &model, &mut st, chunk).unwrap();
    }
    // Then three single-token steps.
    for t in [400, 401, 402] {
        prefill(&mut ex, &model, &mut st, &[t]).unwrap();
    }
    gpu.set_fusion(true);
    read(gpu, &st.logits, model.config.vocab)
}

/// A synthetic model decodes the same greedy tokens with fusion on and off
/// on the exact path (`fdot`), and gives close logits on `vecdot`.
#[test]
fn synthetic_decode_fused_matches_unfused() {
    let Some(gpu) = cuda_or_skip() else { return };
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::F16] {
        let file = synth_model(&tiny256(), ty, 7);
        let a = greedy(&gpu, &file, "fdot", true);
        let b = greedy(&gpu, &file, "fdot", false);
        assert_eq!(
            a, b,
            "{ty:?}: fdot greedy tokens differ with fusion on and off"
        );
        let a = logits(&gpu, &file, "vecdot", true);
        let b = logits(&gpu, &file, "vecdot", false);
        let e = rel_l2(&a, &b);
        eprintln!("{ty:?} vecdot logits fused vs separate: rel_l2 {e:.2e}");
        assert!(e < 1e-4, "{ty:?}: vecdot logits differ (rel_l2 {e:.2e})");
        // The QKV product with rope and the cache write (single-token steps)
        // moves the same values as the product then rope_kv_store.
        let default = gpu.rope_fusion();
        gpu.set_rope_fusion(!default);
        let c = logits(&gpu, &file, "vecdot", true);
        gpu.set_rope_fusion(default);
        assert_eq!(
            a, c,
            "{ty:?}: vecdot logits differ with the QKV + rope + store fusion on and off"
        );
    }
    // A Llama layout too: normal-style rope, no QKV bias, Llama 3 frequency
    // divisors, an untied lm_head.
    let llama = metallic::synth::Preset {
        name: "tiny256-llama",
        arch: Arch::Llama,
        tied: false,
        qkv_bias: false,
        llama3_rope: Some((8.0, 1.0, 4.0, 128)),
        ..tiny256()
    };
    let file = synth_model(&llama, GgmlType::Q8_0, 3);
    let a = greedy(&gpu, &file, "fdot", true);
    let b = greedy(&gpu, &file, "fdot", false);
    assert_eq!(
        a, b,
        "llama: fdot greedy tokens differ with fusion on and off"
    );
}

/// Nodes of the decode graph (one launch each) for a model of `layers`
/// layers of type `ty`, on the default implementations.
fn decode_graph_nodes(gpu: &CudaBackend, ty: GgmlType, layers: usize, fused: bool) -> u64 {
    let p = metallic::synth::Preset {
        layers,
        ..tiny256()
    };
    let file = synth_model(&p, ty, 5);
    gpu.set_fusion(fused);
    let model = Model::load(gpu, &file).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let dispatch = MatmulDispatch::new(gpu.matmul_impls(), &DispatchConfig::default()).unwrap();
    let mut ex = Exec::new(gpu, dispatch);
    let mut st = State::new(gpu, &model.config, 256, 8, 1).unwrap();
    let opts = GenerateOptions {
        max_tokens: 4,
        sampler: SamplerParams::greedy(),
        ignore_eos: true,
        ..GenerateOptions::default()
    };
    generate(
        &mut ex,
        &model,
        &mut st,
        &tok,
        &[300, 301],
        &opts,
        &mut |_| {},
    )
    .unwrap();
    gpu.set_fusion(true);
    gpu.last_graph_nodes()
}

/// The fused decode step runs six kernels a layer (norm+QKV, rope+KV
/// write, attention, O+add, norm+gate|up+SwiGLU, down+add: no separate
/// quantise, norm, add or SwiGLU kernel), five with the rope fusion on
/// (norm+QKV+rope+KV write), on 8-bit, 4-bit, F16 and BF16 weights (the
/// float ones on the `fdot` kernels); twelve or more unfused.
#[test]
fn fused_decode_runs_six_kernels_a_layer_five_with_the_rope_fusion() {
    let Some(gpu) = cuda_or_skip() else { return };
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::F16,
        GgmlType::BF16,
    ] {
        let per_layer = |fused: bool| {
            let (a, b) = (
                decode_graph_nodes(&gpu, ty, 2, fused),
                decode_graph_nodes(&gpu, ty, 4, fused),
            );
            assert!(
                a > 0 && b > a,
                "{ty:?}: graph nodes {a} (2 layers), {b} (4 layers)"
            );
            ((b - a) / 2, a - 2 * (b - a) / 2)
        };
        let default = gpu.rope_fusion();
        gpu.set_rope_fusion(true);
        let (with_rope, _) = per_layer(true);
        gpu.set_rope_fusion(false);
        let (fused, fixed) = per_layer(true);
        let (separate, fixed_separate) = per_layer(false);
        gpu.set_rope_fusion(default);
        assert_eq!(
            with_rope, 5,
            "{ty:?}: kernels a layer with the rope fusion on"
        );
        eprintln!(
            "{ty:?}: kernels a decoded token: fused {fused} a layer + {fixed}, \
             separate {separate} a layer + {fixed_separate}"
        );
        assert_eq!(fused, 6, "{ty:?}: fused kernels a layer");
        assert!(separate > fused, "{ty:?}: fusion off should launch more");
    }
}

/// `vecdot` with 2 or 4 warps sharing a weight row (split-K) gives the
/// unsplit product but for the order of its sums: plain, with the norm, the
/// residual add and SwiGLU, on rows few enough to split, ragged counts.
#[test]
fn vecdot_split_k_matches_unsplit() {
    let Some(gpu) = cuda_or_skip() else { return };
    let before = gpu.vecdot_split();
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        for (m, n, k, norm, epilogue) in [
            (1, 896, 4864, false, Epilogue::AddInto),
            (2, 333, 512, true, Epilogue::Store),
            (1, 1400, 1024, true, Epilogue::SwiGlu),
            (2, 130, 768, false, Epilogue::Store),
        ] {
            let case = Case {
                ty,
                n,
                k,
                m,
                norm,
                bias: m == 2,
                epilogue,
            };
            gpu.set_vecdot_split(1);
            let want = run_case(&gpu, &case, "vecdot", true);
            for split in [2, 4] {
                gpu.set_vecdot_split(split);
                let got = run_case(&gpu, &case, "vecdot", true);
                let e = rel_l2(&got, &want);
                eprintln!("split {split} {ty:?} m={m} n={n} k={k} {epilogue:?}: rel_l2 {e:.2e}");
                assert!(
                    e < 1e-5,
                    "split {split} {ty:?} m={m} n={n} k={k} {epilogue:?}: rel_l2 {e:.2e}"
                );
            }
        }
    }
    gpu.set_vecdot_split(before);
}
