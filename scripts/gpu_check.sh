#!/usr/bin/env bash
# The GPU checks in one command: the GPU-marked tests, then the engine workloads W1 (batch-1
# decode) and W2 (offline throughput) against transformers' generate / generate_batch, then W3
# (HTTP, 64 concurrent streams) beside the engine at the same concurrency, on random-weight models
# of real shapes. Results go to $OUT (default gpu-results/) as JSON and logs.
# Works with no network once scripts/gpu_prepare.sh has filled .gpu/; uses the python3 that holds
# CUDA PyTorch. On a CPU it is a dry run: CHECK_SHAPES=smollm2-135m W2_REQUESTS=8 keeps it short,
# CHECK_WORKLOADS picks among "w1 w2 w3".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
PY=${PYTHON:-python3}
SHAPES=${CHECK_SHAPES:-llama2-7b smollm2-135m}
W3_SHAPES=${W3_SHAPES:-$SHAPES}
W2_REQUESTS=${W2_REQUESTS:-128}
WORKLOADS=${CHECK_WORKLOADS:-w1 w2 w3}
W3_STREAMS=${W3_STREAMS:-64} W3_REQUESTS=${W3_REQUESTS:-128} W3_TOKENS=${W3_TOKENS:-256}
mkdir -p "$OUT"
if compgen -G ".gpu/wheels/*.whl" >/dev/null && ! $PY -c "import llguidance, fastapi" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/atenea-site .gpu/wheels/*.whl
  export PYTHONPATH=/tmp/atenea-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export ATENEA_HOME=${ATENEA_HOME:-$PWD/.gpu/home}
status=0
step() {  # step NAME TIMEOUT COMMAND...: runs it, logs to $OUT/NAME.log, remembers a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1 || { echo "   failed (exit $?)"; status=1; }
  tail -n 8 "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/gpu.csv" 2>&1 || true
$PY -c "import torch; print(torch.__version__, torch.cuda.is_available())" | tee "$OUT/torch.txt"

# The 7B shape first: its figures are the ones the targets name. A failed engine run is retried
# once with --enforce-eager, so a CUDA-graph fault still leaves eager figures (and says so).
bench() {  # bench NAME TIMEOUT ARGS...
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" $PY -m app.bench.engine "$@" --json "$OUT/$name.json"
  [[ -s $OUT/$name.json ]] || step "$name-eager" "$limit" $PY -m app.bench.engine "$@" --enforce-eager \
    --json "$OUT/$name-eager.json"
}
step gpu-tests 150 $PY -m pytest -m gpu tests/gpu -q -x -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"
for shape in $SHAPES; do
  [[ $WORKLOADS == *w1* ]] && bench "w1-$shape" 120 --model "random:$shape" --workload w1
  [[ $WORKLOADS == *w2* ]] && bench "w2-$shape" 150 --model "random:$shape" --workload w2 \
    --requests "$W2_REQUESTS"
done

# W3: the same engine behind HTTP, 64 concurrent streams of 256 tokens, and the engine alone on
# the same concurrency, to show what the HTTP layer costs.
if [[ $WORKLOADS != *w3* ]]; then
  :
elif $PY -c "import fastapi, uvicorn, sse_starlette" 2>/dev/null; then
  port=18765
  for shape in $W3_SHAPES; do
    $PY -m app.cli serve --model "random:$shape" --port "$port" --image-model none \
      >"$OUT/w3-server-$shape.log" 2>&1 &
    server=$!
    for _ in $(seq 120); do
      curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
      sleep 1
    done
    step "w3-http-$shape" 120 $PY -m app.cli bench serve --base-url "http://127.0.0.1:$port/v1" \
      -c "$W3_STREAMS" -n "$W3_REQUESTS" --max-tokens "$W3_TOKENS" --ignore-eos --json "$OUT/w3-http-$shape.json"
    kill "$server" 2>/dev/null
    wait "$server" 2>/dev/null
    step "w3-engine-$shape" 90 $PY -m app.bench.engine --model "random:$shape" --batch-size "$W3_STREAMS" \
      --prompt-len 32 --max-tokens "$W3_TOKENS" --baseline none --json "$OUT/w3-engine-$shape.json"
  done
else
  echo "== w3 skipped: fastapi/uvicorn/sse-starlette are not importable (run scripts/gpu_prepare.sh)"
  status=1
fi
exit $status
