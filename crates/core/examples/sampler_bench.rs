//! Time `Sampler::sample` over a Qwen2.5-sized vocabulary (151936) for common settings.
//! Run: cargo run --release -p metallic --example sampler_bench
//!
//! The logits are synthetic: a few hundred plausible tokens over a low floor, roughly the
//! shape of a language model's next-token distribution.

use std::time::Instant;

use metallic::sampler::{Sampler, SamplerParams};

const VOCAB: usize = 151_936;

fn synthetic_logits() -> Vec<f32> {
    // A small LCG: deterministic and dependency-free.
    let mut x: u64 = 0x1234_5678;
    let mut next = move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..VOCAB)
        .map(|i| {
            let base = next() * 4.0 - 6.0;
            if i % 500 == 0 {
                base + 12.0 + next() * 6.0
            } else {
                base
            }
        })
        .collect()
}

fn main() {
    let logits = synthetic_logits();
    let mut work = logits.clone();
    let cases = [
        ("greedy", SamplerParams::greedy()),
        (
            "default (T0.8 k40 p0.95 minp0.05)",
            SamplerParams::default(),
        ),
        (
            "T0.8 top_p0.95 only",
            SamplerParams {
                top_k: 0,
                min_p: 0.0,
                ..SamplerParams::default()
            },
        ),
        (
            "T1.0 no filters",
            SamplerParams {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                ..SamplerParams::default()
            },
        ),
        (
            "default + repeat 1.1 last 64",
            SamplerParams {
                repeat_penalty: 1.1,
                ..SamplerParams::default()
            },
        ),
    ];
    for (name, params) in cases {
        let mut s = Sampler::new(params, VOCAB).expect("valid params");
        let iters = 500;
        let mut sink = 0u64;
        let start = Instant::now();
        for _ in 0..iters {
            work.copy_from_slice(&logits);
            let t = s.sample(&mut work).expect("finite logits");
            s.accept(t);
            sink = sink.wrapping_add(t as u64);
        }
        let per = start.elapsed().as_secs_f64() / iters as f64;
        println!("{name:40} {:8.1} us/token  (checksum {sink})", per * 1e6);
    }
}
