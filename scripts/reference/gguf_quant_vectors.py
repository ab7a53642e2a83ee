#!/usr/bin/env python3
"""Reference vectors for metallic-gguf's block formats, from the `gguf` Python package.

Two steps (paths relative to the repository root unless given):

  1. python scripts/reference/gguf_quant_vectors.py vectors
       writes crates/gguf/tests/data/quant_vectors.gguf with
       * `<type>.blocks` / `<type>.dequant` for F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K
         Q5_K Q6_K Q8_K: random blocks (random bytes, with the f16 scale fields set to finite
         values of mixed magnitude, some subnormal or zero) and gguf.quants.dequantize of them
         (Q8_K: gguf-py has no Q8_K, so numpy computes ggml's `d * q` directly);
       * `quant_input`: f32 values (random blocks plus edge cases), and `<type>.quantized`:
         gguf.quants.quantize of them for every type gguf-py can quantize (F16 BF16 Q4_0 Q4_1
         Q5_0 Q5_1 Q8_0);
       * `kquant_input`: 8 super-blocks of f32 for the k-quants gguf-py cannot quantize.

  2. cargo run -p metallic-gguf --example kquant_dump
       (writes crates/gguf/tests/data/kquant_ours.gguf: metallic's quantisation of
       `kquant_input` to Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K), then
     python scripts/reference/gguf_quant_vectors.py ours
       writes crates/gguf/tests/data/kquant_ours_dequant.gguf: gguf.quants.dequantize of each
       of those tensors (Q8_K again by numpy), so the tests can check that what metallic
       quantises decodes in gguf-py exactly as in metallic.

The output files are GGUFs written by gguf-py's own GGUFWriter, which also exercises
metallic's reader on a file from an independent writer.
"""

import argparse
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

SEED = 20261124
QK_K = 256

DEQUANT_TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
                 T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K]
# Where gguf-py implements quantize (F32 is a plain copy and not worth a vector).
QUANT_TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
KQUANT_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K]

# Byte offsets of the f16 scale fields inside one block (ggml block_* structs).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}


def repo_root():
    return os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def data_dir():
    return os.path.join(repo_root(), "crates", "gguf", "tests", "data")


def random_scales(rng, n):
    """Finite f16 scales of mixed magnitude: mostly 2^-8..2^1, some subnormal, some zero."""
    mag = rng.uniform(0.5, 1.0, n) * np.exp2(rng.integers(-8, 2, n))
    sign = rng.choice([-1.0, 1.0], n)
    vals = (mag * sign).astype(np.float16)
    kind = rng.random(n)
    vals[kind < 0.06] = np.float16(0.0)
    sub = (kind >= 0.06) & (kind < 0.12)
    vals[sub] = (rng.integers(1, 1024, int(sub.sum())).astype(np.uint16)).view(np.float16)
    return vals


def random_blocks(rng, qtype, n_blocks):
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    if qtype == T.F16:
        # Random bit patterns cover subnormals, infinities and NaNs.
        return raw.reshape(-1)
    if qtype == T.BF16:
        return raw.reshape(-1)
    if qtype == T.Q8_K:
        d = (rng.standard_normal(n_blocks) * 0.05).astype(np.float32)
        raw[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
        return raw.reshape(-1)
    for off in F16_FIELDS[qtype]:
        raw[:, off:off + 2] = random_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def dequant(blocks, qtype):
    if qtype == T.Q8_K:
        # ggml dequantize_row_q8_K: y = d * qs, in f32. gguf-py does not implement Q8_K.
        b = blocks.reshape(-1, GGML_QUANT_SIZES[T.Q8_K][1])
        d = b[:, 0:4].copy().view(np.float32)
        qs = b[:, 4:4 + QK_K].copy().view(np.int8).astype(np.float32)
        return (d * qs).astype(np.float32).reshape(-1)
    out = gguf.quants.dequantize(blocks, qtype)
    return np.asarray(out, dtype=np.float32).reshape(-1)


def quant_input(rng):
    """64 blocks of 32: random blocks of varied scale plus edge cases."""
    blocks = []
    for _ in range(52):
        blocks.append(rng.standard_normal(32) * 10.0 ** rng.uniform(-3, 2))
    blocks.append(np.zeros(32))                                  # all zero
    blocks.append(np.full(32, 0.75))                             # constant
    blocks.append(np.arange(-16, 16) + 0.5)                      # Q8_0 ties after scaling
    blocks.append(np.where(np.arange(32) == 5, -3.0, 0.0))       # single negative spike
    b = rng.standard_normal(32); b[7] = 9.0; b[20] = -9.0
    blocks.append(b)                                             # equal +/- maxima
    blocks.append(rng.standard_normal(32) * 1e-39)               # f32 subnormals
    blocks.append(rng.standard_normal(32) * 3e4)                 # f16 scale near its limit
    blocks.append(np.linspace(-1.0, 1.0, 32))                    # evenly spaced
    blocks.append(rng.uniform(0.0, 1.0, 32))                     # all positive
    blocks.append(-rng.uniform(0.0, 1.0, 32))                    # all negative
    blocks.append(np.round(rng.standard_normal(32) * 8) / 8)     # on a coarse grid
    blocks.append(0.1 + 2 * np.cos(np.arange(32, dtype=np.float32)))  # ggml's test data
    return np.concatenate(blocks).astype(np.float32)


def kquant_input(rng):
    """8 super-blocks of 256 covering typical weights and edge cases."""
    i = np.arange(QK_K, dtype=np.float32)
    sparse = np.zeros(QK_K)
    sparse[rng.choice(QK_K, 9, replace=False)] = rng.standard_normal(9)
    outliers = rng.standard_normal(QK_K) * 0.02
    outliers[[3, 100, 200]] = [0.9, -1.3, 0.7]
    blocks = [
        rng.standard_normal(QK_K),
        rng.standard_normal(QK_K) * 0.02,
        np.zeros(QK_K),
        rng.uniform(0.0, 1.0, QK_K),
        outliers,
        np.full(QK_K, -0.3),
        0.1 + 2 * np.cos(i),
        sparse,
    ]
    return np.concatenate(blocks).astype(np.float32)


def write_gguf(path, tensors, note):
    w = gguf.GGUFWriter(path, arch="reference")
    w.add_string("reference.generator", "scripts/reference/gguf_quant_vectors.py")
    w.add_string("reference.note", note)
    w.add_string("reference.gguf_py_version", getattr(gguf, "__version__", "unknown"))
    w.add_uint32("reference.seed", SEED)
    for name, arr, raw_dtype in tensors:
        if raw_dtype is None:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, arr, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def cmd_vectors(out_dir):
    rng = np.random.default_rng(SEED)
    tensors = []
    for qtype in DEQUANT_TYPES:
        block_size, _ = GGML_QUANT_SIZES[qtype]
        # 64 blocks of 32-value formats, 8 super-blocks of k-quants, 2048 plain values.
        n_blocks = 2048 // block_size
        blocks = random_blocks(rng, qtype, n_blocks)
        tensors.append((f"{qtype.name}.blocks", blocks, qtype))
        tensors.append((f"{qtype.name}.dequant", dequant(blocks, qtype), None))
    x = quant_input(rng)
    tensors.append(("quant_input", x, None))
    for qtype in QUANT_TYPES:
        q = np.asarray(gguf.quants.quantize(x, qtype))
        tensors.append((f"{qtype.name}.quantized", q.view(np.uint8).reshape(-1), qtype))
    tensors.append(("kquant_input", kquant_input(rng), None))
    write_gguf(os.path.join(out_dir, "quant_vectors.gguf"), tensors,
               "dequantize: gguf.quants.dequantize of random blocks; quantize: gguf.quants.quantize")


def cmd_ours(out_dir):
    reader = gguf.GGUFReader(os.path.join(out_dir, "kquant_ours.gguf"))
    tensors = []
    for t in reader.tensors:
        blocks = np.asarray(t.data).view(np.uint8).reshape(-1)
        tensors.append((f"{t.name}.dequant", dequant(blocks, t.tensor_type), None))
    write_gguf(os.path.join(out_dir, "kquant_ours_dequant.gguf"), tensors,
               "gguf.quants.dequantize of metallic's k-quant quantisation (Q8_K by numpy)")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=["vectors", "ours"])
    p.add_argument("--out", default=data_dir(), help="output directory (default: crates/gguf/tests/data)")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    np.seterr(all="ignore")
    if args.step == "vectors":
        cmd_vectors(args.out)
    else:
        cmd_ours(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
