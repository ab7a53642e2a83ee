//! Weight matrices on the CPU: views into the GGUF map, never copied.

use metallic::backend::{LinearInfo, WeightView};
use metallic::error::{Error, Result};
use metallic_gguf::GgmlType;

/// One stacked part: `rows` rows of `k` values in GGUF block format.
pub struct Part {
    pub w: WeightView,
    pub rows: usize,
    pub row_bytes: usize,
    pub ty: GgmlType,
}

impl Part {
    #[inline]
    pub fn row(&self, r: usize) -> &[u8] {
        &self.w.bytes()[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

pub struct CpuLinear {
    pub parts: Vec<Part>,
    pub bias: Option<Vec<f32>>,
    pub info: LinearInfo,
    /// The output projection (one part named `output.weight`, or the tied
    /// `token_embd.weight`) or a layer's product: the default rules may keep
    /// the former in float32 activations.
    pub role: crate::matmul::Role,
}

impl CpuLinear {
    pub fn new(parts: &[WeightView], bias: Option<Vec<f32>>) -> Result<CpuLinear> {
        let first = parts.first().ok_or_else(|| {
            Error::InvalidArgument("a linear layer needs at least one part".into())
        })?;
        let k = first.cols();
        let mut out = Vec::with_capacity(parts.len());
        let mut n = 0;
        for p in parts {
            if p.cols() != k {
                return Err(Error::Weight {
                    name: p.name().into(),
                    reason: format!("row length {} differs from {k}", p.cols()),
                });
            }
            let ty = p.ggml_type();
            if !crate::matmul::supported_type(ty) {
                return Err(Error::Unsupported(format!(
                    "tensor `{}` of type {} on the CPU backend",
                    p.name(),
                    ty.name()
                )));
            }
            let row_bytes = ty.row_bytes(k).ok_or_else(|| Error::Weight {
                name: p.name().into(),
                reason: format!(
                    "row length {k} is not a multiple of the {} block",
                    ty.name()
                ),
            })?;
            if p.bytes().len() != row_bytes * p.rows() {
                return Err(Error::Weight {
                    name: p.name().into(),
                    reason: "data size does not match its shape".into(),
                });
            }
            n += p.rows();
            out.push(Part {
                w: p.clone(),
                rows: p.rows(),
                row_bytes,
                ty,
            });
        }
        if let Some(b) = &bias {
            if b.len() != n {
                return Err(Error::Weight {
                    name: first.name().into(),
                    reason: format!("bias of {} values for {n} rows", b.len()),
                });
            }
        }
        let dtype = out[0].ty;
        let uniform = out.iter().all(|p| p.ty == dtype);
        let role = match parts {
            [p] if matches!(p.name(), "output.weight" | "token_embd.weight") => {
                crate::matmul::Role::Output
            }
            _ => crate::matmul::Role::Layer,
        };
        Ok(CpuLinear {
            role,
            info: LinearInfo {
                n,
                k,
                dtype,
                uniform,
                has_bias: bias.is_some(),
            },
            parts: out,
            bias,
        })
    }

    /// The part holding global row `r`, and the row's index inside it.
    pub fn locate(&self, mut r: usize) -> Option<(&Part, usize)> {
        for p in &self.parts {
            if r < p.rows {
                return Some((p, r));
            }
            r -= p.rows;
        }
        None
    }
}
