//! Time of a decode step's products by thread count, without the rest of
//! the step: SmolLM2-135M's four layer products (Q4_1) of 30 layers run in
//! layer order, as decode runs them, on the backend's team.
//!
//!     cargo run --release -p metallic-cpu --example decode_products_bench -- 2 16

use std::sync::Arc;
use std::time::Instant;

use metallic::backend::{Backend, DType, WeightView};
use metallic_cpu::matmul::DECODE;
use metallic_cpu::CpuBackend;
use metallic_gguf::{quant, GgmlType, GgufFile, GgufWriter};

fn main() {
    let threads: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let shapes = [(960usize, 576usize), (576, 576), (3072, 576), (576, 1536)];
    let layers = 30;
    for &t in &threads {
        // A job of one task per thread, each busy for 2 us: the hand-off
        // and the wait for the last thread beyond those 2 us.
        let team = metallic_cpu::team::Team::new(t);
        let jobs = 20000;
        for pass in 0..2 {
            let t0 = Instant::now();
            for _ in 0..jobs {
                team.run(t, &|_| {
                    let s = Instant::now();
                    while s.elapsed().as_nanos() < 2000 {
                        std::hint::spin_loop();
                    }
                });
            }
            if pass == 1 {
                println!(
                    "threads {t:2}: a job of 2 us tasks {:.2} us",
                    t0.elapsed().as_secs_f64() / jobs as f64 * 1e6
                );
            }
        }
        drop(team);
        let be = CpuBackend::new(t).unwrap();
        let ws: Vec<Vec<_>> = shapes
            .iter()
            .map(|&(n, k)| {
                (0..layers)
                    .map(|l| {
                        let data: Vec<f32> = (0..n * k)
                            .map(|i| (((i + l) * 7919 % 1013) as f32 - 506.0) / 300.0)
                            .collect();
                        let mut wr = GgufWriter::new();
                        let q = quant::quantize(GgmlType::Q4_1, &data).unwrap();
                        wr.add_tensor("w", GgmlType::Q4_1, &[k as u64, n as u64], q)
                            .unwrap();
                        let mut buf = Vec::new();
                        wr.write_to(&mut buf).unwrap();
                        let file = Arc::new(GgufFile::from_bytes(buf).unwrap());
                        let view = WeightView::new(file.clone(), file.tensors()[0].clone());
                        be.upload_linear(&[view], None).unwrap()
                    })
                    .collect()
            })
            .collect();
        let x = be.alloc(DType::F32, 1536, "x").unwrap();
        let mut out = be.alloc(DType::F32, 3072, "out").unwrap();
        let steps = 200;
        for pass in 0..2 {
            let mut acc = [0.0f64; 4];
            let t0 = Instant::now();
            for _ in 0..steps {
                for l in 0..layers {
                    for (s, w) in ws.iter().enumerate() {
                        let a = Instant::now();
                        be.matmul(DECODE, &x, &w[l], 1, &mut out).unwrap();
                        acc[s] += a.elapsed().as_secs_f64();
                    }
                }
            }
            let total = t0.elapsed().as_secs_f64();
            if pass == 1 {
                let per = acc;
                let n = (steps * layers) as f64;
                println!(
                    "threads {t:2}: qkv {:.2} us | o {:.2} | gate|up {:.2} | down {:.2} | a layer {:.2} us",
                    per[0] / n * 1e6,
                    per[1] / n * 1e6,
                    per[2] / n * 1e6,
                    per[3] / n * 1e6,
                    total / n * 1e6
                );
            }
        }
    }
}
