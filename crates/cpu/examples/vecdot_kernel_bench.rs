//! Single-thread speed of the vecdot kernels on cache-resident rows:
//! ns per 32-value block for each weight type and SIMD level, quantised
//! rows as the decode driver runs them (tiles of 16 rows where the level
//! has a tile kernel for the type, else groups of up to four rows).
//!
//!     cargo run --release -p metallic-cpu --example vecdot_kernel_bench

use std::time::Instant;

use metallic_cpu::q8_act::Q8Acts;
use metallic_cpu::vec_dot::{Kernels, SimdLevel, GROUP_ROWS, TILE_ROWS};
use metallic_gguf::{quant, GgmlType};

fn main() {
    let k = 4864;
    let rows = 64; // 64 rows of 4864: ~200 kB of Q4_1, L2-resident
    let x: Vec<f32> = (0..k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
        .collect();
    let mut acts = Q8Acts::default();
    acts.quantize(&x, 1, k);
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::F16,
        GgmlType::F32,
    ] {
        let w: Vec<f32> = (0..rows * k)
            .map(|i| ((i * 13 % 97) as f32 - 48.0) / 50.0)
            .collect();
        let bytes = quant::quantize(ty, &w).unwrap();
        let rb = bytes.len() / rows;
        for level in SimdLevel::ALL {
            let Some(kern) = Kernels::for_level(level) else {
                continue;
            };
            let mut s = 0.0f32;
            let reps = 200;
            let a = acts.row(0);
            let t = Instant::now();
            for _ in 0..reps {
                if !ty.is_quantized() {
                    for r in 0..rows {
                        s += kern.float(ty, &bytes[r * rb..(r + 1) * rb], &x);
                    }
                } else if kern.has_tile(ty) {
                    let mut out = [0.0f32; TILE_ROWS];
                    for r in (0..rows).step_by(TILE_ROWS) {
                        let tile = &bytes[r * rb..(r + TILE_ROWS) * rb];
                        kern.quant_tile(ty, tile, rb, TILE_ROWS, &[a], &mut out, &[]);
                        s += out.iter().sum::<f32>();
                    }
                } else {
                    let mut out = [0.0f32; GROUP_ROWS];
                    for r in (0..rows).step_by(GROUP_ROWS) {
                        let group = &bytes[r * rb..(r + GROUP_ROWS) * rb];
                        kern.quant_group(ty, group, rb, a, &mut out);
                        s += out.iter().sum::<f32>();
                    }
                }
            }
            let ns = t.elapsed().as_nanos() as f64 / (reps * rows * k / 32) as f64;
            println!(
                "{:<5} {:<7} {:6.2} ns/block  {:6.1} GB/s  (checksum {s:.3})",
                ty.name(),
                level.name(),
                ns,
                (rb * rows * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
            );
        }
    }
}
