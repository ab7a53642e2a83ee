//! Writing GGUF files.
//!
//! The layout is ggml's: header, metadata in insertion order, tensor infos in insertion order,
//! zero padding to the alignment, then tensor data. Tensors without an explicit offset are
//! placed one after another, each at the next multiple of the alignment; gaps are zero bytes
//! and the data section is zero-padded to a multiple of the alignment at the end, as ggml and
//! gguf-py write it. [`GgufWriter::from_file`] keeps a file's own offsets, so reading a file
//! written that way and writing it again gives the same bytes.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::GgufError;
use crate::reader::GgufFile;
use crate::types::GgmlType;
use crate::value::Value;
use crate::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};

struct PendingTensor<'a> {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    /// `None` for a tensor whose bytes a [`TensorStream`] writes later.
    data: Option<Cow<'a, [u8]>>,
    /// Bytes of data (the length of `data` where present).
    len: u64,
    offset: Option<u64>,
}

/// Builds a GGUF file. Tensor data is either owned or borrowed (`'a`), e.g. from the map of a
/// [`GgufFile`] being rewritten.
pub struct GgufWriter<'a> {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a> GgufWriter<'a> {
    /// An empty GGUF v3 with the default alignment (32).
    pub fn new() -> Self {
        GgufWriter {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// A writer that reproduces `file`: same version, alignment, metadata order and values,
    /// tensor order, tensor offsets, with the tensor data borrowed from the file. For a file
    /// laid out as ggml writes it (zero padding, data section padded at the end) the output is
    /// byte-identical to the input.
    pub fn from_file(file: &'a GgufFile) -> Self {
        GgufWriter {
            version: file.version(),
            alignment: file.alignment(),
            metadata: file.metadata().to_vec(),
            tensors: file
                .tensors()
                .iter()
                .map(|t| PendingTensor {
                    name: t.name.clone(),
                    ty: t.ggml_type,
                    dims: t.dims.clone(),
                    data: Some(Cow::Borrowed(file.tensor_data(t))),
                    len: file.tensor_data(t).len() as u64,
                    offset: Some(t.offset),
                })
                .collect(),
        }
    }

    /// Sets the GGUF version written (2 or 3; they share one layout).
    pub fn version(&mut self, version: u32) -> &mut Self {
        self.version = version;
        self
    }

    /// Sets the data alignment and keeps `general.alignment` in step: updated in place if
    /// present, appended if absent and the alignment is not the default.
    pub fn alignment(&mut self, alignment: u64) -> &mut Self {
        self.alignment = alignment;
        if let Ok(a) = u32::try_from(alignment) {
            match self.metadata.iter_mut().find(|(k, _)| k == ALIGNMENT_KEY) {
                Some((_, v)) => *v = Value::U32(a),
                None if alignment != DEFAULT_ALIGNMENT => {
                    self.metadata
                        .push((ALIGNMENT_KEY.to_owned(), Value::U32(a)));
                }
                None => {}
            }
        }
        self
    }

    /// Adds a metadata entry, or replaces the value of an existing key in place (keeping its
    /// position). Setting `general.alignment` to a `u32` also sets the alignment.
    pub fn add_metadata(&mut self, key: impl Into<String>, value: Value) -> &mut Self {
        let key = key.into();
        if key == ALIGNMENT_KEY {
            if let Value::U32(a) = value {
                self.alignment = a.into();
            }
        }
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Removes a metadata entry, returning its value.
    pub fn remove_metadata(&mut self, key: &str) -> Option<Value> {
        let i = self.metadata.iter().position(|(k, _)| k == key)?;
        Some(self.metadata.remove(i).1)
    }

    /// The metadata entries in write order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// Adds a tensor placed after the previous one. `dims` are in ggml order (`dims[0]` is the
    /// row length); `data` must be exactly the bytes the type and dims call for.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[u64],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<&mut Self, GgufError> {
        let data = data.into();
        let len = data.len() as u64;
        self.push_tensor(name.into(), ty, dims, Some(data), len, None)
    }

    /// Adds a tensor placed after the previous one whose data is not at hand yet: a
    /// [`TensorStream`] from [`GgufWriter::stream_to`] writes it later, so a file can be
    /// written tensor by tensor without holding all the data in memory.
    pub fn add_tensor_info(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[u64],
    ) -> Result<&mut Self, GgufError> {
        let name = name.into();
        let len = tensor_bytes(ty, dims).ok_or_else(|| {
            GgufError::InvalidWriter(format!(
                "tensor {name:?}: dims {dims:?} are not whole {ty} rows or overflow"
            ))
        })?;
        self.push_tensor(name, ty, dims, None, len, None)
    }

    /// Adds a tensor at an explicit offset in the data section (must be aligned and must not
    /// overlap other tensors; checked when writing).
    pub fn add_tensor_at(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[u64],
        data: impl Into<Cow<'a, [u8]>>,
        offset: u64,
    ) -> Result<&mut Self, GgufError> {
        let data = data.into();
        let len = data.len() as u64;
        self.push_tensor(name.into(), ty, dims, Some(data), len, Some(offset))
    }

    fn push_tensor(
        &mut self,
        name: String,
        ty: GgmlType,
        dims: &[u64],
        data: Option<Cow<'a, [u8]>>,
        len: u64,
        offset: Option<u64>,
    ) -> Result<&mut Self, GgufError> {
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufError::InvalidWriter(format!(
                "tensor {name:?} added twice"
            )));
        }
        if dims.len() > MAX_DIMS as usize {
            return Err(GgufError::InvalidWriter(format!(
                "tensor {name:?} has {} dims, at most {MAX_DIMS} are supported",
                dims.len()
            )));
        }
        let expected = tensor_bytes(ty, dims).ok_or_else(|| {
            GgufError::InvalidWriter(format!(
                "tensor {name:?}: dims {dims:?} are not whole {ty} rows or overflow"
            ))
        })?;
        if expected != len {
            return Err(GgufError::TensorDataSize {
                name,
                ty,
                dims: dims.to_vec(),
                expected,
                actual: len,
            });
        }
        self.tensors.push(PendingTensor {
            name,
            ty,
            dims: dims.to_vec(),
            data,
            len,
            offset,
        });
        Ok(self)
    }

    /// Writes the file to `w`, returning the number of bytes written. Buffer `w` if it is a
    /// plain file: metadata goes out in one piece, tensor data in one write per tensor.
    pub fn write_to<W: Write + ?Sized>(&self, w: &mut W) -> Result<u64, GgufError> {
        if let Some(t) = self.tensors.iter().find(|t| t.data.is_none()) {
            return Err(GgufError::InvalidWriter(format!(
                "tensor {:?} has no data (added by add_tensor_info: write with stream_to)",
                t.name
            )));
        }
        let header = self.header_bytes()?;
        let (offsets, data_len) = self.layout()?;

        let mut order: Vec<usize> = (0..self.tensors.len()).collect();
        order.sort_by_key(|&i| offsets[i]);

        w.write_all(&header).map_err(GgufError::Write)?;
        let mut pos = 0u64;
        for i in order {
            let t = &self.tensors[i];
            let Some(data) = t.data.as_deref().filter(|d| !d.is_empty()) else {
                // An empty tensor may sit anywhere, even inside another tensor's range.
                continue;
            };
            // layout() checked that non-empty tensors do not overlap, so offsets[i] >= pos.
            write_zeros(w, offsets[i].saturating_sub(pos))?;
            w.write_all(data).map_err(GgufError::Write)?;
            pos = offsets[i] + t.len;
        }
        write_zeros(w, data_len.saturating_sub(pos))?;
        Ok((header.len() as u64).saturating_add(data_len))
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>, GgufError> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Writes the file to `path` (created or truncated).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<(), GgufError> {
        let path = path.as_ref();
        let io = |error| GgufError::Io {
            path: path.to_owned(),
            error,
        };
        let mut w = BufWriter::new(File::create(path).map_err(io)?);
        self.write_to(&mut w)?;
        w.flush().map_err(io)?;
        Ok(())
    }

    /// Writes the header to `w` and returns a [`TensorStream`] that takes the data of the
    /// tensors added by [`GgufWriter::add_tensor_info`] in file order, piece by piece; the data
    /// of tensors added with their bytes is written when the stream reaches them. Memory stays
    /// bounded by what the caller holds at once, whatever the model size.
    pub fn stream_to<W: Write>(&self, mut w: W) -> Result<TensorStream<'_, 'a, W>, GgufError> {
        let header = self.header_bytes()?;
        let (offsets, data_len) = self.layout()?;
        let mut order: Vec<usize> = (0..self.tensors.len())
            .filter(|&i| self.tensors[i].len != 0)
            .collect();
        order.sort_by_key(|&i| offsets[i]);
        w.write_all(&header).map_err(GgufError::Write)?;
        let mut stream = TensorStream {
            writer: self,
            w,
            order,
            offsets,
            data_len,
            next: 0,
            written: 0,
            pos: 0,
        };
        stream.write_ready()?;
        Ok(stream)
    }

    fn check_settings(&self) -> Result<(), GgufError> {
        if self.version != 2 && self.version != 3 {
            return Err(GgufError::InvalidWriter(format!(
                "version {} (only 2 and 3 can be written)",
                self.version
            )));
        }
        if !self.alignment.is_power_of_two() || self.alignment > u64::from(u32::MAX) {
            return Err(GgufError::InvalidWriter(format!(
                "alignment {} is not a power of two that fits in u32",
                self.alignment
            )));
        }
        match self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            Some((_, Value::U32(a))) if u64::from(*a) == self.alignment => Ok(()),
            None if self.alignment == DEFAULT_ALIGNMENT => Ok(()),
            Some((_, v)) => Err(GgufError::InvalidWriter(format!(
                "general.alignment is {v:?} but the alignment is {} (a u32 is required)",
                self.alignment
            ))),
            None => Err(GgufError::InvalidWriter(format!(
                "alignment {} without a general.alignment entry",
                self.alignment
            ))),
        }
    }

    /// Header, metadata, tensor infos and the padding up to the data section.
    fn header_bytes(&self) -> Result<Vec<u8>, GgufError> {
        self.check_settings()?;
        let (offsets, _) = self.layout()?;
        let mut b = Vec::new();
        b.extend_from_slice(&GGUF_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut b, key);
            b.extend_from_slice(&value.value_type().id().to_le_bytes());
            put_value(&mut b, key, value)?;
        }
        for (t, offset) in self.tensors.iter().zip(&offsets) {
            put_str(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&t.ty.id().to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
        }
        let padded = (b.len() as u64).next_multiple_of(self.alignment);
        b.resize(padded as usize, 0);
        Ok(b)
    }

    /// Each tensor's offset in the data section, and the padded data section length.
    fn layout(&self) -> Result<(Vec<u64>, u64), GgufError> {
        let align = self.alignment;
        let overflow = || GgufError::InvalidWriter("data section larger than u64".into());
        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut end_max = 0u64;
        for t in &self.tensors {
            let offset = match t.offset {
                Some(o) => o,
                None => end_max
                    .checked_next_multiple_of(align)
                    .ok_or_else(overflow)?,
            };
            if offset % align != 0 {
                return Err(GgufError::InvalidWriter(format!(
                    "tensor {:?}: offset {offset} is not a multiple of the alignment {align}",
                    t.name
                )));
            }
            let end = offset.checked_add(t.len).ok_or_else(overflow)?;
            end_max = end_max.max(end);
            offsets.push(offset);
        }
        let mut order: Vec<usize> = (0..self.tensors.len())
            .filter(|&i| self.tensors[i].len != 0)
            .collect();
        order.sort_by_key(|&i| offsets[i]);
        for pair in order.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if offsets[b] < offsets[a] + self.tensors[a].len {
                return Err(GgufError::InvalidWriter(format!(
                    "tensors {:?} and {:?} overlap",
                    self.tensors[a].name, self.tensors[b].name
                )));
            }
        }
        let data_len = end_max
            .checked_next_multiple_of(align)
            .ok_or_else(overflow)?;
        Ok((offsets, data_len))
    }
}

/// The data section of a file being written by [`GgufWriter::stream_to`].
pub struct TensorStream<'w, 'a, W: Write> {
    writer: &'w GgufWriter<'a>,
    w: W,
    /// Indices of the non-empty tensors in offset order.
    order: Vec<usize>,
    offsets: Vec<u64>,
    data_len: u64,
    /// Position in `order` of the tensor being written.
    next: usize,
    /// Bytes of that tensor written so far.
    written: u64,
    /// Bytes of the data section written so far.
    pos: u64,
}

impl<W: Write> TensorStream<'_, '_, W> {
    /// The name of the tensor whose data [`TensorStream::write`] takes next, `None` when all
    /// data is written.
    pub fn next_tensor(&self) -> Option<&str> {
        self.order
            .get(self.next)
            .map(|&i| self.writer.tensors[i].name.as_str())
    }

    /// Bytes still due for the tensor named by [`TensorStream::next_tensor`].
    pub fn remaining_in_tensor(&self) -> u64 {
        self.order
            .get(self.next)
            .map_or(0, |&i| self.writer.tensors[i].len - self.written)
    }

    /// Writes the next `bytes` of the current tensor's data; a tensor may come in any number
    /// of pieces. Fails when `bytes` runs past the end of the current tensor.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), GgufError> {
        while !bytes.is_empty() {
            let Some(&i) = self.order.get(self.next) else {
                return Err(GgufError::InvalidWriter(format!(
                    "{} bytes of tensor data after the last tensor",
                    bytes.len()
                )));
            };
            let t = &self.writer.tensors[i];
            if self.written == 0 {
                write_zeros(&mut self.w, self.offsets[i] - self.pos)?;
                self.pos = self.offsets[i];
            }
            let left = t.len - self.written;
            if bytes.len() as u64 > left {
                return Err(GgufError::InvalidWriter(format!(
                    "{} bytes written to tensor {:?}, which has {left} bytes left",
                    bytes.len(),
                    t.name
                )));
            }
            self.w.write_all(bytes).map_err(GgufError::Write)?;
            self.written += bytes.len() as u64;
            self.pos += bytes.len() as u64;
            bytes = &[];
            if self.written == t.len {
                self.next += 1;
                self.written = 0;
                self.write_ready()?;
            }
        }
        Ok(())
    }

    /// Writes the tensors from the current one on whose bytes the writer holds.
    fn write_ready(&mut self) -> Result<(), GgufError> {
        while let Some(&i) = self.order.get(self.next) {
            let Some(data) = self.writer.tensors[i].data.as_deref() else {
                return Ok(());
            };
            write_zeros(&mut self.w, self.offsets[i] - self.pos)?;
            self.w.write_all(data).map_err(GgufError::Write)?;
            self.pos = self.offsets[i] + data.len() as u64;
            self.next += 1;
        }
        Ok(())
    }

    /// Pads the data section and hands back the output (flush it). Fails when tensor data is
    /// still missing.
    pub fn finish(mut self) -> Result<W, GgufError> {
        if let Some(name) = self.next_tensor() {
            return Err(GgufError::InvalidWriter(format!(
                "the data of tensor {name:?} and the tensors after it was never written"
            )));
        }
        write_zeros(&mut self.w, self.data_len.saturating_sub(self.pos))?;
        Ok(self.w)
    }
}

/// Bytes of a tensor of type `ty` with ggml dims, if whole rows and no overflow.
fn tensor_bytes(ty: GgmlType, dims: &[u64]) -> Option<u64> {
    let row_len = dims.first().copied().unwrap_or(1);
    let rows = dims
        .iter()
        .skip(1)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))?;
    ty.row_bytes_u64(row_len)?.checked_mul(rows)
}

fn write_zeros<W: Write + ?Sized>(w: &mut W, mut n: u64) -> Result<(), GgufError> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..k]).map_err(GgufError::Write)?;
        n -= k as u64;
    }
    Ok(())
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// Writes a value without its type tag (the caller writes the tag where the format has one).
fn put_value(b: &mut Vec<u8>, key: &str, value: &Value) -> Result<(), GgufError> {
    match value {
        Value::U8(v) => b.push(*v),
        Value::I8(v) => b.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => b.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => b.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => b.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => b.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => b.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => b.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => b.extend_from_slice(&v.to_bits().to_le_bytes()),
        Value::F64(v) => b.extend_from_slice(&v.to_bits().to_le_bytes()),
        Value::Bool(v) => b.push(u8::from(*v)),
        Value::String(s) => put_str(b, s),
        Value::Array(elem, items) => {
            b.extend_from_slice(&elem.id().to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for (index, item) in items.iter().enumerate() {
                if item.value_type() != *elem {
                    return Err(GgufError::ArrayTypeMismatch {
                        key: key.to_owned(),
                        declared: *elem,
                        found: item.value_type(),
                        index,
                    });
                }
                put_value(b, key, item)?;
            }
        }
    }
    Ok(())
}
