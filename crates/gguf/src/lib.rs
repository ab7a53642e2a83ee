//! GGUF: reading by mmap with full validation, writing, and the ggml block formats.
//!
//! * [`GgufFile`] opens a GGUF v2/v3 file by mmap (or from memory), checks every field against
//!   the file, and hands out zero-copy views of tensor data; or copies it into transparent
//!   huge pages first ([`GgufFile::open_in_huge_pages`], [`huge_pages`]).
//! * [`GgufWriter`] writes GGUF; rebuilding a writer from a file reproduces it byte for byte.
//! * [`quant`] has the ggml block layouts with reference dequantisation and quantisation,
//!   bit-exact with ggml's C reference (checked against the `gguf` Python package).
//!
//! Nothing in this crate panics on hostile input: all counts are bounded by the bytes left in
//! the file before anything is allocated, all arithmetic on file values is checked, and every
//! failure is a [`GgufError`] naming the field and its byte offset.

mod cursor;
pub mod error;
pub mod huge_pages;
pub mod quant;
pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use error::GgufError;
pub use huge_pages::ThpMode;
pub use reader::{GgufFile, TensorInfo};
pub use types::{GgmlType, QK_K};
pub use value::{Value, ValueType};
pub use writer::GgufWriter;

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of tensor offsets when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata key that overrides the alignment (a `u32` power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Most tensor dimensions ggml supports (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays inside metadata arrays that is accepted. ggml itself accepts no
/// nesting; gguf-py accepts any. The bound keeps hostile files from exhausting the stack.
pub const MAX_ARRAY_NESTING: usize = 8;
/// Most metadata array elements (all arrays together) a file may hold. Each element is
/// held as a [`Value`] of 32 bytes, so a file of one-byte elements would take 32 times its
/// size in memory; this caps that at 512 MiB. The largest real vocabularies (256k tokens,
/// their types and scores, and merges) hold about a million.
pub const MAX_ARRAY_ELEMENTS: u64 = 16 << 20;
