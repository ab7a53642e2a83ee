//! The weight types the CUDA kernels read, and their mapping from GGUF.

use metallic_gguf::GgmlType;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    Q8_0 = 3,
    Q4_0 = 4,
    Q4_1 = 5,
    Q4K = 6,
    Q6K = 7,
}

impl WType {
    pub const COUNT: usize = 8;
    pub const ALL: [WType; 8] = [
        WType::F32,
        WType::F16,
        WType::BF16,
        WType::Q8_0,
        WType::Q4_0,
        WType::Q4_1,
        WType::Q4K,
        WType::Q6K,
    ];

    pub fn from_ggml(t: GgmlType) -> Option<WType> {
        Some(match t {
            GgmlType::F32 => WType::F32,
            GgmlType::F16 => WType::F16,
            GgmlType::BF16 => WType::BF16,
            GgmlType::Q8_0 => WType::Q8_0,
            GgmlType::Q4_0 => WType::Q4_0,
            GgmlType::Q4_1 => WType::Q4_1,
            GgmlType::Q4_K => WType::Q4K,
            GgmlType::Q6_K => WType::Q6K,
            _ => return None,
        })
    }

    /// Kernel name suffix (`fdot_<suffix>_m1`, `embed_<suffix>`).
    pub fn suffix(self) -> &'static str {
        match self {
            WType::F32 => "f32",
            WType::F16 => "f16",
            WType::BF16 => "bf16",
            WType::Q8_0 => "q8_0",
            WType::Q4_0 => "q4_0",
            WType::Q4_1 => "q4_1",
            WType::Q4K => "q4_k",
            WType::Q6K => "q6_k",
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, WType::F32 | WType::F16 | WType::BF16)
    }

    /// Values per block: rows must be a whole number of blocks.
    pub fn block(self) -> usize {
        match self {
            WType::F32 | WType::F16 | WType::BF16 => 1,
            WType::Q8_0 | WType::Q4_0 | WType::Q4_1 => 32,
            WType::Q4K | WType::Q6K => 256,
        }
    }
}
