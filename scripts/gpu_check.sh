#!/usr/bin/env bash
# The GPU checks in one command: the GPU-marked tests, then for each shape one `atenea bench engine`
# run (one engine load) that times W1 (batch-1 decode), W2 (offline throughput), the engine side of
# W3 and the prefix cache's TTFT, then, with one transformers model, generate() on W1 and
# generate_batch() on W2; then W3 itself: HTTP, 64 concurrent streams, against a server on the shape.
# Random-weight models of real shapes. $OUT (default gpu-results/) gets three files: results.json
# (every run's JSON by name), logs.txt (every step's output, with its seconds) and gpu-tests.xml.
# W1, W2 and W3 also profile 32 decode steps (kernels a step, device busy time, the costliest
# kernels: `bench engine --profile`).
# Works with no network once scripts/gpu_prepare.sh has filled .gpu/; uses the python3 that holds
# CUDA PyTorch. On a CPU it is a dry run: CHECK_SHAPES=smollm2-135m W2_REQUESTS=8 keeps it short.
# CHECK_WORKLOADS picks among "w1 w2 w3 prefix" (the default: what fits 8 minutes on an H100) and
# the extras "unfused sync thread" (unfused: W1, and SmolLM2's W2, without the fused layer kernels;
# sync: W1 and W2 without overlapped steps; thread: W3 with the engine on a thread of the server
# instead of its own process); the extras are a second call, with CHECK_TESTS=0 (no GPU tests) and
# another $OUT. CHECK_BASELINE=none leaves out the transformers baselines (minutes on the 7B shape)
# when only the engine's figures are wanted again.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
PY=${PYTHON:-python3}
SHAPES=${CHECK_SHAPES:-llama2-7b smollm2-135m}
W3_SHAPES=${W3_SHAPES:-$SHAPES}
W3_THREAD_SHAPES=${W3_THREAD_SHAPES:-smollm2-135m}  # the small model streams the most tokens a second
W2_REQUESTS=${W2_REQUESTS:-128}
WORKLOADS=${CHECK_WORKLOADS:-w1 w2 w3 prefix}
W3_STREAMS=64 W3_TOKENS=256  # as the issue's W3, and as `bench engine --workload w3`
W3_REQUESTS=${W3_REQUESTS:-64}
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
  local name=$1 limit=$2 started=$SECONDS
  shift 2
  echo "== $name"
  timeout "$limit" "$@" >"$WORK/$name.log" 2>&1 || { echo "   failed (exit $?)"; status=1; }
  grep -v -i warning "$WORK/$name.log" | tail -n 12
  echo "   $name: $((SECONDS - started)) s (check at $SECONDS s)" | tee -a "$WORK/$name.log"
  collect  # after every step: a run cut short still leaves what it measured
}

# engine_bench SHAPE SUFFIX TIMEOUT "WORKLOADS" [ARGS...]: one `atenea bench engine` run, one engine
# load, every workload in it; the files are WORKLOAD-SHAPE-SUFFIX.json (w1-llama2-7b.json, ...).
engine_bench() {
  local shape=$1 suffix=$2 limit=$3 workloads=$4 missing="" w
  shift 4
  # shellcheck disable=SC2086  # the workloads are words
  step "engine-$shape$suffix" "$limit" $PY -m app.bench.engine --model "random:$shape" --workload $workloads \
    --requests "$W2_REQUESTS" "$@" --json "$WORK/{workload}-$shape$suffix.json"
  # A CUDA-graph fault still leaves eager figures, named as such.
  for w in $workloads; do [[ -s $WORK/$w-$shape$suffix.json ]] || missing+=" $w"; done
  # shellcheck disable=SC2086
  [[ -z $missing ]] || step "engine-$shape$suffix-eager" "$limit" $PY -m app.bench.engine \
    --model "random:$shape" --workload $missing --requests "$W2_REQUESTS" "$@" --enforce-eager \
    --json "$WORK/{workload}-$shape$suffix-eager.json"
}

trap collect EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$WORK/gpu.log" 2>&1 || true
$PY -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())" \
  | tee -a "$WORK/gpu.log"

[[ ${CHECK_TESTS:-1} == 1 ]] &&
  step gpu-tests 150 $PY -m pytest -m gpu tests/gpu -q -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml"
# The 7B shape first: its figures are the ones the targets name.
engine_workloads=""
for w in w1 w2 w3 prefix; do [[ $WORKLOADS == *$w* ]] && engine_workloads+=" $w"; done
if [[ -n $engine_workloads ]]; then
  for shape in $SHAPES; do
    engine_bench "$shape" "" "$([[ $shape == llama* ]] && echo 300 || echo 200)" "$engine_workloads" --profile 32 \
      --baseline "${CHECK_BASELINE:-default}"
  done
fi

# W3: the same engine behind HTTP, 64 concurrent streams of 256 tokens, to set beside the engine
# alone at the same concurrency: what the HTTP layer costs.
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
  # One untimed wave first, as the engine's own run is warmed up: a wave lasts under a second on
  # the small shape, so a first request's one-off costs would otherwise weigh in the comparison.
  # Its own prompt text: the timed prompts must not find their blocks in the prefix cache.
  $PY -m app.cli bench serve --base-url "http://127.0.0.1:$port/v1" -c "$W3_STREAMS" -n "$W3_STREAMS" \
    --max-tokens 16 --ignore-eos --processes "$W3_CLIENTS" --prompt "An untimed request." \
    >"$WORK/$name-warm-up.txt" 2>&1
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
# (The engine's side is w3-SHAPE.json, from the engine run above.)
if [[ $WORKLOADS == *w3* ]] && server_imports; then
  for shape in $W3_SHAPES; do
    w3_http "w3-http-$shape" "$shape" --engine-process
  done
fi
# What the fused layer kernels are worth: W1 and W2 with the plain torch operations in every layer.
if [[ $WORKLOADS == *unfused* ]]; then
  for shape in $SHAPES; do
    ATENEA_FUSED_KERNELS=0 engine_bench "$shape" -unfused 150 "w1 w2" --baseline none --profile 32
  done
fi
# What overlapped steps are worth: W1 and W2 again with each step waiting for the last.
if [[ $WORKLOADS == *sync* ]]; then
  for shape in $SHAPES; do
    engine_bench "$shape" -no-overlap 150 "w1 w2" --no-overlap-steps --baseline none
  done
fi
# And what the engine's own process is worth: W3 with the engine on a thread of the server.
if [[ $WORKLOADS == *thread* ]] && server_imports; then
  for shape in $W3_THREAD_SHAPES; do
    w3_http "w3-http-$shape-thread" "$shape" --no-engine-process
  done
fi
echo "== done in $SECONDS s"
exit $status
