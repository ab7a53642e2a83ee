//! The `Backend` trait's fused ops as every backend gets them by default
//! (`matmul_composed`, `rope_kv_store`), on the CPU: each checked against a
//! plain f64 reference of the separate steps, and `Exec::matmul_fused`
//! against the backend call it stands for.

use std::sync::Arc;

use metallic::backend::{Backend, Epilogue, FusedScratch, KvLayer, NormPrologue, QkvLayout, Rope};
use metallic::config::RopeStyle;
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic_cpu::{CpuBackend, CpuTensor};
use metallic_gguf::{GgmlType, GgufFile, GgufWriter};

/// Deterministic values in [-1, 1).
fn vals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// An F32 weight `[n, k]` with an optional bias, uploaded.
fn linear(
    b: &CpuBackend,
    w: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    k: usize,
) -> (Arc<GgufFile>, <CpuBackend as Backend>::Linear) {
    let mut g = GgufWriter::new();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    g.add_tensor("w", GgmlType::F32, &[k as u64, n as u64], bytes(w))
        .unwrap();
    if let Some(bv) = bias {
        g.add_tensor("b", GgmlType::F32, &[n as u64], bytes(bv))
            .unwrap();
    }
    let f = Arc::new(GgufFile::from_bytes(g.to_bytes().unwrap()).unwrap());
    let view =
        |name: &str| metallic::backend::WeightView::new(f.clone(), f.tensor(name).unwrap().clone());
    let biases = bias.map(|_| vec![view("b")]);
    let lin = b.upload_linear(&[view("w")], biases.as_deref()).unwrap();
    (f, lin)
}

fn f32s(t: &CpuTensor) -> &[f32] {
    match t {
        CpuTensor::F32(v) => v,
        _ => panic!("an f32 tensor was expected"),
    }
}

fn close(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{what}: element {i} is {g}, the reference {w}"
        );
    }
}

/// The reference: `epilogue(norm(x) W^T + bias)` in f64, `out0` the output's prior values.
#[allow(clippy::too_many_arguments)]
fn reference(
    x: &[f32],
    nw: Option<&[f32]>,
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    epilogue: Epilogue,
    out0: &[f32],
) -> Vec<f64> {
    let eps = 1e-6f64;
    let mut p = vec![0f64; m * n];
    for i in 0..m {
        let row = &x[i * k..][..k];
        let xs: Vec<f64> = match nw {
            Some(nw) => {
                let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / k as f64;
                let s = 1.0 / (ms + eps).sqrt();
                row.iter()
                    .zip(nw)
                    .map(|(&v, &g)| v as f64 * s * g as f64)
                    .collect()
            }
            None => row.iter().map(|&v| v as f64).collect(),
        };
        for j in 0..n {
            let d: f64 = xs
                .iter()
                .zip(&w[j * k..][..k])
                .map(|(a, &b)| a * b as f64)
                .sum();
            p[i * n + j] = d + bias.map_or(0.0, |b| b[j] as f64);
        }
    }
    match epilogue {
        Epilogue::Store => p,
        Epilogue::AddInto => p.iter().zip(out0).map(|(a, &o)| a + o as f64).collect(),
        Epilogue::SwiGlu => {
            let h = n / 2;
            let mut out = Vec::with_capacity(m * h);
            for i in 0..m {
                for j in 0..h {
                    let (g, u) = (p[i * n + j], p[i * n + h + j]);
                    out.push(g / (1.0 + (-g).exp()) * u);
                }
            }
            out
        }
    }
}

/// Every epilogue, with and without the norm and the bias, through the
/// default composition and through `Exec::matmul_fused`.
#[test]
fn default_matmul_fused_composes_norm_product_and_epilogue() {
    let b = CpuBackend::new(1).unwrap();
    let (m, n, k) = (3, 10, 64);
    let x = vals(m * k, 1);
    let w = vals(n * k, 2);
    let bias = vals(n, 3);
    let nw: Vec<f32> = vals(k, 4).iter().map(|v| 1.0 + 0.5 * v).collect();
    let nw_t = CpuTensor::F32(nw.clone());
    for epilogue in [Epilogue::Store, Epilogue::AddInto, Epilogue::SwiGlu] {
        for norm in [false, true] {
            for with_bias in [false, true] {
                let (_f, lin) = linear(&b, &w, with_bias.then_some(&bias[..]), n, k);
                let out_n = if epilogue == Epilogue::SwiGlu {
                    n / 2
                } else {
                    n
                };
                let out0 = vals(m * out_n, 5);
                let want = reference(
                    &x,
                    norm.then_some(&nw[..]),
                    &w,
                    with_bias.then_some(&bias[..]),
                    m,
                    n,
                    k,
                    epilogue,
                    &out0,
                );
                let what = format!("{epilogue:?} norm={norm} bias={with_bias}");
                let prologue = norm.then_some(NormPrologue {
                    weight: &nw_t,
                    eps: 1e-6,
                });
                let xt = CpuTensor::F32(x.clone());
                let fdot = b
                    .matmul_impls()
                    .iter()
                    .position(|i| i.name == "fdot")
                    .unwrap();

                // The trait's default.
                assert!(!b.fuses(fdot, &lin, m, norm, epilogue));
                let mut out = CpuTensor::F32(out0.clone());
                let mut normed = CpuTensor::F32(vec![0.0; m * k]);
                let mut product = CpuTensor::F32(vec![0.0; m * n]);
                b.matmul_fused(
                    fdot,
                    &xt,
                    prologue.as_ref(),
                    &lin,
                    m,
                    epilogue,
                    &mut out,
                    FusedScratch {
                        normed: Some(&mut normed),
                        product: Some(&mut product),
                    },
                )
                .unwrap();
                close(&format!("default {what}"), f32s(&out), &want);

                // Through the dispatcher, which records the parts one by one.
                let cfg = DispatchConfig {
                    all: Some("fdot".into()),
                    ..Default::default()
                };
                let mut ex = Exec::new(&b, MatmulDispatch::new(b.matmul_impls(), &cfg).unwrap());
                let mut out2 = CpuTensor::F32(out0.clone());
                ex.matmul_fused(
                    &xt,
                    norm.then_some(NormPrologue {
                        weight: &nw_t,
                        eps: 1e-6,
                    }),
                    &lin,
                    m,
                    epilogue,
                    &mut out2,
                    FusedScratch {
                        normed: Some(&mut normed),
                        product: Some(&mut product),
                    },
                )
                .unwrap();
                assert_eq!(
                    f32s(&out2),
                    f32s(&out),
                    "Exec {what}: differs from the backend call"
                );
            }
        }
    }
}

/// A scratch buffer the composition needs but was not given is an error
/// naming it, not a panic.
#[test]
fn default_matmul_fused_names_a_missing_scratch_buffer() {
    let b = CpuBackend::new(1).unwrap();
    let (m, n, k) = (1, 4, 32);
    let (_f, lin) = linear(&b, &vals(n * k, 1), None, n, k);
    let x = CpuTensor::F32(vals(k, 2));
    let nw = CpuTensor::F32(vec![1.0; k]);
    let mut out = CpuTensor::F32(vec![0.0; n]);
    let none = || FusedScratch {
        normed: None,
        product: None,
    };
    let e = b
        .matmul_fused(
            0,
            &x,
            Some(&NormPrologue {
                weight: &nw,
                eps: 1e-6,
            }),
            &lin,
            m,
            Epilogue::Store,
            &mut out,
            none(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("normed"), "{e}");
    let e = b
        .matmul_fused(0, &x, None, &lin, m, Epilogue::AddInto, &mut out, none())
        .unwrap_err();
    assert!(e.to_string().contains("product"), "{e}");
}

/// The default rope_kv_store rotates Q and K in place and caches the rotated
/// K and the V heads at the row's position.
#[test]
fn default_rope_kv_store_rotates_then_caches() {
    let b = CpuBackend::new(1).unwrap();
    let layout = QkvLayout {
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 4,
    };
    let w = layout.row_width();
    let row = vals(w, 7);
    let mut qkv = CpuTensor::F32(row.clone());
    let pos = CpuTensor::I32(vec![3]);
    let capacity = 5;
    let mut cache = KvLayer {
        k: CpuTensor::F32(vec![0.0; capacity * 4]),
        v: CpuTensor::F32(vec![0.0; capacity * 4]),
    };
    let rope = Rope {
        style: RopeStyle::Neox,
        theta: 100.0,
        dim: 4,
        pos_scale: 1.0,
        freq_factors: None,
    };
    b.rope_kv_store(&mut qkv, &pos, 1, &layout, &rope, &mut cache, capacity)
        .unwrap();
    let q = f32s(&qkv);
    // Neox pairs (j, j + 2) of each Q and K head rotated by 3 * theta^(-2j/4).
    for h in 0..3 {
        for j in 0..2 {
            let a = 3.0f64 * 100f64.powf(-((2 * j) as f64) / 4.0);
            let (x0, x1) = (row[h * 4 + j] as f64, row[h * 4 + j + 2] as f64);
            let want = [x0 * a.cos() - x1 * a.sin(), x0 * a.sin() + x1 * a.cos()];
            close(
                &format!("head {h} pair {j}"),
                &[q[h * 4 + j], q[h * 4 + j + 2]],
                &want,
            );
        }
    }
    assert_eq!(&q[12..16], &row[12..16], "V is not rotated");
    assert_eq!(
        &f32s(&cache.k)[12..16],
        &q[8..12],
        "rotated K cached at position 3"
    );
    assert_eq!(
        &f32s(&cache.v)[12..16],
        &row[12..16],
        "V cached at position 3"
    );
    assert!(
        f32s(&cache.k)[..12].iter().all(|&v| v == 0.0),
        "other positions untouched"
    );
}

/// `Backend::matmul_fused` or the composition it stands for.
type FusedOp = fn(
    &CpuBackend,
    usize,
    &CpuTensor,
    Option<&NormPrologue<'_, CpuTensor>>,
    &<CpuBackend as Backend>::Linear,
    usize,
    Epilogue,
    &mut CpuTensor,
    FusedScratch<'_, CpuTensor>,
) -> metallic::error::Result<()>;

/// A quantised gate|up weight `[2 ffn, k]` of type `ty`, uploaded.
fn quant_linear(
    b: &CpuBackend,
    ty: GgmlType,
    w: &[f32],
    n: usize,
    k: usize,
) -> (Arc<GgufFile>, <CpuBackend as Backend>::Linear) {
    let mut g = GgufWriter::new();
    let data = metallic_gguf::quant::quantize(ty, w).unwrap();
    g.add_tensor("w", ty, &[k as u64, n as u64], data).unwrap();
    let f = Arc::new(GgufFile::from_bytes(g.to_bytes().unwrap()).unwrap());
    let view = metallic::backend::WeightView::new(f.clone(), f.tensor("w").unwrap().clone());
    let lin = b.upload_linear(&[view], None).unwrap();
    (f, lin)
}

/// Decode's gate|up product with SwiGLU runs as one job on the CPU's team
/// (`fuses` says so for one row on `vecdot`), and its output is bit for bit
/// the product then `swiglu`: tile types (Q4_0, Q4_1, Q8_0), row-group
/// types (Q4_K, Q5_0), with and without the norm, `ffn` a multiple of the
/// 16-row tile or not, on 3 and 1 threads.
#[test]
fn gate_up_with_swiglu_fused_on_the_team_equals_product_then_swiglu() {
    for threads in [3, 1] {
        let b = CpuBackend::new(threads).unwrap();
        for (ty, k) in [
            (GgmlType::Q4_0, 64),
            (GgmlType::Q4_1, 96),
            (GgmlType::Q8_0, 64),
            (GgmlType::Q4_K, 256),
            (GgmlType::Q5_0, 128),
        ] {
            for ffn in [1536, 40, 7] {
                let n = 2 * ffn;
                let (_f, lin) = quant_linear(&b, ty, &vals(n * k, 3), n, k);
                let x = CpuTensor::F32(vals(k, 4));
                let nw = CpuTensor::F32(vals(k, 5).iter().map(|v| v + 1.5).collect());
                let imp = b
                    .matmul_impls()
                    .iter()
                    .position(|i| i.name == "vecdot")
                    .expect("vecdot");
                assert!(
                    threads == 1 || b.fuses(imp, &lin, 1, true, Epilogue::SwiGlu),
                    "{ty:?} ffn {ffn}: one decode row on the team is fused"
                );
                assert!(!b.fuses(imp, &lin, 2, true, Epilogue::SwiGlu));
                assert!(!b.fuses(imp, &lin, 1, true, Epilogue::AddInto));
                for norm in [false, true] {
                    let nm = NormPrologue {
                        weight: &nw,
                        eps: 1e-6,
                    };
                    let nm = norm.then_some(&nm);
                    let run = |fused: bool| {
                        let mut h = CpuTensor::F32(vec![0.0; k]);
                        let mut gu = CpuTensor::F32(vec![0.0; n]);
                        let mut out = CpuTensor::F32(vec![f32::NAN; ffn]);
                        let scratch = FusedScratch::both(&mut h, &mut gu);
                        let op: FusedOp = if fused {
                            CpuBackend::matmul_fused
                        } else {
                            metallic::backend::matmul_composed::<CpuBackend>
                        };
                        op(
                            &b,
                            imp,
                            &x,
                            nm,
                            &lin,
                            1,
                            Epilogue::SwiGlu,
                            &mut out,
                            scratch,
                        )
                        .unwrap();
                        f32s(&out).to_vec()
                    };
                    let (a, c) = (run(true), run(false));
                    assert!(
                        a.iter().all(|v| v.is_finite()),
                        "{ty:?}: every output written"
                    );
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&a),
                        bits(&c),
                        "{ty:?} ffn {ffn} norm {norm} threads {threads}: fused differs"
                    );
                }
            }
        }
    }
}
