"""Adapting the generator to an artistic domain: DIFA (one reference artwork), CLIP access, weight deltas."""
