//! Weight matrices on the device, uploaded once in their GGUF block format
//! (split into planes, see `repack`). Parts of a fused projection (Q|K|V,
//! gate|up) share one matrix when their types match; otherwise each part is
//! its own segment and writes its own columns of the output.

use std::sync::Arc;

use metallic::backend::{LinearInfo, WeightView};
use metallic_gguf::quant;

use crate::device::{Device, DeviceBuffer};
use crate::error::{CudaError, CudaResult};
use crate::repack;
use crate::wtype::WType;

/// Rows `row0..row0 + rows` of a linear, all of one type.
pub(crate) struct Segment {
    pub ty: WType,
    pub row0: usize,
    pub rows: usize,
    /// Device addresses of the planes p0..p3 (0 when unused).
    pub planes: [u64; 4],
    _buf: DeviceBuffer,
    /// A quantised segment dequantised once to f16 `[rows, k]` for cuBLAS
    /// (see `matmul_cublas::dense_copies`); None: dequantised per product.
    pub dense: Option<DeviceBuffer>,
}

pub struct CudaLinear {
    pub(crate) segs: Vec<Segment>,
    pub(crate) bias: Option<DeviceBuffer>,
    pub(crate) info: LinearInfo,
}

impl CudaLinear {
    pub fn info(&self) -> &LinearInfo {
        &self.info
    }

    /// Device bytes held by the weights and bias.
    pub fn device_bytes(&self) -> usize {
        self.segs
            .iter()
            .map(|s| s._buf.bytes + s.dense.as_ref().map_or(0, |d| d.bytes))
            .sum::<usize>()
            + self.bias.as_ref().map_or(0, |b| b.bytes)
    }
}

fn weight_err(name: &str, reason: impl Into<String>) -> CudaError {
    CudaError::Invalid(format!("model weights: tensor `{name}`: {}", reason.into()))
}

fn upload_segment(
    dev: &Arc<Device>,
    ty: WType,
    row0: usize,
    rows: usize,
    raw: &[u8],
    what: &str,
) -> CudaResult<Segment> {
    let planes = repack::repack(ty, raw).map_err(|e| weight_err(what, e))?;
    let buf = DeviceBuffer::from_host(dev, &planes.data, what)?;
    let mut addrs = [0u64; 4];
    let used = planes.used;
    for (i, a) in addrs.iter_mut().enumerate().take(used) {
        *a = buf.ptr + planes.offsets[i] as u64;
    }
    Ok(Segment {
        ty,
        row0,
        rows,
        planes: addrs,
        _buf: buf,
        dense: None,
    })
}

pub(crate) fn upload(
    dev: &Arc<Device>,
    parts: &[WeightView],
    biases: Option<&[WeightView]>,
) -> CudaResult<CudaLinear> {
    let first = parts
        .first()
        .ok_or_else(|| CudaError::Invalid("a linear layer needs at least one part".into()))?;
    let k = first.cols();
    let mut types = Vec::with_capacity(parts.len());
    for p in parts {
        if p.cols() != k {
            return Err(weight_err(
                p.name(),
                format!("row length {} differs from {k}", p.cols()),
            ));
        }
        let ty = WType::from_ggml(p.ggml_type()).ok_or_else(|| {
            CudaError::Unsupported(format!(
                "tensor `{}` of type {} (the CUDA kernels read F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                p.name(),
                p.ggml_type().name()
            ))
        })?;
        if k % ty.block() != 0 {
            return Err(weight_err(
                p.name(),
                format!(
                    "row length {k} is not a multiple of the {}-value block",
                    ty.block()
                ),
            ));
        }
        let row_bytes = p
            .ggml_type()
            .row_bytes(k)
            .ok_or_else(|| weight_err(p.name(), "row length does not fit its type"))?;
        if p.bytes().len() != row_bytes * p.rows() {
            return Err(weight_err(p.name(), "data size does not match its shape"));
        }
        types.push(ty);
    }
    let n: usize = parts.iter().map(|p| p.rows()).sum();
    let uniform = types.iter().all(|&t| t == types[0]);
    let mut segs = Vec::new();
    if uniform {
        let what = format!("weights `{}`", first.name());
        if parts.len() == 1 {
            segs.push(upload_segment(dev, types[0], 0, n, first.bytes(), &what)?);
        } else {
            let mut raw = Vec::with_capacity(parts.iter().map(|p| p.bytes().len()).sum());
            for p in parts {
                raw.extend_from_slice(p.bytes());
            }
            segs.push(upload_segment(dev, types[0], 0, n, &raw, &what)?);
        }
    } else {
        let mut row0 = 0;
        for (p, &ty) in parts.iter().zip(&types) {
            let what = format!("weights `{}`", p.name());
            segs.push(upload_segment(dev, ty, row0, p.rows(), p.bytes(), &what)?);
            row0 += p.rows();
        }
    }
    let bias = match biases {
        None => None,
        Some(bs) => {
            let mut all = Vec::with_capacity(n);
            for b in bs {
                let mut v = vec![0.0f32; b.n_elements()];
                quant::dequantize(b.ggml_type(), b.bytes(), &mut v)
                    .map_err(|e| weight_err(b.name(), e.to_string()))?;
                all.extend_from_slice(&v);
            }
            if all.len() != n {
                return Err(weight_err(
                    first.name(),
                    format!("bias of {} values for {n} rows", all.len()),
                ));
            }
            let bytes: Vec<u8> = all.iter().flat_map(|v| v.to_le_bytes()).collect();
            Some(DeviceBuffer::from_host(
                dev,
                &bytes,
                &format!("bias of `{}`", first.name()),
            )?)
        }
    };
    Ok(CudaLinear {
        segs,
        bias,
        info: LinearInfo {
            n,
            k,
            dtype: first.ggml_type(),
            uniform,
            has_bias: biases.is_some(),
        },
    })
}
