//! Failures are typed errors with a clear message, never panics.

mod common;

use common::*;
use metallic::backend::{Backend, DType};
use metallic::error::Error;
use metallic_cuda::{CudaBackend, CudaError};

/// Without a driver or a GPU, opening the backend is an error that says so;
/// with one, it opens. Either way nothing panics.
#[test]
fn opening_without_a_gpu_is_a_typed_error() {
    match CudaBackend::new(0) {
        Ok(b) => assert!(b.device_description().contains("sm_")),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    CudaError::NoDriver | CudaError::NoDevice(_) | CudaError::DriverTooOld { .. }
                ),
                "unexpected error: {e}"
            );
            assert!(!gpu_required(), "METALLIC_REQUIRE_GPU is set: {e}");
        }
    }
    assert!(matches!(
        CudaBackend::new(1_000),
        Err(CudaError::BadOrdinal { .. }
            | CudaError::NoDriver
            | CudaError::NoDevice(_)
            | CudaError::DriverTooOld { .. })
    ));
}

/// Asking for more device memory than exists names what did not fit.
#[test]
fn out_of_memory_names_the_allocation() {
    let Some(gpu) = cuda_or_skip() else { return };
    let e = gpu
        .alloc(DType::F32, 1 << 45, "KV cache (layer 3 keys)")
        .err()
        .expect("128 TiB cannot be allocated");
    match &e {
        Error::OutOfMemory {
            what, bytes, total, ..
        } => {
            assert_eq!(what, "KV cache (layer 3 keys)");
            assert!(*bytes >= 1 << 47 && *total > 0);
        }
        other => panic!("expected OutOfMemory, got {other}"),
    }
    assert!(e.to_string().contains("KV cache (layer 3 keys)"));
    // The device is still usable afterwards.
    let t = gpu.alloc(DType::F32, 16, "small").unwrap();
    assert_eq!(read(&gpu, &t, 16), vec![0.0; 16]);
}

/// Device memory in use is reported and grows with what we allocate.
#[test]
fn memory_use_is_reported() {
    let Some(gpu) = cuda_or_skip() else { return };
    let before = gpu.memory().expect("reported").used_by_us;
    let _t = gpu.alloc(DType::F32, 1 << 20, "probe").unwrap();
    let m = gpu.memory().unwrap();
    assert!(m.used_by_us >= before + (4 << 20));
    assert!(m.total >= m.free && m.total > 0);
}

/// Buffers that are too small for an op are refused before any launch.
#[test]
fn undersized_buffers_are_refused() {
    let Some(gpu) = cuda_or_skip() else { return };
    let x = gpu.alloc(DType::F32, 10, "x").unwrap();
    let w = gpu.alloc(DType::F32, 64, "w").unwrap();
    let mut out = gpu.alloc(DType::F32, 10, "out").unwrap();
    assert!(gpu.rms_norm(&x, &w, 2, 64, 1e-6, &mut out).is_err());
    let ids = gpu.alloc(DType::F32, 4, "ids of the wrong type").unwrap();
    let mut pos = gpu.alloc(DType::I32, 4, "pos").unwrap();
    assert!(gpu.write_i32(&mut pos, 2, &[1, 2, 3]).is_err());
    assert!(gpu.advance(&mut pos, 0).is_err());
    let _ = ids;
}
