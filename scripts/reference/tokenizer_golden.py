#!/usr/bin/env python3
"""Tokenizer corpus and golden token ids from Hugging Face `tokenizers`.

Writes (paths relative to the repository root):
  crates/test-support/golden/tokenizer_corpus.json   the corpus: hand-picked edge cases, seeded
                                                 random strings, and one ~100 kB text
  crates/test-support/golden/tokenizer_golden.json   ids per corpus string for two tokenizers,
                                                 with special-token parsing on ("special")
                                                 and off ("plain", null where identical);
                                                 ids of the hand-picked strings for a Llama 3
                                                 shaped tokenizer over the Qwen2 vocabulary;
                                                 and the piece boundaries of the four
                                                 pre-tokenizers on every string but the
                                                 big text

Reference tokenizers:
  qwen2    assets/qwen2/tokenizer.json with the added tokens above id 151664 removed
           (Qwen2.5's specials end there; the file is Qwen3's, same vocab and merges).
  smollm2  built from the GGUF's vocabulary and merges (read with the `gguf` package), plus
           SmolLM2's published tokenizer.json settings, which the GGUF does not carry:
           pre_tokenizer Sequence[Digits(individual_digits=True),
           ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)],
           decoder ByteLevel, no normalizer, added tokens = the CONTROL tokens (ids 0..16)
           with special=True.

"Plain" is `encode_special_tokens = True` in `tokenizers`: special tokens are encoded as text,
non-special added tokens are still recognised.

Optional: --compare-transformers also loads SmolLM2 through transformers' own GGUF tokenizer
conversion and prints how many corpus strings it encodes differently (informational only).

Usage: python scripts/reference/tokenizer_golden.py [--compare-transformers]
Deps: tokenizers, gguf (and transformers for the comparison); see requirements.txt.
"""
import argparse
import json
import os
import random
import sys

import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(TOP, "crates", "test-support", "golden")
QWEN2_JSON = os.path.join(TOP, "assets", "qwen2", "tokenizer.json")
SMOLLM2_GGUF = os.path.join(TOP, "assets", "SmolLM2-135M-Instruct.Q4_1.gguf")
QWEN25_MAX_ID = 151664
SEED = 20261124
BIG_TEXT_BYTES = 100_000

# ---------------------------------------------------------------------------------------------
# Corpus

HAND = [
    # empty, single characters, trivial
    "", " ", "a", "\n", "\t", "\r", "'", "0", "Hello", "Hello world", "Hello, world!",
    " leading space", "trailing space ", "  two leading", "two trailing  ",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
    "Tokenizers split text into pieces; BPE then merges bytes.",
    # whitespace runs, tabs, CR/LF, lone CR
    "a  b", "a   b", "a    b", "a\tb", "a\t\tb", "a \tb", "a\t b", "a\nb", "a\n\nb", "a\n\n\nb",
    "a\r\nb", "a\r\n\r\nb", "a\rb", "a\r\rb", "line1\rline2\rline3", "a \n b", "a  \n  b",
    "a \n\n \t b", "a\n \n \nb", "   ", "\n\n", "\t\t\t", " \n", "\n ", "\r\n", "\n\r",
    "end with newline\n", "end with spaces   ", "end with tab\t", "  \n  \n  ",
    "x" + " " * 17 + "y", "indent\n    four\n        eight\n\ttab\n",
    "a\x0bb", "a\x0cb", "a\x0b\x0cb", "a\x1cb\x1dc\x1ed\x1ff",
    # Unicode spaces
    "a\u00a0b", "a\u00a0\u00a0b", "\u00a0lead", "trail\u00a0", "a\u2009b", "a\u3000b",
    "\u3000\u3000全角", "a\u0085b", "a\u2028b", "a\u2029b", "a\u1680b", "a\u202fb", "a\u205fb",
    "a\u2000\u2001\u2002\u2003b", "a\u200bb", "a\u200c\u200db", "a\u180eb", "a \u00a0 b",
    "\u00a0\u00a0\u00a0", "x\u2028\u2029y", " \u3000 ", "tab\t\u00a0mix \u2009 here",
    # NUL, BOM, control characters
    "\x00", "a\x00b", "\x00\x00\x00", "\ufeff", "\ufeffhello", "hello\ufeff", "a\ufeffb",
    "\x01\x02\x03\x7f", "\x7f\x80\x81\x9f", "bell\x07tab\x08",
    # digits and numbers
    "0123456789", "12345678901234567890", "3.14159265358979", "1,000,000", "1 000 000",
    "2024-11-24", "12:34:56", "+1 (555) 010-9999", "v1.2.3-rc.4", "0x7fffffff", "1e-10",
    "$1,234.56", "99.9%", "№42", "a1b2c3", "abc123def", "123abc", " 42", "  42", "\t42",
    "٠١٢٣٤٥٦٧٨٩", "۱۲۳", "１２３４５", "²³¹", "½ ¼ ¾", "Ⅻ ⅻ ↂ", "〇一二三", "१२३", "๑๒๓",
    "𝟏𝟐𝟑", "3\u00bd", "x\U00011de0\U00011de1y", "\U00016ff4\U00016ff5", "7" * 40,
    "100000000000000000000000000000000000000000",
    # contractions in various cases
    "don't", "DON'T", "Don'T", "we've", "we'Ve", "WE'VE", "I'm", "I'M", "you'll", "YOU'LL",
    "you'Ll", "she'd", "SHE'D", "it's", "IT'S", "they're", "THEY'RE", "they'rE", "'s", "'S",
    "'t", "'re", "'ve", "'m", "'ll", "'d", "''", "'''", "' s", "'x", "'ſ", "'ſx", "it'ſ",
    "O'Reilly", "rock 'n' roll", "don’t", "it’s", "'twas", "'tis the season", "ma'am",
    "'LL'll'Ll'lL", "can't won't shan't", "y'all'd've", "'\n", "'1", " 's", "\t's",
    # Latin with diacritics, combining marks (NFC matters for Qwen2)
    "café", "cafe\u0301", "naïve", "nai\u0308ve", "Ångström", "A\u030angstro\u0308m",
    "e\u0301\u0301\u0301", "a\u0308\u0301", "\u0301", " \u0301", "x\u0301y", "Z\u0351\u0353a\u0350l\u0359g\u0352o",
    "o\u0302\u0323", "ǅungla", "ﬁnance", "ß ẞ", "İstanbul ıi", "Σίσυφος", "ΣΊΣΥΦΟΣ",
    "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af", "अ\u093f", "क्\u200dष",
    # scripts
    "中文测试，包括标点符号。", "我爱北京天安门", "汉字和English混合123", "繁體中文與簡體中文",
    "日本語のテキストです。", "カタカナとひらがな", "東京は2024年に", "ｶﾀｶﾅ半角",
    "한국어 텍스트입니다.", "안녕하세요, 세계!", "서울 2024년",
    "مرحبا بالعالم", "اللغة العربية جميلة.", "العدد ١٢٣ والعدد 456",
    "שלום עולם", "עברית עם ניקוד: שָׁלוֹם",
    "नमस्ते दुनिया", "हिन्दी में लिखा गया पाठ।", "সংস্কৃত", "தமிழ் மொழி",
    "สวัสดีชาวโลก", "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Привет, мир!", "ПРИВЕТ мир", "Съешь же ещё этих мягких французских булок.",
    "Γειά σου Κόσμε", "Ελληνικά κείμενα", "Բարեւ աշխարհ", "გამარჯობა", "ሰላም ለዓለም",
    "Tiếng Việt có dấu", "Ꭰ Ꭱ Ꭲ", "ᚠᛇᚻ᛫ᛒᛦᚦ", "𐌰𐌱𐌲", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝕳𝖊𝖑𝖑𝖔",
    "Mixed: English, 中文, العربية, हिन्दी, 日本語, 한국어, Русский.",
    # emoji
    "😀", "😀😃😄", "I ❤️ you", "👍", "👍🏽", "👍🏿👍🏻", "👨‍👩‍👧‍👦", "👩🏽‍💻", "🧑‍🤝‍🧑",
    "🏳️‍🌈", "🏴‍☠️", "🇯🇵", "🇺🇸🇬🇧🇫🇷", "🇺", "1️⃣2️⃣", "#️⃣", "❤", "❤️", "☺︎",
    "emoji😀inside", "emoji 😀 spaced", "😀 " * 5, "👨‍👩‍👧‍👦" * 3, "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
    # code
    "fn main() {\n    println!(\"Hello, world!\");\n}\n",
    "impl<T: Clone> Vec<T> {\n    pub fn push(&mut self, x: T) -> Result<(), E> { todo!() }\n}",
    "let v: Vec<u32> = (0..10).map(|x| x * 2).collect::<Vec<_>>();",
    "def f(x):\n    return x ** 2  # square\n\nprint(f(3))\n",
    "class Foo(Bar):\n\tdef __init__(self, *args, **kwargs):\n\t\tsuper().__init__()\n",
    "import numpy as np\narr = np.zeros((3, 4), dtype=np.float32)\n",
    "const f = async (a, b) => { await g(a ?? b); return `${a}-${b}`; };",
    "if (x !== undefined && y === null) { console.log('ok'); }",
    "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * c[i]; }",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE 'J%' ORDER BY id DESC;",
    "INSERT INTO t (a, b) VALUES (1, 'it''s');",
    "#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do echo \"$f\" | wc -l; done\n",
    "ls -la | grep -E '^d' && cd ~/src || exit 1",
    "{\"key\": \"value\", \"n\": 123, \"arr\": [1, 2.5, null, true], \"nested\": {\"a\": {}}}",
    "{\n  \"name\": \"metallic\",\n  \"version\": \"0.1.0\"\n}\n",
    "<!DOCTYPE html>\n<html><head><title>Test</title></head>\n<body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "<div id='a'><span>text</span><br/></div>",
    "a == b != c <= d >= e && f || !g",
    "x += 1; y -= 2; z *= 3; w /= 4;",
    "    indented code\n        more\n    back",
    "// comment\n/* block */\n/** doc */",
    "https://example.com/path?query=1&b=2#frag",
    "user@example.com",
    "C:\\Windows\\System32\\drivers\\etc\\hosts",
    "$ cargo test --release -- --nocapture",
    "```python\nprint('hi')\n```",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "~!@#$%^&*()_+`-={}|[]\\:\";'<>?,./",
    "...", "!!!", "???", "?!", "---", "***", "___", "===", "<<<>>>", "(((", ")))",
    "....\n\n", "!!\r\n", "?\r", ".\n.\n.", " ...", " !\n",
    # special tokens inside text (and fragments of them)
    "<|im_start|>", "<|im_end|>", "<|endoftext|>",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
    "text<|endoftext|>more text", "<|im_start|><|im_end|>", "<|im_start|><|im_start|>",
    "<<|im_start|>>", "<|im_sta", "<|im_start", "<|im_start|", "im_start|>", "<|", "|>", "<||>",
    "< |im_start| >", "<|IM_START|>", "<|im_end|>\n\n", " <|im_end|>", "\n<|im_start|>",
    "<|endoftext|><|endoftext|>", "a<|im_start|>b<|im_end|>c",
    "<tool_call>\n{\"name\": \"f\"}\n</tool_call>", "<|fim_prefix|>def<|fim_suffix|>x<|fim_middle|>",
    "<|file_sep|>", "<|repo_name|>r", "<think>hmm</think>", "<|vision_start|><|image_pad|><|vision_end|>",
    "<repo_name>metallic<file_sep>src/main.rs", "<jupyter_code>x = 1<jupyter_output>",
    "<filename>a.py", "<gh_stars>10", "<issue_start><issue_comment><issue_closed>",
    "<empty_output>", "<reponame>", "<jupyter_start><jupyter_text><jupyter_script>",
    # long runs (the BPE must stay linear)
    "a" * 1000, " " * 1000, "\n" * 300, "\t" * 200, "!" * 500, "ab" * 500, "\u00a0" * 200,
    "\u3000" * 100, "😀" * 100, "中" * 300, "é" * 300, "e\u0301" * 100, " a" * 300,
    "a " * 300, "'s" * 100, "\r\n" * 100, "9" * 1000, "-" * 80, "=" * 80,
]

POOLS = {
    "ascii_lower": "abcdefghijklmnopqrstuvwxyz",
    "ascii_upper": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "digits": "0123456789",
    "punct": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "space": [" ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\n\n", "\u00a0", "\u3000",
              "\u2009", "\u0085", "\u2028", "\x0b", "\x0c"],
    "latin": "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßœŀſ",
    "combining": ["\u0300", "\u0301", "\u0302", "\u0303", "\u0308", "\u0323", "\u0327", "\u030a"],
    "cjk": "中文日本語漢字한국어テキストのひらがなカタカナ",
    "rtl": "مرحباالعربيةשלוםעולם",
    "indic": "नमस्तेहिन्दीสวัสดีภาษาไทย",
    "cyrillic_greek": "ПриветмирΓειάσουΚόσμε",
    "emoji": ["😀", "👍", "🏽", "\u200d", "👩", "💻", "🇯", "🇵", "❤", "\ufe0f", "⃣", "🏳"],
    "numbers": ["٣", "１", "²", "½", "Ⅻ", "१"],
    "odd": ["\x00", "\ufeff", "\u200b", "\x7f", "\x1c", "\U00011de0"],
    "contraction": ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'Ve",
                    "'M", "'LL", "'D", "'ſ", "'"],
    "special": ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_sta", "<|", "|>",
                "<tool_call>", "<|fim_prefix|>", "<repo_name>", "<file_sep>"],
    "words": ["the", "The", " of", " and", "hello", "world", "token", "izer", "ization",
              "metallic", "Qwen", "SmolLM", "inference", "GPU", "CUDA", "matmul"],
}
POOL_WEIGHTS = {
    "ascii_lower": 18, "ascii_upper": 6, "digits": 6, "punct": 8, "space": 12, "latin": 3,
    "combining": 2, "cjk": 4, "rtl": 2, "indic": 2, "cyrillic_greek": 2, "emoji": 3,
    "numbers": 1, "odd": 1, "contraction": 3, "special": 2, "words": 8,
}


def random_string(rng, length):
    names = list(POOL_WEIGHTS)
    weights = [POOL_WEIGHTS[n] for n in names]
    parts = []
    for _ in range(length):
        pool = POOLS[rng.choices(names, weights)[0]]
        parts.append(rng.choice(pool))
    return "".join(parts)


def big_text(rng, size):
    """A deterministic ~size-byte text: prose-like lines in many scripts with code, numbers,
    whitespace oddities and an occasional special token."""
    sentences = [s for s in HAND if 3 <= len(s) <= 200]
    out, total = [], 0
    while total < size:
        r = rng.random()
        if r < 0.55:
            piece = rng.choice(sentences)
        elif r < 0.9:
            piece = random_string(rng, rng.randint(5, 60))
        else:
            piece = " ".join(rng.choice(POOLS["words"]) for _ in range(rng.randint(3, 15)))
        sep = rng.choice([" ", " ", "\n", "\n\n", "  ", "\t", ". ", "\r\n"])
        out.append(piece + sep)
        total += len((piece + sep).encode("utf-8"))
    return "".join(out)


def build_corpus():
    rng = random.Random(SEED)
    corpus = list(HAND)
    for n in range(200):
        corpus.append(random_string(rng, rng.randint(1, 40 if n < 150 else 300)))
    corpus.append(big_text(rng, BIG_TEXT_BYTES))
    return corpus


# ---------------------------------------------------------------------------------------------
# Reference tokenizers


def qwen2_reference():
    with open(QWEN2_JSON, encoding="utf-8") as f:
        spec = json.load(f)
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] <= QWEN25_MAX_ID]
    return Tokenizer.from_str(json.dumps(spec))


def smollm2_gguf_vocab():
    from gguf import GGUFReader

    reader = GGUFReader(SMOLLM2_GGUF)
    field = reader.fields
    tokens = list(field["tokenizer.ggml.tokens"].contents())
    types = list(field["tokenizer.ggml.token_type"].contents())
    merges = list(field["tokenizer.ggml.merges"].contents())
    return tokens, types, merges


def smollm2_reference():
    tokens, types, merges = smollm2_gguf_vocab()
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate vocabulary entries"
    pairs = []
    for m in merges:
        a, b = m.split(" ")
        pairs.append((a, b))
    bpe = models.BPE(vocab=vocab, merges=pairs, dropout=None, unk_token=None,
                     continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                     byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    control = [AddedToken(tokens[i], special=True, normalized=False)
               for i, t in enumerate(types) if t == 3]
    tok.add_special_tokens(control)
    return tok


QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


# Merges removed from the Llama-3-shaped tokenizer, by the token they build. Qwen2's vocabulary
# is BPE-closed (every token is what BPE makes of its own text), so `ignore_merges` would never
# change a result; without these merges the whole-word tokens are only reachable through it.
LLAMA3_DROPPED_WORDS = [" the", " world", "Hello", "ing", " quick", " При", "的"]


def byte_level(text):
    """GPT-2's byte-to-character spelling of `text`."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD))
                 + list(range(0xAE, 0x100)))
    spell, moved = {}, 0
    for b in range(256):
        if b in printable:
            spell[b] = chr(b)
        else:
            spell[b] = chr(256 + moved)
            moved += 1
    return "".join(spell[b] for b in text.encode("utf-8"))


LLAMA3_DROPPED_MERGES = [byte_level(w) for w in LLAMA3_DROPPED_WORDS]


def llama3_on_qwen2_vocab():
    """Llama 3's tokenizer.json shape (its split regex, no normalizer, `ignore_merges`) over
    the Qwen2 vocabulary less LLAMA3_DROPPED_MERGES: no Llama 3 vocabulary is available
    offline, and this exercises the same code paths (digit groups of three, whole-word tokens
    skipping the merges)."""
    with open(QWEN2_JSON, encoding="utf-8") as f:
        spec = json.load(f)
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] <= QWEN25_MAX_ID]
    spec["normalizer"] = None
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = LLAMA3_REGEX
    spec["model"]["ignore_merges"] = True
    dropped = set(LLAMA3_DROPPED_MERGES)
    before = len(spec["model"]["merges"])
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if "".join(m) not in dropped]
    assert before - len(spec["model"]["merges"]) == len(dropped), "a dropped word has no merge"
    return Tokenizer.from_str(json.dumps(spec))


def pre_tokenizer_pieces(corpus):
    """End offsets (UTF-8 bytes) of the pieces each pre-tokenizer splits a string into."""
    kinds = {
        "qwen2": pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
        "llama3": pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
        "gpt2": pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        "smollm": pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]),
    }
    out = {}
    for name, pt in kinds.items():
        ends = []
        for s in corpus:
            # Offsets come back in characters; convert to byte offsets.
            ends.append([len(s[:b].encode("utf-8")) for _, (_, b) in pt.pre_tokenize_str(s)])
        out[name] = ends
    return out


def encode_all(tok, corpus):
    tok.encode_special_tokens = False
    special = [tok.encode(s, add_special_tokens=False).ids for s in corpus]
    tok.encode_special_tokens = True
    plain = [tok.encode(s, add_special_tokens=False).ids for s in corpus]
    tok.encode_special_tokens = False
    return {"special": special, "plain": [p if p != s else None for s, p in zip(special, plain)]}


def compare_transformers(corpus, golden):
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as d:
        os.symlink(SMOLLM2_GGUF, os.path.join(d, "model.gguf"))
        tok = AutoTokenizer.from_pretrained(d, gguf_file="model.gguf")
    diffs = [i for i, s in enumerate(corpus)
             if tok(s, add_special_tokens=False)["input_ids"] != golden[i]]
    print(f"transformers GGUF conversion (SmolLM2): {len(diffs)} of {len(corpus)} corpus "
          f"strings differ from the tokenizer.json-equivalent reference", file=sys.stderr)
    for i in diffs[:8]:
        s = corpus[i]
        print(f"  {s[:60]!r}: transformers {tok(s, add_special_tokens=False)['input_ids'][:12]} "
              f"reference {golden[i][:12]}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--compare-transformers", action="store_true")
    args = ap.parse_args()

    corpus = build_corpus()
    os.makedirs(DATA, exist_ok=True)
    with open(os.path.join(DATA, "tokenizer_corpus.json"), "w", encoding="utf-8") as f:
        json.dump({"seed": SEED, "strings": corpus}, f, ensure_ascii=True, indent=0)

    golden = {
        "generator": "scripts/reference/tokenizer_golden.py",
        "tokenizers_version": tokenizers.__version__,
        "qwen2": encode_all(qwen2_reference(), corpus),
        "smollm2": encode_all(smollm2_reference(), corpus),
        # Hand-picked strings only, to keep the file small.
        "llama3_qwen2_vocab": encode_all(llama3_on_qwen2_vocab(), corpus[:len(HAND)]),
        "llama3_dropped_merges": LLAMA3_DROPPED_MERGES,
        # Every string but the big text.
        "pieces": pre_tokenizer_pieces(corpus[:-1]),
    }
    with open(os.path.join(DATA, "tokenizer_golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f, separators=(",", ":"))
        f.write("\n")
    print(f"{len(corpus)} strings; big text {len(corpus[-1].encode('utf-8'))} bytes", file=sys.stderr)

    if args.compare_transformers:
        compare_transformers(corpus, golden["smollm2"]["special"])


if __name__ == "__main__":
    main()
