//! Activations, caches and index vectors on the device.

use metallic::backend::DType;

use crate::device::DeviceBuffer;
use crate::error::{CudaError, CudaResult};

pub struct CudaTensor {
    pub(crate) buf: DeviceBuffer,
    pub(crate) dtype: DType,
    pub(crate) len: usize,
}

impl CudaTensor {
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address, after checking the type and that `need` elements fit.
    pub(crate) fn ptr_of(&self, dtype: DType, need: usize, what: &str) -> CudaResult<u64> {
        if self.dtype != dtype {
            return Err(CudaError::Invalid(format!(
                "{what}: expected a {dtype:?} tensor, got {:?}",
                self.dtype
            )));
        }
        if self.len < need {
            return Err(CudaError::Invalid(format!(
                "{what}: buffer of {} elements, {need} needed",
                self.len
            )));
        }
        Ok(self.buf.ptr)
    }
}
