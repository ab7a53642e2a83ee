#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine, in one go.
#
#   scripts/device-check.sh pack [DEST]   (here: build and collect; DEST defaults
#                                          to .device-cuda in the repository root)
#   DEST/device-check.sh run              (there: from the repository root)
#   /tmp/mc/device-check.sh smollm2 DIR   (there, a later call: DIR carries smollm2.part2)
#   DEST/device-check.sh serve            (there: `metallic serve --device cuda` smoke run)
#
# The device tool sends the checkout the session started in (not a helper's
# worktree): pack into an ignored folder of that checkout and name it in
# `carry`, e.g. `pack <main checkout>/.device-cuda`, then `run` there.
# `pack` builds the release `metallic` binary, the metallic-cuda test binaries
# and the profile examples (decode, batched step), strips them and copies them with this script and
# the Qwen2 tokenizer, gzipped (for `metallic synth`), into DEST. `run` then, on the GPU
# machine: every metallic-cuda test binary with --include-ignored (the GPU
# must be there: METALLIC_REQUIRE_GPU=1), compute-sanitizer memcheck on a
# short `metallic generate --device cuda`, `metallic bench --device cuda`
# (pp512, tg128) on synthetic Qwen2.5-0.5B in Q8_0, Q4_0 and F16 (and pp512
# with the f32 prefill attention beside the default f16 one), and a
# device-timed decode profile of 95 tokens. Logs go to $OUT (or /tmp/out).
# SmolLM2 (94 MiB) does not fit one transfer: if DEST holds smollm2.part*
# files, or /tmp/smollm2.part* exist from an earlier call on the same machine,
# they are joined into assets/ and checked against DEST/smollm2.sha256.
set -uo pipefail

pack() {
  local top dest
  top=$(git rev-parse --show-toplevel)
  dest=${1:-$top/.device-cuda}
  cd "$top"
  rm -rf "$dest"; mkdir -p "$dest/tests" "$dest/bin"
  cargo build --release -p metallic-cli --bin metallic
  # The workspace takes the core crate without default features; the profile
  # needs its recorder.
  cargo build --release -p metallic-cuda --example profile_decode --example profile_batch --features metallic/profiling
  cp target/release/metallic target/release/examples/profile_decode target/release/examples/profile_batch "$dest/bin/"
  cargo test --release -p metallic-cuda --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys, shutil, os
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") and m.get("executable"):
        shutil.copy(m["executable"], os.path.join(sys.argv[1], "tests", os.path.basename(m["executable"])))
' "$dest"
  strip "$dest"/bin/* "$dest"/tests/* 2>/dev/null || true
  cp scripts/device-check.sh "$dest/"
  gzip -9c assets/qwen2/tokenizer.json > "$dest/tokenizer.json.gz" || echo "warning: assets/qwen2/tokenizer.json missing (synth will fail)"
  du -sh "$dest"; ls -l "$dest" "$dest/bin" "$dest/tests"
}

# Join SmolLM2 parts carried in $1 now or kept in /tmp by an earlier call.
join_smollm2() {
  cp "$1"/smollm2.part* /tmp/ 2>/dev/null || true
  [ -s "$1/smollm2.sha256" ] && cp "$1/smollm2.sha256" /tmp/
  if [ -s /tmp/smollm2.part1 ] && [ -s /tmp/smollm2.part2 ] && [ -s /tmp/smollm2.sha256 ]; then
    mkdir -p assets
    cat /tmp/smollm2.part1 /tmp/smollm2.part2 > assets/SmolLM2-135M-Instruct.Q4_1.gguf
    (cd assets && sha256sum -c /tmp/smollm2.sha256) || rm -f assets/SmolLM2-135M-Instruct.Q4_1.gguf
  fi
}

# A later call that carries the rest of SmolLM2 (DIR/smollm2.part2): join it
# with the part kept by `run` and run the SmolLM2 greedy test.
smollm2() {
  join_smollm2 "$1"
  [ -s assets/SmolLM2-135M-Instruct.Q4_1.gguf ] || { echo "SmolLM2 parts missing or damaged"; return 1; }
  export METALLIC_REQUIRE_GPU=1 METALLIC_CACHE_DIR=${METALLIC_CACHE_DIR:-/tmp/metallic-cache}
  /tmp/mc/tests/generate-* smollm2 --include-ignored --nocapture --test-threads=1
}

run() {
  local D out
  D=$(cd "$(dirname "$0")" && pwd)
  out=${OUT:-/tmp/out}; mkdir -p "$out"
  export METALLIC_REQUIRE_GPU=1 METALLIC_CACHE_DIR=${METALLIC_CACHE_DIR:-/tmp/metallic-cache}
  local m="$D/bin/metallic" fails=0
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  # Keep a copy for later calls on the same machine (see `smollm2`).
  mkdir -p /tmp/mc && cp -r "$D"/. /tmp/mc/ && rm -f /tmp/mc/smollm2.part*
  join_smollm2 "$D"
  echo "== tests"
  for t in "$D"/tests/*; do
    echo "-- $(basename "$t")"
    "$t" --include-ignored --test-threads=1 --nocapture > "$out/test-$(basename "$t").log" 2>&1 \
      || { fails=$((fails + 1)); echo "FAILED: $(basename "$t")"; }
    grep -E "^test |test result|rel_l2|skipped|cpu:|cuda:" "$out/test-$(basename "$t").log" | grep -v "^test result: ok. 0 passed" | tail -40
  done
  echo "== synthetic Qwen2.5-0.5B"
  gunzip -c "$D/tokenizer.json.gz" > /tmp/tokenizer.json
  for dt in Q8_0 Q4_0 F16; do
    [ -s "/tmp/qwen25-05b-$dt.gguf" ] || "$m" synth --arch qwen2 --preset qwen2.5-0.5b --dtype "$dt" \
      --tokenizer /tmp/tokenizer.json -o "/tmp/qwen25-05b-$dt.gguf" > /dev/null || fails=$((fails + 1))
  done
  echo "== compute-sanitizer memcheck"
  if command -v compute-sanitizer >/dev/null; then
    compute-sanitizer --tool memcheck --error-exitcode 3 --leak-check no \
      "$m" generate --device cuda -m /tmp/qwen25-05b-Q8_0.gguf -n 8 --ignore-eos "The capital of France is" \
      > "$out/memcheck.log" 2>&1 || { fails=$((fails + 1)); echo "FAILED: memcheck"; }
    tail -5 "$out/memcheck.log"
  else
    echo "compute-sanitizer not found"; fails=$((fails + 1))
  fi
  echo "== bench"
  for dt in Q8_0 Q4_0 F16; do
    "$m" bench --device cuda -m "/tmp/qwen25-05b-$dt.gguf" -p 512 -n 128 -r 5 2>&1 | tee -a "$out/bench.log" | grep -E "^\||pp|tg" || fails=$((fails + 1))
  done
  echo "== pp512 with the f32 prefill attention (METALLIC_CUDA_ATTN_F16=0), beside the default f16 tensor-core one above"
  for dt in Q8_0 F16; do
    METALLIC_CUDA_ATTN_F16=0 "$m" bench --device cuda -m "/tmp/qwen25-05b-$dt.gguf" -p 512 -n 0 -r 5 2>&1 | tee -a "$out/bench.log" | grep -E "pp512" || fails=$((fails + 1))
  done
  echo "== generate with the default sampler (temperature 0.8, top-k 40, top-p 0.95, min-p 0.05)"
  for dt in Q8_0 F16; do
    "$m" generate --device cuda -m "/tmp/qwen25-05b-$dt.gguf" -n 128 --ignore-eos "The capital of France is" 2>&1 >/dev/null | grep "decode" || fails=$((fails + 1))
  done
  echo "== profile (95-token decode, Qwen2.5-0.5B layout, Q8_0)"
  "$D/bin/profile_decode" /tmp/qwen25-05b-Q8_0.gguf 95 > "$out/profile_q8_0.txt" 2>&1 || fails=$((fails + 1))
  head -40 "$out/profile_q8_0.txt"
  METALLIC_PROFILING_ENABLED=1 "$m" generate --device cuda -m /tmp/qwen25-05b-Q8_0.gguf -n 95 --ignore-eos \
    "The capital of France is" > "$out/profile_cli.txt" 2>&1 || true
  echo "== per-kernel device time of one graphed decode step (ncu, Q8_0)"
  if command -v ncu >/dev/null; then
    timeout 300 ncu --graph-profiling node --csv --metrics gpu__time_duration.sum -c 2000 \
      "$m" generate --device cuda -m /tmp/qwen25-05b-Q8_0.gguf -n 4 --ignore-eos "The capital of France is" \
      > "$out/ncu.csv" 2> "$out/ncu.err" || echo "ncu failed (see ncu.err)"
    python3 - "$out/ncu.csv" <<'PY' | tee "$out/ncu_step.txt"
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1], errors="replace")) if len(r) > 14 and r[12] == "gpu__time_duration.sum"]
names = [r[4] for r in rows]
# The last decode step: from the last embedding kernel to the end.
start = max(i for i, n in enumerate(names) if n.startswith("embed_"))
step = rows[start:]
unit = step[0][13]
scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[unit]
agg = collections.OrderedDict()
for r in step:
    k = r[4].split("(")[0] + " grid" + r[8]
    c, t = agg.get(k, (0, 0.0))
    agg[k] = (c + 1, t + float(r[14].replace(",", "")) * scale)
total = sum(t for _, t in agg.values())
print(f"{len(step)} kernels, {total:.1f} us of kernel time in the last decode step (ncu: serialised, its own clocks)")
print(f"{'calls':>6} {'total us':>9} {'mean us':>8} {'%':>5}  kernel grid")
for k, (c, t) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
    print(f"{c:>6} {t:>9.1f} {t / c:>8.2f} {100 * t / total:>5.1f}  {k}")
PY
  fi
  echo "== $fails failure(s)"
  [ "$fails" -eq 0 ]
}

# `metallic serve --device cuda` on synthetic Qwen2.5-0.5B Q8_0 (from the
# repository root there): for the default path and for --deterministic with
# an f16 KV cache, one greedy completion alone, then the same request among 7
# others sent at once (its text compared: must be equal under
# --deterministic), then `metallic bench-serve` (16 clients). HTTP from
# python3's urllib (curl may be missing there).
serve_smoke() {
  local D out m model fails=0
  D=$(cd "$(dirname "$0")" && pwd)
  out=${OUT:-/tmp/out}; mkdir -p "$out"
  export METALLIC_CACHE_DIR=${METALLIC_CACHE_DIR:-/tmp/metallic-cache}
  m="$D/bin/metallic"; model=/tmp/qwen25-05b-Q8_0.gguf
  gunzip -c "$D/tokenizer.json.gz" > /tmp/tokenizer.json
  [ -s "$model" ] || "$m" synth --arch qwen2 --preset qwen2.5-0.5b --dtype Q8_0 \
    --tokenizer /tmp/tokenizer.json -o "$model" > /dev/null || return 1
  local url="http://127.0.0.1:8091"
  for flags in "" "--deterministic --kv-type f16"; do
    echo "== serve --device cuda $flags"
    "$m" serve --device cuda -m "$model" --port 8091 --max-seqs 64 $flags > "$out/serve.log" 2>&1 &
    local pid=$!
    python3 - "$url" "$flags" <<'PY' || { fails=$((fails + 1)); tail -5 "$out/serve.log"; }
import json, sys, time, threading, urllib.request
url, flags = sys.argv[1], sys.argv[2]
for _ in range(240):
    try:
        if urllib.request.urlopen(url + "/health", timeout=2).status == 200: break
    except Exception: time.sleep(0.5)
def post(prompt, n):
    req = urllib.request.Request(url + "/v1/completions", method="POST",
        data=json.dumps({"prompt": prompt, "max_tokens": n, "temperature": 0}).encode(),
        headers={"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=120))["choices"][0]["text"]
p = "The capital of France is"
alone = post(p, 48)
res = {}
ts = [threading.Thread(target=lambda i=i: res.__setitem__(i, post(f"Request {i} says", 16 * i))) for i in range(1, 8)]
ts.append(threading.Thread(target=lambda: res.__setitem__(0, post(p, 48))))
for t in ts: t.start()
for t in ts: t.join()
print(f"alone == inside a batch of 8: {alone == res.get(0)}; {len(res) - 1}/7 other requests answered")
sys.exit(1 if len(res) < 8 or ("--deterministic" in flags and alone != res[0]) else 0)
PY
    "$m" bench-serve --url "$url" -c 16 -n 64 || fails=$((fails + 1))
    kill -TERM $pid; wait $pid || { echo "FAILED: serve exit"; tail -5 "$out/serve.log"; fails=$((fails + 1)); }
  done
  echo "== serve: $fails failure(s)"
  [ "$fails" -eq 0 ]
}

case "${1:-}" in
  pack) shift; pack "$@" ;;
  run) run ;;
  smollm2) shift; smollm2 "$@" ;;
  serve) serve_smoke ;;
  *) echo "usage: $0 pack [DEST] | run | serve" >&2; exit 2 ;;
esac
