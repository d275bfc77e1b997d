"""Demo CLIP for the zoo: contrastive training on rendered faces captioned from their ground truth,
zero-shot evaluation, export."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceedit import artifacts
from faceedit.adaptation.clip import ClipModel, build_clip_module, wrap_clip
from faceedit.editing.text import text_embedding
from faceedit.editing.text_quality import PROMPTS, TextPrompt
from faceedit.errors import InvalidInputError
from faceedit.synth import ATTRIBUTES, STYLES
from faceedit.training.captions import STYLE_PHRASES, caption_matches, sample_captions
from faceedit.training.cards import provenance, write_card
from faceedit.training.clip_data import (
    CONTRAST_SEED_OFFSET,
    FaceSet,
    render_contrast_set,
    render_set,
    training_batch,
)

# Small enough for CPU (≈3.9 M parameters, ≈16 MB fp32) yet a real ViT: 8x8 patch tokens (B/32 has
# 7x7) and five blocks, so DIFA's local loss can read block 3. Most of the size is the 49,408-token
# BPE embedding at width 64; the image tower's cost is tokens x width² x blocks, kept CPU-sized.
# `faceedit train clip --conv-stem` swaps its linear patch embedding for adaptation.clip.ConvStem (the
# README says what that measured).
DEMO_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 96, "layers": 5, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
# Held-out faces come from seeds far from any training seed.
EVAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class ClipTrainConfig:
    """How `faceedit train clip` trains the demo CLIP.

    The defaults fit a 15-minute budget on 2 CPU cores. Measured on this machine's CPU (one torch
    thread, DEMO_CLIP_CONFIG): 8.6 ms per rendered 64 px face and 0.62 s per training step at batch
    128, so ≈100 s of rendering + 1200 steps (≤ 750 s; two threads are faster) + ≈20 s of evaluation.
    The contrast pairs, the pair loss and the fact probe are off by default: measured with a conv stem in
    a 28-minute run, they made glasses and head turns directions of the embedding but cost DIFA its
    watercolor and text edits their watercolor (README, "Demo CLIP").
    """

    faces_per_style: int = 3000
    # People rendered twice per style, differing in one attribute (captions.CONTRASTS), and the share of
    # each batch made of such pairs; the rest pairs a face with itself in another style.
    contrast_faces_per_style: int = 1500
    contrast_fraction: float = 0.0
    pair_weight: float = 0.0  # weight of the loss within each pair (see contrastive_loss)
    # Weight of a linear probe that reads every caption fact off the image embedding (see fact_probe_loss).
    fact_weight: float = 0.0
    steps: int = 1200
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 60
    eval_faces_per_style: int = 200
    size: int = 64
    seed: int = 0
    caption_keep: float = 0.5  # chance that a training caption states each true fact (see captions.py)
    # Wall-clock limit for the whole run (rendering, training, evaluation). A run measured to be too
    # slow for it shortens its schedule (see fit_steps) so it still ends annealed; None: no limit.
    time_budget_s: float | None = 15 * 60
    model_cfg: dict[str, Any] = field(default_factory=lambda: DEMO_CLIP_CONFIG)

    def __post_init__(self) -> None:
        for name in ("faces_per_style", "contrast_faces_per_style", "steps", "batch_size", "eval_faces_per_style"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(name, f"must be a positive integer, got {value!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise InvalidInputError("warmup_steps", f"must be an integer >= 0, got {self.warmup_steps!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InvalidInputError("lr", f"must be a positive number, got {self.lr!r}")
        if self.time_budget_s is not None and not (isinstance(self.time_budget_s, (int, float))
                                                   and math.isfinite(self.time_budget_s) and self.time_budget_s > 0):
            raise InvalidInputError("time_budget_s", f"must be a positive number of seconds or None, "
                                                     f"got {self.time_budget_s!r}")
        if not (isinstance(self.contrast_fraction, (int, float)) and 0.0 <= self.contrast_fraction < 1.0):
            raise InvalidInputError("contrast_fraction",
                                    f"must be a fraction in [0, 1), got {self.contrast_fraction!r}")
        if not (isinstance(self.caption_keep, (int, float)) and 0.0 < self.caption_keep <= 1.0):
            raise InvalidInputError("caption_keep", f"must be a probability in (0, 1], got {self.caption_keep!r}")
        if self.size != self.model_cfg["vision_cfg"]["image_size"]:
            raise InvalidInputError("size", f"renders at {self.size} px but the model takes "
                                            f"{self.model_cfg['vision_cfg']['image_size']} px")


def contrastive_loss(image_emb: Tensor, text_emb: Tensor, logit_scale: Tensor, true_of: Tensor,
                     partner: Tensor | None = None, pair_weight: float = 0.0) -> Tensor:
    """Symmetric InfoNCE over a batch of unit embeddings [B, E]; true_of[i, j] (image i, caption j) marks
    captions that are also true of another face, which are no negatives for it.

    With `partner` [B] (each row's pair in the batch) and `pair_weight` > 0, plus that weight times the same
    loss within each pair alone: in a batch of 128 a pair's one hard negative is drowned by the 126 faces that
    differ in identity and style, and the embedding never needs to see a smile to tell the batch apart.
    """
    logits = logit_scale.exp().clamp(max=100) * image_emb @ text_emb.t()  # [B, B]
    # A short caption fits many faces; treating such a pair as a negative would punish a correct match.
    not_negative = true_of & ~torch.eye(len(logits), dtype=torch.bool)
    masked = logits.masked_fill(not_negative, float("-inf"))
    target = torch.arange(len(logits))
    loss = (F.cross_entropy(masked, target) + F.cross_entropy(masked.t(), target)) / 2
    if partner is None or pair_weight == 0:
        return loss
    rows = torch.arange(len(logits))
    own, paired = logits[rows, rows], partner != rows  # [B]
    # The partner's image against this caption, and this image against the partner's caption: 2-way cross-entropy.
    hard_terms = torch.cat([F.softplus(logits[partner, rows] - own)[paired & ~not_negative[partner, rows]],
                            F.softplus(logits[rows, partner] - own)[paired & ~not_negative[rows, partner]]])
    if len(hard_terms):
        loss = loss + pair_weight * hard_terms.mean()
    return loss


# Unit embeddings give a linear probe logits in [-|w|, |w|]; the scale lets it reach confident ones early.
PROBE_SCALE = 10.0


def fact_probe_loss(probe: nn.Linear, image_emb: Tensor, facts: np.ndarray) -> Tensor:
    """Binary cross-entropy of a linear probe predicting each face's facts [B, N_FACTS] from its embedding.

    Contrastive learning from scratch on 12,000 renders learns what tells most faces apart (style, age, hair)
    long before a smile or glasses; the probe asks for every fact to be a direction of the embedding from
    the start, which the text tower then aligns its words with. The probe is not exported.
    """
    logits = probe(PROBE_SCALE * image_emb)  # [B, N_FACTS]
    return F.binary_cross_entropy_with_logits(logits, torch.from_numpy(facts).float())


def _prompt_embedding(clip: ClipModel, template: str) -> Tensor:
    """A prompt ensembled over the four style phrases: [E]."""
    emb = clip.encode_text([template.format(style=STYLE_PHRASES[s]) for s in STYLES]).mean(0)
    return F.normalize(emb, dim=0)


def zero_shot_tasks(faces: FaceSet) -> dict[str, tuple[list[str], np.ndarray]]:
    """Each task: its class prompts and the true class per face (−1 where the ground truth is ambiguous)."""
    a = faces.attrs
    n = len(faces.styles)
    style_of = np.array(faces.styles)

    def classes(conditions: list[np.ndarray]) -> np.ndarray:
        label = np.full(n, -1)
        for k, cond in enumerate(conditions):
            label[cond] = k
        return label

    return {
        "style": ([STYLE_PHRASES[s] + " a face" for s in STYLES],
                  np.array([STYLES.index(s) for s in faces.styles])),
        "smile": (["{style} a smiling person", "{style} a serious person"],
                  classes([a["smile"] > 0.6, a["smile"] < 0.25])),
        "age": (["{style} a young person", "{style} an old person"], classes([a["age"] < 0.33, a["age"] > 0.66])),
        "glasses": (["{style} a person with glasses", "{style} a person"],
                    classes([a["glasses"] >= 0.5, a["glasses"] < 0.5])),
        "gender": (["{style} a woman", "{style} a man"], classes([a["gender"] < 0.35, a["gender"] > 0.65])),
        "anger": (["{style} an angry person", "{style} a person"], classes([a["anger"] > 0.5, a["anger"] < 0.1])),
        "crying": (["{style} a crying person", "{style} a person"],
                   classes([a["crying"] > 0.5, a["crying"] < 0.1])),
        "head_pose": (["{style} a person, head turned left", "{style} a person", "{style} a person, head turned right"],
                      classes([a["yaw"] < -0.4, np.abs(a["yaw"]) < 0.2, a["yaw"] > 0.4])),
        # DIFA's global loss is a CLIP direction from photos to one artistic style: each pair must separate.
        **{f"photo_vs_{style}": ([STYLE_PHRASES["photo"] + " a face", STYLE_PHRASES[style] + " a face"],
                                 classes([style_of == "photo", style_of == style]))
           for style in STYLES if style != "photo"},
        # ... and from each other: a sketch direction that is also a watercolor one adapts to the wrong style.
        **{f"{a}_vs_{b}": ([STYLE_PHRASES[a] + " a face", STYLE_PHRASES[b] + " a face"],
                           classes([style_of == a, style_of == b]))
           for i, a in enumerate(STYLES[1:]) for b in STYLES[i + 2:]},
    }


def _embed_faces(clip: ClipModel, faces: FaceSet, batch: int) -> Tensor:
    """Image embeddings of every face, `batch` at a time: [N, E]."""
    n = len(faces.styles)
    return torch.cat([clip.encode_image(faces.floats(torch.arange(i, min(i + batch, n)))) for i in range(0, n, batch)])


@torch.no_grad()
def zero_shot_accuracy(clip: ClipModel, faces: FaceSet, batch: int = 256) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy per task on `faces` (and its chance level), choosing the nearest class prompt."""
    was_training = clip.training
    clip.eval()
    embeddings = _embed_faces(clip, faces, batch)  # [N, E]
    results = {}
    for task, (prompts, labels) in zero_shot_tasks(faces).items():
        if "{style}" in prompts[0]:
            text = torch.stack([_prompt_embedding(clip, p) for p in prompts])  # [C, E]
        else:
            text = clip.encode_text(prompts)
        predicted = (embeddings @ text.t()).argmax(dim=1).numpy()
        known = labels >= 0
        accuracy = float((predicted[known] == labels[known]).mean()) if known.any() else float("nan")
        results[task] = {"accuracy": round(accuracy, 4), "chance": round(1 / len(prompts), 4),
                         "faces": int(known.sum())}
    clip.train(was_training)
    return results


def _prompt_classes(faces: FaceSet, prompt: TextPrompt) -> np.ndarray:
    """1 for faces that show what the prompt asks for, 0 for faces that clearly do not, −1 in between."""
    label = np.full(len(faces.styles), -1)
    if prompt.target.startswith("style:"):
        style_of = np.array(faces.styles)
        label[style_of == "photo"] = 0
        label[style_of == prompt.target.split(":", 1)[1]] = 1
        return label
    spec = ATTRIBUTES[prompt.target]
    t = (faces.attrs[prompt.target] - spec.low) / (spec.high - spec.low)  # [N] in [0, 1]
    t = t if prompt.sign > 0 else 1.0 - t
    label[t < 0.25] = 0
    label[t > 0.6] = 1
    return label


@torch.no_grad()
def prompt_directions(clip: ClipModel, faces: FaceSet, prompts: tuple[TextPrompt, ...] = PROMPTS,
                      neutral: str = "a face", batch: int = 256) -> dict[str, dict[str, float]]:
    """Per text-edit prompt, how well the CLIP's "neutral → prompt" text direction ranks faces: the AUC of
    image · Δt between faces that show it and faces that do not (0.5: the direction is blind to it).

    A text edit moves an image along Δt in the CLIP's eyes, so this is what it can hope for at best.
    """
    was_training = clip.training
    clip.eval()
    embeddings = _embed_faces(clip, faces, batch)  # [N, E]
    base = text_embedding(clip, neutral)
    results = {}
    for prompt in prompts:
        label = _prompt_classes(faces, prompt)
        along = (embeddings @ (text_embedding(clip, prompt.text) - base)).numpy()  # [N]
        shown, not_shown = along[label == 1], along[label == 0]
        if len(shown) and len(not_shown):
            pairs = shown[:, None] - not_shown[None, :]
            auc = float((pairs > 0).mean() + 0.5 * (pairs == 0).mean())  # ties count half
        else:
            auc = float("nan")
        results[prompt.text] = {"auc": round(auc, 4), "faces": int(len(shown) + len(not_shown))}
    clip.train(was_training)
    return results


# Steps between the first speed measurement and each later re-plan against the time budget.
CALIBRATION_STEPS = 30  # the first steps run slow (thread pools, allocator), and a plan never grows back
REPLAN_EVERY = 50
# Seconds kept free for the model file and card, on top of the estimated evaluation time.
EXPORT_RESERVE_S = 10.0


def fit_steps(done: int, elapsed_s: float, remaining_s: float, planned: int, margin: float = 0.95) -> int:
    """Steps a run can plan in total when `done` steps took `elapsed_s` and `remaining_s` are left.

    Only ever shrinks the plan (never below done + 1), so a run with time to spare keeps its
    configured steps and stays deterministic; `margin` absorbs speed jitter.
    """
    if done <= 0 or elapsed_s <= 0:
        return planned
    affordable = done + int(max(0.0, remaining_s) * margin * done / elapsed_s)
    return max(done + 1, min(planned, affordable))


def lr_at(step: int, planned: int, config: ClipTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 0 at step `planned` (the possibly shortened plan)."""
    warmup = min(config.warmup_steps, planned // 5)
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, planned - warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def train_clip(config: ClipTrainConfig, log: Callable[[str], None] = print,
               clock: Callable[[], float] = time.perf_counter) -> tuple[ClipModel, dict[str, Any]]:
    """Train the demo CLIP from scratch; returns the model and a training record for the card.

    With `config.time_budget_s`, the schedule is re-planned from the measured speed (after
    CALIBRATION_STEPS, then every REPLAN_EVERY steps) so that training, held-out evaluation and
    export end within the budget; a hard stop at the training deadline backs that up.
    """
    torch.manual_seed(config.seed)
    started = clock()
    faces = render_set(config.faces_per_style, config.seed, config.size)
    if config.contrast_fraction > 0:
        faces = faces + render_contrast_set(config.contrast_faces_per_style, config.seed + CONTRAST_SEED_OFFSET,
                                            config.size)
    render_seconds = clock() - started
    log(f"rendered {len(faces.styles)} training faces in {render_seconds:.1f} s")
    deadline = None
    if config.time_budget_s is not None:
        # Evaluation renders its faces at the rate just measured; 1.5x covers embedding them.
        eval_faces = len(STYLES) * config.eval_faces_per_style
        reserve = 1.5 * render_seconds * eval_faces / len(faces.styles) + EXPORT_RESERVE_S
        deadline = started + config.time_budget_s - reserve
    module = build_clip_module(config.model_cfg)
    clip = wrap_clip(module, config.model_cfg)
    caption_rng = np.random.default_rng(config.seed)

    probe = nn.Linear(config.model_cfg["embed_dim"], faces.facts.shape[1]) if config.fact_weight else None
    named = [*module.named_parameters(), *(probe.named_parameters() if probe else ())]
    decay = [p for n, p in named if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)

    rng = torch.Generator().manual_seed(config.seed)
    clip.train()
    train_started = clock()
    planned, stopped_by, loss_value, lr = config.steps, "steps", float("nan"), 0.0
    step = 0
    second_step_started = train_started
    while step < planned:
        now = clock()
        if step == 1:
            second_step_started = now
        if deadline is not None:
            if now >= deadline:
                stopped_by = "time_budget"
                log(f"stopping at step {step}/{planned}: the time budget of {config.time_budget_s:.0f} s is reached")
                break
            if step == CALIBRATION_STEPS or (step > CALIBRATION_STEPS and step % REPLAN_EVERY == 0):
                # Timed from the second step: the first one pays for allocations and warm-up (2-3x a step).
                fitted = min(planned, 1 + fit_steps(step - 1, now - second_step_started, deadline - now, planned))
                if fitted < planned:
                    speed = (now - second_step_started) / (step - 1)
                    log(f"step {step}: {speed:.3f} s/step does not fit the time budget; "
                        f"planning {fitted} steps instead of {planned}")
                    planned = fitted
        index, partner = training_batch(config.faces_per_style, config.contrast_faces_per_style, config.batch_size,
                                        config.contrast_fraction, rng)
        lr = lr_at(step, planned, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        facts = faces.facts[index.numpy()]  # [B, N_FACTS]
        # With contrast pairs, what tells a pair apart is always said by its captions.
        differs = facts ^ facts[partner.numpy()] if config.contrast_fraction > 0 else None
        captions, stated = sample_captions(facts, caption_rng, keep=config.caption_keep, always=differs)
        image_emb = clip.encode_image(faces.floats(index))  # [B, E]
        text_emb = F.normalize(module.encode_text(clip.tokenizer(captions)), dim=-1)  # [B, E]
        true_of = torch.from_numpy(caption_matches(stated, facts).T.copy())  # [B images, B captions]
        loss = contrastive_loss(image_emb, text_emb, module.logit_scale, true_of, partner, config.pair_weight)
        if probe is not None:
            loss = loss + config.fact_weight * fact_probe_loss(probe, image_emb, facts)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        if step % 50 == 0:
            log(f"step {step}/{planned} loss {loss_value:.4f} lr {lr:.2e} "
                f"({(clock() - train_started) / (step + 1):.3f} s/step)")
        step += 1
    train_seconds = clock() - train_started
    clip.eval()
    held_out = render_set(config.eval_faces_per_style, config.seed + EVAL_SEED_OFFSET, config.size)
    metrics = zero_shot_accuracy(clip, held_out)
    steps_done = max(step, 1)
    record = {
        "steps_done": step,
        "steps_planned": planned,
        "stopped_by": stopped_by,
        "final_lr": lr,
        "final_loss": round(loss_value, 4),
        "render_seconds": round(render_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / steps_done, 4),
        "wall_seconds": round(clock() - started, 1),
        "zero_shot": metrics,
        "held_out_faces": len(held_out.styles),
    }
    return clip, record


def export_clip(clip: ClipModel, out: Path, config: ClipTrainConfig, record: Mapping[str, Any],
                command: str = "") -> Path:
    """Write the weights as safetensors and the model card (config, metrics; command, wall time, hardware and
    commit under "training"; sha256) next to them."""
    out = Path(out)
    artifacts.write(out, clip.model.state_dict())  # a plain state dict, which open_clip loads; the card follows
    settings = {k: v for k, v in asdict(config).items() if k != "model_cfg"}
    card = {
        "model": "faceedit demo CLIP",
        "intended_use": "CPU demo of DIFA adaptation on the synthetic-face zoo; not a general image-text model",
        "model_cfg": config.model_cfg,  # ClipConfig(config_path=<this card>, weights=<file>) loads it
        "preprocess": {"input": "[-1, 1] RGB", "mean": list(clip.mean.flatten().tolist()),
                       "std": list(clip.std.flatten().tolist())},
        "parameters": sum(p.numel() for p in clip.model.parameters()),
        "data": "faceedit.synth renders, all styles, captions stating random subsets of each face's "
                "ground-truth facts (faceedit.training.captions)",
        "training": {**settings, **{k: v for k, v in record.items() if k != "zero_shot"}, **provenance(command)},
        "metrics": {"zero_shot_held_out": record["zero_shot"]},
    }
    return write_card(out, card)
