//! Device-timed profile of batched decode steps (the step `metallic serve`
//! runs) on the CUDA backend, op by op.
//!
//!   profile_batch MODEL.gguf [ROWS=64] [CONTEXT=200] [STEPS=32] [KV=f32|f16]
//!
//! ROWS sequences each get a CONTEXT-token prompt (prefilled in chunks), then
//! STEPS decode steps of ROWS rows run twice: replayed as CUDA graphs without
//! events (the step time a server sees, host monotonic clock around
//! synchronised work), then ungraphed with CUDA events around every op (the
//! profiling mode), summed per op, implementation and shape. Sampling is not
//! included: the logits of every row are the step's output.

use std::sync::Arc;
use std::time::Instant;

use metallic::backend::{Backend, DType, PagedLayout};
use metallic::dispatch::{DispatchConfig, MatmulDispatch};
use metallic::exec::Exec;
use metallic::model::{BatchRow, BatchState, Model};
use metallic::profiler::Phase;
use metallic_cuda::CudaBackend;
use metallic_gguf::GgufFile;

#[path = "common/op_table.rs"]
mod op_table;

const BLOCK: usize = 16;
const CHUNK: usize = 256;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: profile_batch MODEL.gguf [ROWS] [CONTEXT] [STEPS] [f32|f16]";
    let path = args.get(1).ok_or(usage)?;
    let rows: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let ctx: usize = args.get(3).map_or(Ok(200), |s| s.parse())?;
    let steps: usize = args.get(4).map_or(Ok(32), |s| s.parse())?;
    let kv_type = match args.get(5).map(String::as_str) {
        None | Some("f32") => DType::F32,
        Some("f16") => DType::F16,
        Some(o) => return Err(format!("KV type {o}: f32 or f16. {usage}").into()),
    };
    if rows == 0 || ctx == 0 || steps == 0 {
        return Err(format!("ROWS, CONTEXT and STEPS must be positive. {usage}").into());
    }
    let file = Arc::new(GgufFile::open(path)?);
    let b = CudaBackend::new(0)?;
    let model = Model::load(&b, &file)?;
    let cfg = &model.config;
    // Two decode runs of `steps` positions each after the prompt.
    let max_len = ctx + 2 * steps + 1;
    let per_seq = max_len.div_ceil(BLOCK);
    let paged = PagedLayout {
        block_size: BLOCK,
        n_blocks: rows * per_seq,
        table_stride: per_seq,
    };
    let mut bs = BatchState::new(&b, cfg, paged, kv_type, rows.max(CHUNK), rows)?;
    let tables: Vec<Vec<u32>> = (0..rows)
        .map(|s| (0..per_seq).map(|j| (s * per_seq + j) as u32).collect())
        .collect();
    let token = |s: usize, p: usize| ((100 + 37 * s + 13 * p) % cfg.vocab) as u32;
    let dispatch = || MatmulDispatch::new(b.matmul_impls(), &DispatchConfig::from_env());
    let mut ex = Exec::new(&b, dispatch()?);

    // Prompts: each sequence alone, in chunks of CHUNK rows.
    for (s, table) in tables.iter().enumerate() {
        for p0 in (0..ctx).step_by(CHUNK) {
            let batch: Vec<BatchRow> = (p0..(p0 + CHUNK).min(ctx))
                .map(|p| BatchRow {
                    token: token(s, p),
                    pos: p,
                    table,
                })
                .collect();
            model.forward_batch(&mut ex, &mut bs, &batch, &[batch.len() - 1])?;
        }
    }
    let decode_rows = |p: usize| -> Vec<BatchRow> {
        tables
            .iter()
            .enumerate()
            .map(|(s, table)| BatchRow {
                token: token(s, p),
                pos: p,
                table,
            })
            .collect()
    };
    let all: Vec<usize> = (0..rows).collect();

    // Graphed: the first step captures, the rest replay.
    let mut graphed_ms = 0.0;
    for i in 0..steps {
        let batch = decode_rows(ctx + i);
        b.synchronize()?;
        let t = Instant::now();
        model.forward_batch(&mut ex, &mut bs, &batch, &all)?;
        b.synchronize()?;
        if i > 0 {
            graphed_ms += t.elapsed().as_secs_f64() * 1e3;
        }
    }
    let graphed = graphed_ms / (steps - 1).max(1) as f64;

    // Profiled: ungraphed, events between ops.
    bs.replay_decode = false;
    let mut ex = Exec::new(&b, dispatch()?);
    ex.record();
    for i in 0..steps {
        let batch = decode_rows(ctx + steps + i);
        ex.begin_step(Phase::Decode, rows)?;
        model.forward_batch(&mut ex, &mut bs, &batch, &all)?;
        ex.end_step()?;
    }
    let rec = ex
        .take_recorder()
        .ok_or("built without the profiling feature (--features metallic/profiling)")?;
    let n_steps = rec.steps.len().max(1) as f64;
    let step_dev: f64 = rec.steps.iter().map(|s| s.device_ms).sum::<f64>() / n_steps;
    let ops_dev: f64 = rec
        .ops
        .iter()
        .filter(|e| e.imp != "host")
        .map(|e| e.device_ms)
        .sum();
    println!("device: {}", b.device_description());
    println!(
        "model: {path} ({} layers, hidden {}); {rows} rows a step at positions {ctx}.., KV {kv_type:?}",
        cfg.n_layers,
        cfg.hidden,
    );
    println!(
        "graphed step (host clock, synchronised): {graphed:.3} ms = {:.0} tok/s aggregate",
        rows as f64 * 1e3 / graphed
    );
    println!(
        "profiled step (ungraphed, events): {step_dev:.3} ms device; sum of ops {:.3} ms",
        ops_dev / n_steps
    );
    println!();
    op_table::print(rec.ops.iter());
    Ok(())
}
