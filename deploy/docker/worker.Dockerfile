# The Celery worker (services/worker) that runs adaptation jobs on the "gpu" queue, for a GPU node.
# Build from the repository root after the demo zoo (model_store/demo) is trained:
#   docker build -f deploy/docker/worker.Dockerfile -t faceedit/worker:0.1.0 .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app HOME=/var/lib/faceedit
RUN useradd --system --uid 10001 --no-create-home --home-dir /var/lib/faceedit faceedit
WORKDIR /app

# Dependencies first (an empty package stands in for the code). torch from PyPI is the CUDA build;
# `clip` is what DIFA adaptation needs.
COPY pyproject.toml constraints.txt ./
RUN mkdir faceedit && touch faceedit/__init__.py \
    && pip install -c constraints.txt ".[serve,clip]" \
    && pip uninstall -y faceedit \
    && rm -rf faceedit build faceedit.egg-info

COPY faceedit ./faceedit
COPY services ./services
COPY model_store/demo ./model_store/demo

RUN mkdir -p /var/lib/faceedit/artifacts && chown -R 10001 /var/lib/faceedit
USER 10001
# Solo pool, one job at a time (prefork deadlocks once torch ran in the parent); scale with replicas.
# The same command as `make demo` starts (services/launcher.py worker_command).
CMD ["python", "-m", "celery", "-A", "services.worker.app", "worker", "-Q", "gpu", "--pool", "solo", "--concurrency", "1", \
     "--loglevel", "INFO", "-n", "faceedit@%h"]
