//! Reading and validating a GGUF file (v2 and v3), by mmap, copied into huge pages, or from
//! memory.
//!
//! Layout: magic `GGUF`, version u32, tensor count u64, metadata count u64, the metadata
//! entries (key string, value type u32, value), the tensor infos (name string, n_dims u32,
//! dims u64 x n_dims, type u32, data offset u64), zero padding to the alignment, then the data
//! section. All integers are little-endian; strings are a u64 byte length and UTF-8 bytes.
//!
//! Everything is validated at open: a [`GgufFile`] that exists has every tensor's data inside
//! the file, aligned and non-overlapping, so [`GgufFile::tensor_data`] is a plain slice.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use crate::cursor::{Cursor, Field};
use crate::error::GgufError;
use crate::types::GgmlType;
use crate::value::{Value, ValueType};
use crate::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_NESTING, MAX_DIMS};

/// Fewest bytes a metadata entry takes: key length (8), type (4), one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;
/// Fewest bytes a tensor info takes: name length (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;

/// One tensor's description from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// ggml order: `dims[0]` is the innermost (row length, contiguous) dimension.
    pub dims: Vec<u64>,
    /// Byte offset of the data relative to the start of the data section.
    pub offset: u64,
    pub n_elements: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Elements per row (`dims[0]`, or 1 for a 0-dimensional tensor).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }

    /// Number of rows (product of the outer dims; saturates for an info not read from a file,
    /// whose dims were never checked).
    pub fn n_rows(&self) -> u64 {
        self.dims
            .iter()
            .skip(1)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> u64 {
        self.ggml_type.row_bytes_u64(self.row_len()).unwrap_or(0)
    }
}

enum Bytes {
    Mmap(memmap2::Mmap),
    Huge(crate::huge_pages::HugeCopy),
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mmap(m) => m,
            Bytes::Huge(h) => h.as_slice(),
            Bytes::Owned(v) => v,
            Bytes::Shared(s) => s,
        }
    }
}

/// A validated GGUF file whose tensor data is viewed in place.
pub struct GgufFile {
    bytes: Bytes,
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .field("len", &self.bytes.as_slice().len())
            .finish()
    }
}

impl GgufFile {
    /// Maps the file read-only and validates it. Only the header, metadata and tensor infos are
    /// read; tensor data is paged in when used.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |error| GgufError::Io {
            path: path.to_owned(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let bytes = if len == 0 {
            // Mapping zero bytes fails on some platforms; an empty file is just truncated.
            Bytes::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and private to this value. Like every mmap-based
            // reader we rely on the file not being truncated or rewritten by another process
            // while it is mapped; GGUF model files are written once and then only read.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            Bytes::Mmap(map)
        };
        Self::from_source(bytes)
    }

    /// Reads the whole file into anonymous memory in transparent huge pages (Linux; see
    /// `huge_pages.rs` for why) and validates it as [`GgufFile::open`] does. Fails with
    /// [`GgufError::HugePages`] where the copy cannot be made (too little free memory, the
    /// mapping refused, not Linux): [`GgufFile::open`] still reads the same file then.
    pub fn open_in_huge_pages(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |error| GgufError::Io {
            path: path.to_owned(),
            error,
        };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            return Self::from_source(Bytes::Owned(Vec::new()));
        }
        // Parse the header from a plain map first: a file that is not a valid GGUF fails
        // as `open` says, before a copy of all of it is made.
        Self::open(path)?;
        let available = crate::huge_pages::mem_available();
        let copy = crate::huge_pages::HugeCopy::read(path, &mut file, len, available)?;
        Self::from_source(Bytes::Huge(copy))
    }

    /// Whether the tensor data lives in a huge-page copy ([`GgufFile::open_in_huge_pages`]).
    pub fn in_huge_pages(&self) -> bool {
        matches!(self.bytes, Bytes::Huge(_))
    }

    /// Validates a GGUF held in memory (same checks as [`GgufFile::open`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        Self::from_source(Bytes::Owned(bytes))
    }

    /// Validates a GGUF held in a shared buffer, without copying it.
    pub fn from_shared(bytes: Arc<[u8]>) -> Result<GgufFile, GgufError> {
        Self::from_source(Bytes::Shared(bytes))
    }

    fn from_source(bytes: Bytes) -> Result<GgufFile, GgufError> {
        let parsed = parse(bytes.as_slice())?;
        Ok(GgufFile {
            bytes,
            version: parsed.version,
            alignment: parsed.alignment,
            metadata: parsed.metadata,
            key_index: parsed.key_index,
            tensors: parsed.tensors,
            tensor_index: parsed.tensor_index,
            data_offset: parsed.data_offset,
        })
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment: `general.alignment` if present, else 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|(_, v)| v)
    }

    /// An integer entry that fits in `u32`, whatever integer width the file used.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        self.get(key).and_then(Value::as_u32)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.get(key).and_then(Value::as_i64)
    }

    /// An `f32` entry (or `f64`, rounded).
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(Value::as_f32)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(Value::as_bool)
    }

    pub fn get_array(&self, key: &str) -> Option<&[Value]> {
        self.get(key).and_then(Value::as_array)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    /// The tensor's bytes, borrowed from the map. For an info of this file this is exactly
    /// `n_bytes` long (checked at open); for any other info whose range is not inside the
    /// file it is empty (see [`GgufFile::try_tensor_data`] for an error instead).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        self.try_tensor_data(info).unwrap_or(&[])
    }

    /// The tensor's bytes, or `TensorOutOfBounds` when `info` does not describe a range inside
    /// this file (possible only for a `TensorInfo` not taken from this file).
    pub fn try_tensor_data(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        let bytes = self.bytes.as_slice();
        data_range(self.data_offset, info.offset, info.n_bytes, bytes.len())
            .and_then(|(start, end)| bytes.get(start..end))
            .ok_or_else(|| GgufError::TensorOutOfBounds {
                name: info.name.clone(),
                offset: 0,
                start: self.data_offset.saturating_add(info.offset),
                end: self
                    .data_offset
                    .saturating_add(info.offset)
                    .saturating_add(info.n_bytes),
                file_len: bytes.len() as u64,
            })
    }

    /// Absolute file offset of the data section (end of tensor infos, aligned up). For a file
    /// without tensors this can lie past the end of the file.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// File length in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    /// True for an empty file (which never validates, so never for an open `GgufFile`).
    pub fn is_empty(&self) -> bool {
        self.bytes.as_slice().is_empty()
    }
}

// Models are shared between threads (CPU backend workers); keep the file Send + Sync.
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufFile>();
};

/// `(start, end)` of tensor data as `usize` indices when it lies inside a buffer of `len`.
fn data_range(data_offset: u64, offset: u64, n_bytes: u64, len: usize) -> Option<(usize, usize)> {
    let start = data_offset.checked_add(offset)?;
    let end = start.checked_add(n_bytes)?;
    if end > len as u64 {
        return None;
    }
    Some((usize::try_from(start).ok()?, usize::try_from(end).ok()?))
}

struct Parsed {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    data_offset: u64,
}

fn parse(buf: &[u8]) -> Result<Parsed, GgufError> {
    let mut cur = Cursor::new(buf);

    let magic = cur.array::<4>(Field::Header("magic"))?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = cur.u32(Field::Header("version"))?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors_at = cur.offset();
    let n_tensors = cur.u64(Field::Header("tensor_count"))?;
    let n_kv_at = cur.offset();
    let n_kv = cur.u64(Field::Header("metadata_kv_count"))?;

    // Bound each count by the bytes left before allocating for it. (The tensor count is
    // checked after the metadata, against what is left then, so that a truncated file reports
    // where it ends rather than an implausible tensor count.)
    let n_kv = cur.check_count(
        n_kv,
        MIN_KV_SIZE,
        n_kv_at,
        Field::Header("metadata_kv_count"),
    )?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut key_index = HashMap::with_capacity(n_kv);
    let mut alignment = DEFAULT_ALIGNMENT;
    for index in 0..n_kv as u64 {
        let key_at = cur.offset();
        let key = cur.string(Field::Key { index })?;
        if key_index.contains_key(key) {
            return Err(GgufError::DuplicateKey {
                key: key.to_owned(),
                offset: key_at,
            });
        }
        let type_at = cur.offset();
        let type_id = cur.u32(Field::ValueType { key })?;
        let ty = ValueType::from_u32(type_id).ok_or_else(|| GgufError::UnknownValueType {
            field: Field::ValueType { key }.describe(),
            offset: type_at,
            type_id,
        })?;
        let value_at = cur.offset();
        let value = read_value(&mut cur, ty, key, Field::Value { key }, 0)?;
        if key == ALIGNMENT_KEY {
            alignment = checked_alignment(&value, value_at)?;
        }
        key_index.insert(key.to_owned(), metadata.len());
        metadata.push((key.to_owned(), value));
    }

    let n_tensors = cur.check_count(
        n_tensors,
        MIN_TENSOR_INFO_SIZE,
        n_tensors_at,
        Field::Header("tensor_count"),
    )?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut tensor_index = HashMap::with_capacity(n_tensors);
    // File offset of each tensor's `offset` field, for error messages.
    let mut offset_fields = Vec::with_capacity(n_tensors);
    for index in 0..n_tensors as u64 {
        let name_at = cur.offset();
        let name = cur.string(Field::TensorName { index })?;
        if tensor_index.contains_key(name) {
            return Err(GgufError::DuplicateTensor {
                name: name.to_owned(),
                offset: name_at,
            });
        }
        let (info, offset_at) = read_tensor_info(&mut cur, name, alignment)?;
        tensor_index.insert(info.name.clone(), tensors.len());
        tensors.push(info);
        offset_fields.push(offset_at);
    }

    let infos_end = cur.offset();
    let data_offset = infos_end
        .checked_next_multiple_of(alignment)
        .ok_or(GgufError::DataOffsetOverflow { offset: infos_end })?;
    check_tensor_ranges(&tensors, &offset_fields, data_offset, buf.len() as u64)?;

    Ok(Parsed {
        version,
        alignment,
        metadata,
        key_index,
        tensors,
        tensor_index,
        data_offset,
    })
}

fn checked_alignment(value: &Value, offset: u64) -> Result<u64, GgufError> {
    match *value {
        Value::U32(a) if a.is_power_of_two() => Ok(a.into()),
        Value::U32(a) => Err(GgufError::InvalidAlignment {
            offset,
            reason: format!("{a} is not a non-zero power of two"),
        }),
        ref other => Err(GgufError::InvalidAlignment {
            offset,
            reason: format!("stored as {}, ggml requires u32", other.value_type()),
        }),
    }
}

/// Reads one value of type `ty`. `depth` is the number of arrays enclosing it.
fn read_value(
    cur: &mut Cursor<'_>,
    ty: ValueType,
    key: &str,
    field: Field<'_>,
    depth: usize,
) -> Result<Value, GgufError> {
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.u8(field)?),
        ValueType::I8 => Value::I8(cur.u8(field)? as i8),
        ValueType::U16 => Value::U16(cur.u16(field)?),
        ValueType::I16 => Value::I16(cur.u16(field)? as i16),
        ValueType::U32 => Value::U32(cur.u32(field)?),
        ValueType::I32 => Value::I32(cur.u32(field)? as i32),
        ValueType::F32 => Value::F32(f32::from_bits(cur.u32(field)?)),
        ValueType::U64 => Value::U64(cur.u64(field)?),
        ValueType::I64 => Value::I64(cur.u64(field)? as i64),
        ValueType::F64 => Value::F64(f64::from_bits(cur.u64(field)?)),
        ValueType::Bool => {
            let at = cur.offset();
            match cur.u8(field)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                value => {
                    return Err(GgufError::InvalidBool {
                        field: field.describe(),
                        offset: at,
                        value,
                    })
                }
            }
        }
        ValueType::String => Value::String(cur.string(field)?.to_owned()),
        ValueType::Array => read_array(cur, key, depth + 1)?,
    })
}

/// Reads an array (element type, count, elements); `depth` is its nesting level (1 for a
/// top-level array).
fn read_array(cur: &mut Cursor<'_>, key: &str, depth: usize) -> Result<Value, GgufError> {
    let start = cur.offset();
    if depth > MAX_ARRAY_NESTING {
        return Err(GgufError::NestingTooDeep {
            field: Field::Value { key }.describe(),
            offset: start,
            max_depth: MAX_ARRAY_NESTING,
        });
    }
    let elem_id = cur.u32(Field::ArrayElemType { key })?;
    let elem = ValueType::from_u32(elem_id).ok_or_else(|| GgufError::UnknownValueType {
        field: Field::ArrayElemType { key }.describe(),
        offset: start,
        type_id: elem_id,
    })?;
    let len_at = cur.offset();
    let len = cur.u64(Field::ArrayLen { key })?;
    let len = cur.check_count(
        len,
        elem.min_encoded_size(),
        len_at,
        Field::ArrayLen { key },
    )?;
    cur.array_elements = cur.array_elements.saturating_add(len as u64);
    if cur.array_elements > crate::MAX_ARRAY_ELEMENTS {
        return Err(GgufError::TooManyArrayElements {
            field: Field::ArrayLen { key }.describe(),
            offset: len_at,
            max: crate::MAX_ARRAY_ELEMENTS,
        });
    }
    let mut items = Vec::with_capacity(len);
    match elem {
        // The common big arrays (token strings, merges) get a loop without per-element
        // dispatch on the element type.
        ValueType::String => {
            for index in 0..len as u64 {
                let s = cur.string(Field::ArrayElem { key, index })?;
                items.push(Value::String(s.to_owned()));
            }
        }
        ValueType::I32 => {
            for index in 0..len as u64 {
                items.push(Value::I32(cur.u32(Field::ArrayElem { key, index })? as i32));
            }
        }
        ValueType::F32 => {
            for index in 0..len as u64 {
                let bits = cur.u32(Field::ArrayElem { key, index })?;
                items.push(Value::F32(f32::from_bits(bits)));
            }
        }
        _ => {
            for index in 0..len as u64 {
                items.push(read_value(
                    cur,
                    elem,
                    key,
                    Field::ArrayElem { key, index },
                    depth,
                )?);
            }
        }
    }
    Ok(Value::Array(elem, items))
}

/// Reads and checks the rest of a tensor info after its name. Returns the info and the file
/// offset of its `offset` field.
fn read_tensor_info(
    cur: &mut Cursor<'_>,
    name: &str,
    alignment: u64,
) -> Result<(TensorInfo, u64), GgufError> {
    let field = |part| Field::Tensor { name, part };
    let n_dims_at = cur.offset();
    let n_dims = cur.u32(field("n_dims"))?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            name: name.to_owned(),
            offset: n_dims_at,
            n_dims,
            max: MAX_DIMS,
        });
    }
    let dims_at = cur.offset();
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64(field("dims"))?);
    }
    let type_at = cur.offset();
    let type_id = cur.u32(field("type"))?;
    let ggml_type = GgmlType::from_u32(type_id).ok_or_else(|| GgufError::UnknownTensorType {
        name: name.to_owned(),
        offset: type_at,
        type_id,
    })?;
    let offset_at = cur.offset();
    let offset = cur.u64(field("offset"))?;

    let overflow = |reason| GgufError::DimensionOverflow {
        name: name.to_owned(),
        offset: dims_at,
        dims: dims.clone(),
        reason,
    };
    // ggml keeps dims and element counts in int64_t.
    if dims.iter().any(|&d| d > i64::MAX as u64) {
        return Err(overflow("a dimension exceeds i64::MAX"));
    }
    let row_len = dims.first().copied().unwrap_or(1);
    let n_rows = dims
        .iter()
        .skip(1)
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| overflow("the row count overflows u64"))?;
    let n_elements = row_len
        .checked_mul(n_rows)
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| overflow("the element count exceeds i64::MAX"))?;
    if row_len % ggml_type.block_size() as u64 != 0 {
        return Err(GgufError::RowNotBlockAligned {
            name: name.to_owned(),
            offset: dims_at,
            ty: ggml_type,
            row_len,
            block_size: ggml_type.block_size(),
        });
    }
    // Block-aligned, so `None` here can only be the byte count overflowing.
    let row_bytes = ggml_type
        .row_bytes_u64(row_len)
        .ok_or_else(|| overflow("the row's byte size overflows u64"))?;
    let n_bytes = row_bytes
        .checked_mul(n_rows)
        .ok_or_else(|| overflow("the byte size overflows u64"))?;
    if offset % alignment != 0 {
        return Err(GgufError::MisalignedTensor {
            name: name.to_owned(),
            offset: offset_at,
            tensor_offset: offset,
            alignment,
        });
    }
    Ok((
        TensorInfo {
            name: name.to_owned(),
            ggml_type,
            dims,
            offset,
            n_elements,
            n_bytes,
        },
        offset_at,
    ))
}

/// Every tensor's data must lie inside the file and no two may share a byte.
fn check_tensor_ranges(
    tensors: &[TensorInfo],
    offset_fields: &[u64],
    data_offset: u64,
    file_len: u64,
) -> Result<(), GgufError> {
    for (t, &field_at) in tensors.iter().zip(offset_fields) {
        let start = data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(t.n_bytes));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                let start = data_offset.saturating_add(t.offset);
                return Err(GgufError::TensorOutOfBounds {
                    name: t.name.clone(),
                    offset: field_at,
                    start,
                    end: start.saturating_add(t.n_bytes),
                    file_len,
                });
            }
        }
    }
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    // Sorted by start, a tensor overlaps an earlier one exactly when it starts before the
    // furthest end seen so far. (Ends cannot saturate: they were checked against the file.)
    let end = |t: &TensorInfo| t.offset.saturating_add(t.n_bytes);
    let mut furthest: Option<&TensorInfo> = None;
    for t in order {
        if let Some(prev) = furthest {
            if t.offset < end(prev) {
                return Err(GgufError::TensorOverlap {
                    name: t.name.clone(),
                    other: prev.name.clone(),
                    start: t.offset,
                    end: end(t),
                });
            }
        }
        if furthest.is_none_or(|p| end(t) > end(p)) {
            furthest = Some(t);
        }
    }
    Ok(())
}
