"""Adapting the generator to an artistic domain: DIFA (one reference artwork) and CLIP access; the deltas it
writes are faceedit.models.delta."""
