//! Saved next-token distributions (`metallic perplexity --save-logits BASE`),
//! read back by `--kld BASE` to compare another model or implementation with
//! the one that wrote them.
//!
//! Format, version 1, all integers little-endian:
//!
//! ```text
//! header (48 bytes):
//!   0  magic             8 bytes  "MTLLPROB"
//!   8  version           u32      1
//!   12 vocab             u32      logits per position
//!   16 n_ctx             u32      tokens per chunk (-c)
//!   20 n_chunks          u32
//!   24 scored_per_chunk  u32      n_ctx - 1 - n_ctx/2
//!   28 reserved          u32      0
//!   32 tokenizer         u64      Tokenizer::fingerprint of the vocabulary
//!   40 tokens            u64      Chunking::tokens_digest of the evaluated ids
//! then n_chunks * scored_per_chunk rows, in chunk and position order:
//!   len                  u32      bytes of the compressed payload
//!   digest               u64      FNV-1a 64 of the uncompressed float bytes
//!   payload              len      LZ4 block of the row's float32 log-probabilities,
//!                                 byte-planed (all first bytes, then all second
//!                                 bytes, ...) so the exponent bytes compress
//! ```
//!
//! Log-probabilities are stored exactly (float32, no quantisation), so a model
//! compared with itself gives a KL divergence of exactly 0 and the small
//! differences between matmul implementations are not drowned in rounding.
//! The file is untrusted input: every size is checked against fixed limits
//! before anything is allocated, and each row's digest is verified.

use std::io::{self, Read, Write};

use thiserror::Error;

use crate::hash::Fnv64;

pub const MAGIC: &[u8; 8] = b"MTLLPROB";
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 48;
/// Larger than any real vocabulary (the largest are ~256k); bounds allocation.
pub const MAX_VOCAB: u32 = 1 << 22;
pub const MAX_CTX: u32 = 1 << 22;
pub const MAX_CHUNKS: u32 = 1 << 24;

#[derive(Debug, Error)]
pub enum LogProbError {
    #[error("not a metallic log-probability file (bad magic); make BASE with `metallic perplexity --save-logits BASE`")]
    BadMagic,
    #[error("log-probability file version {0}, this build reads version {VERSION}; make BASE again with this build")]
    Version(u32),
    #[error("corrupt log-probability file: {0}; make BASE again")]
    Corrupt(String),
    #[error("BASE does not match this run: {0}")]
    Mismatch(String),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// What a file holds and what it was made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub vocab: u32,
    pub n_ctx: u32,
    pub n_chunks: u32,
    pub scored_per_chunk: u32,
    pub tokenizer: u64,
    pub tokens: u64,
}

impl Header {
    pub fn rows(&self) -> u64 {
        u64::from(self.n_chunks) * u64::from(self.scored_per_chunk)
    }

    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.vocab.to_le_bytes());
        b[16..20].copy_from_slice(&self.n_ctx.to_le_bytes());
        b[20..24].copy_from_slice(&self.n_chunks.to_le_bytes());
        b[24..28].copy_from_slice(&self.scored_per_chunk.to_le_bytes());
        b[32..40].copy_from_slice(&self.tokenizer.to_le_bytes());
        b[40..48].copy_from_slice(&self.tokens.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, LogProbError> {
        if &b[0..8] != MAGIC {
            return Err(LogProbError::BadMagic);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(LogProbError::Version(version));
        }
        let h = Header {
            vocab: u32_at(12),
            n_ctx: u32_at(16),
            n_chunks: u32_at(20),
            scored_per_chunk: u32_at(24),
            tokenizer: u64_at(32),
            tokens: u64_at(40),
        };
        h.validate()?;
        Ok(h)
    }

    fn validate(&self) -> Result<(), LogProbError> {
        let bad = |m: String| Err(LogProbError::Corrupt(m));
        if self.vocab == 0 || self.vocab > MAX_VOCAB {
            return bad(format!("vocabulary size {} (1..={MAX_VOCAB})", self.vocab));
        }
        if self.n_ctx < 3 || self.n_ctx > MAX_CTX {
            return bad(format!("context {} (3..={MAX_CTX})", self.n_ctx));
        }
        if self.n_chunks == 0 || self.n_chunks > MAX_CHUNKS {
            return bad(format!("{} chunks (1..={MAX_CHUNKS})", self.n_chunks));
        }
        if self.scored_per_chunk != self.n_ctx - 1 - self.n_ctx / 2 {
            return bad(format!(
                "{} scored positions per chunk of {}",
                self.scored_per_chunk, self.n_ctx
            ));
        }
        Ok(())
    }

    /// Refuse a file made from another vocabulary, text or chunking than `want`
    /// (this run's), naming what differs and how to fix it.
    pub fn check_matches(&self, want: &Header) -> Result<(), LogProbError> {
        let mismatch = |m: String| Err(LogProbError::Mismatch(m));
        if self.vocab != want.vocab {
            return mismatch(format!(
                "it was saved with a vocabulary of {} tokens, this model has {}; \
                 compare only models that share a tokenizer",
                self.vocab, want.vocab
            ));
        }
        if self.tokenizer != want.tokenizer {
            return mismatch(
                "it was saved with another tokenizer (same vocabulary size, different tokens); \
                 compare only models that share a tokenizer"
                    .into(),
            );
        }
        if self.n_ctx != want.n_ctx {
            return mismatch(format!(
                "it was saved with -c {}, this run uses -c {}; use -c {}",
                self.n_ctx, want.n_ctx, self.n_ctx
            ));
        }
        if self.n_chunks != want.n_chunks {
            return mismatch(format!(
                "it holds {} chunks, this run evaluates {}; use the same text and --chunks",
                self.n_chunks, want.n_chunks
            ));
        }
        if self.tokens != want.tokens {
            return mismatch(
                "it was saved on other tokens (a different text, or another BOS rule); \
                 use the same -f TEXT"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Bytes of one row's floats.
fn row_bytes(vocab: u32) -> usize {
    vocab as usize * 4
}

fn alloc_bytes(n: usize) -> Result<Vec<u8>, LogProbError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| LogProbError::Corrupt(format!("cannot allocate {n} bytes for a row")))?;
    v.resize(n, 0);
    Ok(v)
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = Fnv64::new();
    h.write(bytes);
    h.finish()
}

/// Writes a log-probability file row by row.
pub struct LogProbWriter<W: Write> {
    w: W,
    header: Header,
    rows: u64,
    raw: Vec<u8>,
    planed: Vec<u8>,
    packed: Vec<u8>,
}

impl<W: Write> LogProbWriter<W> {
    pub fn new(mut w: W, header: Header) -> Result<Self, LogProbError> {
        header.validate()?;
        w.write_all(&header.encode())?;
        let n = row_bytes(header.vocab);
        Ok(LogProbWriter {
            w,
            header,
            rows: 0,
            raw: alloc_bytes(n)?,
            planed: alloc_bytes(n)?,
            packed: alloc_bytes(lz4_flex::block::get_maximum_output_size(n))?,
        })
    }

    /// Append one position's log-probabilities (`vocab` of them).
    pub fn write_row(&mut self, log_probs: &[f32]) -> Result<(), LogProbError> {
        let v = self.header.vocab as usize;
        if log_probs.len() != v {
            return Err(LogProbError::Mismatch(format!(
                "a row of {} log-probabilities, the file's vocabulary is {v}",
                log_probs.len()
            )));
        }
        if self.rows >= self.header.rows() {
            return Err(LogProbError::Mismatch(format!(
                "more than the {} rows the header announces",
                self.header.rows()
            )));
        }
        for (i, x) in log_probs.iter().enumerate() {
            let b = x.to_le_bytes();
            self.raw[4 * i..4 * i + 4].copy_from_slice(&b);
            for (k, byte) in b.into_iter().enumerate() {
                self.planed[k * v + i] = byte;
            }
        }
        let len = lz4_flex::block::compress_into(&self.planed, &mut self.packed)
            .map_err(|e| LogProbError::Corrupt(format!("compressing a row: {e}")))?;
        self.w.write_all(&(len as u32).to_le_bytes())?;
        self.w.write_all(&digest(&self.raw).to_le_bytes())?;
        self.w.write_all(&self.packed[..len])?;
        self.rows += 1;
        Ok(())
    }

    /// Check every announced row was written and flush.
    pub fn finish(mut self) -> Result<W, LogProbError> {
        if self.rows != self.header.rows() {
            return Err(LogProbError::Mismatch(format!(
                "{} rows written, the header announces {}",
                self.rows,
                self.header.rows()
            )));
        }
        self.w.flush()?;
        Ok(self.w)
    }
}

/// Reads a log-probability file row by row, validating as it goes.
pub struct LogProbReader<R: Read> {
    r: R,
    header: Header,
    rows: u64,
    raw: Vec<u8>,
    planed: Vec<u8>,
    packed: Vec<u8>,
}

fn read_exact_or<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<(), LogProbError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => LogProbError::Corrupt(format!("truncated in {what}")),
        _ => LogProbError::Io(e),
    })
}

impl<R: Read> LogProbReader<R> {
    pub fn new(mut r: R) -> Result<Self, LogProbError> {
        let mut h = [0u8; HEADER_LEN];
        r.read_exact(&mut h).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => LogProbError::BadMagic,
            _ => LogProbError::Io(e),
        })?;
        let header = Header::decode(&h)?;
        let n = row_bytes(header.vocab);
        Ok(LogProbReader {
            r,
            header,
            rows: 0,
            raw: alloc_bytes(n)?,
            planed: alloc_bytes(n)?,
            packed: alloc_bytes(lz4_flex::block::get_maximum_output_size(n))?,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The next position's log-probabilities into `out` (`vocab` long).
    pub fn read_row(&mut self, out: &mut [f32]) -> Result<(), LogProbError> {
        let v = self.header.vocab as usize;
        if out.len() != v {
            return Err(LogProbError::Mismatch(format!(
                "a row of {} log-probabilities asked, the file's vocabulary is {v}",
                out.len()
            )));
        }
        let row = self.rows;
        if row >= self.header.rows() {
            return Err(LogProbError::Mismatch(format!(
                "row {row} asked, the file holds {}",
                self.header.rows()
            )));
        }
        let mut pre = [0u8; 12];
        read_exact_or(&mut self.r, &mut pre, &format!("row {row}"))?;
        let len = u32::from_le_bytes(pre[0..4].try_into().unwrap()) as usize;
        let want_digest = u64::from_le_bytes(pre[4..12].try_into().unwrap());
        if len > self.packed.len() {
            return Err(LogProbError::Corrupt(format!(
                "row {row}: payload of {len} bytes exceeds the bound {}",
                self.packed.len()
            )));
        }
        read_exact_or(&mut self.r, &mut self.packed[..len], &format!("row {row}"))?;
        let got = lz4_flex::block::decompress_into(&self.packed[..len], &mut self.planed)
            .map_err(|e| LogProbError::Corrupt(format!("row {row}: {e}")))?;
        if got != self.planed.len() {
            return Err(LogProbError::Corrupt(format!(
                "row {row}: {got} bytes decompressed, expected {}",
                self.planed.len()
            )));
        }
        for i in 0..v {
            for k in 0..4 {
                self.raw[4 * i + k] = self.planed[k * v + i];
            }
        }
        if digest(&self.raw) != want_digest {
            return Err(LogProbError::Corrupt(format!("row {row}: digest mismatch")));
        }
        for (o, c) in out.iter_mut().zip(self.raw.chunks_exact(4)) {
            let x = f32::from_le_bytes(c.try_into().unwrap());
            // A log-probability is <= 0 and not NaN (-inf is a zero probability).
            if x.is_nan() || x > 0.0 {
                return Err(LogProbError::Corrupt(format!(
                    "row {row}: {x} is not a log-probability"
                )));
            }
            *o = x;
        }
        self.rows += 1;
        Ok(())
    }

    /// Check nothing follows the last row.
    pub fn finish(mut self) -> Result<(), LogProbError> {
        if self.rows != self.header.rows() {
            return Err(LogProbError::Mismatch(format!(
                "{} of {} rows read",
                self.rows,
                self.header.rows()
            )));
        }
        let mut b = [0u8; 1];
        match self.r.read(&mut b)? {
            0 => Ok(()),
            _ => Err(LogProbError::Corrupt(
                "bytes after the last row (a concatenated or damaged file)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            vocab: 5,
            n_ctx: 4,
            n_chunks: 2,
            scored_per_chunk: 1,
            tokenizer: 7,
            tokens: 9,
        }
    }

    fn file(rows: &[[f32; 5]]) -> Vec<u8> {
        let mut w = LogProbWriter::new(Vec::new(), header()).unwrap();
        for r in rows {
            w.write_row(r).unwrap();
        }
        w.finish().unwrap()
    }

    const ROWS: [[f32; 5]; 2] = [
        [-0.1, -2.5, f32::NEG_INFINITY, -30.0, -1e-7],
        [-3.0, -0.2, -1.0, -7.5, -12.0],
    ];

    #[test]
    fn rows_round_trip_exactly() {
        let bytes = file(&ROWS);
        let mut r = LogProbReader::new(&bytes[..]).unwrap();
        assert_eq!(*r.header(), header());
        let mut out = [0f32; 5];
        for want in &ROWS {
            r.read_row(&mut out).unwrap();
            assert_eq!(
                out.map(f32::to_bits),
                want.map(f32::to_bits),
                "bit-exact round trip"
            );
        }
        r.finish().unwrap();
    }

    #[test]
    fn truncated_or_damaged_files_are_errors_never_wrong_rows_or_panics() {
        let bytes = file(&ROWS);
        let read_all = |b: &[u8]| -> Result<Vec<[u32; 5]>, LogProbError> {
            let mut r = LogProbReader::new(b)?;
            let mut rows = Vec::new();
            let mut out = [0f32; 5];
            for _ in 0..2 {
                r.read_row(&mut out)?;
                rows.push(out.map(f32::to_bits));
            }
            r.finish()?;
            Ok(rows)
        };
        let want: Vec<[u32; 5]> = ROWS.iter().map(|r| r.map(f32::to_bits)).collect();
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        for i in 0..bytes.len() {
            // The reserved word is not read, and the digests (32..48) are
            // checked against the run by `check_matches`.
            if (28..48).contains(&i) {
                continue;
            }
            for bit in [0x01u8, 0x10, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                // Either an error or, where LZ4 ignores the bit (the match
                // length of its final, literal-only sequence), the same rows.
                if let Ok(rows) = read_all(&b) {
                    assert_eq!(rows, want, "byte {i} bit {bit:#x} flipped gave other rows");
                }
            }
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(read_all(&extra).is_err());
        // A header announcing a huge vocabulary is refused before allocating.
        let mut big = bytes.clone();
        big[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            LogProbReader::new(&big[..]),
            Err(LogProbError::Corrupt(_))
        ));
        let mut r = LogProbReader::new(&bytes[..]).unwrap();
        let mut short = [0f32; 4];
        assert!(r.read_row(&mut short).is_err());
    }

    #[test]
    fn a_header_from_another_tokenizer_text_or_context_is_refused_by_name() {
        let h = header();
        assert!(h.check_matches(&h).is_ok());
        let cases = [
            (Header { vocab: 6, ..h }, "vocabulary"),
            (Header { tokenizer: 8, ..h }, "tokenizer"),
            (
                Header {
                    n_ctx: 6,
                    scored_per_chunk: 2,
                    ..h
                },
                "-c 4",
            ),
            (Header { n_chunks: 3, ..h }, "chunks"),
            (Header { tokens: 1, ..h }, "-f TEXT"),
        ];
        for (want, word) in cases {
            let e = h.check_matches(&want).unwrap_err().to_string();
            assert!(e.contains(word), "{e}");
        }
    }
}
