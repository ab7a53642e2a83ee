//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use metallic_gguf::{quant, GgmlType, GgufFile};

pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
        .join(name)
}

pub fn asset_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
        .join("assets")
        .join(name)
}

/// Opens a committed reference file.
pub fn open_data(name: &str) -> GgufFile {
    GgufFile::open(data_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Raw bytes and type of a tensor.
pub fn tensor_bytes<'a>(file: &'a GgufFile, name: &str) -> (GgmlType, &'a [u8]) {
    let t = file
        .tensor(name)
        .unwrap_or_else(|| panic!("missing tensor {name}"));
    (t.ggml_type, file.tensor_data(t))
}

/// An F32 tensor's values.
pub fn f32_tensor(file: &GgufFile, name: &str) -> Vec<f32> {
    let (ty, bytes) = tensor_bytes(file, name);
    assert_eq!(ty, GgmlType::F32, "{name}");
    quant::dequantize_to_vec(ty, bytes).unwrap()
}

/// Asserts two f32 slices are identical bit for bit (NaN payloads included).
pub fn assert_bits_eq(ours: &[f32], reference: &[f32], what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let mismatches: Vec<_> = ours
        .iter()
        .zip(reference)
        .enumerate()
        .filter(|(_, (a, b))| a.to_bits() != b.to_bits())
        .take(5)
        .map(|(i, (a, b))| {
            format!(
                "[{i}] ours {a:e} ({:#010x}) ref {b:e} ({:#010x})",
                a.to_bits(),
                b.to_bits()
            )
        })
        .collect();
    assert!(mismatches.is_empty(), "{what}: {}", mismatches.join("; "));
}

/// Deterministic test data: xorshift64 and Box-Muller normals (no rand dependency, same values
/// on every platform).
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> Self {
        TestRng(seed | 1)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    pub fn normals(&mut self, n: usize, sigma: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * sigma).collect()
    }
}

/// ggml tests/test-quantize-fns.cpp `generate_data`: `0.1 + amplitude * cos(i + offset)`.
pub fn ggml_test_data(n: usize, offset: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (0.1 + 2.0 * f64::from((i as f32 + offset).cos())) as f32)
        .collect()
}
