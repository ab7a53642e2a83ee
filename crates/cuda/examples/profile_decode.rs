//! Device-timed profile of a greedy decode on the CUDA backend, op by op.
//!
//!   profile_decode MODEL.gguf [TOKENS=95] [PROMPT_TOKENS=8]
//!
//! Runs the decode ungraphed with CUDA events around every op (the profiling
//! mode of the backend), then prints per-op device time (summed over the
//! decode steps) grouped by op, implementation and shape, and the step total.
//! A second, unrecorded run replays the decode as a CUDA graph and gives the
//! tokens per second without event overhead.

use std::sync::Arc;

use metallic::backend::Backend;
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::generate::{generate, GenerateOptions};
use metallic::model::{Model, State};
use metallic::profiler::Phase;
use metallic::sampler::SamplerParams;
use metallic::tokenizer::Tokenizer;
use metallic_cuda::CudaBackend;
use metallic_gguf::GgufFile;

#[path = "common/op_table.rs"]
mod op_table;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: profile_decode MODEL.gguf [TOKENS] [PROMPT]")?;
    let n: usize = args.get(2).map_or(Ok(95), |s| s.parse())?;
    let np: usize = args.get(3).map_or(Ok(8), |s| s.parse())?;
    let file = Arc::new(GgufFile::open(path)?);
    let b = CudaBackend::new(0)?;
    let model = Model::load(&b, &file)?;
    let tok = Tokenizer::from_gguf(&file)?;
    let prompt: Vec<u32> = (0..np as u32).map(|i| 100 + 37 * i).collect();
    let opts = GenerateOptions {
        max_tokens: n + 1,
        sampler: SamplerParams::greedy(),
        ignore_eos: true,
        ..GenerateOptions::default()
    };
    let mut st = State::new(&b, &model.config, np + n + 2, 64, 1)?;
    let dispatch = || MatmulDispatch::new(b.matmul_impls(), &DispatchConfig::from_env());

    // Warm-up, then the graphed run (no events).
    let mut ex = Exec::new(&b, dispatch()?);
    generate(&mut ex, &model, &mut st, &tok, &prompt, &opts, &mut |_| {})?;
    st.reset();
    let g = generate(&mut ex, &model, &mut st, &tok, &prompt, &opts, &mut |_| {})?;
    let graphed = g.decode_tok_s();

    // The profiled run: same kernels, ungraphed, events between ops.
    st.reset();
    let mut ex = Exec::new(&b, dispatch()?);
    ex.record();
    let g = generate(&mut ex, &model, &mut st, &tok, &prompt, &opts, &mut |_| {})?;
    let rec = ex
        .take_recorder()
        .ok_or("built without the profiling feature")?;

    let steps: Vec<_> = rec
        .steps
        .iter()
        .filter(|s| s.phase == Phase::Decode)
        .collect();
    let step_dev: f64 = steps.iter().map(|s| s.device_ms).sum();
    let step_host: f64 = steps.iter().map(|s| s.host_ns as f64 / 1e6).sum();
    // Device time of the ops alone (the table below prints them).
    let ops_dev: f64 = rec
        .ops
        .iter()
        .filter(|e| e.phase == Phase::Decode && e.imp != "host")
        .map(|e| e.device_ms)
        .sum();
    println!("device: {}", b.device_description());
    println!(
        "model: {path} ({} layers, hidden {})",
        model.config.n_layers, model.config.hidden
    );
    println!(
        "decode: {} steps after a {np}-token prompt; greedy, sampling on the device",
        steps.len()
    );
    println!(
        "graphed decode (no events): {graphed:.1} tok/s ({:.3} ms/token)",
        1e3 / graphed
    );
    println!(
        "profiled decode (ungraphed, events): {:.1} tok/s; per step {:.3} ms device, {:.3} ms host",
        g.decode_tok_s(),
        step_dev / steps.len().max(1) as f64,
        step_host / steps.len().max(1) as f64
    );
    println!(
        "sum of per-op device time per step: {:.3} ms (gaps between ops are the rest)",
        ops_dev / steps.len().max(1) as f64
    );
    println!();
    println!("per-op device time over all decode steps (CUDA events):");
    op_table::print(rec.ops.iter().filter(|e| e.phase == Phase::Decode));
    Ok(())
}
