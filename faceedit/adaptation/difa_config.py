"""DifaConfig: every setting of a DIFA run, with upstream's defaults, checked where it is built."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from faceedit.adaptation.clip import ClipConfig
from faceedit.errors import InvalidInputError


@dataclass(frozen=True)
class DifaConfig:
    """Every DIFA setting; defaults are upstream's (DiFa README, built on StyleGAN-NADA)."""

    iterations: int = 301
    batch_size: int = 2
    # Upstream passes lr 0.002 and Adam applies StyleGAN2's g_reg_ratio 4/5 to lr and beta2.
    lr: float = 0.002 * 4 / 5
    betas: tuple[float, float] = (0.0, 0.99 ** (4 / 5))
    # Upstream's pair: OpenAI ViT-B/32 and ViT-B/16, each weighted 1 (weights are mounted locally).
    clips: tuple[ClipConfig, ...] = (ClipConfig("ViT-B-32-quickgelu"), ClipConfig("ViT-B-16-quickgelu"))
    clip_weights: tuple[float, ...] | None = None  # one per CLIP model; None weighs each 1.0
    lambda_global: float = 1.0
    lambda_local: float = 1.0  # README; scripts/train.sh uses 1.5
    clip_layer: int = 3  # block whose tokens the local loss compares (the 4th)
    consistency_weight: float = 6.0  # psp_model_weight (6 or 7 in upstream's examples)
    num_keep_first: int = 7  # W+ layers the consistency loss looks at
    psp_alpha: float = 0.6  # fraction of code dims kept (most stable); train.sh: 0.8
    sliding_window: int = 50  # iterations of batch-mean codes; train.sh: 30
    clip_mean_samples: int = 512  # source samples behind the mean source CLIP embedding
    clip_mean_batch: int = 16
    truncation: float = 1.0  # upstream trains untruncated
    seed: int = 2
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "clip_mean_samples", "clip_mean_batch", "checkpoint_every",
                     "sliding_window", "num_keep_first"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(name, f"must be a positive integer, got {value!r}")
        if not 0.0 < self.psp_alpha <= 1.0:
            raise InvalidInputError("psp_alpha", f"must be in (0, 1], got {self.psp_alpha}")
        if self.lr <= 0:
            raise InvalidInputError("lr", f"must be positive, got {self.lr}")
        if self.clip_weights is not None and len(self.clip_weights) != len(self.clips):
            raise InvalidInputError("clip_weights",
                                    f"{len(self.clip_weights)} weights for {len(self.clips)} CLIP models")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["clips"] = [c.to_dict() for c in self.clips]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DifaConfig:
        """The inverse of `to_dict` (e.g. job parameters); unknown keys are refused by name."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise InvalidInputError(sorted(unknown)[0], "unknown DIFA setting")
        values = dict(data)
        if "clips" in values:
            values["clips"] = tuple(ClipConfig.from_dict(c) for c in values["clips"])
        for name in ("betas", "clip_weights"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def weights_for(self, n_clips: int) -> tuple[float, ...]:
        if self.clip_weights is None:
            return (1.0,) * n_clips
        if len(self.clip_weights) != n_clips:
            raise InvalidInputError("clip_weights", f"{len(self.clip_weights)} weights for {n_clips} CLIP models")
        return tuple(self.clip_weights)
