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
    Q5_0 = 8,
    Q5_1 = 9,
    Q5K = 10,
    Q2K = 11,
    Q3K = 12,
}

impl WType {
    pub const COUNT: usize = 13;
    pub const ALL: [WType; 13] = [
        WType::F32,
        WType::F16,
        WType::BF16,
        WType::Q8_0,
        WType::Q4_0,
        WType::Q4_1,
        WType::Q4K,
        WType::Q6K,
        WType::Q5_0,
        WType::Q5_1,
        WType::Q5K,
        WType::Q2K,
        WType::Q3K,
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
            GgmlType::Q5_0 => WType::Q5_0,
            GgmlType::Q5_1 => WType::Q5_1,
            GgmlType::Q5_K => WType::Q5K,
            GgmlType::Q2_K => WType::Q2K,
            GgmlType::Q3_K => WType::Q3K,
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
            WType::Q5_0 => "q5_0",
            WType::Q5_1 => "q5_1",
            WType::Q5K => "q5_k",
            WType::Q2K => "q2_k",
            WType::Q3K => "q3_k",
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, WType::F32 | WType::F16 | WType::BF16)
    }

    /// Values per block: rows must be a whole number of blocks.
    pub fn block(self) -> usize {
        match self {
            WType::F32 | WType::F16 | WType::BF16 => 1,
            WType::Q8_0 | WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 => 32,
            WType::Q4K | WType::Q6K | WType::Q5K | WType::Q2K | WType::Q3K => 256,
        }
    }

    /// Whether `vecdot` has an 8-bit-activation kernel for the type; the
    /// others (float types, and the 3- and 2-bit formats for now) run the
    /// `fdot` kernels when `vecdot` is asked for.
    pub fn has_vecdot(self) -> bool {
        matches!(
            self,
            WType::Q8_0
                | WType::Q4_0
                | WType::Q4_1
                | WType::Q4K
                | WType::Q6K
                | WType::Q5_0
                | WType::Q5_1
                | WType::Q5K
        )
    }
}
