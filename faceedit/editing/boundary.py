"""InterfaceGAN boundary training: sample and score latents in bounded memory, fit a linear SVM on the extremes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from faceedit.editing.directions import (
    check_generator_match,
    load_boundary_file,
    save_boundary,
)
from faceedit.errors import CheckpointFormatError, InvalidInputError
from faceedit.models.stylegan2 import Generator

# images [B, 3, H, W] in [-1, 1] → {attribute: scores [B]} (Scorer.score fits) or one score tensor [B].
ScoreFn = Callable[[Tensor], Mapping[str, Tensor] | Tensor]
SINGLE = "score"  # the name given to a score function's output when it returns one tensor
MAX_SAMPLES = 1_000_000
# Synthesis batch on CPU: at 64 px a batch of 64 makes activations of ~64 MB, which glibc serves
# with fresh mmaps each time (a third of the run went to page faults); 16 stays in the heap and
# measured 40% faster per sample, single-threaded, than 64.
DEFAULT_BATCH = 16
_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclass
class Boundary:
    """A trained hyperplane: unit `normal` [D], signed distance w·normal + offset, and how well it separates."""

    normal: Tensor
    offset: float
    accuracy: float  # on the held-out validation part of the extremes
    remaining_accuracy: float | None  # on the samples between the extremes, labelled by score
    metadata: dict[str, Any] = field(default_factory=dict)

    def distance(self, w: Tensor) -> Tensor:
        """Signed distance(s) of w [..., D] to the hyperplane."""
        return w @ self.normal.to(w) + self.offset

    @property
    def strength_range(self) -> tuple[float, float]:
        """The recommended (low < 0 < high) strengths that `train_boundary` recorded."""
        value = self.metadata.get("recommended_strength")
        try:
            low, high = (float(x) for x in value)
        except (TypeError, ValueError):
            raise InvalidInputError("recommended_strength",
                                    f"missing or malformed in the metadata: {value!r}") from None
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise InvalidInputError("recommended_strength", f"needs finite low < high, got {value!r}")
        return low, high

    def save(self, path: str | Path, **info: Any) -> str:
        """Our format: normal in safetensors, everything else in the JSON sidecar; returns the sha256.
        `info` adds fields such as attribute, generator_sha256, space and layers."""
        self.metadata.update(info)
        return save_boundary(path, self.normal, {**self.metadata, "offset": self.offset, "accuracy": self.accuracy})

    @classmethod
    def load(cls, path: str | Path) -> Boundary:
        normal, metadata = load_boundary_file(path)
        if normal.ndim != 1 or "offset" not in metadata or "accuracy" not in metadata:
            raise CheckpointFormatError(path, "not a trained boundary: needs a [D] normal and offset/accuracy metadata")
        return cls(normal=normal, offset=float(metadata["offset"]), accuracy=float(metadata["accuracy"]),
                   remaining_accuracy=metadata.get("remaining_accuracy"), metadata=metadata)


@dataclass
class Samples:
    """What boundary training keeps of a sampling run: w's [N, D] and score columns [N] (no images)."""

    latents: Tensor
    scores: dict[str, Tensor]
    truncation: float
    seed: int


def check_count(value: Any, name: str, low: int, high: int) -> int:
    """An integer argument in [low, high] (bools refused), or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise InvalidInputError(name, f"must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def sample_scores(generator: Generator, score_fn: ScoreFn, n: int, batch_size: int = DEFAULT_BATCH, seed: int = 0,
                  truncation: float = 1.0, attributes: list[str] | None = None, progress: bool = False) -> Samples:
    """Draw n z's, map to w (truncated), synthesise and score in batches; keep only w and the scores.

    Memory is N·(D + n_attributes) floats whatever N is: 100k samples of a 512-d W take ~210 MB.
    """
    n = check_count(n, "n", 2, MAX_SAMPLES)
    batch_size = check_count(batch_size, "batch_size", 1, 4096)
    if not 0.0 < truncation <= 1.0:
        raise InvalidInputError("truncation", f"must be in (0, 1], got {truncation}")
    rng = torch.Generator().manual_seed(int(seed))
    latents = torch.empty(n, generator.style_dim)  # [N, D]
    columns: dict[str, Tensor] = {}
    with torch.inference_mode():
        for start in tqdm(range(0, n, batch_size), disable=not progress, desc="sampling boundary data", unit="batch"):
            stop = min(n, start + batch_size)
            z = torch.randn(stop - start, generator.style_dim, generator=rng)
            w = generator.truncate(generator.mapping(z), truncation)  # [b, D]
            images = generator.synthesis(generator.broadcast(w))  # [b, 3, H, W]
            out = score_fn(images)
            scored = {SINGLE: out} if isinstance(out, Tensor) else dict(out)
            if attributes is not None:
                unknown = sorted(set(attributes) - set(scored))
                if unknown:
                    raise InvalidInputError("attributes",
                                            f"the scorer does not know {unknown}; it scores {sorted(scored)}")
                scored = {a: scored[a] for a in attributes}
            latents[start:stop] = w
            for name, value in scored.items():
                if value.ndim != 1 or value.shape[0] != stop - start:
                    continue  # per-sample vectors (e.g. style_probs) are not boundary targets
                columns.setdefault(name, torch.empty(n))[start:stop] = value.float()
    return Samples(latents=latents, scores=columns, truncation=float(truncation), seed=int(seed))


def check_selection(n: int, ratio: float, split: float) -> tuple[int, int]:
    """(samples per class, training samples per class) for N samples, or an error naming the field.

    Upstream's rule: a ratio in (0, 1] is a fraction of N, a larger number is a count; never over
    N/2. Callers that sample first (the CLI) check this before spending minutes on sampling.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not np.isfinite(ratio) or ratio <= 0:
        raise InvalidInputError("ratio", f"must be a positive fraction or count, got {ratio!r}")
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0.0 < split < 1.0:
        raise InvalidInputError("split", f"must be in (0, 1), got {split!r}")
    chosen = min(int(n * ratio) if ratio <= 1 else int(ratio), n // 2)
    n_train = int(chosen * split)
    if n_train < 1 or chosen - n_train < 1:
        raise InvalidInputError("ratio", f"selects {chosen} samples per class out of {n}; with split {split} "
                                         "that leaves no training or no validation sample: raise N or ratio")
    return chosen, n_train


def train_boundary(latents: Tensor, scores: Tensor, ratio: float = 0.02, split: float = 0.7,
                   seed: int = 0) -> Boundary:
    """Fit a linear SVM separating the top from the bottom `ratio` of samples by score.

    As upstream: sort by score, take the top and bottom chosen_num, shuffle and split each
    `split` : 1-split into train and validation, fit SVC(kernel="linear") and keep the unit normal.
    Adds: the normalised intercept (offset), accuracy on the middle samples, the score and
    distance distributions and a recommended strength range (see `_recommended`).
    """
    from sklearn.svm import SVC

    latents, scores = _check_training_data(latents, scores)
    n = latents.shape[0]
    chosen, n_train = check_selection(n, ratio, split)
    order = np.argsort(-scores, kind="stable")
    top, bottom = order[:chosen], order[n - chosen:]
    if scores[top].min() <= scores[bottom].max():
        if scores.max() == scores.min():
            raise InvalidInputError("scores", f"all {n} scores are equal ({scores[0]:g}): nothing to separate")
        raise InvalidInputError("scores", f"the top and bottom {chosen} scores overlap (ties at "
                                          f"{scores[top].min():g}); the attribute barely varies in this sample: "
                                          "lower ratio or raise N")
    rng = np.random.default_rng(seed)
    top, bottom = rng.permutation(top), rng.permutation(bottom)
    train_idx = np.concatenate([top[:n_train], bottom[:n_train]])
    val_idx = np.concatenate([top[n_train:], bottom[n_train:]])
    labels = np.zeros(n, dtype=np.int64)
    labels[top] = 1
    classifier = SVC(kernel="linear")
    classifier.fit(latents[train_idx].astype(np.float64), labels[train_idx])
    coef = classifier.coef_.reshape(-1).astype(np.float64)  # [D]
    norm = np.linalg.norm(coef)
    if not norm > 0:
        raise InvalidInputError("latents", "the SVM found no separating direction (zero normal)")
    normal = coef / norm
    offset = float(classifier.intercept_[0] / norm)
    # Signed distances of every sample in one float32 pass; SVC.predict would copy N rows to float64.
    distances = (latents @ normal.astype(np.float32)).astype(np.float64) + offset  # [N]
    predicted = distances > 0  # SVC's binary rule: class 1 where the decision function is positive
    accuracy = float((predicted[val_idx] == labels[val_idx]).mean())

    middle = order[chosen:n - chosen]
    remaining_accuracy = None
    if len(middle):
        # Upstream labels the middle by the midpoint of the extreme scores.
        threshold = (scores[order[0]] + scores[order[-1]]) / 2
        remaining_accuracy = float((predicted[middle] == (scores[middle] >= threshold)).mean())
    metadata = {
        "n_samples": n, "ratio": ratio, "split": split, "chosen_per_class": chosen, "seed": seed,
        "validation_accuracy": accuracy, "remaining_accuracy": remaining_accuracy,
        "score_distribution": _distribution(scores),
        "score_thresholds": {"top_min": float(scores[top].min()), "bottom_max": float(scores[bottom].max())},
        "distance_distribution": _distribution(distances),
        "distance_range": [float(np.quantile(distances, 0.005)), float(np.quantile(distances, 0.995))],
        "recommended_strength": _recommended(distances),
    }
    return Boundary(normal=torch.from_numpy(normal).float(), offset=offset, accuracy=accuracy,
                    remaining_accuracy=remaining_accuracy, metadata=metadata)


def _check_training_data(latents: Tensor, scores: Tensor) -> tuple[np.ndarray, np.ndarray]:
    latents = latents.detach().cpu().numpy() if isinstance(latents, Tensor) else np.asarray(latents)
    scores = scores.detach().cpu().numpy() if isinstance(scores, Tensor) else np.asarray(scores)
    if latents.ndim != 2 or latents.shape[0] < 4 or latents.shape[1] < 1:
        raise InvalidInputError("latents", f"expected [N, D] with N >= 4, got {list(latents.shape)}")
    if not np.issubdtype(latents.dtype, np.floating):
        raise InvalidInputError("latents", f"expected floating-point values, got {latents.dtype}")
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]  # upstream's [N, 1] score files
    if scores.shape != (latents.shape[0],):
        raise InvalidInputError("scores", f"expected [{latents.shape[0]}] (one per latent), got {list(scores.shape)}")
    if not np.all(np.isfinite(latents)):
        raise InvalidInputError("latents", "contains NaN or infinite values")
    if not np.all(np.isfinite(scores)):
        raise InvalidInputError("scores", "contains NaN or infinite values")
    # The full matrix stays float32 (100k x 512 is 200 MB); only the SVM's subset is widened.
    return latents.astype(np.float32, copy=False), scores.astype(np.float64)


def _distribution(values: np.ndarray) -> dict[str, Any]:
    return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max()),
            "quantiles": {f"{q:g}": float(np.quantile(values, q)) for q in _QUANTILES}}


def _recommended(distances: np.ndarray) -> list[float]:
    """Strengths that take a median sample to the 1st and 99th percentile of the population along
    the normal: edits inside this range stay where the generator has seen data."""
    q01, q50, q99 = np.quantile(distances, [0.01, 0.5, 0.99])
    return [float(q01 - q50), float(q99 - q50)]


def train_boundaries(samples: Samples, attributes: list[str], out_dir: str | Path, generator_sha256: str,
                     ratio: float = 0.02, split: float = 0.7, layers: list[int] | None = None,
                     info: Mapping[str, Any] | None = None, progress: bool = False
                     ) -> tuple[dict[str, Boundary], dict[str, InvalidInputError]]:
    """One boundary per attribute from a sampling run, saved as `out_dir/<attribute>.safetensors` + JSON.

    The normal lives in W; `layers` (None = all) records which W+ rows an edit should touch.
    Returns (trained, failed): an attribute whose scores cannot be separated (e.g. it does not
    vary in this generator) is reported in `failed` instead of discarding the others' sampling.
    """
    missing = [a for a in attributes if a not in samples.scores]
    if missing:
        raise InvalidInputError("attributes", f"no scores for {missing}; sampled {sorted(samples.scores)}")
    out_dir = Path(out_dir)
    trained: dict[str, Boundary] = {}
    failed: dict[str, InvalidInputError] = {}
    for attribute in tqdm(attributes, disable=not progress, desc="fitting SVMs", unit="attribute"):
        try:
            boundary = train_boundary(samples.latents, samples.scores[attribute], ratio=ratio, split=split,
                                      seed=samples.seed)
        except InvalidInputError as exc:
            failed[attribute] = exc
            continue
        boundary.save(out_dir / f"{attribute}.safetensors", attribute=attribute, generator_sha256=generator_sha256,
                      space="W" if layers is None else "W+", layers=layers, truncation=samples.truncation,
                      **dict(info or {}))
        trained[attribute] = boundary
    return trained, failed


def load_boundaries(paths: Mapping[str, str | Path], generator_sha256: str = "") -> dict[str, Boundary]:
    """Boundaries by attribute from files, refusing any trained for another generator (when a sha256 is given)."""
    loaded = {}
    for attribute, path in paths.items():
        boundary = Boundary.load(path)
        check_generator_match(boundary.metadata, generator_sha256, field=f"boundaries[{attribute}]")
        loaded[attribute] = boundary
    return loaded

