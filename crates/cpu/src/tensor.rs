//! Host tensors of the CPU backend.

use metallic::backend::DType;
use metallic::error::{Error, Result};

/// A host buffer; its variant is its element type.
pub enum CpuTensor {
    F32(Vec<f32>),
    /// Only the paged KV cache (`--kv-type f16`): stored in half the memory,
    /// converted to f32 for arithmetic.
    F16(Vec<half::f16>),
    I32(Vec<i32>),
}

/// A zeroed vector of `len` elements, or an error saying how much was asked for: allocation
/// failure (sizes come from user input) must not abort the process.
fn try_zeroed<T: Copy + Default>(len: usize, what: &str) -> Result<Vec<T>> {
    let bytes = (len as u128) * std::mem::size_of::<T>() as u128;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        Error::InvalidArgument(format!(
            "cannot allocate {what}: {} ({len} elements); lower the context or batch size",
            human_bytes(bytes)
        ))
    })?;
    v.resize(len, T::default());
    Ok(v)
}

/// `1.5 GiB`, `512 B`.
pub fn human_bytes(n: u128) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

impl CpuTensor {
    /// Like [`zeros`](Self::zeros), failing with an error instead of aborting when the
    /// memory is not there.
    pub fn try_zeros(dtype: DType, len: usize, what: &str) -> Result<CpuTensor> {
        Ok(match dtype {
            DType::F32 => CpuTensor::F32(try_zeroed(len, what)?),
            DType::F16 => CpuTensor::F16(try_zeroed(len, what)?),
            DType::I32 => CpuTensor::I32(try_zeroed(len, what)?),
        })
    }

    pub fn zeros(dtype: DType, len: usize) -> CpuTensor {
        match dtype {
            DType::F32 => CpuTensor::F32(vec![0.0; len]),
            DType::F16 => CpuTensor::F16(vec![half::f16::ZERO; len]),
            DType::I32 => CpuTensor::I32(vec![0; len]),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuTensor::F32(v) => v.len(),
            CpuTensor::F16(v) => v.len(),
            CpuTensor::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
