//! Every matmul implementation of the CUDA backend against the CPU backend's
//! reference product, for every weight type the kernels read.

mod common;

use common::*;
use metallic::backend::{Backend, DType, MatmulOp, MatmulShape};
use metallic_cpu::CpuBackend;
use metallic_gguf::GgmlType;

const TYPES: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q5_K,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
];

/// Largest relative L2 error allowed for implementation `imp` on weights of
/// type `ty`. The CPU reference multiplies f32 activations with exactly
/// dequantised weights in f32.
fn tolerance(imp: &str, ty: GgmlType) -> f64 {
    let quant = !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    match (imp, ty) {
        // f32 arithmetic on the same values, other summation order:
        // about sqrt(k) * 2^-24 per output.
        ("fdot", _) => 1e-5,
        ("vecdot" | "vecdot_chunked", _) if !quant => 1e-5,
        // Activations quantised to int8 per 32 values (ggml's q8_1 scheme):
        // each value moves by up to amax/254, about 0.3% of a dot product.
        ("vecdot" | "vecdot_chunked", _) => 1.5e-2,
        // cuBLAS without TF32 (default math mode) on f32 data.
        ("cublas", GgmlType::F32) => 1e-5,
        // Activations rounded to bf16 (8 significant bits, 2^-9 relative).
        ("cublas", GgmlType::BF16) => 8e-3,
        // Activations (and dequantised weights) rounded to f16 (2^-12 relative).
        ("cublas", _) => 2e-3,
        _ => panic!("no tolerance for {imp}"),
    }
}

/// For every type, batch size and implementation that declares support, the
/// product (with bias) matches the CPU within the stated tolerance.
#[test]
fn every_impl_matches_cpu_for_every_weight_type() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = CpuBackend::new(0).unwrap();
    let (n, k) = (300, 512);
    let mut checked = 0;
    for (ti, &ty) in TYPES.iter().enumerate() {
        let w = randn(n * k, 100 + ti as u64);
        let bias = randn(n, 200 + ti as u64);
        let f = tensor_file(&[("w", ty, k, n, w), ("b", GgmlType::F32, n, 1, bias)]);
        let (wv, bv) = (view(&f, "w"), view(&f, "b"));
        let lc = cpu
            .upload_linear(std::slice::from_ref(&wv), Some(std::slice::from_ref(&bv)))
            .unwrap();
        let lg = gpu.upload_linear(&[wv], Some(&[bv])).unwrap();
        for m in [1usize, 3, 8, 33] {
            let x = randn(m * k, 300 + m as u64);
            let xc = activations(&cpu, &x, m, k);
            let xg = activations(&gpu, &x, m, k);
            let mut oc = cpu.alloc(DType::F32, m * n, "out").unwrap();
            cpu.matmul(0, &xc, &lc, m, &mut oc).unwrap();
            let want = read(&cpu, &oc, m * n);
            let shape = MatmulShape {
                op: MatmulOp::MatmulBiasAdd,
                dtype: ty,
                batch: 1,
                m,
                n,
                k,
                ta: false,
                tb: true,
            };
            for (imp, i) in gpu.matmul_impls().iter().zip(0..) {
                if !(imp.supports)(&shape) {
                    continue;
                }
                let mut og = gpu.alloc(DType::F32, m * n, "out").unwrap();
                gpu.matmul(i, &xg, &lg, m, &mut og).unwrap();
                let got = read(&gpu, &og, m * n);
                let err = rel_l2(&got, &want);
                let tol = tolerance(imp.name, ty);
                eprintln!(
                    "{:>8} {:>5} m={m:<2} rel_l2={err:.2e} (tol {tol:.0e})",
                    imp.name,
                    ty.name()
                );
                assert!(
                    err <= tol,
                    "{} on {} m={m}: rel_l2 {err:.3e} > {tol:.0e}",
                    imp.name,
                    ty.name()
                );
                checked += 1;
            }
        }
    }
    // vecdot and fdot for m <= 8 on every type, cublas everywhere.
    assert!(
        checked >= TYPES.len() * 4 + TYPES.len() * 3 * 2,
        "only {checked} products checked"
    );
}

/// A quantised weight dequantised once at upload (the dense f16 copy cuBLAS
/// reads) gives the same products, bit for bit, as the same weight
/// dequantised before each product, for every quantised type; the copy is
/// counted in the weight's device bytes, and none is made without budget.
#[test]
fn dense_f16_copies_give_the_products_of_per_product_dequantisation() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cublas = gpu
        .matmul_impls()
        .iter()
        .position(|i| i.name == "cublas")
        .expect("a cublas implementation");
    let (n, k, m) = (300, 512, 33);
    for (ti, &ty) in TYPES.iter().enumerate().filter(|(_, t)| t.is_quantized()) {
        let w = randn(n * k, 700 + ti as u64);
        let f = tensor_file(&[("w", ty, k, n, w)]);
        gpu.set_dense_weight_budget(0);
        let tiled = gpu.upload_linear(&[view(&f, "w")], None).unwrap();
        gpu.set_dense_weight_budget(usize::MAX);
        let dense = gpu.upload_linear(&[view(&f, "w")], None).unwrap();
        assert_eq!(
            dense.device_bytes(),
            tiled.device_bytes() + n * k * 2,
            "{}: the dense copy is counted",
            ty.name()
        );
        let x = randn(m * k, 800 + ti as u64);
        let xg = activations(&gpu, &x, m, k);
        let mut a = gpu.alloc(DType::F32, m * n, "out").unwrap();
        let mut b = gpu.alloc(DType::F32, m * n, "out").unwrap();
        gpu.matmul(cublas, &xg, &tiled, m, &mut a).unwrap();
        gpu.matmul(cublas, &xg, &dense, m, &mut b).unwrap();
        let (a, b) = (read(&gpu, &a, m * n), read(&gpu, &b, m * n));
        assert!(a.iter().all(|v| v.is_finite()), "{}", ty.name());
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{}: dense copy changed the product", ty.name());
    }
}

/// Row lengths that are an odd number of blocks and row counts that do not
/// fill the last warp group (Qwen2.5-0.5B's 896 = 28 blocks of 32 is the case
/// that makes llama.cpp fall back to Q5_0/Q5_1/Q8_0), for every type.
#[test]
fn ragged_shapes_match_cpu_for_every_weight_type() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = CpuBackend::new(0).unwrap();
    for (ti, &ty) in TYPES.iter().enumerate() {
        let block = ty.block_size();
        let k = if block == 1 {
            904
        } else if block == 32 {
            896
        } else {
            3 * 256
        };
        let n = 37;
        let f = tensor_file(&[("w", ty, k, n, randn(n * k, 500 + ti as u64))]);
        let wv = view(&f, "w");
        let lc = cpu.upload_linear(std::slice::from_ref(&wv), None).unwrap();
        let lg = gpu.upload_linear(&[wv], None).unwrap();
        for m in [1usize, 5, 20] {
            let x = randn(m * k, 600 + m as u64);
            let (xc, xg) = (activations(&cpu, &x, m, k), activations(&gpu, &x, m, k));
            let mut oc = cpu.alloc(DType::F32, m * n, "out").unwrap();
            cpu.matmul(0, &xc, &lc, m, &mut oc).unwrap();
            let want = read(&cpu, &oc, m * n);
            let shape = MatmulShape {
                op: MatmulOp::Matmul,
                dtype: ty,
                batch: 1,
                m,
                n,
                k,
                ta: false,
                tb: true,
            };
            for (imp, i) in gpu.matmul_impls().iter().zip(0..) {
                if !(imp.supports)(&shape) {
                    continue;
                }
                let mut og = gpu.alloc(DType::F32, m * n, "out").unwrap();
                gpu.matmul(i, &xg, &lg, m, &mut og).unwrap();
                let err = rel_l2(&read(&gpu, &og, m * n), &want);
                let tol = tolerance(imp.name, ty);
                assert!(
                    err <= tol,
                    "{} on {} k={k} m={m}: rel_l2 {err:.3e} > {tol:.0e}",
                    imp.name,
                    ty.name()
                );
            }
        }
    }
}

/// A fused projection whose parts have different types (a Q8_0 Q part next to
/// F16 K/V parts) writes each part's columns from its own segment.
#[test]
fn mixed_type_parts_write_their_own_columns() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = CpuBackend::new(0).unwrap();
    let k = 256;
    let parts = [
        ("q", GgmlType::Q8_0, 96),
        ("k", GgmlType::F16, 32),
        ("v", GgmlType::Q4_K, 32),
    ];
    let tensors: Vec<_> = parts
        .iter()
        .enumerate()
        .flat_map(|(i, &(name, ty, rows))| {
            [
                (name, ty, k, rows, randn(k * rows, 10 + i as u64)),
                (
                    ["bq", "bk", "bv"][i],
                    GgmlType::F32,
                    rows,
                    1,
                    randn(rows, 20 + i as u64),
                ),
            ]
        })
        .collect();
    let f = tensor_file(&tensors);
    let ws: Vec<_> = ["q", "k", "v"].iter().map(|n| view(&f, n)).collect();
    let bs: Vec<_> = ["bq", "bk", "bv"].iter().map(|n| view(&f, n)).collect();
    let lc = cpu.upload_linear(&ws, Some(&bs)).unwrap();
    let lg = gpu.upload_linear(&ws, Some(&bs)).unwrap();
    assert!(!gpu.linear_info(&lg).uniform);
    let n = 160;
    for m in [1usize, 20] {
        let x = randn(m * k, 7);
        let xc = activations(&cpu, &x, m, k);
        let xg = activations(&gpu, &x, m, k);
        let mut oc = cpu.alloc(DType::F32, m * n, "out").unwrap();
        cpu.matmul(0, &xc, &lc, m, &mut oc).unwrap();
        let want = read(&cpu, &oc, m * n);
        let mut og = gpu.alloc(DType::F32, m * n, "out").unwrap();
        let shape = MatmulShape {
            op: MatmulOp::MatmulBiasAdd,
            dtype: GgmlType::Q8_0,
            batch: 1,
            m,
            n,
            k,
            ta: false,
            tb: true,
        };
        let imp = gpu.default_matmul_impl(&shape);
        gpu.matmul(imp, &xg, &lg, m, &mut og).unwrap();
        let got = read(&gpu, &og, m * n);
        // The widest of the parts' tolerances (int8 activations on vecdot, f16 on cuBLAS).
        let err = rel_l2(&got, &want);
        eprintln!("mixed m={m}: rel_l2={err:.2e}");
        assert!(err <= 1.5e-2, "m={m}: rel_l2 {err:.3e}");
    }
}

/// A weight type no kernel reads is refused at upload, naming the tensor,
/// its type and the types that are read.
#[test]
fn unsupported_weight_types_are_named_at_upload() {
    let Some(gpu) = cuda_or_skip() else { return };
    let f = tensor_file(&[(
        "blk.0.ffn_up.weight",
        GgmlType::Q8_K,
        256,
        4,
        randn(1024, 9),
    )]);
    let err = match gpu.upload_linear(&[view(&f, "blk.0.ffn_up.weight")], None) {
        Ok(_) => panic!("a Q8_K weight uploaded"),
        Err(e) => e.to_string(),
    };
    for needle in ["blk.0.ffn_up.weight", "Q8_K", "Q5_K"] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
}

/// `vecdot` quantises activations inside each product or in a separate
/// kernel first: the same operations, so bit-identical products, for every
/// quantised type, every batch size and a long row (the down projection's).
#[test]
fn vecdot_fused_quantisation_equals_separate_kernel_bit_for_bit() {
    let Some(gpu) = cuda_or_skip() else { return };
    let vecdot = gpu
        .matmul_impls()
        .iter()
        .position(|i| i.name == "vecdot")
        .expect("vecdot registered");
    let was = gpu.vecdot_fused();
    for (ti, &ty) in TYPES.iter().enumerate().skip(3) {
        for (n, k) in [(300, 512), (70, 4864)] {
            let f = tensor_file(&[("w", ty, k, n, randn(n * k, 500 + ti as u64))]);
            let lg = gpu.upload_linear(&[view(&f, "w")], None).unwrap();
            for m in 1..=8usize {
                let x = randn(m * k, 600 + m as u64);
                let xg = activations(&gpu, &x, m, k);
                let mut out = [Vec::new(), Vec::new()];
                for (fused, o) in [false, true].into_iter().zip(&mut out) {
                    gpu.set_vecdot_fused(Some(fused));
                    let mut og = gpu.alloc(DType::F32, m * n, "out").unwrap();
                    gpu.matmul(vecdot, &xg, &lg, m, &mut og).unwrap();
                    *o = read(&gpu, &og, m * n);
                }
                assert!(
                    out[0]
                        .iter()
                        .zip(&out[1])
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} n={n} k={k} m={m}: fused and separate quantisation differ",
                    ty.name()
                );
            }
        }
    }
    gpu.set_vecdot_fused(was);
}

/// `vecdot` is one product on both backends: the same 8-bit activations and
/// the same integer dot per block, so the GPU's result may differ from the
/// CPU's `vecdot` only in the float sums of the block terms. For every
/// quantised type with a GPU `vecdot` kernel (the 5-bit ones included), on a
/// full-warp shape and a ragged one (odd block counts, Qwen2.5-0.5B's 896),
/// each output is within f32 rounding (1e-5 of sum |w x|, as between the
/// CPU's SIMD levels) of the CPU's; the loose tolerance of the tests above
/// would hide a wrong scale or offset in one block of many.
#[test]
fn vecdot_equals_cpu_vecdot_up_to_float_summation() {
    let Some(gpu) = cuda_or_skip() else { return };
    let cpu = CpuBackend::new(0).unwrap();
    let pos = |impls: &[metallic::backend::MatmulImpl]| {
        impls
            .iter()
            .position(|i| i.name == "vecdot")
            .expect("vecdot registered")
    };
    let (vc, vg) = (pos(cpu.matmul_impls()), pos(gpu.matmul_impls()));
    let mut checked = 0;
    for (ti, ty) in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ]
    .into_iter()
    .enumerate()
    {
        let ragged = if ty.block_size() == 256 { 768 } else { 896 };
        for (n, k) in [(300, 512), (37, ragged), (70, 4864)] {
            let f = tensor_file(&[("w", ty, k, n, randn(n * k, 900 + ti as u64))]);
            let wv = view(&f, "w");
            let dense = metallic_gguf::quant::dequantize_to_vec(ty, wv.bytes()).unwrap();
            let lc = cpu.upload_linear(std::slice::from_ref(&wv), None).unwrap();
            let lg = gpu.upload_linear(&[wv], None).unwrap();
            for m in [1usize, 3, 8] {
                let shape = MatmulShape {
                    op: MatmulOp::Matmul,
                    dtype: ty,
                    batch: 1,
                    m,
                    n,
                    k,
                    ta: false,
                    tb: true,
                };
                assert!(
                    (cpu.matmul_impls()[vc].supports)(&shape)
                        && (gpu.matmul_impls()[vg].supports)(&shape),
                    "vecdot takes {} k={k} m={m} on both backends",
                    ty.name()
                );
                let x = randn(m * k, 950 + m as u64);
                let mut oc = cpu.alloc(DType::F32, m * n, "out").unwrap();
                cpu.matmul(vc, &activations(&cpu, &x, m, k), &lc, m, &mut oc)
                    .unwrap();
                let want = read(&cpu, &oc, m * n);
                let mut og = gpu.alloc(DType::F32, m * n, "out").unwrap();
                gpu.matmul(vg, &activations(&gpu, &x, m, k), &lg, m, &mut og)
                    .unwrap();
                let got = read(&gpu, &og, m * n);
                let mut worst = 0.0f64;
                for i in 0..m {
                    for r in 0..n {
                        let mag: f64 = dense[r * k..(r + 1) * k]
                            .iter()
                            .zip(&x[i * k..(i + 1) * k])
                            .map(|(&w, &v)| (w as f64 * v as f64).abs())
                            .sum();
                        let (g, c) = (got[i * n + r] as f64, want[i * n + r] as f64);
                        let tol = 1e-5 * mag + 1e-6;
                        assert!(
                            (g - c).abs() <= tol,
                            "{} n={n} k={k} m={m} output ({i}, {r}): gpu {g} vs cpu {c} (tolerance {tol:.2e})",
                            ty.name()
                        );
                        worst = worst.max((g - c).abs() / tol);
                    }
                }
                eprintln!(
                    "vecdot {:>5} n={n:<3} k={k:<4} m={m}: worst |gpu - cpu| / tolerance {worst:.3}",
                    ty.name()
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8 * 3 * 3);
}
