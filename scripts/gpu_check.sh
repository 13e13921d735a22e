#!/usr/bin/env bash
# The GPU checks in one command: the GPU-marked tests, then the engine workloads W1 (batch-1
# decode) and W2 (offline throughput) against transformers' generate / generate_batch, then W3
# (HTTP, 64 concurrent streams) beside the engine at the same concurrency, on random-weight models
# of real shapes. $OUT (default gpu-results/) gets three files: results.json (every run's JSON by
# name), logs.txt (every step's output) and gpu-tests.xml. The W1 and W2 runs also profile 32 decode
# steps (kernels a step, device busy time, the costliest kernels: `bench engine --profile`).
# Works with no network once scripts/gpu_prepare.sh has filled .gpu/; uses the python3 that holds
# CUDA PyTorch. On a CPU it is a dry run: CHECK_SHAPES=smollm2-135m W2_REQUESTS=8 keeps it short,
# CHECK_WORKLOADS picks among "w1 w2 w3 prefix unfused sync thread" (prefix: TTFT with a cached
# 1,000-token prefix against the same request cold; unfused: W1, and SmolLM2's W2, without the
# fused layer kernels; sync: W1 and W2 without overlapped steps; thread: W3 with the engine on a
# thread of the server instead of its own process). CHECK_TESTS=0 skips the GPU tests.
# Everything takes longer than one 10-minute call (the transformers baselines alone take minutes at
# 12 tok/s): split it, e.g. CHECK_WORKLOADS="w1 w2" first, then CHECK_TESTS=0 with
# CHECK_WORKLOADS="w3 prefix unfused sync thread" and another $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
PY=${PYTHON:-python3}
SHAPES=${CHECK_SHAPES:-llama2-7b smollm2-135m}
W3_SHAPES=${W3_SHAPES:-$SHAPES}
W3_THREAD_SHAPES=${W3_THREAD_SHAPES:-smollm2-135m}  # the small model streams the most tokens a second
W2_REQUESTS=${W2_REQUESTS:-128}
WORKLOADS=${CHECK_WORKLOADS:-w1 w2 w3 prefix unfused sync thread}
W3_STREAMS=${W3_STREAMS:-64} W3_REQUESTS=${W3_REQUESTS:-64} W3_TOKENS=${W3_TOKENS:-256}
# Client processes for W3: one asyncio client tops out at a few thousand streamed tok/s.
W3_CLIENTS=${W3_CLIENTS:-4}
WORK=$(mktemp -d)
mkdir -p "$OUT"
if compgen -G ".gpu/wheels/*.whl" >/dev/null &&
  ! $PY -c "import llguidance, fastapi, uvicorn, sse_starlette, httpx, pydantic_settings, PIL" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/atenea-site .gpu/wheels/*.whl
  export PYTHONPATH=/tmp/atenea-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export ATENEA_HOME=${ATENEA_HOME:-$PWD/.gpu/home}
status=0

collect() {  # everything into the three files of $OUT
  for log in "$WORK"/*.log; do
    [[ -e $log ]] && { echo "===== $(basename "$log" .log)"; cat "$log"; }
  done >"$WORK/logs.txt.part"
  mv "$WORK/logs.txt.part" "$OUT/logs.txt"  # whole or not at all: a kill can land mid-write
  $PY - "$WORK" "$OUT/results.json" <<'EOF'
import json, os, pathlib, sys
work, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
part = work / "results.json.part"
part.write_text(json.dumps({p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}, indent=1))
os.replace(part, out)
EOF
}
step() {  # step NAME TIMEOUT COMMAND...: runs it, logs to $WORK/NAME.log, remembers a failure
  local name=$1 limit=$2
  shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1 || { echo "   failed (exit $?)"; status=1; }
  grep -v -i warning "$WORK/$name.log" | tail -n 8
  collect  # after every step: a run cut short still leaves what it measured
}

bench() {  # bench NAME TIMEOUT ARGS...: `atenea bench engine`; a failed run is retried eagerly
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" $PY -m app.bench.engine "$@" --json "$WORK/$name.json"
  # A CUDA-graph fault still leaves eager figures, named as such.
  [[ -s $WORK/$name.json ]] || step "$name-eager" "$limit" $PY -m app.bench.engine "$@" --enforce-eager \
    --json "$WORK/$name-eager.json"
}

trap collect EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$WORK/gpu.log" 2>&1 || true
$PY -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())" \
  | tee -a "$WORK/gpu.log"

[[ ${CHECK_TESTS:-1} == 1 ]] &&
  step gpu-tests 150 $PY -m pytest -m gpu tests/gpu -q -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"
# The 7B shape first: its figures are the ones the targets name.
for shape in $SHAPES; do
  [[ $WORKLOADS == *w1* ]] && bench "w1-$shape" 120 --model "random:$shape" --workload w1 --profile 32
  [[ $WORKLOADS == *w2* ]] && bench "w2-$shape" 150 --model "random:$shape" --workload w2 --profile 32 \
    --requests "$W2_REQUESTS"
done

# W3: the same engine behind HTTP, 64 concurrent streams of 256 tokens, and the engine alone on
# the same concurrency, to show what the HTTP layer costs.
w3_http() {  # w3_http NAME SHAPE [SERVE FLAGS...]: a server on the shape, then the HTTP benchmark
  local name=$1 shape=$2 port=18765
  shift 2
  $PY -m app.cli serve --model "random:$shape" --port "$port" --image-model none "$@" \
    >"$WORK/$name-server.log" 2>&1 &
  local server=$!
  for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
    sleep 1
  done
  step "$name" 120 $PY -m app.cli bench serve --base-url "http://127.0.0.1:$port/v1" \
    -c "$W3_STREAMS" -n "$W3_REQUESTS" --max-tokens "$W3_TOKENS" --ignore-eos --processes "$W3_CLIENTS" \
    --json "$WORK/$name.json"
  kill "$server" 2>/dev/null
  wait "$server" 2>/dev/null
}
server_imports() {
  $PY -c "import app.main, httpx" 2>"$WORK/w3-imports.log" && return 0
  echo "== w3 skipped: the server does not import here:"
  tail -n 3 "$WORK/w3-imports.log"
  status=1
  return 1
}
if [[ $WORKLOADS == *w3* ]] && server_imports; then
  for shape in $W3_SHAPES; do
    w3_http "w3-http-$shape" "$shape" --engine-process
    step "w3-engine-$shape" 90 $PY -m app.bench.engine --model "random:$shape" --batch-size "$W3_STREAMS" \
      --prompt-len 32 --max-tokens "$W3_TOKENS" --baseline none --json "$WORK/w3-engine-$shape.json"
  done
fi

# The prefix cache: TTFT of a request whose 1,000-token prefix is cached, against the same cold.
if [[ $WORKLOADS == *prefix* ]]; then
  for shape in $SHAPES; do
    step "prefix-$shape" 90 $PY -m app.bench.prefix --model "random:$shape" --json "$WORK/prefix-$shape.json"
  done
fi
# What the fused layer kernels are worth: W1 (and SmolLM2's W2, launch-bound too) with the plain
# torch operations in every layer.
if [[ $WORKLOADS == *unfused* ]]; then
  for shape in $SHAPES; do
    ATENEA_FUSED_KERNELS=0 bench "w1-$shape-unfused" 90 --model "random:$shape" --workload w1 --baseline none \
      --profile 32
  done
  [[ $SHAPES == *smollm2-135m* ]] && ATENEA_FUSED_KERNELS=0 bench "w2-smollm2-135m-unfused" 120 \
    --model "random:smollm2-135m" --workload w2 --requests "$W2_REQUESTS" --baseline none --profile 32
fi
# Last, what overlapped steps are worth: W1 and W2 again with each step waiting for the last.
if [[ $WORKLOADS == *sync* ]]; then
  for shape in $SHAPES; do
    bench "w1-$shape-no-overlap" 90 --model "random:$shape" --workload w1 --no-overlap-steps --baseline none
    bench "w2-$shape-no-overlap" 120 --model "random:$shape" --workload w2 --requests "$W2_REQUESTS" \
      --no-overlap-steps --baseline none
  done
fi
# And what the engine's own process is worth: W3 with the engine on a thread of the server.
if [[ $WORKLOADS == *thread* ]] && server_imports; then
  for shape in $W3_THREAD_SHAPES; do
    w3_http "w3-http-$shape-thread" "$shape" --no-engine-process
  done
fi
exit $status
