#!/usr/bin/env python3
"""Golden perplexity from Hugging Face transformers (float32, CPU) for a GGUF
model on a text, scored exactly as llama-perplexity and `metallic perplexity`:

  * tokens: the text through the model's own tokenizer (transformers builds it
    from the GGUF), no special-token parsing, BOS first when the GGUF's
    tokenizer.ggml.add_bos_token says so, no EOS;
  * consecutive non-overlapping chunks of N_CTX tokens (a shorter tail dropped),
    each evaluated from scratch with its first token replaced by BOS when the
    vocabulary adds one;
  * the logits at positions N_CTX/2 ..= N_CTX-2 scored against the next token
    (log-softmax in float64 over float32 logits); PPL = exp(mean NLL).

transformers dequantises the GGUF's weights to float32 itself (with the gguf
package), so a quantised file gives the float32 model of its dequantised
weights: the same numbers as the F32 file `metallic quantize ... F32` writes.

usage: perplexity.py GGUF TEXT OUT.json [-c 128] [--chunks N]
Output (small enough to commit): the token ids, per-chunk NLL sums, PPL and its
uncertainty (llama.cpp's formula).
"""
import argparse, hashlib, json, math, os, sys

import numpy as np
import torch
from gguf import GGUFReader
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("text")
    ap.add_argument("out")
    ap.add_argument("-c", "--ctx-size", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=None)
    args = ap.parse_args()

    meta = GGUFReader(args.gguf).fields
    add_bos = bool(meta["tokenizer.ggml.add_bos_token"].contents()) \
        if "tokenizer.ggml.add_bos_token" in meta else False
    bos = int(meta["tokenizer.ggml.bos_token_id"].contents()) if add_bos else None

    raw = open(args.text, "rb").read()
    text = raw.decode("utf-8")
    d, f = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if add_bos:
        ids = [bos] + ids
    n_ctx = args.ctx_size
    n_chunks = len(ids) // n_ctx
    if args.chunks is not None:
        n_chunks = min(n_chunks, args.chunks)
    if n_chunks == 0:
        sys.exit(f"{len(ids)} tokens, fewer than one chunk of {n_ctx}")
    first = n_ctx // 2

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    nlls, per_chunk = [], []
    with torch.no_grad():
        for i in range(n_chunks):
            chunk = ids[i * n_ctx:(i + 1) * n_ctx]
            if add_bos:
                chunk = [bos] + chunk[1:]
            logits = model(torch.tensor([chunk]), use_cache=False).logits[0]
            lg = logits[first:n_ctx - 1].double()
            lsm = torch.log_softmax(lg, dim=-1)
            tgt = torch.tensor(chunk[first + 1:n_ctx])
            nll = -lsm[torch.arange(len(tgt)), tgt]
            nlls.extend(nll.tolist())
            per_chunk.append(float(nll.sum()))
    a = np.array(nlls, dtype=np.float64)
    mean = a.mean()
    var = (a * a).mean() - mean * mean
    err = math.sqrt(var / (len(a) - 1)) if var > 0 and len(a) > 1 else 0.0
    ppl = math.exp(mean)
    json.dump({
        "source": "transformers " + __import__("transformers").__version__ + ", float32, CPU",
        "model": os.path.basename(args.gguf),
        "text": os.path.basename(args.text),
        "text_sha256": hashlib.sha256(raw).hexdigest(),
        "n_ctx": n_ctx,
        "chunks": n_chunks,
        "add_bos": add_bos,
        "tokens": ids[:n_chunks * n_ctx],
        "chunk_nll_sums": per_chunk,
        "scored": len(a),
        "ppl": ppl,
        "ppl_error": ppl * err,
    }, open(args.out, "w"))
    print(f"wrote {args.out}: PPL {ppl:.6f} +/- {ppl * err:.6f} over {len(a)} tokens",
          file=sys.stderr)


if __name__ == "__main__":
    main()
