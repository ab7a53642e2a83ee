//! Quantisation where gguf-py has no quantiser (the k-quants): properties of ggml's
//! `quantize_row_*_ref` algorithms, plus gguf-py's decoding of what we produce.
//!
//! Data: committed reference files (see scripts/reference/gguf_quant_vectors.py) and
//! deterministic synthetic data (normals, uniforms, outliers, ggml's own test signal).

mod common;

use common::{assert_bits_eq, f32_tensor, ggml_test_data, open_data, tensor_bytes, TestRng};
use metallic_gguf::quant::{self, q3_k::unpack_q3_k_scales, *};
use metallic_gguf::{GgmlType, QK_K};

const KQUANTS: [GgmlType; 6] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

/// Inputs covering typical weights and edge cases, 64 super-blocks each.
fn datasets() -> Vec<(&'static str, Vec<f32>)> {
    let mut rng = TestRng::new(0x5eed_0001);
    let n = 64 * QK_K;
    let uniform: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 * 2.0 - 0.5).collect();
    let mut outliers = rng.normals(n, 0.02);
    for i in (0..n).step_by(97) {
        outliers[i] = if i % 2 == 0 { 1.5 } else { -2.5 };
    }
    let sparse: Vec<f32> = (0..n)
        .map(|i| if i % 37 == 0 { rng.normal() } else { 0.0 })
        .collect();
    vec![
        ("normal", rng.normals(n, 1.0)),
        ("small normal", rng.normals(n, 0.01)),
        ("uniform", uniform),
        ("outliers", outliers),
        ("sparse", sparse),
        ("ggml cos", ggml_test_data(n, 0.0)),
    ]
}

/// For element `e` of a block of `ty`: the stored grid `value(q) = step * q - offset` for `q`
/// in `qmin..=qmax`, as the block's dequantisation computes it.
fn grid(ty: GgmlType, block: &[u8], e: usize) -> (f32, f32, i32, i32) {
    match ty {
        GgmlType::Q2_K => {
            let b = &quant::blocks_to_vec::<BlockQ2K>(block).unwrap()[0];
            let sc = b.scales[e / 16];
            let step = f16_to_f32(b.d) * f32::from(sc & 0x0f);
            let offset = f16_to_f32(b.dmin) * f32::from(sc >> 4);
            (step, offset, 0, 3)
        }
        GgmlType::Q3_K => {
            let b = &quant::blocks_to_vec::<BlockQ3K>(block).unwrap()[0];
            let sc = i32::from(unpack_q3_k_scales(&b.scales)[e / 16]) - 32;
            (f16_to_f32(b.d) * sc as f32, 0.0, -4, 3)
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin, scales) = if ty == GgmlType::Q4_K {
                let b = quant::blocks_to_vec::<BlockQ4K>(block).unwrap()[0];
                (b.d, b.dmin, b.scales)
            } else {
                let b = quant::blocks_to_vec::<BlockQ5K>(block).unwrap()[0];
                (b.d, b.dmin, b.scales)
            };
            let (sc, m) = get_scale_min_k4(e / 32, &scales);
            let step = f16_to_f32(d) * f32::from(sc);
            let offset = f16_to_f32(dmin) * f32::from(m);
            let qmax = if ty == GgmlType::Q4_K { 15 } else { 31 };
            (step, offset, 0, qmax)
        }
        GgmlType::Q6_K => {
            let b = &quant::blocks_to_vec::<BlockQ6K>(block).unwrap()[0];
            (f16_to_f32(b.d) * f32::from(b.scales[e / 16]), 0.0, -32, 31)
        }
        GgmlType::Q8_K => {
            let b = &quant::blocks_to_vec::<BlockQ8K>(block).unwrap()[0];
            (b.d, 0.0, -128, 127)
        }
        _ => unreachable!("not a k-quant"),
    }
}

/// ggml's reference quantisers end by re-picking every level as `nearest_int(x / step)` (plus
/// offset) against the *stored* scales, clamped to the level range. So each output must be the
/// grid point nearest its input. Tolerance: 1e-5 of the grid's extent, for the f32 rounding of
/// the division (which can flip an exact tie) and of `step * q - offset`.
#[test]
fn kquant_levels_are_nearest_on_the_stored_grid() {
    for (name, x) in datasets() {
        for ty in KQUANTS {
            let bytes = quant::quantize(ty, &x).unwrap();
            let y = quant::dequantize_to_vec(ty, &bytes).unwrap();
            for (bi, block) in bytes.chunks(ty.type_size()).enumerate() {
                for e in 0..QK_K {
                    let i = bi * QK_K + e;
                    let (step, offset, qmin, qmax) = grid(ty, block, e);
                    let best = (qmin..=qmax)
                        .map(|q| (x[i] - (step * q as f32 - offset)).abs())
                        .fold(f32::INFINITY, f32::min);
                    let tol = 1e-5 * (step.abs() * qmax.max(-qmin) as f32 + offset.abs());
                    let err = (x[i] - y[i]).abs();
                    assert!(
                        err <= best + tol,
                        "{ty} {name} block {bi} elem {e}: x {} -> {} (err {err}, nearest grid point err {best})",
                        x[i],
                        y[i]
                    );
                }
            }
        }
    }
}

/// Worst-case error per super-block, relative to its largest magnitude `amax`: one grid step
/// of the format at that amplitude. Why: an element inside the stored grid's range is within
/// half a step (previous test); the range itself comes from a scale search that fits the group
/// extremes and from 6-bit (Q4_K/Q5_K), 4-bit (Q2_K) or 8-bit (Q6_K) scale codes whose rounding
/// loses well under half a step of coverage. A step is `2 * amax / (levels - 1)` for the
/// formats with a minimum (range at most `2 * amax`), and for the symmetric ones `amax`
/// divided by the levels on the long side (Q3_K: 4, Q6_K: 32, Q8_K: 127).
#[test]
fn kquant_error_is_within_one_step_per_block() {
    let step_per_amax = |ty| match ty {
        GgmlType::Q2_K => 2.0 / 3.0,
        GgmlType::Q3_K => 1.0 / 4.0,
        GgmlType::Q4_K => 2.0 / 15.0,
        GgmlType::Q5_K => 2.0 / 31.0,
        GgmlType::Q6_K => 1.0 / 32.0,
        GgmlType::Q8_K => 1.0 / 127.0,
        _ => unreachable!(),
    };
    for (name, x) in datasets() {
        for ty in KQUANTS {
            let y = quant::dequantize_to_vec(ty, &quant::quantize(ty, &x).unwrap()).unwrap();
            for (bi, (xb, yb)) in x.chunks(QK_K).zip(y.chunks(QK_K)).enumerate() {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                let worst = xb
                    .iter()
                    .zip(yb)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let bound = step_per_amax(ty) * amax;
                assert!(
                    worst <= bound,
                    "{ty} {name} block {bi}: max error {worst} > {bound} (amax {amax})"
                );
            }
        }
    }
}

/// ggml tests/test-quantize-fns.cpp: `sqrt(sum of squared errors) / n` on its synthetic data
/// (4096 values of `0.1 + 2 cos(i)`) must stay under 0.0075 for Q2_K, 0.0040 for Q3_K and
/// 0.002 for every other format. Same data, metric and thresholds as ggml's own test.
#[test]
fn total_error_is_under_ggml_test_quantize_fns_thresholds() {
    let x = ggml_test_data(32 * 128, 0.0);
    for ty in GgmlType::ALL
        .into_iter()
        .filter(|&t| quant::can_quantize(t))
    {
        let y = quant::dequantize_to_vec(ty, &quant::quantize(ty, &x).unwrap()).unwrap();
        let sum: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let total = sum.sqrt() / x.len() as f64;
        let max = match ty {
            GgmlType::Q2_K => 0.0075,
            GgmlType::Q3_K => 0.0040,
            _ => 0.002,
        };
        assert!(total < max, "{ty}: {total} >= {max}");
    }
}

/// RMSE on N(0, 1) data. Uniform quantisation with step `s` gives about `s / sqrt(12)`, and
/// the expected largest |x| of n normals is about 2.1 (n = 16), 2.3 (n = 32), 2.9 (n = 256):
/// Q8_0 2.3/127/sqrt(12) = 0.0052, Q8_K 2.9/127/sqrt(12) = 0.0066, Q6_K 2.1/32/sqrt(12) = 0.019,
/// Q4_0 2.3/8/sqrt(12) = 0.083 (+ clamping of the side opposite the max), Q4_1 and Q4_K with a
/// range of about 4.2 over 15 steps 0.081 (the K search shrinks it to ~0.072), Q5_x half of
/// that, Q3_K 2.1/4/sqrt(12) = 0.15, Q2_K 4.2/3/sqrt(12) = 0.40 (its search trims the range to
/// ~0.30). The accepted ranges are those estimates widened by about 10-15%: a wrong bit layout
/// or a lost scale bit moves the RMSE far outside them.
#[test]
fn rmse_on_normal_data_is_in_the_expected_range() {
    let x = TestRng::new(0x5eed_0002).normals(256 * QK_K, 1.0);
    let expected = [
        (GgmlType::Q4_0, 0.080, 0.095),
        (GgmlType::Q4_1, 0.070, 0.086),
        (GgmlType::Q5_0, 0.039, 0.047),
        (GgmlType::Q5_1, 0.034, 0.042),
        (GgmlType::Q8_0, 0.0049, 0.0060),
        (GgmlType::Q2_K, 0.27, 0.33),
        (GgmlType::Q3_K, 0.135, 0.17),
        (GgmlType::Q4_K, 0.065, 0.080),
        (GgmlType::Q5_K, 0.033, 0.040),
        (GgmlType::Q6_K, 0.016, 0.020),
        (GgmlType::Q8_K, 0.0063, 0.0078),
    ];
    for (ty, lo, hi) in expected {
        let y = quant::dequantize_to_vec(ty, &quant::quantize(ty, &x).unwrap()).unwrap();
        let mse: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / x.len() as f64;
        let rmse = mse.sqrt();
        assert!(
            rmse > lo && rmse < hi,
            "{ty}: rmse {rmse} not in ({lo}, {hi})"
        );
    }
}

/// Blocks whose values are all zero encode exactly zero; a constant block stays close to the
/// constant (within the format's minimum/scale rounding: f16 has 11 significant bits and the
/// 6-bit minimum code rounds by at most 1/126 of itself).
#[test]
fn kquant_zero_and_constant_blocks() {
    for ty in KQUANTS {
        let zeros =
            quant::dequantize_to_vec(ty, &quant::quantize(ty, &[0.0; QK_K]).unwrap()).unwrap();
        assert!(zeros.iter().all(|&v| v == 0.0), "{ty}");
        for c in [-0.3f32, 0.7] {
            let y =
                quant::dequantize_to_vec(ty, &quant::quantize(ty, &[c; QK_K]).unwrap()).unwrap();
            for v in y {
                assert!((v - c).abs() <= c.abs() * 0.01, "{ty}: {c} -> {v}");
            }
        }
    }
}

fn kquant_file_check(ty: GgmlType) {
    let vectors = open_data("quant_vectors.gguf");
    let input = f32_tensor(&vectors, "kquant_input");
    let ours_file = open_data("kquant_ours.gguf");
    let (stored_ty, committed) = tensor_bytes(&ours_file, ty.name());
    assert_eq!(stored_ty, ty);

    // The committed bytes are what this quantiser produces today (they were generated by
    // examples/kquant_dump.rs); a change in the algorithm shows up here first.
    let ours = quant::quantize(ty, &input).unwrap();
    assert_eq!(
        ours, committed,
        "{ty}: quantize output differs from kquant_ours.gguf"
    );

    // gguf-py's dequantisation of those bytes must equal ours bit for bit (no tolerance: the
    // dequantisation parity tests show the arithmetic is identical).
    let theirs = f32_tensor(
        &open_data("kquant_ours_dequant.gguf"),
        &format!("{}.dequant", ty.name()),
    );
    let mine = quant::dequantize_to_vec(ty, &ours).unwrap();
    assert_bits_eq(
        &mine,
        &theirs,
        &format!("{ty}: gguf-py dequantize of our quantisation"),
    );
}

#[test]
fn q2_k_quantized_bytes_decode_identically_in_gguf_py() {
    kquant_file_check(GgmlType::Q2_K);
}

#[test]
fn q3_k_quantized_bytes_decode_identically_in_gguf_py() {
    kquant_file_check(GgmlType::Q3_K);
}

#[test]
fn q4_k_quantized_bytes_decode_identically_in_gguf_py() {
    kquant_file_check(GgmlType::Q4_K);
}

#[test]
fn q5_k_quantized_bytes_decode_identically_in_gguf_py() {
    kquant_file_check(GgmlType::Q5_K);
}

#[test]
fn q6_k_quantized_bytes_decode_identically_in_gguf_py() {
    kquant_file_check(GgmlType::Q6_K);
}

#[test]
fn q8_k_quantized_bytes_decode_identically_in_numpy() {
    kquant_file_check(GgmlType::Q8_K);
}

/// The Q8_K block sums are the sums of their 16 levels (ggml uses them in k-quant dot
/// products).
#[test]
fn q8_k_bsums_are_group_sums() {
    let x = TestRng::new(7).normals(4 * QK_K, 1.0);
    let blocks =
        quant::blocks_to_vec::<BlockQ8K>(&quant::quantize(GgmlType::Q8_K, &x).unwrap()).unwrap();
    for b in blocks {
        for (j, &s) in b.bsums.iter().enumerate() {
            let sum: i16 = b.qs[16 * j..16 * j + 16]
                .iter()
                .map(|&q| i16::from(q))
                .sum();
            assert_eq!(s, sum);
        }
    }
}
