# syntax=docker/dockerfile:1
# The GPU image: tokenwire on NVIDIA's TensorRT-LLM release image, which brings
# CUDA, PyTorch, transformers and TensorRT-LLM itself. docs/deploy.md:
#   docker build -t REGISTRY/tokenwire:0.1.0 .
# Pin the base to the TensorRT-LLM release the engine code targets.
ARG TRTLLM_IMAGE=nvcr.io/nvidia/tensorrt-llm/release:1.2.1
FROM ${TRTLLM_IMAGE}

# tini as PID 1: forwards SIGTERM to the server (which drains) and reaps the
# worker processes TensorRT-LLM starts for tensor parallelism. Its version is
# the pinned base release's (hadolint DL3008: an exact apt revision breaks the
# build whenever the archive moves on).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# tokenwire without the tensorrt-llm extra: the base image's tensorrt_llm
# satisfies it, and the PyPI project of that name is only a stub that
# downloads from NVIDIA's index. Fail the build if the base lacks it. The base
# Python is the system's (PEP 668): pip may install into it all the same.
WORKDIR /opt/tokenwire/src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY service ./service
COPY clients/python ./clients/python
RUN python3 -c "import importlib.metadata as m; print('tensorrt_llm', m.version('tensorrt_llm'))" \
    && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir . \
    && tokenwire-server --help > /dev/null

# Non-root, with the uid the Helm chart's securityContext expects. HOME is
# /tmp: the root filesystem is read-only in the chart, /tmp an emptyDir.
RUN groupadd --gid 10001 tokenwire \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin tokenwire
USER 10001:10001
WORKDIR /tmp
# hadolint DL3064 reads the TOKEN in TOKENWIRE_* as a secret: these are settings.
# hadolint ignore=DL3064
ENV HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    TOKENWIRE_HOST=0.0.0.0 \
    TOKENWIRE_ENGINE=tensorrt-llm

# gRPC, Prometheus /metrics, the plaintext health port the chart opens
# (TOKENWIRE_HEALTH_PORT) when TLS or API keys are on, and the HTTP front door
# (TOKENWIRE_HTTP_PORT: OpenAI API, /health, /metrics).
EXPOSE 50051 9464 8081 8000
ENTRYPOINT ["tini", "--", "tokenwire-server"]
