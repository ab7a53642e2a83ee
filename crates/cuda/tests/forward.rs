//! The whole forward pass on the GPU against the CPU backend: synthetic
//! Qwen2 models of every weight type, prefill in chunks then decode steps
//! replayed as a CUDA graph, with the same token fed to both (teacher forcing,
//! so that one backend's choice never steers the other's input).

mod common;

use std::sync::Arc;

use common::*;
use metallic::backend::Backend;
use metallic::config::Arch;
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::generate::prefill;
use metallic::model::{Model, State};
use metallic::synth::Preset;
use metallic_cpu::CpuBackend;
use metallic_cuda::CudaBackend;
use metallic_gguf::{GgmlType, GgufFile};

struct Run {
    /// Logits after the prompt, then after each decode step.
    logits: Vec<Vec<f32>>,
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab.min(500) as u64) as u32
        })
        .collect()
}

/// Prefill `toks[..prompt]` in chunks of `batch`, then decode the rest one
/// token at a time (positions advanced on the device), replayed as a graph
/// when `graphs`.
#[allow(clippy::too_many_arguments)]
fn run<B: Backend>(
    b: &B,
    file: &Arc<GgufFile>,
    forced: Option<&str>,
    toks: &[u32],
    prompt: usize,
    batch: usize,
    graphs: bool,
    capacity: usize,
) -> Run {
    let model = Model::load(b, file).expect("model loads");
    let vocab = model.config.vocab;
    let cfg = DispatchConfig {
        all: forced.map(str::to_string),
        per_op: Vec::new(),
        ..Default::default()
    };
    let mut ex = Exec::new(b, MatmulDispatch::new(b.matmul_impls(), &cfg).unwrap());
    let mut st = State::new(b, &model.config, capacity, batch, 1).unwrap();
    let mut logits = Vec::new();
    prefill(&mut ex, &model, &mut st, &toks[..prompt]).expect("prefill");
    logits.push(read(b, &st.logits, vocab));
    let last_rows = prompt - (prompt - 1) / batch * batch;
    b.advance(&mut st.pos, last_rows).unwrap();
    for &t in &toks[prompt..] {
        b.write_i32(&mut st.ids, 0, &[t as i32]).unwrap();
        let start = st.n_past;
        let mut step = || -> metallic::error::Result<()> {
            model.forward(&mut ex, &mut st, 1, start, false)?;
            ex.backend.advance(&mut st.pos, 1)
        };
        if graphs {
            b.replayable(0x7e57, &mut step).expect("decode step");
        } else {
            step().expect("decode step");
        }
        st.n_past += 1;
        logits.push(read(b, &st.logits, vocab));
    }
    Run { logits }
}

/// Compare every step's logits; returns the worst relative L2 error.
fn compare(p: &Preset, ty: GgmlType, forced: Option<&str>, batch: usize, prompt: usize, tol: f64) {
    compare_at(p, ty, forced, batch, prompt, 128, tol)
}

fn compare_at(
    p: &Preset,
    ty: GgmlType,
    forced: Option<&str>,
    batch: usize,
    prompt: usize,
    capacity: usize,
    tol: f64,
) {
    // Skip before building the model: no GPU, nothing to compare.
    let Some(gpu) = cuda_or_skip() else { return };
    let file = synth_model(p, ty, 7);
    let label = format!("{} {}", p.name, ty.name());
    compare_file(
        &gpu,
        &label,
        &file,
        p.vocab,
        ty as u64 + 3,
        forced,
        batch,
        prompt,
        capacity,
        tol,
    );
}

/// [`compare_at`] on a given file.
#[allow(clippy::too_many_arguments)]
fn compare_file(
    gpu: &CudaBackend,
    label: &str,
    file: &Arc<GgufFile>,
    vocab: usize,
    seed: u64,
    forced: Option<&str>,
    batch: usize,
    prompt: usize,
    capacity: usize,
    tol: f64,
) {
    let cpu = CpuBackend::new(0).unwrap();
    let toks = tokens(prompt + 5, vocab, seed);
    // The CPU's float32-activation path: its default decode rounds Q4_x
    // activations to 8 bits (docs/quality.md), which these tolerances are not for.
    // BF16 has no `fdot` kernel on the CPU: the reference `gemv` (also float32
    // activations, weights dequantised exactly) stands in.
    let has_bf16 = file.tensors().iter().any(|t| t.ggml_type == GgmlType::BF16);
    let want = run(
        &cpu,
        file,
        Some(if has_bf16 { "gemv" } else { "fdot" }),
        &toks,
        prompt,
        batch,
        false,
        capacity,
    );
    let got = run(gpu, file, forced, &toks, prompt, batch, true, capacity);
    let mut worst: f64 = 0.0;
    for (s, (g, w)) in got.logits.iter().zip(&want.logits).enumerate() {
        let e = rel_l2(g, w);
        worst = worst.max(e);
        assert!(
            e <= tol,
            "{label} ({forced:?}, batch {batch}) step {s}: rel_l2 {e:.3e} > {tol:.0e}"
        );
    }
    eprintln!(
        "{label:>20} {:<10} batch {batch:<3} worst rel_l2 {worst:.2e} (tol {tol:.0e})",
        forced.unwrap_or("default")
    );
}

fn tiny() -> Preset {
    preset(Arch::Qwen2, "tiny")
}

/// `fdot` multiplies exactly dequantised weights with f32 activations,
/// as the CPU does: only summation order, and the GPU's expf/cosf/sinf (2 ulp),
/// differ, so the logits agree to f32 rounding accumulated over the layers.
#[test]
fn tiny_logits_match_cpu_on_the_f32_path_for_every_weight_type() {
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        compare(&tiny(), ty, Some("fdot"), 8, 13, 1e-4);
    }
    for ty in [
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q8_0,
        GgmlType::Q5_K,
        GgmlType::Q3_K,
        GgmlType::Q2_K,
    ] {
        compare(&tiny256(), ty, Some("fdot"), 8, 13, 1e-4);
    }
}

/// The default dispatch: cuBLAS for prefill chunks above 8 rows (16-bit
/// activations), int8-activation `vecdot` for the last chunk and decode. The
/// tolerance is that of the roundings each path adds (see matmul.rs),
/// compounded over the layers and the logit projection.
#[test]
fn tiny_logits_match_cpu_on_the_default_path_for_every_weight_type() {
    let cases = [
        (tiny(), GgmlType::F32, 1e-4),
        (tiny(), GgmlType::F16, 5e-3),
        (tiny(), GgmlType::BF16, 2e-2),
        (tiny(), GgmlType::Q8_0, 3e-2),
        (tiny(), GgmlType::Q4_0, 3e-2),
        (tiny(), GgmlType::Q4_1, 3e-2),
        (tiny256(), GgmlType::Q4_K, 3e-2),
        (tiny256(), GgmlType::Q6_K, 3e-2),
        (tiny(), GgmlType::Q5_0, 3e-2),
        (tiny(), GgmlType::Q5_1, 3e-2),
        (tiny256(), GgmlType::Q5_K, 3e-2),
        // No vecdot kernel: decode runs fdot (f32 activations), prefill cuBLAS.
        (tiny256(), GgmlType::Q3_K, 3e-2),
        (tiny256(), GgmlType::Q2_K, 3e-2),
    ];
    for (p, ty, tol) in cases {
        // 40 prompt tokens in chunks of 16, 16 and 8: cuBLAS twice, vecdot once,
        // and prefill attention over a cache that already holds positions.
        compare(&p, ty, None, 16, 40, tol);
    }
}

/// llama.cpp's mixes, whose tensors have different types (tiny's 64-wide
/// rows fall back to Q5_0/Q5_1/Q8_0; tiny256 keeps Q4_K/Q5_K/Q6_K), on the
/// exact path and the default one.
#[test]
fn llama_cpp_mixes_match_cpu() {
    use metallic::quantize::FileType;
    let Some(gpu) = cuda_or_skip() else { return };
    for p in [tiny(), tiny256()] {
        for ft in [FileType::Q4_K_M, FileType::Q5_K_M, FileType::Q3_K_M] {
            let file = synth_mix_model(&p, ft, 7);
            let label = format!("{} {}", p.name, ft.name());
            compare_file(
                &gpu,
                &label,
                &file,
                p.vocab,
                11,
                Some("fdot"),
                8,
                13,
                128,
                1e-4,
            );
            compare_file(&gpu, &label, &file, p.vocab, 11, None, 16, 40, 128, 3e-2);
        }
    }
}

/// A long context: prefill attention over 700 positions in chunks of 64,
/// then decode attention split over the filled length (a 2048-position cache
/// gives 16 splits; chunks of at least 256 keys, so 3 of them hold keys) and
/// merged by the last block of each head. F32 weights: the products are f32 on both sides
/// (cuBLAS without TF32, fdot), so the tolerance is f32 rounding.
#[test]
fn long_context_attention_matches_cpu() {
    compare_at(&tiny(), GgmlType::F32, None, 64, 700, 2048, 1e-4);
}

/// The same steps replayed from a captured graph and launched one by one
/// give bit-identical logits; the graph is captured once and replayed after.
#[test]
fn graph_replay_matches_direct_launches_bit_for_bit() {
    let Some(gpu) = cuda_or_skip() else { return };
    let file = synth_model(&tiny(), GgmlType::Q8_0, 11);
    let toks = tokens(20, 500, 5);
    let (c0, r0) = gpu.graph_stats();
    let direct = run(&gpu, &file, None, &toks, 6, 8, false, 128);
    let replayed = run(&gpu, &file, None, &toks, 6, 8, true, 128);
    let (c1, r1) = gpu.graph_stats();
    assert_eq!(c1 - c0, 1, "one capture for the decode steps");
    assert_eq!(r1 - r0, 13, "every later step replays");
    for (s, (a, b)) in direct.logits.iter().zip(&replayed.logits).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "step {s} differs"
        );
    }
}

/// Programmatic dependent launch changes only when kernels may start, never
/// what they compute: decode replayed from graphs captured with it on and off
/// gives bit-identical logits (on a GPU without it, both runs are plain).
#[test]
fn programmatic_launch_on_and_off_decode_bit_for_bit() {
    let Some(gpu) = cuda_or_skip() else { return };
    let file = synth_model(&tiny(), GgmlType::Q8_0, 13);
    let toks = tokens(20, 500, 9);
    let was = gpu.programmatic_launch();
    gpu.set_programmatic_launch(false);
    let off = run(&gpu, &file, None, &toks, 6, 8, true, 128);
    gpu.set_programmatic_launch(true);
    eprintln!("programmatic launch: {}", gpu.programmatic_launch());
    let on = run(&gpu, &file, None, &toks, 6, 8, true, 128);
    gpu.set_programmatic_launch(was);
    for (s, (a, b)) in off.logits.iter().zip(&on.logits).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "step {s} differs"
        );
    }
}

/// Full-size Qwen2.5-0.5B layout (24 layers, 151936-token vocabulary, tied
/// embeddings), F16 and Q8_0. Slow on the CPU side: run with --include-ignored.
#[test]
#[ignore]
fn qwen25_05b_logits_match_cpu() {
    let p = preset(Arch::Qwen2, "qwen2.5-0.5b");
    // Tolerances as for the tiny models; 24 layers instead of 2 compound the
    // same per-product roundings.
    compare(&p, GgmlType::F16, None, 32, 20, 1e-2);
    compare(&p, GgmlType::Q8_0, None, 32, 20, 5e-2);
}
