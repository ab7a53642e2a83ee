//! Writing GGUF and reading it back: value fidelity, byte-identical read -> write on synthetic
//! files, on files from gguf-py's writer and on the real SmolLM2 model, and writer errors.

mod common;

use common::{asset_path, data_path, open_data, TestRng};
use metallic_gguf::{quant, GgmlType, GgufError, GgufFile, GgufWriter, Value, ValueType};

fn all_value_kinds() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::from("llama")),
        ("v.u8", Value::U8(250)),
        ("v.i8", Value::I8(-7)),
        ("v.u16", Value::U16(65000)),
        ("v.i16", Value::I16(-30000)),
        ("v.u32", Value::U32(4_000_000_000)),
        ("v.i32", Value::I32(-2_000_000_000)),
        ("v.u64", Value::U64(u64::MAX)),
        ("v.i64", Value::I64(i64::MIN)),
        ("v.f32", Value::F32(-1.5e-7)),
        ("v.f32.nan", Value::F32(f32::from_bits(0x7fa0_0001))),
        ("v.f64", Value::F64(std::f64::consts::PI)),
        ("v.bool", Value::Bool(true)),
        ("v.str.empty", Value::from("")),
        ("v.str.utf8", Value::from("héllo ✓ 漢字\n\t\"")),
        (
            "v.arr.str",
            Value::Array(
                ValueType::String,
                vec![Value::from("a"), Value::from(""), Value::from("ü")],
            ),
        ),
        ("v.arr.empty", Value::Array(ValueType::F64, vec![])),
        (
            "v.arr.nested",
            Value::Array(
                ValueType::Array,
                vec![
                    Value::Array(ValueType::I16, vec![Value::I16(1), Value::I16(-2)]),
                    Value::Array(ValueType::Bool, vec![Value::Bool(false)]),
                ],
            ),
        ),
    ]
}

/// A file with every value kind and tensors of every quantisable type.
fn synthetic_writer(alignment: u64) -> GgufWriter<'static> {
    let mut w = GgufWriter::new();
    for (k, v) in all_value_kinds() {
        w.add_metadata(k, v);
    }
    w.alignment(alignment);
    let mut rng = TestRng::new(42);
    for (i, ty) in GgmlType::ALL
        .into_iter()
        .filter(|&t| quant::can_quantize(t))
        .enumerate()
    {
        let dims = [ty.block_size() as u64 * 2, 3];
        let values = rng.normals(dims[0] as usize * 3, 1.0);
        let data = quant::quantize(ty, &values).unwrap();
        w.add_tensor(format!("blk.{i}.{}", ty.name()), ty, &dims, data)
            .unwrap();
    }
    w
}

#[test]
fn every_value_kind_survives_write_and_read() {
    let bytes = synthetic_writer(32).to_bytes().unwrap();
    let f = GgufFile::from_bytes(bytes).unwrap();
    let expected = all_value_kinds();
    assert_eq!(f.metadata().len(), expected.len());
    for ((k, v), (ek, ev)) in f.metadata().iter().zip(&expected) {
        assert_eq!(k, ek);
        assert!(v.bitwise_eq(ev), "{k}: {v:?} != {ev:?}");
    }
    assert_eq!(f.get_u64("v.u64"), Some(u64::MAX));
    assert_eq!(f.get_str("v.str.utf8"), Some("héllo ✓ 漢字\n\t\""));
    assert_eq!(f.get_array("v.arr.str").map(<[Value]>::len), Some(3));
    assert_eq!(f.tensors().len(), 14);
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
        assert_eq!(t.offset % 32, 0);
        assert_eq!(t.dims[1], 3);
    }
}

#[test]
fn read_then_write_is_byte_identical_for_synthetic_files() {
    for alignment in [32, 64, 256] {
        for version in [2, 3] {
            let mut w = synthetic_writer(alignment);
            w.version(version);
            let bytes = w.to_bytes().unwrap();
            let f = GgufFile::from_bytes(bytes.clone()).unwrap();
            assert_eq!((f.version(), f.alignment()), (version, alignment));
            let again = GgufWriter::from_file(&f).to_bytes().unwrap();
            assert!(again == bytes, "alignment {alignment} version {version}");
        }
    }
}

#[test]
fn streamed_tensor_data_gives_the_same_bytes_as_write_to() {
    for alignment in [32, 256] {
        let full = synthetic_writer(alignment);
        let expected = full.to_bytes().unwrap();
        let f = GgufFile::from_bytes(expected.clone()).unwrap();
        // Same metadata; every other tensor deferred and streamed in two pieces.
        let mut w = GgufWriter::new();
        for (k, v) in f.metadata() {
            w.add_metadata(k.clone(), v.clone());
        }
        for (i, t) in f.tensors().iter().enumerate() {
            if i % 2 == 0 {
                w.add_tensor_info(t.name.clone(), t.ggml_type, &t.dims)
                    .unwrap();
            } else {
                w.add_tensor(t.name.clone(), t.ggml_type, &t.dims, f.tensor_data(t))
                    .unwrap();
            }
        }
        let mut stream = w.stream_to(Vec::new()).unwrap();
        while let Some(name) = stream.next_tensor().map(str::to_owned) {
            let data = f.tensor_data(f.tensor(&name).unwrap());
            let (a, b) = data.split_at(data.len() / 3);
            stream.write(a).unwrap();
            assert_eq!(stream.remaining_in_tensor(), b.len() as u64);
            stream.write(b).unwrap();
        }
        let bytes = stream.finish().unwrap();
        assert!(bytes == expected, "alignment {alignment}");
    }
}

#[test]
fn a_stream_rejects_too_much_data_and_missing_data() {
    let mut w = GgufWriter::new();
    w.add_tensor_info("a", GgmlType::F32, &[4]).unwrap();
    w.add_tensor_info("b", GgmlType::Q8_0, &[32, 2]).unwrap();
    assert!(matches!(w.to_bytes(), Err(GgufError::InvalidWriter(_))));
    let mut stream = w.stream_to(Vec::new()).unwrap();
    assert!(matches!(
        stream.write(&[0; 17]),
        Err(GgufError::InvalidWriter(_))
    ));
    stream.write(&[0; 16]).unwrap();
    assert_eq!(stream.next_tensor(), Some("b"));
    let err = stream.finish().err().unwrap().to_string();
    assert!(err.contains("\"b\""), "{err}");
}

#[test]
fn tensor_data_is_zero_copy_into_the_file() {
    let f = GgufFile::from_bytes(synthetic_writer(32).to_bytes().unwrap()).unwrap();
    let base = f.as_bytes().as_ptr() as usize;
    for t in f.tensors() {
        let ptr = f.tensor_data(t).as_ptr() as usize;
        assert_eq!(ptr - base, (f.data_offset() + t.offset) as usize);
    }
}

#[test]
fn files_written_by_gguf_py_round_trip_byte_identically() {
    for name in ["quant_vectors.gguf", "kquant_ours_dequant.gguf"] {
        let original = std::fs::read(data_path(name)).unwrap();
        let f = open_data(name);
        let written = GgufWriter::from_file(&f).to_bytes().unwrap();
        assert!(written == original, "{name}");
    }
}

#[test]
fn explicit_offsets_in_any_order_are_kept() {
    // Data in reverse order of the infos, with a gap: not what ggml writes, but valid.
    let mut w = GgufWriter::new();
    w.add_tensor_at("first", GgmlType::F32, &[8], vec![1u8; 32], 96)
        .unwrap();
    w.add_tensor_at("second", GgmlType::F32, &[4], vec![2u8; 16], 0)
        .unwrap();
    let bytes = w.to_bytes().unwrap();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.tensor("first").unwrap().offset, 96);
    assert_eq!(f.tensor_data(f.tensor("first").unwrap()), &[1u8; 32]);
    assert_eq!(f.tensor_data(f.tensor("second").unwrap()), &[2u8; 16]);
    assert_eq!(GgufWriter::from_file(&f).to_bytes().unwrap(), bytes);
}

#[test]
fn write_file_then_open_by_mmap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let w = synthetic_writer(32);
    w.write_file(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.as_bytes(), &w.to_bytes().unwrap()[..]);
    let t = f.tensor("blk.0.F32").unwrap();
    let values = quant::dequantize_to_vec(t.ggml_type, f.tensor_data(t)).unwrap();
    assert_eq!(values.len(), 6);
}

#[cfg(target_os = "linux")]
#[test]
fn huge_page_open_holds_the_same_bytes_and_tensors_as_the_file_map() {
    if metallic_gguf::ThpMode::current() == metallic_gguf::ThpMode::Unavailable {
        eprintln!("skipped: this kernel has no transparent huge pages (MADV_HUGEPAGE fails)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.gguf");
    let w = synthetic_writer(32);
    w.write_file(&path).unwrap();
    let mapped = GgufFile::open(&path).unwrap();
    let copied = GgufFile::open_in_huge_pages(&path).unwrap();
    assert!(copied.in_huge_pages() && !mapped.in_huge_pages());
    assert_eq!(copied.as_bytes(), mapped.as_bytes());
    assert_eq!(copied.tensors(), mapped.tensors());
    for t in mapped.tensors() {
        assert_eq!(copied.tensor_data(t), mapped.tensor_data(t), "{}", t.name);
    }
    // The real model too, where the assets are fetched: every tensor byte for byte.
    let model = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    if model.is_file() {
        let (a, b) = (
            GgufFile::open(&model).unwrap(),
            GgufFile::open_in_huge_pages(&model).unwrap(),
        );
        assert!(a.as_bytes() == b.as_bytes());
    }
}

#[test]
fn huge_page_open_of_a_bad_file_reports_the_parse_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    std::fs::write(&path, b"GGUX\x03\0\0\0").unwrap();
    let err = GgufFile::open_in_huge_pages(&path).unwrap_err();
    assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");
}

#[test]
fn alignment_setting_and_key_stay_in_step() {
    let mut w = GgufWriter::new();
    w.add_metadata("a", Value::U8(1)).alignment(64);
    assert_eq!(w.metadata().last().unwrap().1, Value::U32(64));
    w.alignment(128);
    assert_eq!(w.metadata().len(), 2);
    let f = GgufFile::from_bytes(w.to_bytes().unwrap()).unwrap();
    assert_eq!(f.alignment(), 128);
    assert_eq!(f.data_offset() % 128, 0);
}

#[test]
fn add_metadata_replaces_in_place() {
    let mut w = GgufWriter::new();
    w.add_metadata("x", Value::U8(1))
        .add_metadata("y", Value::U8(2))
        .add_metadata("x", Value::from("new"));
    let keys: Vec<_> = w.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["x", "y"]);
    assert_eq!(w.remove_metadata("x"), Some(Value::from("new")));
}

#[test]
fn writer_rejects_inconsistent_input() {
    let mut w = GgufWriter::new();
    assert!(matches!(
        w.add_tensor("t", GgmlType::Q4_0, &[32], vec![0u8; 17]),
        Err(GgufError::TensorDataSize {
            expected: 18,
            actual: 17,
            ..
        })
    ));
    assert!(matches!(
        w.add_tensor("t", GgmlType::Q4_0, &[33], vec![0u8; 18]),
        Err(GgufError::InvalidWriter(_))
    ));
    assert!(matches!(
        w.add_tensor("t", GgmlType::F32, &[1, 1, 1, 1, 1], vec![0u8; 4]),
        Err(GgufError::InvalidWriter(_))
    ));
    assert!(matches!(
        w.add_tensor("t", GgmlType::F32, &[u64::MAX, 2], Vec::new()),
        Err(GgufError::InvalidWriter(_))
    ));
    w.add_tensor("t", GgmlType::F32, &[1], vec![0u8; 4])
        .unwrap();
    assert!(matches!(
        w.add_tensor("t", GgmlType::F32, &[1], vec![0u8; 4]),
        Err(GgufError::InvalidWriter(_))
    ));

    let mut bad = GgufWriter::new();
    bad.add_metadata(
        "mixed",
        Value::Array(ValueType::U8, vec![Value::U8(1), Value::I8(1)]),
    );
    assert!(matches!(
        bad.to_bytes(),
        Err(GgufError::ArrayTypeMismatch {
            index: 1,
            found: ValueType::I8,
            ..
        })
    ));

    let mut overlap = GgufWriter::new();
    overlap
        .add_tensor_at("a", GgmlType::F32, &[16], vec![0u8; 64], 0)
        .unwrap()
        .add_tensor_at("b", GgmlType::F32, &[8], vec![0u8; 32], 32)
        .unwrap();
    assert!(overlap.to_bytes().is_err());

    let mut misaligned = GgufWriter::new();
    misaligned
        .add_tensor_at("a", GgmlType::F32, &[1], vec![0u8; 4], 4)
        .unwrap();
    assert!(misaligned.to_bytes().is_err());

    assert!(GgufWriter::new().version(1).to_bytes().is_err());
    assert!(GgufWriter::new().alignment(48).to_bytes().is_err());
    let mut wrong_type = GgufWriter::new();
    wrong_type.add_metadata("general.alignment", Value::U64(64));
    assert!(wrong_type.to_bytes().is_err());
}

/// The real SmolLM2-135M-Instruct Q4_1 file (fetched by scripts/fetch-assets.sh, also in CI).
fn smollm2() -> GgufFile {
    let path = asset_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    GgufFile::open(&path)
        .unwrap_or_else(|e| panic!("{e} (run scripts/fetch-assets.sh to fetch the test assets)"))
}

#[test]
fn smollm2_metadata_and_tensors_read_correctly() {
    let f = smollm2();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    // gguf-py lists 36 fields, 3 of which are its header pseudo-fields.
    assert_eq!(f.metadata().len(), 33);
    assert_eq!(f.get_str("general.architecture"), Some("llama"));
    assert_eq!(f.get_str("tokenizer.ggml.pre"), Some("smollm"));
    assert_eq!(f.get_u32("llama.embedding_length"), Some(576));
    assert_eq!(f.get_u32("llama.block_count"), Some(30));
    let tokens = f.get_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[0].as_str(), Some("<|endoftext|>"));
    assert_eq!(f.get_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(f.tensors().len(), 272);
    assert_eq!(f.data_offset(), 1_785_664);
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (emb.ggml_type, emb.dims.as_slice()),
        (GgmlType::Q8_0, &[576u64, 49152][..])
    );
    let counts = |ty| f.tensors().iter().filter(|t| t.ggml_type == ty).count();
    assert_eq!(
        (
            counts(GgmlType::Q4_1),
            counts(GgmlType::F32),
            counts(GgmlType::Q8_0)
        ),
        (210, 61, 1)
    );
    // Every tensor's data dequantises to finite values (first row checked).
    for t in f.tensors() {
        let row = &f.tensor_data(t)[..t.row_bytes() as usize];
        let v = quant::dequantize_to_vec(t.ggml_type, row).unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{}", t.name);
    }
}

#[test]
fn smollm2_read_then_write_is_byte_identical() {
    let f = smollm2();
    let written = GgufWriter::from_file(&f).to_bytes().unwrap();
    assert_eq!(written.len() as u64, f.len());
    assert!(written == f.as_bytes(), "rewritten SmolLM2 differs");
}
