//! Errors of the CUDA backend. Everything that can fail without a GPU (no
//! driver, no device, missing NVRTC or cuBLAS) is a variant here, found by
//! probing before cudarc is first used, so that it never panics.

use cudarc::cublas::result::CublasError;
use cudarc::driver::DriverError;
use cudarc::nvrtc::result::NvrtcError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CudaError {
    #[error("no CUDA driver: libcuda.so.1 could not be loaded (is the NVIDIA driver installed? use --device cpu otherwise)")]
    NoDriver,

    #[error("the CUDA driver supports CUDA {major}.{minor}; this build needs CUDA 13.0 or newer (driver R580+)")]
    DriverTooOld { major: i32, minor: i32 },

    #[error("no CUDA device: {0}")]
    NoDevice(String),

    #[error("CUDA device {ordinal} does not exist ({count} device(s) found)")]
    BadOrdinal { ordinal: usize, count: i32 },

    #[error("{lib} could not be loaded ({hint})")]
    MissingLibrary { lib: &'static str, hint: String },

    #[error("compute capability {major}.{minor} is not supported (need 7.5 or newer)")]
    UnsupportedDevice { major: i32, minor: i32 },

    #[error("CUDA driver: {context}: {source}")]
    Driver {
        context: &'static str,
        source: DriverError,
    },

    #[error("NVRTC could not compile kernels/{name}.cu:\n{log}")]
    Compile { name: String, log: String },

    #[error("NVRTC: {context}: {source:?}")]
    Nvrtc {
        context: &'static str,
        source: NvrtcError,
    },

    #[error("cuBLAS: {context}: {source:?}")]
    Cublas {
        context: &'static str,
        source: CublasError,
    },

    #[error("out of device memory while allocating {what} ({bytes} bytes; {free} bytes free of {total})")]
    OutOfMemory {
        what: String,
        bytes: u64,
        free: u64,
        total: u64,
    },

    #[error("{0}")]
    Invalid(String),

    #[error("unsupported on CUDA: {0}")]
    Unsupported(String),
}

pub type CudaResult<T> = std::result::Result<T, CudaError>;

/// Attach a short description of the call to a driver error.
pub(crate) trait DriverContext<T> {
    fn ctx(self, context: &'static str) -> CudaResult<T>;
}

impl<T> DriverContext<T> for std::result::Result<T, DriverError> {
    fn ctx(self, context: &'static str) -> CudaResult<T> {
        self.map_err(|source| CudaError::Driver { context, source })
    }
}

impl<T> DriverContext<T> for std::result::Result<T, CublasError> {
    fn ctx(self, context: &'static str) -> CudaResult<T> {
        self.map_err(|source| CudaError::Cublas { context, source })
    }
}

impl<T> DriverContext<T> for std::result::Result<T, NvrtcError> {
    fn ctx(self, context: &'static str) -> CudaResult<T> {
        self.map_err(|source| CudaError::Nvrtc { context, source })
    }
}

impl From<CudaError> for metallic::error::Error {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::OutOfMemory {
                what,
                bytes,
                free,
                total,
            } => metallic::error::Error::OutOfMemory {
                what,
                bytes,
                free,
                total,
            },
            CudaError::Unsupported(s) => metallic::error::Error::Unsupported(s),
            other => metallic::error::Error::backend("cuda", other.to_string()),
        }
    }
}
