"""Train the demo generator by distilling the synthetic-face renderer into StyleGAN2 (supervised, no GAN game).

Each z decides a face: its first dimensions, pushed through the normal CDF, are the renderer's
parameters in [0, 1]. So a target image exists for every z, and the generator learns
`synthesis(mapping(z)) ≈ render(Φ(z))` by regression: stable, and an order of magnitude cheaper
per useful step on a CPU than an adversarial game. Samples from z ~ N(0, I) then cover the
renderer's attribute distribution by construction, and W inherits a smooth, nearly linear
code of the attributes, which is what InterfaceGAN needs.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from faceedit.models.stylegan2 import Generator, GeneratorConfig
from faceedit.training.state import ResumableTrainer

if TYPE_CHECKING:
    from faceedit.synth.scorer import Scorer

# z [B, style_dim] → target images [B, 3, size, size] in [-1, 1].
TargetFn = Callable[[Tensor], Tensor]


@dataclass
class GeneratorTrainingConfig:
    size: int = 64
    style_dim: int = 256
    n_mlp: int = 4
    channels: dict[int, int] = field(default_factory=lambda: {4: 256, 8: 256, 16: 128, 32: 128, 64: 64})
    identity_dims: int = 4  # directions of z that decide the identity (see renderer_target)
    batch_size: int = 16
    steps: int = 6_000
    # Regression tolerates (and needs) a larger step than StyleGAN's GAN settings (2e-3, β1 = 0):
    # with those, 500 steps did not beat a constant image; with these, 125 steps reach it.
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.99)
    # The mapping's equalised-lr multiplier (0.01, fixed by the checkpoint layout) suits a GAN;
    # ×100 gives the mapping the same relative step as the synthesis.
    mapping_lr_boost: float = 100.0
    ema_half_life_images: float = 2_000.0
    multiscale_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    gradient_weight: float = 1.0
    # The scorer handed to the trainer as a perceptual critic (weight 0 or no scorer: pixels only).
    # Pixel losses learn hair, skin and background (most of the pixel variance) and leave eyes,
    # mouths and glasses for last: 3,250 pixel-only steps drew none; the critic's feature maps and
    # attribute outputs (smile, eyes, glasses, ...) count those few pixels as much as the rest.
    perceptual_weight: float = 0.5
    attribute_weight: float = 1.0
    warmup_steps: int = 100
    final_lr_fraction: float = 0.1  # cosine decay to this fraction of lr by the last step
    checkpoint_every: int = 250
    seed: int = 0
    threads: int = 0  # 0: torch's default

    def generator_config(self) -> GeneratorConfig:
        return GeneratorConfig(self.size, self.style_dim, self.n_mlp, channels=dict(self.channels))


def reconstruction_loss(fake: Tensor, real: Tensor, weights: tuple[float, ...], gradient_weight: float = 0.0) -> Tensor:
    """Squared error at full size and at coarser scales (colours and layout weigh as much as edges),
    plus squared error between the images' finite differences (edges, which regression learns last).

    Squared, not absolute: while the network is unsure where an eye or a mouth is, L1 regresses to
    the per-pixel median, which is bare skin (after 2,500 L1 steps the faces had no features);
    L2 regresses to the mean, a soft feature that sharpens as its position is learned.
    """
    loss = fake.new_zeros(())
    if gradient_weight:
        for dim in (2, 3):
            loss = loss + gradient_weight * (fake.diff(dim=dim) - real.diff(dim=dim)).pow(2).mean()
    for i, weight in enumerate(weights):
        if i:
            fake, real = F.avg_pool2d(fake, 2), F.avg_pool2d(real, 2)
        loss = loss + weight * (fake - real).pow(2).mean()
    return loss


def scorer_guidance_loss(scorer: Scorer, fake: Tensor, real: Tensor, attribute_weight: float) -> Tensor:
    """LPIPS-style distance in the scorer's feature maps (channel-normalised, averaged over levels)
    plus the squared difference of its attribute outputs; gradients flow into `fake` only."""
    fake_maps, fake_attributes = scorer.activations(scorer.prepare(fake))
    with torch.no_grad():
        real_maps, real_attributes = scorer.activations(scorer.prepare(real))
    loss = fake.new_zeros(())
    for f, r in zip(fake_maps, real_maps):  # [B, C, h, w] each, from full resolution down to 4 px
        loss = loss + (F.normalize(f, dim=1) - F.normalize(r, dim=1)).pow(2).sum(dim=1).mean() / len(fake_maps)
    return loss + attribute_weight * (fake_attributes.sigmoid() - real_attributes.sigmoid()).pow(2).mean()


def _ema_update(ema: Generator, live: Generator, decay: float) -> None:
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), live.parameters()):
            p_ema.lerp_(p, 1 - decay)
        for b_ema, b in zip(ema.buffers(), live.buffers()):
            b_ema.copy_(b)


class GeneratorTrainer(ResumableTrainer):
    """Owns the live and EMA generators, the optimiser and the resumable training state."""

    def __init__(self, config: GeneratorTrainingConfig, target_fn: TargetFn, work_dir: Path,
                 scorer: Scorer | None = None):
        self.config = config
        self.target_fn = target_fn
        self.scorer = scorer.eval().requires_grad_(False) if scorer is not None and config.perceptual_weight else None
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.generator = Generator(config.generator_config()).train()
        self.generator_ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        mapping = list(self.generator.style.parameters())
        mapping_ids = {id(p) for p in mapping}
        synthesis = [p for p in self.generator.parameters() if id(p) not in mapping_ids]
        self.optimizer = torch.optim.Adam(
            [{"params": synthesis, "lr": config.lr},
             {"params": mapping, "lr": config.lr * config.mapping_lr_boost}],
            betas=config.betas)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.step = 0
        self.history: list[dict] = []
        self.rng = torch.Generator().manual_seed(config.seed + 1)

    def state_modules(self) -> dict[str, torch.nn.Module]:
        return {"generator": self.generator, "generator_ema": self.generator_ema}

    def lr_factor(self) -> float:
        """Linear warm-up, then cosine decay to final_lr_fraction: sharper samples at the end."""
        cfg = self.config
        warm = min(1.0, (self.step + 1) / cfg.warmup_steps)
        progress = min(1.0, self.step / max(1, cfg.steps))
        return warm * (cfg.final_lr_fraction + (1 - cfg.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))

    def train_step(self) -> float:
        cfg = self.config
        z = torch.randn(cfg.batch_size, cfg.style_dim, generator=self.rng)
        with torch.no_grad():
            target = self.target_fn(z)  # [B, 3, size, size]
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * self.lr_factor()
        fake = self.generator.synthesis(self.generator.broadcast(self.generator.mapping(z)))
        loss = reconstruction_loss(fake, target, cfg.multiscale_weights, cfg.gradient_weight)
        if self.scorer is not None:
            loss = loss + cfg.perceptual_weight * scorer_guidance_loss(self.scorer, fake, target, cfg.attribute_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        decay = 0.5 ** (cfg.batch_size / cfg.ema_half_life_images)
        _ema_update(self.generator_ema, self.generator, decay)
        self.step += 1
        return loss.item()

    def train(self, progress: bool = True, time_budget_s: float | None = None,
              on_checkpoint: Callable[[GeneratorTrainer], None] | None = None,
              stop_at_step: int | None = None) -> Generator:
        """Run until `steps` (or the time budget, or `stop_at_step`) is reached, checkpointing as it goes.
        `stop_at_step` pauses resumably inside the schedule, so a run that was extended mid-way
        (the zoo's was) can be replayed step for step."""
        cfg = self.config
        last = cfg.steps if stop_at_step is None else min(cfg.steps, stop_at_step)
        started = time.monotonic()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, desc="generator", unit="step")
        running = None
        while self.step < last:
            loss = self.train_step()
            running = loss if running is None else 0.98 * running + 0.02 * loss
            bar.update(1)
            bar.set_postfix(loss=f"{running:.4f}")
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.history.append({"step": self.step, "loss": running,
                                     "elapsed_s": round(time.monotonic() - started, 1)})
                self.save_state()
                if on_checkpoint is not None:
                    on_checkpoint(self)
            if time_budget_s is not None and time.monotonic() - started > time_budget_s:
                break
        self.save_state()
        bar.close()
        return self.generator_ema


def export_rosinality(generator: Generator, path: Path, n_w_avg: int = 20_000) -> Tensor:
    """Write {'g_ema', 'latent_avg'} (the layout users' tools read) with a fresh mean w."""
    with torch.no_grad():
        z = torch.randn(n_w_avg, generator.style_dim, generator=torch.Generator().manual_seed(123))
        w_avg = torch.cat([generator.mapping(chunk) for chunk in z.split(2048)]).mean(0)
    generator.set_w_avg(w_avg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"g_ema": generator.state_dict(), "latent_avg": w_avg.clone()}, path)
    return w_avg


def normal_cdf(z: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def identity_projection(code_dims: int) -> Tensor:
    """Fixed unit-norm rows [code_dims → IDENTITY_UNIFORMS]: each identity number becomes Φ of a unit
    combination of `code_dims` normals, so its marginal stays uniform while only `code_dims`
    directions of z carry identity."""
    from faceedit.synth.identity import IDENTITY_UNIFORMS

    projection = torch.randn(code_dims, IDENTITY_UNIFORMS, generator=torch.Generator().manual_seed(20_261_130),
                             dtype=torch.float64)
    return projection / projection.norm(dim=0, keepdim=True)  # [code_dims, IDENTITY_UNIFORMS]


def renderer_target(size: int, identity_dims: int = 4) -> TargetFn:
    """z → the face the renderer paints: z[:, :ATTRIBUTE_UNIFORMS] decide the attributes (through Φ),
    the next `identity_dims` numbers the identity (through a fixed projection); the rest of z is free.

    Why so few identity numbers: the renderer's identity takes 126, and distilling all of them into a
    generator is a regression on 139 inputs that a CPU budget cannot fit (after 1,500 steps the
    samples were still the mean face). Attributes carry most of the visible variety anyway.
    """
    from faceedit.synth import render_from_uniform
    from faceedit.synth.attributes import ATTRIBUTE_UNIFORMS

    projection = identity_projection(identity_dims)
    used = ATTRIBUTE_UNIFORMS + identity_dims

    def target(z: Tensor) -> Tensor:
        assert z.shape[1] >= used, f"style_dim {z.shape[1]} < {used} renderer numbers"
        z = z.double()
        identity = z[:, ATTRIBUTE_UNIFORMS:used] @ projection  # [B, IDENTITY_UNIFORMS]
        u = normal_cdf(torch.cat([z[:, :ATTRIBUTE_UNIFORMS], identity], dim=1)).clamp(0.0, 1.0).numpy()
        images, _ = render_from_uniform(u, size=size)
        return images  # [B, 3, size, size]

    return target


def renderer_attributes(z: Tensor) -> dict[str, Tensor]:
    """Ground-truth attributes of the faces the renderer paints for z (what a sample of z should show)."""
    from faceedit.synth import ATTRIBUTE_NAMES
    from faceedit.synth.attributes import ATTRIBUTE_UNIFORMS, attributes_from_uniform

    u = normal_cdf(z[:, :ATTRIBUTE_UNIFORMS].double()).clamp(0.0, 1.0).numpy()
    rows = [attributes_from_uniform(row) for row in u]
    return {name: torch.tensor([r[name] for r in rows], dtype=torch.float32) for name in ATTRIBUTE_NAMES}


def train_demo_generator(config: GeneratorTrainingConfig, work_dir: Path, out: Path,
                         time_budget_s: float | None = None, progress: bool = True,
                         scorer: Scorer | None = None, command: str | None = None,
                         stop_at_step: int | None = None) -> Path:
    """Train (resuming from work_dir if a state is there), export to `out` with its model card.
    `scorer` is the perceptual critic (see GeneratorTrainingConfig.perceptual_weight); `command`
    is what the user typed, for the card."""
    from faceedit.images import grid, to_pil
    from faceedit.training.cards import provenance, write_card

    if config.threads:
        torch.set_num_threads(config.threads)
    trainer = GeneratorTrainer(config, renderer_target(config.size, config.identity_dims), work_dir, scorer=scorer)
    resumed = trainer.resume()
    preview_z = torch.randn(16, config.style_dim, generator=torch.Generator().manual_seed(7))

    def preview(t: GeneratorTrainer) -> None:
        with torch.no_grad():
            images = t.generator_ema(preview_z, truncation_psi=1.0)
        grid(to_pil(torch.cat([images, t.target_fn(preview_z)])), columns=16).save(t.work_dir / "preview.png")

    started = time.monotonic()
    generator = trainer.train(progress=progress, time_budget_s=time_budget_s, on_checkpoint=preview,
                              stop_at_step=stop_at_step)
    export_rosinality(generator, Path(out))
    write_card(Path(out), {
        "model": "demo generator (StyleGAN2, rosinality layout)",
        "config": generator.config.to_dict(),
        "training": {"objective": "renderer distillation: synthesis(mapping(z)) ≈ render_from_uniform(Φ(z)) "
                                  f"(identity from {config.identity_dims} z dims); "
                                  "multiscale L2 + L2 of finite differences"
                                  + (" + the scorer's feature-map and attribute distances" if trainer.scorer else ""),
                     "config": asdict(config), "steps": trainer.step, "resumed": resumed,
                     "wall_time_s_this_run": round(time.monotonic() - started, 1),
                     "loss_history": trainer.history[-20:],
                     **provenance(command or f"faceedit train generator --work-dir {work_dir} --out {out} "
                                             f"--steps {config.steps}")},
    })
    return Path(out)
