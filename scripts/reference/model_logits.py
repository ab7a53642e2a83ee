#!/usr/bin/env python3
"""Golden logits from Hugging Face transformers for a GGUF model.

transformers loads the GGUF itself (dequantising every tensor to float32 with
the `gguf` package and undoing llama.cpp's Q/K permutation), so the numbers
below come from code nobody in this project wrote.

For each prompt (given as token ids, so the tokenizer is not under test here)
it records, for every prompt row and for `--steps` greedy decode steps:
  * the argmax id and the top-20 (id, logit) pairs,
  * the logits at a fixed, seeded sample of vocabulary ids (all of them for
    last row of the first --full-last prompts), for max-abs-error and cosine checks,
and the greedy continuation ids. Output: one JSON file (small enough to commit;
the parity tests read it from crates/test-support/golden/).

usage: model_logits.py GGUF OUT.json --prompt-ids 1,2,3 [--prompt-ids ...]
       [--steps 8] [--record-steps 8] [--sample 512] [--full-last N]
Greedy decoding ignores end-of-sequence tokens (it always runs --steps).
"""
import argparse, base64, json, os, sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--prompt-ids", action="append", required=True)
    ap.add_argument("--steps", type=int, default=8, help="greedy decode steps")
    ap.add_argument("--record-steps", type=int, default=8,
                    help="decode steps whose logits are recorded")
    ap.add_argument("--sample", type=int, default=512)
    ap.add_argument("--full-last", type=int, default=0, metavar="N",
                    help="store every logit of the last row of the first N prompts "
                         "(base64 of little-endian float32)")
    args = ap.parse_args()

    torch.manual_seed(0)
    d, f = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(1234)
    sample_ids = np.sort(rng.choice(vocab, size=min(args.sample, vocab), replace=False))

    def row_record(logits):
        lg = logits.double().numpy()
        top = np.argsort(-lg, kind="stable")[:20]
        # 7 significant digits: float32 carries about that much, and it keeps
        # the file small enough to commit.
        f = lambda v: float(f"{float(v):.7g}")
        return {
            "argmax": int(np.argmax(lg)),
            "top": [[int(i), f(lg[i])] for i in top],
            "sampled": [f(lg[i]) for i in sample_ids],
        }

    prompts = []
    with torch.no_grad():
        for p in args.prompt_ids:
            ids = [int(x) for x in p.split(",")]
            seq = torch.tensor([ids])
            out = model(seq, use_cache=True)
            rows = [row_record(out.logits[0, i]) for i in range(len(ids))]
            entry = {"prompt": ids, "rows": rows}
            if len(prompts) < args.full_last:
                raw = out.logits[0, -1].numpy().astype("<f4").tobytes()
                entry["last_logits_f32le_b64"] = base64.b64encode(raw).decode()
            past = out.past_key_values
            nxt = int(torch.argmax(out.logits[0, -1]))
            gen, steps = [nxt], []
            for step in range(args.steps):
                o = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = o.past_key_values
                if step < args.record_steps:
                    steps.append(row_record(o.logits[0, -1]))
                nxt = int(torch.argmax(o.logits[0, -1]))
                gen.append(nxt)
            entry["decode"] = steps
            entry["greedy"] = gen
            prompts.append(entry)

    json.dump({
        "source": "transformers " + __import__("transformers").__version__ + ", float32, CPU",
        "model": os.path.basename(args.gguf),
        "vocab": vocab,
        "sample_ids": [int(i) for i in sample_ids],
        "prompts": prompts,
    }, open(args.out, "w"))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
