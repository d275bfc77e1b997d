"""DIFA's losses: CLIP global direction and local token matching,
and the e4e consistency term with its mask and ramp."""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F
from torch import Tensor

from faceedit.models.encoders import Encoder

_MIN_STEP = 1e-6  # CLIP-space moves shorter than this have no usable direction


def reference_direction(reference_embedding: Tensor, source_mean: Tensor) -> Tensor:
    """Unit CLIP direction from the source domain's mean embedding to the reference: [E]."""
    direction = reference_embedding.reshape(-1) - source_mean.reshape(-1)
    return F.normalize(direction, dim=0)


def global_loss(target_embedding: Tensor, source_embedding: Tensor, direction: Tensor) -> Tensor:
    """1 − cos(normalize(e(G_t) − e(G_s)), direction), averaged over the batch; embeddings [B, E].

    A pair whose images still coincide (the first step of a generator without noise) has no
    direction yet: it scores 1, like an orthogonal one, with zero gradient instead of a 1/eps one.
    """
    assert target_embedding.shape == source_embedding.shape and target_embedding.ndim == 2
    diff = target_embedding - source_embedding  # [B, E]
    norm = diff.norm(dim=-1, keepdim=True)  # [B, 1]
    cosine = (diff / norm.clamp_min(_MIN_STEP)) @ direction.reshape(-1)  # [B]
    cosine = torch.where(norm.squeeze(-1) > _MIN_STEP, cosine, torch.zeros_like(cosine))
    return (1.0 - cosine).mean()


def local_loss(generated_tokens: Tensor, reference_tokens: Tensor) -> Tensor:
    """Relaxed earth mover's distance between unit token sets: generated [B, N, W], reference [1, M, W].

    Cost C = 1 − cosine; each token travels to its nearest token in the other set, and the larger of
    the two directed means is the bound on the EMD that is minimised.
    """
    assert generated_tokens.ndim == 3 and reference_tokens.ndim == 3
    cost = 1.0 - generated_tokens @ reference_tokens.transpose(1, 2)  # [B, N, M]
    generated_to_reference = cost.min(dim=2).values.mean(dim=1)  # [B]
    reference_to_generated = cost.min(dim=1).values.mean(dim=1)  # [B]
    return torch.maximum(generated_to_reference, reference_to_generated).mean()


def consistency_mask(source_window_mean: Tensor, target_window_mean: Tensor, alpha: float) -> Tensor:
    """1 on the `alpha` fraction of code dims whose mean moved least between domains (the shared attributes): [F]."""
    assert source_window_mean.shape == target_window_mean.shape and source_window_mean.ndim == 1
    shift = (target_window_mean - source_window_mean).abs()  # [F]
    keep = int(alpha * shift.numel())
    mask = torch.zeros_like(shift)
    mask[torch.topk(shift, keep, largest=False).indices] = 1.0
    return mask


def consistency_loss(target_codes: Tensor, source_codes: Tensor, mask: Tensor) -> Tensor:
    """L1 between masked flattened e4e codes [B, F], averaged over every dim (masked ones count as 0)."""
    assert target_codes.shape == source_codes.shape and target_codes.shape[1:] == mask.shape
    return (mask * (target_codes - source_codes)).abs().mean()


def consistency_ramp(iteration: int, window: int, iterations: int) -> float:
    """Upstream's ramp: off while the windows fill, then linear to 1 at the last iteration."""
    if iterations <= window:
        return 0.0
    return max(0.0, (iteration - window) / (iterations - window))


class CodeWindow:
    """Batch-mean e4e codes of the last `size` iterations, for source and target images."""

    def __init__(self, size: int):
        self.source: deque[Tensor] = deque(maxlen=size)
        self.target: deque[Tensor] = deque(maxlen=size)

    def push(self, source_codes: Tensor, target_codes: Tensor) -> None:
        self.source.append(source_codes.detach().mean(dim=0))  # [F]
        self.target.append(target_codes.detach().mean(dim=0))

    def mask(self, alpha: float) -> Tensor:
        return consistency_mask(torch.stack(list(self.source)).mean(0), torch.stack(list(self.target)).mean(0), alpha)

    def state(self) -> dict[str, Tensor]:
        return {"source": torch.stack(list(self.source)), "target": torch.stack(list(self.target))}

    def load(self, state: dict[str, Tensor]) -> None:
        self.source.clear()
        self.target.clear()
        self.source.extend(state["source"].unbind(0))
        self.target.extend(state["target"].unbind(0))


def encode_first_layers(encoder: Encoder, images: Tensor, keep: int) -> Tensor:
    """e4e codes of the first `keep` W+ layers, flattened: [B, keep·D]."""
    codes = encoder.encode(images)  # [B, n_latent, D]
    keep = min(keep, codes.shape[1])
    return codes[:, :keep].reshape(codes.shape[0], -1)  # [B, keep·D]
