#!/usr/bin/env bash
# Two `metallic serve` replicas behind nginx on loopback: requests spread
# over both (least_conn), and keep succeeding when one replica is killed.
#
#   scripts/serve-replicas.sh [MODEL.gguf]
#
# nginx comes from the Debian package (installed with apt-get if missing) and
# runs unprivileged from a temporary directory. Open-source nginx checks
# upstreams passively: a replica that refuses connections or answers 502/503
# is marked down for `fail_timeout` and the request is retried on the other
# (proxy_next_upstream); each replica's /health is polled here before the
# test starts. Everything listens on 127.0.0.1; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-assets/SmolLM2-135M-Instruct.Q4_1.gguf}
lb=18100; r1=18101; r2=18102
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing nginx (apt-get) ..." >&2
  $sudo apt-get update -qq && $sudo apt-get install -y -qq nginx-light >/dev/null 2>&1 \
    || $sudo apt-get install -y -qq nginx >/dev/null
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
if [ -z "${METALLIC:-}" ]; then
  cargo build --release -p metallic-cli >/dev/null
  METALLIC=./target/release/metallic
fi
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

for port in $r1 $r2; do
  "$METALLIC" serve -m "$model" --host 127.0.0.1 --port "$port" --max-seqs 4 --kv-memory 64 \
    >"$tmp/replica-$port.log" 2>&1 &
  pids+=($!)
done
for port in $r1 $r2; do
  ok=""
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && { ok=1; break; }
    sleep 0.2
  done
  [ -n "$ok" ] || { echo "replica on $port not healthy in 60 s" >&2; cat "$tmp/replica-$port.log" >&2; exit 1; }
done

mkdir -p "$tmp/logs"
cat >"$tmp/nginx.conf" <<CONF
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/logs/error.log;
events { worker_connections 256; }
http {
  access_log $tmp/logs/access.log;
  client_body_temp_path $tmp/body; proxy_temp_path $tmp/proxy;
  fastcgi_temp_path $tmp/fcgi; uwsgi_temp_path $tmp/uwsgi; scgi_temp_path $tmp/scgi;
  upstream metallic {
    least_conn;
    server 127.0.0.1:$r1 max_fails=1 fail_timeout=10s;
    server 127.0.0.1:$r2 max_fails=1 fail_timeout=10s;
  }
  server {
    listen 127.0.0.1:$lb;
    location / {
      proxy_pass http://metallic;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Server-sent events: pass tokens through as they come.
      proxy_buffering off;
      proxy_read_timeout 300s;
      proxy_next_upstream error timeout http_502 http_503;
      proxy_next_upstream_tries 2;
    }
  }
}
CONF
"$nginx_bin" -p "$tmp" -c "$tmp/nginx.conf"

served() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^metallic_requests_total\{outcome="ok"\}/ {print $2}'; }
send() {
  local n=$1 fail=0 ps=()
  for i in $(seq 1 "$n"); do
    curl -sf --max-time 120 "http://127.0.0.1:$lb/v1/completions" -H 'content-type: application/json' \
      -d "{\"prompt\": \"Request $i: once upon a time\", \"max_tokens\": 16, \"temperature\": 0}" \
      -o /dev/null & ps+=($!)
  done
  for p in "${ps[@]}"; do wait "$p" || fail=$((fail + 1)); done
  echo "$fail"
}

failed=$(send 8)
a=$(served $r1); b=$(served $r2)
echo "8 concurrent requests through nginx: $failed failed; replica $r1 served $a, replica $r2 served $b"
[ "$failed" -eq 0 ] && [ "$a" -gt 0 ] && [ "$b" -gt 0 ] || { echo "FAIL: requests did not spread over both replicas" >&2; exit 1; }

kill "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
echo "killed replica $r1"
failed=$(send 8)
b2=$(served $r2)
echo "8 more requests: $failed failed; replica $r2 served $((b2 - b)) of them"
[ "$failed" -eq 0 ] && [ $((b2 - b)) -eq 8 ] || { echo "FAIL: requests were lost after a replica died" >&2; exit 1; }
echo "ok: requests spread over both replicas and survived one being killed"
