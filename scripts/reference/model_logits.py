#!/usr/bin/env python3
"""Golden logits from Hugging Face transformers for a GGUF model.

transformers loads the GGUF itself (dequantising every tensor to float32 with
the `gguf` package and undoing llama.cpp's Q/K permutation), so the numbers
below come from code nobody in this project wrote.

For each prompt (given as token ids, so the tokenizer is not under test here)
it records, for every prompt row and for `--steps` greedy decode steps:
  * the argmax id and the top-20 (id, logit) pairs,
  * the logits at a fixed, seeded sample of vocabulary ids (all of them for
    rows listed in --full-rows), for max-abs-error and cosine checks,
  * the final hidden state after the output norm (full).
and the greedy continuation ids. Output: one JSON file (small enough to commit).

usage: model_logits.py GGUF OUT.json --prompt-ids 1,2,3 [--prompt-ids ...]
       [--steps 8] [--sample 2048] [--full-last] [--ignore-eos]
"""
import argparse, json, os, sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--prompt-ids", action="append", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--sample", type=int, default=2048)
    ap.add_argument("--full-last", action="store_true",
                    help="store every logit of each prompt's last row")
    args = ap.parse_args()

    torch.manual_seed(0)
    d, f = os.path.split(os.path.abspath(args.gguf))
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model.eval()
    vocab = model.config.vocab_size
    rng = np.random.default_rng(1234)
    sample_ids = np.sort(rng.choice(vocab, size=min(args.sample, vocab), replace=False))

    def row_record(logits, hidden):
        lg = logits.double().numpy()
        top = np.argsort(-lg, kind="stable")[:20]
        return {
            "argmax": int(np.argmax(lg)),
            "top": [[int(i), float(lg[i])] for i in top],
            "sampled": [float(lg[i]) for i in sample_ids],
            "hidden": [float(v) for v in hidden.double().numpy()],
        }

    prompts = []
    with torch.no_grad():
        for p in args.prompt_ids:
            ids = [int(x) for x in p.split(",")]
            seq = torch.tensor([ids])
            out = model(seq, output_hidden_states=True, use_cache=True)
            rows = [row_record(out.logits[0, i], out.hidden_states[-1][0, i]) for i in range(len(ids))]
            entry = {"prompt": ids, "rows": rows}
            if args.full_last:
                entry["last_logits"] = [float(v) for v in out.logits[0, -1].double().numpy()]
            past = out.past_key_values
            nxt = int(torch.argmax(out.logits[0, -1]))
            gen, steps = [nxt], []
            for _ in range(args.steps):
                o = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True,
                          output_hidden_states=True)
                past = o.past_key_values
                steps.append(row_record(o.logits[0, -1], o.hidden_states[-1][0, -1]))
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
