"""Celery worker that runs adaptation jobs on the "gpu" queue."""
