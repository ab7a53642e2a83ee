//! Every class of bad file, hand-crafted byte by byte, gives its typed error with the field and
//! the byte offset; and the valid corner cases the checks must not reject.

use metallic_gguf::{GgmlType, GgufError, GgufFile, Value, ValueType};

/// Builds GGUF bytes by hand, independent of the crate's writer.
#[derive(Default, Clone)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut b = Bytes::default();
        b.raw(b"GGUF").u32(version).u64(n_tensors).u64(n_kv);
        b
    }
    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn u8(&mut self, v: u8) -> &mut Self {
        self.raw(&[v])
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.raw(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Self {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self, align: usize) -> &mut Self {
        while self.0.len() % align != 0 {
            self.0.push(0);
        }
        self
    }
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn parse(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0.clone())
    }
    fn err(&self) -> GgufError {
        match self.parse() {
            Ok(f) => panic!("expected an error, parsed {f:?}"),
            Err(e) => e,
        }
    }
}

/// One f32 tensor "w" of 4 values at offset 0, with `kv` extra metadata.
fn one_tensor_file(extra_kv: impl Fn(&mut Bytes) -> u64) -> Bytes {
    let mut kv = Bytes::default();
    let n_kv = extra_kv(&mut kv);
    let mut b = Bytes::header(3, 1, n_kv);
    b.raw(&kv.0).tensor("w", &[4], 0, 0).pad(32);
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        b.raw(&v.to_le_bytes());
    }
    b.pad(32);
    b
}

#[test]
fn valid_minimal_file_parses() {
    let b = one_tensor_file(|kv| {
        kv.kv_u32("a.b", 7);
        1
    });
    let f = b.parse().unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.get_u32("a.b"), Some(7));
    let t = f.tensor("w").unwrap();
    assert_eq!(
        (t.ggml_type, t.n_elements, t.n_bytes),
        (GgmlType::F32, 4, 16)
    );
    assert_eq!(f.data_offset() % 32, 0);
    assert_eq!(&f.tensor_data(t)[..4], &1.0f32.to_le_bytes());
}

#[test]
fn version_2_is_accepted() {
    let mut b = Bytes::header(2, 0, 1);
    b.kv_u32("k", 1);
    assert_eq!(b.parse().unwrap().version(), 2);
}

#[test]
fn empty_and_tiny_files_are_truncated_headers() {
    match GgufFile::from_bytes(Vec::new()).unwrap_err() {
        GgufError::Truncated {
            offset,
            needed,
            field,
            ..
        } => {
            assert_eq!((offset, needed), (0, 4));
            assert!(field.contains("magic"));
        }
        e => panic!("{e:?}"),
    }
    let mut b = Bytes::default();
    b.raw(b"GGUF").u32(3).raw(&[0; 5]);
    match b.err() {
        GgufError::Truncated {
            offset,
            field,
            available,
            ..
        } => {
            assert_eq!((offset, available), (8, 5));
            assert!(field.contains("tensor_count"), "{field}");
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn bad_magic() {
    let mut b = Bytes::header(3, 0, 0);
    b.0[..4].copy_from_slice(b"GGML");
    assert!(matches!(b.err(), GgufError::BadMagic { found } if &found == b"GGML"));
}

#[test]
fn unsupported_versions() {
    for v in [0, 1, 4, u32::MAX] {
        assert!(matches!(
            Bytes::header(v, 0, 0).err(),
            GgufError::UnsupportedVersion { version } if version == v
        ));
    }
    let msg = Bytes::header(3u32.swap_bytes(), 0, 0).err().to_string();
    assert!(msg.contains("big-endian"), "{msg}");
}

#[test]
fn absurd_counts_are_rejected_before_allocating() {
    // 2^60 metadata entries in a 24-byte file: must fail on the count, not on allocation.
    match Bytes::header(3, 0, 1 << 60).err() {
        GgufError::CountTooLarge {
            offset, count, max, ..
        } => assert_eq!((offset, count, max), (16, 1 << 60, 0)),
        e => panic!("{e:?}"),
    }
    match Bytes::header(3, 1 << 60, 0).err() {
        GgufError::CountTooLarge { offset, field, .. } => {
            assert_eq!(offset, 8);
            assert!(field.contains("tensor_count"));
        }
        e => panic!("{e:?}"),
    }
    // An array claiming 2^60 u64 elements.
    let mut b = Bytes::header(3, 0, 1);
    b.str("arr").u32(9).u32(10).u64(1 << 60).u64(0);
    let len_offset = 24 + 8 + 3 + 4 + 4;
    match b.err() {
        GgufError::CountTooLarge {
            offset,
            count,
            max,
            field,
            ..
        } => {
            assert_eq!((offset, count, max), (len_offset, 1 << 60, 1));
            assert!(field.contains("arr"));
        }
        e => panic!("{e:?}"),
    }
    // A string claiming 2^60 bytes.
    let mut b = Bytes::header(3, 0, 1);
    b.str("s").u32(8).u64(1 << 60).raw(b"abc");
    match b.err() {
        GgufError::Truncated { needed, offset, .. } => {
            assert_eq!((needed, offset), (1 << 60, 24 + 9 + 4 + 8))
        }
        e => panic!("{e:?}"),
    }
    // An array of 2^58 empty arrays: each needs 12 bytes, so the count is bounded too.
    let mut b = Bytes::header(3, 0, 1);
    b.str("nest").u32(9).u32(9).u64(1 << 58);
    assert!(matches!(b.err(), GgufError::CountTooLarge { .. }));
}

#[test]
fn truncated_metadata() {
    let full = {
        let mut b = Bytes::header(3, 0, 2);
        b.kv_u32("first", 1).str("second").u32(8).str("value");
        b
    };
    assert!(full.parse().is_ok());
    // Cut at every byte inside the metadata: a Truncated error at the cut, or (when too few
    // bytes are left for the remaining entries at all) the count is rejected up front.
    for cut in 24..full.0.len() {
        let b = Bytes(full.0[..cut].to_vec());
        match b.err() {
            GgufError::Truncated {
                offset,
                needed,
                available,
                ..
            } => {
                assert_eq!(offset + available, cut as u64, "cut {cut}");
                assert!(needed > available);
            }
            GgufError::CountTooLarge { offset: 16, .. } => assert!(cut < 24 + 13 * 2),
            e => panic!("cut {cut}: {e:?}"),
        }
    }
}

#[test]
fn truncated_tensor_infos_and_data() {
    let full = one_tensor_file(|_| 0);
    let infos_end = 24 + (8 + 1) + 4 + 8 + 4 + 8;
    for cut in 24..infos_end {
        match Bytes(full.0[..cut].to_vec()).err() {
            GgufError::Truncated { .. } => assert!(cut >= 48, "cut {cut}"),
            // Fewer than 24 bytes left cannot hold the one tensor info.
            GgufError::CountTooLarge { offset: 8, .. } => assert!(cut < 48, "cut {cut}"),
            e => panic!("cut {cut}: {e:?}"),
        }
    }
    // Cut inside the data section: the tensor's bytes are no longer inside the file.
    let data_offset = 64; // infos end at 61, aligned up to 64
    let b = Bytes(full.0[..data_offset + 8].to_vec());
    match b.err() {
        GgufError::TensorOutOfBounds {
            name,
            start,
            end,
            file_len,
            offset,
        } => {
            assert_eq!(name, "w");
            assert_eq!((start, end, file_len), (64, 80, 72));
            assert_eq!(offset, infos_end as u64 - 8);
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn unknown_value_types() {
    let mut b = Bytes::header(3, 0, 1);
    b.str("k").u32(13).u32(0);
    match b.err() {
        GgufError::UnknownValueType {
            offset,
            type_id,
            field,
        } => {
            assert_eq!((offset, type_id), (24 + 9, 13));
            assert!(field.contains("\"k\""));
        }
        e => panic!("{e:?}"),
    }
    let mut b = Bytes::header(3, 0, 1);
    b.str("k").u32(9).u32(99).u64(0);
    assert!(matches!(
        b.err(),
        GgufError::UnknownValueType {
            type_id: 99,
            offset: 37,
            ..
        }
    ));
}

#[test]
fn bool_must_be_zero_or_one() {
    let mut b = Bytes::header(3, 0, 1);
    b.str("flag").u32(7).u8(2);
    assert!(matches!(
        b.err(),
        GgufError::InvalidBool { value: 2, offset, .. } if offset == 24 + 12 + 4
    ));
    let mut b = Bytes::header(3, 0, 1);
    b.str("flags").u32(9).u32(7).u64(3).u8(1).u8(0).u8(7);
    match b.err() {
        GgufError::InvalidBool {
            value,
            offset,
            field,
        } => {
            assert_eq!((value, offset), (7, 24 + 13 + 4 + 12 + 2));
            assert!(field.contains("element 2"), "{field}");
        }
        e => panic!("{e:?}"),
    }
}

fn nested_arrays(depth: usize) -> Bytes {
    let mut b = Bytes::header(3, 0, 1);
    b.str("deep").u32(9);
    for _ in 0..depth - 1 {
        b.u32(9).u64(1);
    }
    b.u32(4).u64(1).u32(42);
    b
}

#[test]
fn nested_arrays_within_the_limit_parse_and_deeper_ones_fail() {
    let max = metallic_gguf::MAX_ARRAY_NESTING;
    let f = nested_arrays(max).parse().unwrap();
    let mut v = f.get("deep").unwrap();
    for _ in 0..max - 1 {
        let (ty, items) = v.as_typed_array().unwrap();
        assert_eq!((ty, items.len()), (ValueType::Array, 1));
        v = &items[0];
    }
    assert_eq!(v.as_array().unwrap()[0], Value::U32(42));

    match nested_arrays(max + 1).err() {
        GgufError::NestingTooDeep {
            offset, max_depth, ..
        } => {
            assert_eq!(max_depth, max);
            assert_eq!(offset, 24 + 12 + 4 + 12 * max as u64);
        }
        e => panic!("{e:?}"),
    }
    // A hostile file nesting as deep as its bytes allow must not overflow the stack.
    assert!(matches!(
        nested_arrays(100_000).err(),
        GgufError::NestingTooDeep { .. }
    ));
}

#[test]
fn duplicate_keys() {
    let mut b = Bytes::header(3, 0, 2);
    b.kv_u32("same", 1).kv_u32("same", 2);
    assert!(matches!(
        b.err(),
        GgufError::DuplicateKey { key, offset: 44 } if key == "same"
    ));
}

#[test]
fn non_utf8_strings() {
    let mut b = Bytes::header(3, 0, 1);
    b.u64(2).raw(&[0xc3, 0x28]).u32(4).u32(0);
    match b.err() {
        GgufError::InvalidUtf8 {
            offset,
            field,
            valid_up_to,
        } => {
            assert_eq!((offset, valid_up_to), (32, 0));
            assert!(field.contains("key of metadata entry #0"), "{field}");
        }
        e => panic!("{e:?}"),
    }
    let mut b = Bytes::header(3, 0, 1);
    b.str("s").u32(8).u64(3).raw(b"a\xffb");
    assert!(matches!(
        b.err(),
        GgufError::InvalidUtf8 {
            offset: 45,
            valid_up_to: 1,
            ..
        }
    ));
    let mut b = Bytes::header(3, 1, 0);
    b.u64(1).raw(&[0x80]).u32(1).u64(4).u32(0).u64(0);
    assert!(matches!(
        b.err(),
        GgufError::InvalidUtf8 { field, offset: 32, .. } if field.contains("tensor info #0")
    ));
}

#[test]
fn alignment_must_be_a_u32_power_of_two() {
    for bad in [0u32, 3, 48] {
        let mut b = Bytes::header(3, 0, 1);
        b.kv_u32("general.alignment", bad);
        match b.err() {
            GgufError::InvalidAlignment { offset, reason } => {
                assert_eq!(offset, 24 + 8 + 17 + 4);
                assert!(reason.contains(&bad.to_string()));
            }
            e => panic!("{e:?}"),
        }
    }
    let mut b = Bytes::header(3, 0, 1);
    b.str("general.alignment").u32(10).u64(64);
    assert!(
        matches!(b.err(), GgufError::InvalidAlignment { reason, .. } if reason.contains("u64"))
    );
}

#[test]
fn custom_alignment_is_used_for_data_and_offsets() {
    let mut b = Bytes::header(3, 2, 1);
    b.kv_u32("general.alignment", 64)
        .tensor("a", &[4], 0, 0)
        .tensor("b", &[2], 0, 64)
        .pad(64)
        .raw(&[0; 128]);
    let f = b.parse().unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    assert_eq!(f.tensor("b").unwrap().offset, 64);

    // Offset 32 is aligned for the default but not for 64.
    let mut b = Bytes::header(3, 1, 1);
    b.kv_u32("general.alignment", 64)
        .tensor("a", &[4], 0, 32)
        .pad(64)
        .raw(&[0; 128]);
    assert!(matches!(
        b.err(),
        GgufError::MisalignedTensor {
            tensor_offset: 32,
            alignment: 64,
            ..
        }
    ));
}

#[test]
fn unknown_tensor_type() {
    for id in [4u32, 5, 31, 41, u32::MAX] {
        let mut b = Bytes::header(3, 1, 0);
        b.tensor("t", &[32], id, 0).pad(32).raw(&[0; 64]);
        match b.err() {
            GgufError::UnknownTensorType {
                name,
                offset,
                type_id,
            } => {
                assert_eq!((name.as_str(), type_id), ("t", id));
                assert_eq!(offset, 24 + 9 + 4 + 8);
            }
            e => panic!("{e:?}"),
        }
    }
}

#[test]
fn duplicate_tensor_names() {
    let mut b = Bytes::header(3, 2, 0);
    b.tensor("t", &[4], 0, 0)
        .tensor("t", &[4], 0, 32)
        .pad(32)
        .raw(&[0; 64]);
    assert!(matches!(
        b.err(),
        GgufError::DuplicateTensor { name, offset: 57 } if name == "t"
    ));
}

#[test]
fn too_many_dims() {
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("t", &[1, 1, 1, 1, 1], 0, 0).pad(32).raw(&[0; 32]);
    assert!(matches!(
        b.err(),
        GgufError::TooManyDims {
            n_dims: 5,
            max: 4,
            offset: 33,
            ..
        }
    ));
}

#[test]
fn dimension_products_that_overflow() {
    let cases: [&[u64]; 4] = [
        &[1 << 32, 1 << 32],
        &[u64::MAX],
        &[1 << 40, 1 << 30],
        // Fits as an element count but its F32 byte size does not fit in u64.
        &[1 << 31, 1 << 31, 8],
    ];
    for dims in cases {
        let mut b = Bytes::header(3, 1, 0);
        b.tensor("t", dims, 0, 0).pad(32).raw(&[0; 32]);
        match b.err() {
            GgufError::DimensionOverflow {
                offset, dims: d, ..
            } => {
                assert_eq!(offset, 24 + 9 + 4);
                assert_eq!(d, dims);
            }
            e => panic!("{dims:?}: {e:?}"),
        }
    }
}

#[test]
fn rows_must_be_whole_blocks() {
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("q", &[33, 2], GgmlType::Q4_0.id(), 0)
        .pad(32)
        .raw(&[0; 64]);
    assert!(matches!(
        b.err(),
        GgufError::RowNotBlockAligned {
            row_len: 33,
            block_size: 32,
            ty: GgmlType::Q4_0,
            ..
        }
    ));
}

#[test]
fn tensor_data_outside_the_file() {
    // Offset far past the end.
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("t", &[4], 0, 1 << 20).pad(32).raw(&[0; 32]);
    assert!(matches!(b.err(), GgufError::TensorOutOfBounds { .. }));
    // Offset + size overflows u64.
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("t", &[4], 0, u64::MAX - 31).pad(32).raw(&[0; 32]);
    match b.err() {
        GgufError::TensorOutOfBounds { end, .. } => assert_eq!(end, u64::MAX),
        e => panic!("{e:?}"),
    }
}

#[test]
fn overlapping_tensors() {
    let mut b = Bytes::header(3, 2, 0);
    b.tensor("a", &[16], 0, 0)
        .tensor("b", &[8], 0, 32)
        .pad(32)
        .raw(&[0; 96]);
    match b.err() {
        GgufError::TensorOverlap { name, other, .. } => {
            assert_eq!((name.as_str(), other.as_str()), ("b", "a"));
        }
        e => panic!("{e:?}"),
    }
    // Empty tensors overlap nothing; tensors in any data order are fine when disjoint.
    let mut b = Bytes::header(3, 3, 0);
    b.tensor("a", &[8], 0, 32)
        .tensor("b", &[8], 0, 0)
        .tensor("empty", &[0], 0, 32)
        .pad(32)
        .raw(&[0; 64]);
    let f = b.parse().unwrap();
    assert_eq!(f.tensor("empty").unwrap().n_bytes, 0);
}

#[test]
fn zero_dim_and_zero_tensor_files() {
    // A 0-dimensional tensor holds one element.
    let mut b = Bytes::header(3, 1, 0);
    b.tensor("scalar", &[], 0, 0).pad(32).raw(&[0; 32]);
    let f = b.parse().unwrap();
    let t = f.tensor("scalar").unwrap();
    assert_eq!(
        (t.n_elements, t.n_bytes, t.row_len(), t.n_rows()),
        (1, 4, 1, 1)
    );
    // Without tensors the file may end right after the metadata.
    let mut b = Bytes::header(3, 0, 1);
    b.kv_u32("k", 1);
    let f = b.parse().unwrap();
    assert!(f.data_offset() >= b.len());
    assert!(f.tensors().is_empty());
}

#[test]
fn open_reports_missing_files_with_their_path() {
    let e = GgufFile::open("/definitely/not/here.gguf").unwrap_err();
    assert!(matches!(&e, GgufError::Io { path, .. } if path.ends_with("here.gguf")));
    assert!(e.to_string().contains("here.gguf"));
}

#[test]
fn tensor_data_of_a_foreign_info_is_empty_not_a_panic() {
    let f = one_tensor_file(|_| 0).parse().unwrap();
    let mut t = f.tensor("w").unwrap().clone();
    t.offset = u64::MAX;
    assert!(f.tensor_data(&t).is_empty());
    assert!(f.try_tensor_data(&t).is_err());
    t.offset = 0;
    t.n_bytes = 1 << 40;
    assert!(f.tensor_data(&t).is_empty());
}

#[test]
fn error_messages_name_field_and_offset() {
    let mut b = Bytes::header(3, 0, 1);
    b.str("tokenizer.ggml.tokens")
        .u32(9)
        .u32(8)
        .u64(2)
        .str("ok")
        .u64(5)
        .raw(b"ab");
    let msg = b.err().to_string();
    assert!(
        msg.contains("element 1 of metadata \"tokenizer.ggml.tokens\""),
        "{msg}"
    );
    // The second string's length is at 79; its missing bytes start at 87.
    assert!(msg.contains("offset 87"), "{msg}");
}
