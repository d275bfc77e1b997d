"""Generators the editor serves: base generators (mapping and w_avg only) and adapted ones from the index."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from faceedit.errors import InvalidInputError, NotFoundError
from services.common import protocol
from services.common.errors import PreconditionError, redis_errors
from services.common.registry import GeneratorIndex, GeneratorRecord, check_id
from services.editor.values import ADAPTED, BASE, GeneratorSummary

if TYPE_CHECKING:
    from faceedit.models import Generator


@dataclass
class BaseGenerator:
    """What the editor keeps of a base generator: the mapping MLP and w_avg, not the synthesis net."""

    id: str
    mapping: torch.nn.Module  # z [B, D] → w [B, D]
    w_avg: torch.Tensor  # [D]
    size: int
    n_latent: int
    style_dim: int
    sha256: str = ""
    family: str = ""  # its latent space (encoder, boundaries); "" = its own id

    def __post_init__(self) -> None:
        self.family = self.family or self.id

    @classmethod
    def from_generator(cls, generator_id: str, generator: Generator, sha256: str = "",
                       family: str = "") -> BaseGenerator:
        generator.eval()
        w_avg = generator.w_avg.detach().clone()
        return cls(generator_id, generator.style, w_avg, generator.config.size, generator.n_latent,
                   generator.style_dim, sha256, family)

    @classmethod
    def load(cls, generator_id: str, path: str | Path, family: str = "") -> BaseGenerator:
        from faceedit.checkpoints import sha256_file
        from faceedit.models import load_generator

        return cls.from_generator(generator_id, load_generator(path), sha256_file(path), family)

    def latents_from_seeds(self, seeds: Sequence[int], psi: float) -> np.ndarray:
        """Seeds → W+ [B, n_latent, style_dim]: the same z per seed as faceedit.sampling."""
        from faceedit.sampling import z_from_seeds

        return self.latents_from_z(z_from_seeds(seeds, self.style_dim), psi)

    def latents_from_z(self, z: torch.Tensor, psi: float) -> np.ndarray:
        """z [B, D] → mapped, truncated, broadcast W+ [B, n_latent, style_dim]."""
        assert z.ndim == 2 and z.shape[1] == self.style_dim, z.shape
        with torch.inference_mode():
            w = self.mapping(z)  # [B, D]
            w = self.w_avg + psi * (w - self.w_avg)  # truncation towards the mean
        return w[:, None, :].expand(-1, self.n_latent, -1).numpy().astype(np.float32)  # [B, L, D]


@dataclass(frozen=True)
class ResolvedGenerator:
    id: str
    kind: str
    base: BaseGenerator  # its family's base: latent space, mapping, boundaries
    record: GeneratorRecord | None = None

    @property
    def family(self) -> str:
        return self.base.family


class GeneratorCatalog:
    """Base generators (every tenant) and adapted ones from the index (their tenant only)."""

    def __init__(self, bases: Mapping[str, BaseGenerator], default: str, index: GeneratorIndex | None):
        if not bases:
            raise InvalidInputError("generators", "no base generator configured")
        if default not in bases:
            raise InvalidInputError("default_generator", f"{default!r} is not among {sorted(bases)}")
        self.bases = dict(bases)
        self.default = default
        self.index = index

    def resolve(self, tenant: str, generator_id: str, field_name: str = "generator_id") -> ResolvedGenerator:
        generator_id = generator_id or self.default
        if generator_id in self.bases:
            return ResolvedGenerator(generator_id, BASE, self.bases[generator_id])
        if len(generator_id) > protocol.MAX_ID_LENGTH:
            raise InvalidInputError(field_name, f"longer than {protocol.MAX_ID_LENGTH} characters")
        if self.index is None:
            raise NotFoundError("generator", generator_id)
        check_id(generator_id, field_name)  # the index checks it too, but names it generator_id
        with redis_errors():
            record = self.index.get(generator_id, tenant)  # another tenant's id: NotFound, like a missing one
        base = self.bases.get(record.base_generator)
        if base is None:
            raise PreconditionError(f"generator {generator_id!r} was adapted from {record.base_generator!r}, "
                                    "which this editor does not serve")
        return ResolvedGenerator(generator_id, ADAPTED, base, record)

    def summaries(self, tenant: str) -> list[GeneratorSummary]:
        out = [summary_of(ResolvedGenerator(b.id, BASE, b)) for b in self.bases.values()]
        if self.index is not None:
            with redis_errors():
                records = self.index.list(tenant)
            for record in records:
                base = self.bases.get(record.base_generator)
                if base is not None:
                    out.append(summary_of(ResolvedGenerator(record.id, ADAPTED, base, record)))
        return out


def summary_of(g: ResolvedGenerator) -> GeneratorSummary:
    return GeneratorSummary(g.id, g.kind, g.family, g.base.size, g.base.n_latent, g.base.style_dim,
                            display_name=g.id if g.record is None else (g.record.display_name or g.id),
                            created=0.0 if g.record is None else g.record.created)
