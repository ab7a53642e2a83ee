//! `read_i32_start` / `read_i32_finish`, which let the decode loop queue the
//! next step before it reads this step's token: a read returns the values as
//! they were when it was started, whatever was queued after it, on both
//! backends; more reads in flight than the pinned slots fall back to blocking
//! reads with the same results.
//!
//! The GPU half is skipped with a message where no GPU can be used;
//! METALLIC_REQUIRE_GPU=1 makes that a failure.

mod common;

use common::*;
use metallic::backend::{Backend, DType};
use metallic_cpu::CpuBackend;

/// `advance` with m = 1 adds one to element 0: queue `n` of them.
fn bump<B: Backend>(b: &B, t: &mut B::Tensor, n: usize) {
    for _ in 0..n {
        b.advance(t, 1).unwrap();
    }
}

fn reads_see_the_values_at_their_start<B: Backend>(b: &B) {
    let mut t = b.alloc(DType::I32, 4, "counter").unwrap();
    b.write_i32(&mut t, 0, &[10, 20, 30, 40]).unwrap();
    bump(b, &mut t, 5);
    let first = b.read_i32_start(&t, 0, 2).unwrap();
    bump(b, &mut t, 100);
    let mut got = [0i32; 2];
    b.read_i32_finish(first, &mut got).unwrap();
    assert_eq!(
        got,
        [15, 20],
        "a read sees the work queued before it, not after"
    );

    // Forty reads in flight (more than any pinned slot pool), each after one
    // more increment, finished in order.
    let mut reads = Vec::new();
    for _ in 0..40 {
        bump(b, &mut t, 1);
        reads.push(b.read_i32_start(&t, 0, 1).unwrap());
    }
    for (i, r) in reads.into_iter().enumerate() {
        let mut v = [0i32; 1];
        b.read_i32_finish(r, &mut v).unwrap();
        assert_eq!(v[0], 115 + 1 + i as i32, "read {i}");
    }

    // A read dropped unfinished frees what it held; a long read works too.
    let dropped = b.read_i32_start(&t, 0, 1).unwrap();
    drop(dropped);
    let long = b.alloc(DType::I32, 1000, "long").unwrap();
    let r = b.read_i32_start(&long, 0, 1000).unwrap();
    let mut v = vec![1i32; 1000];
    b.read_i32_finish(r, &mut v).unwrap();
    let mut want = vec![0i32; 1000];
    b.read_i32(&long, 0, &mut want).unwrap();
    assert_eq!(v, want);

    // Asking for another length than was read is an error, not a panic.
    let r = b.read_i32_start(&t, 0, 2).unwrap();
    assert!(b.read_i32_finish(r, &mut [0i32; 3]).is_err());
    // Reading past the end is refused at the start.
    assert!(b.read_i32_start(&t, 3, 2).is_err());
}

#[test]
fn cpu_reads_see_the_values_at_their_start() {
    reads_see_the_values_at_their_start(&CpuBackend::new(1).unwrap());
}

#[test]
fn cuda_reads_see_the_values_at_their_start() {
    let Some(gpu) = cuda_or_skip() else { return };
    reads_see_the_values_at_their_start(&gpu);
}
