"""Services around the faceedit library: editor (gRPC), inference (TorchServe handlers), worker (Celery)."""
