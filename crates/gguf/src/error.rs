//! The one error type of the crate.
//!
//! Every variant that comes from reading a file names the field it was reading (as a
//! human-readable description such as `element 7 of metadata value "tokenizer.ggml.tokens"`)
//! and the absolute byte offset in the file where that field starts, so a bad file can be
//! inspected with a hex dump at the right place.

use std::path::PathBuf;

use crate::types::GgmlType;
use crate::value::ValueType;

/// Everything that can go wrong reading, validating, writing or (de)quantising GGUF data.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Opening, mapping or writing a file failed. (The I/O error is part of the message rather
    /// than a `source()`, so error chains do not print it twice.)
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// The file could not be copied into huge pages ([`crate::GgufFile::open_in_huge_pages`]).
    #[error("{path}: cannot copy its {mib} MiB into huge pages: {reason}; read it from the file map instead", mib = bytes.div_ceil(1 << 20))]
    HugePages {
        path: PathBuf,
        bytes: u64,
        reason: String,
    },

    /// Writing to a stream failed.
    #[error("write failed: {0}")]
    Write(std::io::Error),

    /// The first four bytes are not `GGUF`.
    #[error("bad magic {found:02x?} at offset 0: not a GGUF file (expected the bytes \"GGUF\")")]
    BadMagic { found: [u8; 4] },

    /// The version field (offset 4) is not 2 or 3.
    #[error("unsupported GGUF version {version} at offset 4 (supported: 2 and 3){hint}", hint = version_hint(*version))]
    UnsupportedVersion { version: u32 },

    /// The file ends inside a field.
    #[error(
        "truncated file: {field} at offset {offset} needs {needed} bytes, only {available} remain"
    )]
    Truncated {
        field: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    /// A count (of metadata entries, tensors, array elements) that cannot possibly fit in the
    /// bytes left in the file. Checked before anything is allocated for it.
    #[error("{field} at offset {offset} claims {count} entries, but the {remaining} bytes left in the file can hold at most {max} (truncated or corrupt file)")]
    CountTooLarge {
        field: String,
        offset: u64,
        count: u64,
        remaining: u64,
        max: u64,
    },

    /// A string (key, value, tensor name) that is not valid UTF-8.
    #[error("{field} at offset {offset} is not valid UTF-8 (first bad byte at string index {valid_up_to})")]
    InvalidUtf8 {
        field: String,
        offset: u64,
        valid_up_to: usize,
    },

    /// A metadata value type id outside the GGUF value types 0..=12.
    #[error("{field} at offset {offset} has unknown value type id {type_id}")]
    UnknownValueType {
        field: String,
        offset: u64,
        type_id: u32,
    },

    /// A bool byte other than 0 or 1.
    #[error("{field} at offset {offset} is a bool stored as byte {value} (must be 0 or 1)")]
    InvalidBool {
        field: String,
        offset: u64,
        value: u8,
    },

    /// Arrays of arrays nested deeper than [`crate::MAX_ARRAY_NESTING`].
    #[error("{field} at offset {offset}: arrays nested deeper than {max_depth} levels")]
    NestingTooDeep {
        field: String,
        offset: u64,
        max_depth: usize,
    },

    /// The same metadata key appears twice.
    #[error("duplicate metadata key {key:?} at offset {offset}")]
    DuplicateKey { key: String, offset: u64 },

    /// `general.alignment` is not a `u32` non-zero power of two (offset is that of the value).
    #[error("invalid general.alignment at offset {offset}: {reason}")]
    InvalidAlignment { offset: u64, reason: String },

    /// A tensor type id that is not a ggml type this crate knows the block layout of.
    #[error("tensor {name:?}: unknown ggml type id {type_id} at offset {offset}")]
    UnknownTensorType {
        name: String,
        offset: u64,
        type_id: u32,
    },

    /// The metadata arrays hold more elements than the reader accepts.
    #[error(
        "metadata {field} at offset {offset}: the arrays hold more than {max} elements in total \
         (this reader's limit; no real model comes near it)"
    )]
    TooManyArrayElements {
        field: String,
        offset: u64,
        max: u64,
    },

    /// The same tensor name appears twice.
    #[error("duplicate tensor name {name:?} at offset {offset}")]
    DuplicateTensor { name: String, offset: u64 },

    /// More dimensions than ggml supports.
    #[error("tensor {name:?}: {n_dims} dimensions at offset {offset} (at most {max} supported)")]
    TooManyDims {
        name: String,
        offset: u64,
        n_dims: u32,
        max: u32,
    },

    /// A dimension above `i64::MAX` (ggml stores dims as int64), or a dims product (element or
    /// byte count) that overflows 64 bits.
    #[error("tensor {name:?}: dimensions {dims:?} at offset {offset} overflow: {reason}")]
    DimensionOverflow {
        name: String,
        offset: u64,
        dims: Vec<u64>,
        reason: &'static str,
    },

    /// The innermost dimension is not a whole number of blocks of the tensor's type.
    #[error("tensor {name:?} ({ty}): row length {row_len} at offset {offset} is not a multiple of the block size {block_size}")]
    RowNotBlockAligned {
        name: String,
        offset: u64,
        ty: GgmlType,
        row_len: u64,
        block_size: usize,
    },

    /// A tensor data offset that is not a multiple of the file's alignment.
    #[error("tensor {name:?}: data offset {tensor_offset} (stored at offset {offset}) is not a multiple of the alignment {alignment}")]
    MisalignedTensor {
        name: String,
        offset: u64,
        tensor_offset: u64,
        alignment: u64,
    },

    /// Tensor data that does not lie inside the file. `end` saturates at `u64::MAX` when the
    /// sum itself overflows.
    #[error("tensor {name:?}: data bytes {start}..{end} lie outside the file of {file_len} bytes (offset stored at offset {offset})")]
    TensorOutOfBounds {
        name: String,
        offset: u64,
        start: u64,
        end: u64,
        file_len: u64,
    },

    /// Two tensors whose data ranges overlap.
    #[error("tensor {name:?} (data bytes {start}..{end}) overlaps tensor {other:?}")]
    TensorOverlap {
        name: String,
        other: String,
        start: u64,
        end: u64,
    },

    /// The padding after the tensor infos would move the data section past `u64::MAX`.
    #[error("data section offset overflows after the tensor infos ending at offset {offset}")]
    DataOffsetOverflow { offset: u64 },

    /// Input to dequantisation that is not a whole number of blocks.
    #[error("{ty}: {len} bytes is not a whole number of {type_size}-byte blocks")]
    PartialBlock {
        ty: GgmlType,
        len: usize,
        type_size: usize,
    },

    /// Input to quantisation that is not a whole number of blocks.
    #[error("{ty}: {len} values is not a multiple of the block size {block_size}")]
    NotBlockMultiple {
        ty: GgmlType,
        len: usize,
        block_size: usize,
    },

    /// Output slice of the wrong length for dequantisation.
    #[error("{ty}: the input blocks hold {expected} values but the output has room for {actual}")]
    OutputLength {
        ty: GgmlType,
        expected: usize,
        actual: usize,
    },

    /// Bytes whose address is not aligned for a zero-copy block view.
    #[error("{ty}: bytes are not aligned to {align} bytes for a zero-copy block view")]
    Misaligned { ty: GgmlType, align: usize },

    /// An operation this crate does not implement for a type.
    #[error("{op} is not implemented for {ty}")]
    Unsupported { ty: GgmlType, op: &'static str },

    /// Tensor data handed to the writer whose length does not match its type and dims.
    #[error(
        "tensor {name:?}: {actual} data bytes given, {ty} with dims {dims:?} needs {expected}"
    )]
    TensorDataSize {
        name: String,
        ty: GgmlType,
        dims: Vec<u64>,
        expected: u64,
        actual: u64,
    },

    /// An array value whose elements are not all of its declared element type.
    #[error(
        "metadata {key:?}: array declares element type {declared} but element {index} is {found}"
    )]
    ArrayTypeMismatch {
        key: String,
        declared: ValueType,
        found: ValueType,
        index: usize,
    },

    /// A writer setting that cannot be written (bad version, alignment, explicit offsets).
    #[error("cannot write GGUF: {0}")]
    InvalidWriter(String),
}

fn version_hint(version: u32) -> &'static str {
    if matches!(version.swap_bytes(), 2 | 3) {
        " (this looks like a big-endian GGUF, which is not supported)"
    } else {
        ""
    }
}
