"""The demo CLIP's training faces: rendered sets held as bytes, attribute-contrast pairs, and the rows of a batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from faceedit.synth import ATTRIBUTE_NAMES, STYLES, render_faces, render_from_attributes, sample_attributes
from faceedit.training.captions import CONTRASTS, fact_table

# The contrast pairs' people come from seeds of their own.
CONTRAST_SEED_OFFSET = 500_009


@dataclass
class FaceSet:
    """Rendered faces (uint8, to keep thousands in memory), their attributes, styles and caption facts."""

    images: Tensor  # [N, 3, S, S] uint8
    attrs: dict[str, np.ndarray]  # name → [N]
    styles: list[str]
    facts: np.ndarray  # [N, N_FACTS] bool: what a caption may truly say of each face

    def floats(self, index: Tensor) -> Tensor:
        return self.images[index].float() / 127.5 - 1.0  # [b, 3, S, S] in [-1, 1]


    def __add__(self, other: FaceSet) -> FaceSet:
        attrs = {name: np.concatenate([self.attrs[name], other.attrs[name]]) for name in self.attrs}
        return FaceSet(torch.cat([self.images, other.images]), attrs, self.styles + other.styles,
                       np.concatenate([self.facts, other.facts]))


def _as_bytes(images: Tensor) -> Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [n, 3, S, S]


def _face_set(images: list[Tensor], columns: list[dict[str, np.ndarray]], styles: list[str]) -> FaceSet:
    attrs = {name: np.concatenate([c[name] for c in columns]).astype(np.float64) for name in ATTRIBUTE_NAMES}
    return FaceSet(torch.cat(images), attrs, styles, fact_table(attrs, styles))


def render_set(faces_per_style: int, seed: int, size: int) -> FaceSet:
    """The same `faces_per_style` faces in every style, style by style: row k * faces_per_style + i is face i
    in STYLES[k], so a batch can hold one face in two styles (see style_pairs)."""
    images, columns, styles = [], [], []
    for style in STYLES:
        batch, batch_attrs = render_faces(faces_per_style, seed=seed, size=size, style=style)
        images.append(_as_bytes(batch))
        columns.append({name: value.numpy() for name, value in batch_attrs.items()})
        styles += [style] * faces_per_style
    return _face_set(images, columns, styles)


def render_contrast_set(pairs_per_style: int, seed: int, size: int) -> FaceSet:
    """Pairs of one person differing in one attribute (captions.CONTRASTS, drawn at random per pair), in every
    style: rows 2p and 2p + 1 of style k's block of 2 * pairs_per_style rows are pair p at its two values."""
    rng = np.random.default_rng([seed, CONTRAST_SEED_OFFSET])
    drawn = sample_attributes(pairs_per_style, seed)
    contrast = rng.integers(len(CONTRASTS), size=pairs_per_style)
    both = {name: np.repeat(value.astype(np.float64), 2) for name, value in drawn.items()}  # [2 * pairs]
    for p, k in enumerate(contrast):
        name, first, second = CONTRASTS[k]
        both[name][2 * p], both[name][2 * p + 1] = first, second
    people = np.repeat(np.arange(pairs_per_style), 2)
    images, styles = [], []
    for style in STYLES:
        images.append(_as_bytes(render_from_attributes(both, size=size, style=style, seed=seed, identities=people)))
        styles += [style] * (2 * pairs_per_style)
    return _face_set(images, [both] * len(STYLES), styles)


def style_pairs(faces_per_style: int, batch_size: int, rng: torch.Generator) -> Tensor:
    """Rows of a batch [batch_size]: random faces, each beside the same face in another style.

    Within a pair only the style differs, so the captions' style phrases are all that tells them
    apart: the embedding has to separate sketch from watercolor, not just either from photo
    (DIFA reads a style as a direction in it).
    """
    half = batch_size // 2
    n_styles = len(STYLES)
    face = torch.randint(faces_per_style, (batch_size - half,), generator=rng)
    style = torch.randint(n_styles, (batch_size - half,), generator=rng)
    other = (style + torch.randint(1, n_styles, (batch_size - half,), generator=rng)) % n_styles
    rows = torch.cat([style * faces_per_style + face, (other * faces_per_style + face)[:half]])
    assert rows.shape == (batch_size,), rows.shape
    return rows


def training_batch(faces_per_style: int, contrast_pairs_per_style: int, batch_size: int, contrast_fraction: float,
                   rng: torch.Generator) -> tuple[Tensor, Tensor]:
    """Rows of one batch of `render_set(faces_per_style) + render_contrast_set(contrast_pairs_per_style)` and
    each row's partner in it [batch_size]: style pairs (see style_pairs), then `contrast_fraction` of the batch
    as attribute-contrast pairs, each beside its partner. An unpaired row is its own partner."""
    n_pairs = int(batch_size * contrast_fraction) // 2
    n_style = batch_size - 2 * n_pairs
    rows = style_pairs(faces_per_style, n_style, rng)
    half, lead = n_style // 2, n_style - n_style // 2  # style_pairs: rows lead + i pair with rows i < half
    partner = torch.arange(batch_size)
    partner[:half] += lead
    partner[lead:n_style] -= lead
    if n_pairs == 0:
        return rows, partner
    pair = torch.randint(len(STYLES) * contrast_pairs_per_style, (n_pairs,), generator=rng)
    first = len(STYLES) * faces_per_style + 2 * pair  # a contrast pair's rows follow the style set's
    rows = torch.cat([rows, torch.stack([first, first + 1], dim=1).reshape(-1)])
    partner[n_style::2] += 1
    partner[n_style + 1::2] -= 1
    assert rows.shape == partner.shape == (batch_size,), (rows.shape, partner.shape)
    return rows, partner
