# TorchServe with the generator and encoder handlers (services/inference), for a GPU node. Build from the
# repository root after the demo zoo (model_store/demo) is trained; the archives are built into the image:
#   docker build -f deploy/docker/inference.Dockerfile -t faceedit/inference:0.1.0 .
FROM python:3.11-slim-bookworm

# TorchServe's frontend is Java; tini reaps the processes TorchServe's Java leaves to PID 1.
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless tini \
    && rm -rf /var/lib/apt/lists/*
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app HOME=/var/lib/faceedit
RUN useradd --system --uid 10001 --no-create-home --home-dir /var/lib/faceedit faceedit
WORKDIR /app

# Dependencies first (an empty package stands in for the code). torch comes from PyPI, whose Linux
# wheel is the CUDA build this GPU service needs; `align` brings dlib for Invert(align=true).
COPY pyproject.toml constraints.txt ./
RUN mkdir faceedit && touch faceedit/__init__.py \
    && pip install -c constraints.txt ".[serve,align]" \
    && pip uninstall -y faceedit \
    && rm -rf faceedit build faceedit.egg-info

COPY faceedit ./faceedit
COPY services ./services
COPY model_store/demo ./model_store/demo
# The model directories, as `make mar` builds them: model_store/generator and model_store/encoder.
RUN python -m services.inference.archive --export model_store

RUN mkdir -p /var/lib/faceedit/artifacts /var/lib/faceedit/torchserve && chown -R 10001 /var/lib/faceedit
USER 10001
# Fixed ports instead of the loopback default of random ones. Only the gRPC inference port is meant
# to be reached from outside the container: config.properties binds management and metrics to
# 127.0.0.1 whatever FACEEDIT_TS_HOST says, and model registration stays off.
ENV FACEEDIT_TS_MODEL_STORE=/app/model_store FACEEDIT_TS_WORKDIR=/var/lib/faceedit/torchserve \
    FACEEDIT_TS_HOST=0.0.0.0 FACEEDIT_TS_GRPC_PORT=7070 FACEEDIT_TS_HTTP_PORT=8080 \
    FACEEDIT_TS_MANAGEMENT_PORT=8081 FACEEDIT_TS_GRPC_MANAGEMENT_PORT=7071 FACEEDIT_TS_METRICS_PORT=8082
EXPOSE 7070
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "services.inference.server", "serve"]
