# The editor (services/editor): the gRPC front of the stack. CPU only: it runs the mapping network and
# latent arithmetic; images are TorchServe's job. Build from the repository root, after the demo zoo
# (model_store/demo) is trained, since the editor reads its generator and boundaries:
#   docker build -f deploy/docker/editor.Dockerfile -t faceedit/editor:0.1.0 .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app HOME=/var/lib/faceedit
RUN useradd --system --uid 10001 --no-create-home --home-dir /var/lib/faceedit faceedit
WORKDIR /app

# Dependencies first, with an empty package standing in for the code, so that a code change does not
# reinstall them. The code itself runs from /app (PYTHONPATH), where faceedit finds model_store/demo
# exactly as in a checkout. The CPU wheel of torch keeps the image small.
COPY pyproject.toml constraints.txt ./
RUN mkdir faceedit && touch faceedit/__init__.py \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install -c constraints.txt ".[serve]" \
    && pip uninstall -y faceedit \
    && rm -rf faceedit build faceedit.egg-info

COPY faceedit ./faceedit
COPY services ./services
COPY protos ./protos
COPY clients/python ./clients/python
# gRPC stubs are generated at build time, as `make protos` does, never committed: TorchServe's into
# services/common/ts_grpc, faceedit.v1 into the client package, installed here since the servicer
# imports its stubs (faceedit_client.v1).
RUN python services/build_protos.py \
    && pip install -c constraints.txt ./clients/python \
    && rm -rf clients
COPY model_store/demo ./model_store/demo

RUN mkdir -p /var/lib/faceedit/artifacts && chown -R 10001 /var/lib/faceedit
USER 10001
# Listen beyond loopback: in a container the port is only reachable through the runtime's network.
ENV FACEEDIT_HOST=0.0.0.0 FACEEDIT_PORT=50051 FACEEDIT_METRICS_PORT=9100
EXPOSE 50051 9100
CMD ["python", "-m", "services.editor.server"]
