//! Host tensors of the CPU backend.

use metallic::backend::DType;

/// A host buffer; its variant is its element type.
pub enum CpuTensor {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

impl CpuTensor {
    pub fn zeros(dtype: DType, len: usize) -> CpuTensor {
        match dtype {
            // The CPU keeps caches in f32: it has no fast f16 arithmetic to gain from.
            DType::F32 | DType::F16 => CpuTensor::F32(vec![0.0; len]),
            DType::I32 => CpuTensor::I32(vec![0; len]),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuTensor::F32(v) => v.len(),
            CpuTensor::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
