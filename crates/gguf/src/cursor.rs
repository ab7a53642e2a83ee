//! A bounds-checked little-endian reader over the file bytes.
//!
//! Every read says which field it is reading, so a short file produces an error naming the
//! field and its offset. The field description is only formatted when an error is made, so
//! reading a 150k-element array costs no string work.

use crate::error::GgufError;

/// What is being read, for error messages.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Field<'a> {
    Header(&'static str),
    Key { index: u64 },
    ValueType { key: &'a str },
    Value { key: &'a str },
    ArrayElemType { key: &'a str },
    ArrayLen { key: &'a str },
    ArrayElem { key: &'a str, index: u64 },
    TensorName { index: u64 },
    Tensor { name: &'a str, part: &'static str },
}

impl Field<'_> {
    pub(crate) fn describe(&self) -> String {
        match self {
            Field::Header(what) => format!("header field {what}"),
            Field::Key { index } => format!("key of metadata entry #{index}"),
            Field::ValueType { key } => format!("value type of metadata {key:?}"),
            Field::Value { key } => format!("value of metadata {key:?}"),
            Field::ArrayElemType { key } => format!("array element type in metadata {key:?}"),
            Field::ArrayLen { key } => format!("array length in metadata {key:?}"),
            Field::ArrayElem { key, index } => format!("element {index} of metadata {key:?}"),
            Field::TensorName { index } => format!("name of tensor info #{index}"),
            Field::Tensor { name, part } => format!("{part} of tensor {name:?}"),
        }
    }
}

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Metadata array elements read so far (see [`crate::MAX_ARRAY_ELEMENTS`]).
    pub(crate) array_elements: u64,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            array_elements: 0,
        }
    }

    /// Current position as a file offset.
    pub(crate) fn offset(&self) -> u64 {
        self.pos as u64
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    /// The next `n` bytes, or a `Truncated` error naming `field`.
    pub(crate) fn take(&mut self, n: u64, field: Field<'_>) -> Result<&'a [u8], GgufError> {
        let truncated = || GgufError::Truncated {
            field: field.describe(),
            offset: self.pos as u64,
            needed: n,
            available: self.remaining(),
        };
        let n_usize = usize::try_from(n).map_err(|_| truncated())?;
        let end = self.pos.checked_add(n_usize).ok_or_else(truncated)?;
        let bytes = self.buf.get(self.pos..end).ok_or_else(truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    pub(crate) fn array<const N: usize>(&mut self, field: Field<'_>) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: Field<'_>) -> Result<u8, GgufError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: Field<'_>) -> Result<u16, GgufError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: Field<'_>) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: Field<'_>) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A GGUF string: u64 byte length, then UTF-8 bytes (no terminator).
    pub(crate) fn string(&mut self, field: Field<'_>) -> Result<&'a str, GgufError> {
        let len = self.u64(field)?;
        let start = self.offset();
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|e| GgufError::InvalidUtf8 {
            field: field.describe(),
            offset: start,
            valid_up_to: e.valid_up_to(),
        })
    }

    /// Checks that `count` items of at least `min_size` bytes each fit in the bytes left, so
    /// the caller may allocate for `count` items. `at` is the offset the count was read from.
    pub(crate) fn check_count(
        &self,
        count: u64,
        min_size: u64,
        at: u64,
        field: Field<'_>,
    ) -> Result<usize, GgufError> {
        let remaining = self.remaining();
        let max = remaining / min_size.max(1);
        if count > max {
            return Err(GgufError::CountTooLarge {
                field: field.describe(),
                offset: at,
                count,
                remaining,
                max,
            });
        }
        // count <= remaining <= buf.len(), which is a usize.
        usize::try_from(count).map_err(|_| GgufError::CountTooLarge {
            field: field.describe(),
            offset: at,
            count,
            remaining,
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_past_the_end_reports_field_and_offset() {
        let mut c = Cursor::new(&[1, 2, 3]);
        assert_eq!(c.u16(Field::Header("x")).unwrap(), 0x0201);
        match c.u32(Field::Header("version")) {
            Err(GgufError::Truncated {
                offset,
                needed,
                available,
                field,
            }) => {
                assert_eq!((offset, needed, available), (2, 4, 1));
                assert!(field.contains("version"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(c.take(u64::MAX, Field::Header("huge")).is_err());
    }
}
