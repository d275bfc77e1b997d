"""The gRPC editor: Editor and Adaptation services (servicer.py) over a transport-free core: values, catalog,
boundaries, cache, editing, adaptation and their Redis/Celery adapters."""
