#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for scripts/gpu_check.sh on a GPU machine that has no network:
#   .gpu/home    ATENEA_HOME with the random-weight models' folders (config + tokenizer, no weights)
#   .gpu/wheels  wheels for Python 3.12 of this project's dependencies that a stock CUDA PyTorch
#                image lacks (the versions installed in .venv here)
# Run it where the package registry is reachable, after `make model`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
rm -rf .gpu/home
mkdir -p .gpu/home/models .gpu/wheels
for shape in smollm2-135m llama2-7b llama3-8b; do
  # Pulled into the usual cache, then only the small folder is copied (not the default model's weights).
  # Its first line is "random-NAME: FOLDER (...)"; later lines report on other things (CPU kernels).
  folder=$(.venv/bin/atenea pull "random:$shape" | sed -n "s/^random-$shape: \(.*\) (.*$/\1/p")
  cp -r "$folder" .gpu/home/models/
done
# What the engine, the HTTP server and the bench client import beyond torch/transformers/numpy.
# Their own dependencies too: a pure-Python one the machine already has is shadowed harmlessly.
packages="llguidance gguf fastapi starlette pydantic pydantic-core pydantic-settings python-dotenv
  sse-starlette uvicorn annotated-types typing-inspection prometheus-client diffusers importlib-metadata
  opentelemetry-api annotated-doc anyio click h11 httpx httpcore certifi idna zipp lazy-importer pillow
  sniffio"
pins=()
for name in $packages; do
  version=$($PY -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
  pins+=("$name${version:+==$version}")
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 \
  --platform manylinux_2_35_x86_64 --platform manylinux2014_x86_64 --platform any -d .gpu/wheels "${pins[@]}"
du -sh .gpu
