//! Rewriting a GGUF's weights to another type (`metallic quantize`), as llama-quantize does:
//! metadata and tokenizer copied, `general.file_type` updated, norms and biases left in F32, and
//! each weight's type chosen by [`mix`] (llama.cpp's per-tensor rules).
//!
//! The file is written tensor by tensor through [`GgufWriter::stream_to`]: a slab of rows is
//! dequantised to f32, quantised and written before the next is read, so memory stays bounded
//! (a few tens of MiB) whatever the model size.

pub mod mix;

use std::io::Write;

use metallic_gguf::{quant, GgmlType, GgufFile, GgufWriter, Value};
use rayon::prelude::*;

pub use mix::{FileType, MixOptions, ModelShape, TensorDesc};

use crate::error::{Error, Result};

/// Values converted per slab: 16 MiB of f32, plus the slab's input and output bytes.
const SLAB_VALUES: usize = 1 << 22;
/// Rows quantised per parallel task (whole rows, so outputs concatenate in order).
const TASK_VALUES: usize = 1 << 16;
/// llama.cpp's `GGML_QNT_VERSION`, written as `general.quantization_version`.
pub const QUANTIZATION_VERSION: u32 = 2;

/// What `metallic quantize` is asked for.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub ftype: FileType,
    pub mix: MixOptions,
    /// `--allow-requantize`: a tensor already in a block format may be quantised again (which
    /// compounds the rounding error). Dequantising to F32 is always allowed: it loses nothing.
    pub allow_requantize: bool,
}

/// One tensor of the output: where it comes from and what it becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub from: GgmlType,
    pub to: GgmlType,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// The type of every tensor of `file` written as `opts.ftype`, checked: every conversion is one
/// the reference (de)quantisers support, rows divide into the target's blocks, and nothing is
/// requantised without `allow_requantize`.
pub fn plan(file: &GgufFile, opts: &QuantizeOptions) -> Result<Vec<TensorPlan>> {
    let shape = ModelShape::from_gguf(file)?;
    let descs: Vec<TensorDesc<'_>> = file
        .tensors()
        .iter()
        .map(|t| TensorDesc {
            name: &t.name,
            dims: &t.dims,
            ty: t.ggml_type,
        })
        .collect();
    let types = mix::plan(opts.ftype, &shape, &opts.mix, &descs);
    let mut out = Vec::with_capacity(types.len());
    for (t, to) in file.tensors().iter().zip(types) {
        let from = t.ggml_type;
        let unsupported = |reason: String| Error::Weight {
            name: t.name.clone(),
            reason,
        };
        if from != to {
            if !quant::can_dequantize(from) {
                return Err(unsupported(format!(
                    "it is {from}, which cannot be converted (only F32, F16, BF16, Q4_0, Q4_1, \
                     Q5_0, Q5_1, Q8_0 and Q2_K..Q6_K can)"
                )));
            }
            if !quant::can_quantize(to) {
                return Err(unsupported(format!(
                    "{to} cannot be written (choose F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 \
                     or Q2_K..Q6_K)"
                )));
            }
            if from.is_quantized() && to != GgmlType::F32 && !opts.allow_requantize {
                return Err(unsupported(format!(
                    "it is already {from}; quantising it again to {to} compounds the rounding \
                     error, so it is refused as llama-quantize does (pass --allow-requantize to \
                     do it anyway, or start from an F32/F16/BF16 file)"
                )));
            }
            if !t.row_len().is_multiple_of(to.block_size() as u64) {
                return Err(unsupported(format!(
                    "its rows of {} values do not divide into {to} blocks of {} (choose another \
                     type for it)",
                    t.row_len(),
                    to.block_size()
                )));
            }
        }
        let bytes_out = to
            .row_bytes_u64(t.row_len())
            .and_then(|r| r.checked_mul(t.n_rows()))
            .ok_or_else(|| unsupported("its size overflows".into()))?;
        out.push(TensorPlan {
            name: t.name.clone(),
            dims: t.dims.clone(),
            from,
            to,
            bytes_in: t.n_bytes,
            bytes_out,
        });
    }
    Ok(out)
}

/// The metadata of the output: the input's, with the file type and quantisation version set and
/// the split keys dropped (the output is one file), as llama-quantize writes it.
fn output_writer<'a>(
    file: &GgufFile,
    ftype: FileType,
    plan: &[TensorPlan],
) -> Result<GgufWriter<'a>> {
    let mut w = GgufWriter::new();
    w.version(file.version());
    for (k, v) in file.metadata() {
        w.add_metadata(k.clone(), v.clone());
    }
    w.add_metadata(
        "general.quantization_version",
        Value::U32(QUANTIZATION_VERSION),
    );
    w.add_metadata("general.file_type", Value::U32(ftype.id()));
    for key in ["split.no", "split.count", "split.tensors.count"] {
        w.remove_metadata(key);
    }
    for p in plan {
        w.add_tensor_info(p.name.clone(), p.to, &p.dims)?;
    }
    Ok(w)
}

/// Writes `file` with the types of `plan` (from [`plan`]) to `out`. `progress` is called with
/// the input bytes consumed after each slab, for a progress bar.
pub fn write<W: Write>(
    file: &GgufFile,
    ftype: FileType,
    plan: &[TensorPlan],
    out: W,
    progress: &mut dyn FnMut(&TensorPlan, u64),
) -> Result<W> {
    let writer = output_writer(file, ftype, plan)?;
    let mut stream = writer.stream_to(out)?;
    let mut values: Vec<f32> = Vec::new();
    for (p, info) in plan.iter().zip(file.tensors()) {
        let data = file.try_tensor_data(info)?;
        if p.bytes_out == 0 {
            continue;
        }
        let row_len = usize::try_from(info.row_len()).map_err(|_| too_big(p))?;
        let row_bytes = usize::try_from(info.row_bytes()).map_err(|_| too_big(p))?;
        if p.from == p.to {
            // Same type: the bytes are copied as they are, a slab at a time.
            for slab in data.chunks((SLAB_VALUES * 4).max(row_bytes)) {
                stream.write(slab)?;
                progress(p, slab.len() as u64);
            }
            continue;
        }
        let rows_per_slab = (SLAB_VALUES / row_len.max(1)).max(1);
        let rows_per_task = (TASK_VALUES / row_len.max(1)).max(1);
        for slab in data.chunks(rows_per_slab * row_bytes) {
            let n = slab.len() / row_bytes.max(1) * row_len;
            values.clear();
            values.try_reserve_exact(n).map_err(|_| Error::Weight {
                name: p.name.clone(),
                reason: format!("no memory for a slab of {n} values"),
            })?;
            values.resize(n, 0.0);
            quant::dequantize(p.from, slab, &mut values)?;
            let pieces: Vec<Vec<u8>> = values
                .par_chunks(rows_per_task * row_len)
                .map(|rows| quant::quantize(p.to, rows))
                .collect::<Result<_, _>>()?;
            for piece in &pieces {
                stream.write(piece)?;
            }
            progress(p, slab.len() as u64);
        }
    }
    Ok(stream.finish()?)
}

fn too_big(p: &TensorPlan) -> Error {
    Error::Weight {
        name: p.name.clone(),
        reason: "its rows are too large for this machine's address space".into(),
    }
}
