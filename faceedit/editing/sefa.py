"""SeFa: closed-form, classifier-free directions from the generator's style-modulation weights."""

from __future__ import annotations

import torch
from torch import Tensor

from faceedit.editing.layers import LayerSpec, resolve_layers
from faceedit.errors import InvalidInputError
from faceedit.models.stylegan2 import Generator


def modulation_weights(generator: Generator, layers: list[int]) -> Tensor:
    """Stacked style affine weights [channels, D] of the convolutions that the W+ indices `layers` feed.

    W+ index 0 feeds conv1 and index l ≥ 1 feeds convs[l-1] (the synthesis order). ToRGB layers
    are left out, as in upstream SeFa, which factorises the convolution styles only.
    """
    blocks = []
    for index in layers:
        conv = generator.conv1 if index == 0 else (
            generator.convs[index - 1] if index - 1 < len(generator.convs) else None)
        if conv is not None:
            # The equalised-lr scale is one constant per layer: the row normalisation below removes it.
            blocks.append(conv.conv.modulation.weight)  # [in_ch, D]
    if not blocks:
        raise InvalidInputError("layers", f"W+ indices {layers} feed no convolution (only ToRGB); choose others")
    return torch.cat(blocks, dim=0)


def sefa_directions(generator: Generator, layers: LayerSpec = None, k: int | None = None) -> tuple[Tensor, Tensor]:
    """The top-`k` SeFa directions [k, D] (unit rows) and their eigenvalues [k], largest first.

    Each channel's weight row is normalised, then the eigenvectors of AᵀA (A = [channels, D])
    are the latent directions that change the selected layers' styles the most.
    """
    indices = resolve_layers(layers, generator.n_latent)
    with torch.no_grad():
        weight = modulation_weights(generator, indices).double()  # [C, D]
        weight = weight / weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
        eigenvalues, eigenvectors = torch.linalg.eigh(weight.t() @ weight)  # ascending, columns
    order = torch.argsort(eigenvalues, descending=True)
    k = generator.style_dim if k is None else k
    if not 1 <= k <= generator.style_dim:
        raise InvalidInputError("k", f"must be in [1, {generator.style_dim}], got {k}")
    directions = eigenvectors[:, order[:k]].t()  # [k, D]
    return directions.float(), eigenvalues[order[:k]].float()
