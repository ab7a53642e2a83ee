#!/usr/bin/env python3
"""Encode throughput of Hugging Face `tokenizers`, the counterpart of
`cargo run --release -p metallic --example tokenize_bench -- FILE`.

  python scripts/reference/tokenize_bench.py make-text OUT   # write the ~1 MB bench text
  python scripts/reference/tokenize_bench.py run FILE        # time both tokenizers on it

The text is the tokenizer corpus (crates/test-support/golden/tokenizer_corpus.json) joined by
newlines and repeated up to 1,000,000 bytes: mixed scripts, code, numbers, emoji, whitespace
oddities and some special tokens.

Single thread (RAYON_NUM_THREADS=1, TOKENIZERS_PARALLELISM=false are set before import), two
modes, each reported as MB/s (10^6 bytes of UTF-8 input per second) and tokens/s:
  whole  `encode` of the entire text as one string
  lines  `encode` of each line in a Python loop (the per-call overhead included)
Special tokens in the text are recognised (the default), no BOS/EOS added.
The same tokenizers as tokenizer_golden.py: Qwen2 (tokenizer.json, specials <= 151664) and
SmolLM2 (GGUF vocabulary + merges with SmolLM2's pre-tokenizer settings).
"""
import json
import os
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenizer_golden as tg  # noqa: E402

TARGET_BYTES = 1_000_000
REPEATS = 5


def make_text(out):
    with open(os.path.join(tg.DATA, "tokenizer_corpus.json"), encoding="utf-8") as f:
        strings = json.load(f)["strings"]
    parts, total = [], 0
    while total < TARGET_BYTES:
        for s in strings:
            parts.append(s)
            total += len(s.encode("utf-8")) + 1
            if total >= TARGET_BYTES:
                break
    text = "\n".join(parts).encode("utf-8")[:TARGET_BYTES].decode("utf-8", errors="ignore")
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    print(f"wrote {out}: {len(text.encode('utf-8'))} bytes, {text.count(chr(10)) + 1} lines")


def timed(fn):
    best, first, result = None, None, None
    for i in range(REPEATS):
        t = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t
        first = dt if first is None else first
        best = dt if best is None else min(best, dt)
    return first, best, result


def run(path):
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    nbytes = len(text.encode("utf-8"))
    lines = text.split("\n")
    import tokenizers

    print(f"tokenizers {tokenizers.__version__}, {nbytes} bytes, {len(lines)} lines, "
          f"single thread, best of {REPEATS} (first run in parentheses)")
    for name, build in (("qwen2", tg.qwen2_reference), ("smollm2", tg.smollm2_reference)):
        tok = build()

        def whole():
            return len(tok.encode(text, add_special_tokens=False).ids)

        def per_line():
            return sum(len(tok.encode(line, add_special_tokens=False).ids) for line in lines)

        for mode, fn in (("whole", whole), ("lines", per_line)):
            first, best, ntok = timed(fn)
            print(f"{name:8} {mode:6} {nbytes / best / 1e6:8.2f} MB/s ({nbytes / first / 1e6:.2f})  "
                  f"{ntok / best / 1e6:6.2f} Mtok/s  {ntok} tokens")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("make-text", "run"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "make-text":
        make_text(sys.argv[2])
    else:
        run(sys.argv[2])


if __name__ == "__main__":
    main()
