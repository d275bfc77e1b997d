"""How DIFA's judge sees a style: how far a CLIP separates rendered faces of one style from the same faces as
photos, in its global embedding and at the token block DIFA's local loss reads, and how far an adapted
generator's samples moved along that separation."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from faceedit.adaptation.clip import ClipModel
from faceedit.synth import render_faces


@dataclass(frozen=True)
class StyleAxis:
    """Photo → style as one CLIP sees it, in one feature space (global embedding or pooled block tokens).

    `direction` is the unit difference of the two classes' means; `separation` is the gap between the
    classes' mean projections on it in pooled standard deviations (d′: above ~2 a threshold on it tells the
    style from the photo for most faces; near 0 the CLIP does not see the style); `gap` is that gap itself,
    the distance a photo-like sample has to travel to look like the style to this CLIP."""

    direction: Tensor  # [E] unit
    photo_mean: float
    style_mean: float
    separation: float

    @property
    def gap(self) -> float:
        return self.style_mean - self.photo_mean

    def progress(self, before: Tensor, after: Tensor) -> float:
        """Fraction of the gap the features [N, E] of the same faces crossed from `before` to `after`
        (0: no move towards the style, 1: as far as the rendered style is)."""
        moved = (F.normalize(after, dim=1) - F.normalize(before, dim=1)) @ self.direction  # [N]
        return float(moved.mean() / self.gap) if abs(self.gap) > 1e-9 else float("nan")  # no gap: nothing to cross


@dataclass(frozen=True)
class StyleJudgement:
    """One CLIP's view of one style: its axis globally and in `block`'s tokens, and its separation in the
    tokens of every block (where in the CLIP the style becomes visible, for choosing DIFA's `clip_layer`)."""

    style: str
    global_axis: StyleAxis
    token_axis: StyleAxis
    block: int
    separation_by_block: tuple[float, ...]


def _axis(photo: Tensor, styled: Tensor) -> StyleAxis:
    photo, styled = F.normalize(photo, dim=1), F.normalize(styled, dim=1)  # [N, E] each
    direction = F.normalize(styled.mean(0) - photo.mean(0), dim=0)  # [E]
    p, s = photo @ direction, styled @ direction  # [N] each
    pooled = torch.sqrt((p.var() + s.var()) / 2).clamp_min(1e-8)
    return StyleAxis(direction, float(p.mean()), float(s.mean()), float((s.mean() - p.mean()) / pooled))


@torch.no_grad()
def clip_views(clip: ClipModel, images: Tensor, block: int, batch: int = 32) -> tuple[Tensor, Tensor]:
    """Images [N, 3, H, W] in [-1, 1] → (global embeddings [N, E], block tokens mean-pooled [N, W])."""
    embeddings, tokens = [], []
    for chunk in images.split(batch):
        emb, tok = clip.features(chunk, block)  # [b, E], [b, T, W]
        embeddings.append(emb)
        tokens.append(tok.mean(1))
    return torch.cat(embeddings), torch.cat(tokens)


@torch.no_grad()
def judge_style(clip: ClipModel, style: str, block: int, n: int = 64, seed: int = 1, size: int = 64
                ) -> StyleJudgement:
    """`n` rendered faces as photos and the same faces in `style`, seen by `clip` (faces other than the
    evaluation's reference artwork, so the axis is the style's, not that one face's), in every block."""
    photos, _ = render_faces(n, seed=seed, size=size, style="photo")
    styled, _ = render_faces(n, seed=seed, size=size, style=style)
    assert photos.shape == styled.shape == (n, 3, size, size), (photos.shape, styled.shape)
    views = [(clip_views(clip, photos, b), clip_views(clip, styled, b)) for b in range(clip.n_blocks)]
    (photo_global, photo_tokens), (style_global, style_tokens) = views[block]
    by_block = tuple(_axis(photo[1], styled_[1]).separation for photo, styled_ in views)
    return StyleJudgement(style, _axis(photo_global, style_global), _axis(photo_tokens, style_tokens), block,
                          by_block)


def alignment(judgement: StyleJudgement, difa_direction: Tensor) -> float:
    """Cosine between DIFA's global target direction (the artwork's embedding minus the source mean, [E])
    and the style's axis: near 1 when the one artwork stands for its style, lower when its own face
    (identity, pose, expression) is most of what DIFA is asked to move towards."""
    return float(F.normalize(difa_direction, dim=0) @ judgement.global_axis.direction)
