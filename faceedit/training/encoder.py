"""Train the demo e4e encoder on generator samples (latent + image losses) and on renders (image loss)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from faceedit.models.encoders import Encoder, EncoderConfig
from faceedit.models.stylegan2 import Generator
from faceedit.training.state import ResumableTrainer

# n → real-domain images [n, 3, H, W] in [-1, 1] (the renderer), for inversion of non-samples.
RealImagesFn = Callable[[int, int], Tensor]


@dataclass
class EncoderTrainingConfig:
    stage_channels: tuple[int, ...] = (32, 48, 96, 160)
    stage_units: tuple[int, ...] = (1, 2, 2, 1)
    se_reduction: int = 8
    batch_size: int = 16
    steps: int = 4_000
    lr: float = 1e-3
    latent_weight: float = 1.0
    image_weight: float = 1.0
    # Spread between layers of the training W+ codes, so the encoder sees more than W.
    wplus_jitter: float = 0.3
    real_fraction: float = 0.25
    checkpoint_every: int = 250
    seed: int = 0
    # The encoder's input (images are resized to it, as upstream). Half the generator's size by
    # default (32 at least): e4e's map2style heads are style_dim wide and take one conv per halving of their
    # feature map, so at 64 px input the encoder is 68 MB and at 32 px 47 MB (24 MB in fp16).
    input_size: int | None = None

    def encoder_config(self, generator: Generator) -> EncoderConfig:
        return EncoderConfig(kind="e4e", n_styles=generator.n_latent, style_dim=generator.style_dim,
                             input_size=self.input_size or max(32, generator.config.size // 2),
                             stage_units=tuple(self.stage_units),
                             stage_channels=tuple(self.stage_channels), se_reduction=self.se_reduction)


class EncoderTrainer(ResumableTrainer):
    """Trains `Encoder` so that generator.synthesis(encoder.encode(x)) ≈ x."""

    def __init__(self, config: EncoderTrainingConfig, generator: Generator, work_dir: Path,
                 real_images: RealImagesFn | None = None):
        self.config = config
        self.generator = generator.eval().requires_grad_(False)
        self.real_images = real_images
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.encoder = Encoder(config.encoder_config(generator)).train()
        self.encoder.set_latent_avg(generator.w_avg)
        self.optimizer = torch.optim.Adam(self.encoder.parameters(), lr=config.lr)
        self.step = 0
        self.history: list[dict] = []
        self.rng = torch.Generator().manual_seed(config.seed + 1)

    def state_modules(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.encoder}

    def sample_codes(self, n: int) -> Tensor:
        """W+ codes near the generator's W manifold: w per sample plus a small per-layer jitter."""
        g = self.generator
        with torch.no_grad():
            w = g.mapping(torch.randn(n, g.style_dim, generator=self.rng))  # [n, D]
            spread = (w - g.w_avg).std(0, keepdim=True)  # [1, D]
            jitter = torch.randn(n, g.n_latent, g.style_dim, generator=self.rng) * spread
            return w[:, None] + self.config.wplus_jitter * jitter  # [n, n_latent, D]

    def train_step(self) -> dict[str, float]:
        cfg, g = self.config, self.generator
        n_real = int(round(cfg.batch_size * cfg.real_fraction)) if self.real_images else 0
        n_fake = cfg.batch_size - n_real
        codes = self.sample_codes(n_fake)
        with torch.no_grad():
            images = g.synthesis(codes)
            if n_real:
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.rng))
                images = torch.cat([images, self.real_images(n_real, seed)])
        predicted = self.encoder.encode(images)  # [B, n_latent, D]
        latent_loss = F.mse_loss(predicted[:n_fake], codes)
        image_loss = (g.synthesis(predicted) - images).abs().mean()
        loss = cfg.latent_weight * latent_loss + cfg.image_weight * image_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return {"loss": loss.item(), "latent": latent_loss.item(), "image": image_loss.item()}

    def train(self, progress: bool = True, time_budget_s: float | None = None,
              stop_at_step: int | None = None) -> Encoder:
        """Run until `steps`, the time budget or `stop_at_step` (a resumable pause that replays a
        budget-stopped run step for step), checkpointing as it goes."""
        cfg = self.config
        last = cfg.steps if stop_at_step is None else min(cfg.steps, stop_at_step)
        started = time.monotonic()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, desc="encoder", unit="step")
        running: dict[str, float] = {}
        while self.step < last:
            losses = self.train_step()
            running = {k: v if k not in running else 0.98 * running[k] + 0.02 * v for k, v in losses.items()}
            bar.update(1)
            bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()})
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.history.append({"step": self.step, **running,
                                     "elapsed_s": round(time.monotonic() - started, 1)})
                self.save_state()
            if time_budget_s is not None and time.monotonic() - started > time_budget_s:
                break
        self.save_state()
        bar.close()
        return self.encoder.eval()


def export_e4e(encoder: Encoder, generator: Generator, path: Path) -> None:
    """Write the e4e checkpoint layout ({'state_dict', 'opts', 'latent_avg'}) with the encoder
    only, as e4e's standalone loader keeps it: the decoder ships once, as the generator."""
    # fp16 on disk halves the file (the loader computes in fp32): e4e's map2style heads are
    # style_dim wide whatever the backbone, and they are most of the weights.
    state = {f"encoder.{k}": v.half() if v.is_floating_point() else v for k, v in encoder.state_dict().items()}
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": generator.config.size,
            "start_from_latent_avg": True, "faceedit_encoder": json.dumps(encoder.config.to_dict())}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "opts": opts, "latent_avg": encoder.latent_avg.clone()}, path)


def train_demo_encoder(config: EncoderTrainingConfig, generator_path: Path, work_dir: Path, out: Path,
                       time_budget_s: float | None = None, progress: bool = True, command: str | None = None,
                       stop_at_step: int | None = None) -> Path:
    """Train the zoo encoder for the generator at `generator_path` (resuming if a state is in work_dir),
    export it in the e4e layout to `out` with its model card (`command`: what the user typed)."""
    from faceedit.artifacts import sha256_file
    from faceedit.models import load_generator
    from faceedit.synth import render_faces
    from faceedit.training.cards import provenance, write_card

    generator = load_generator(generator_path)
    size = generator.config.size
    trainer = EncoderTrainer(config, generator, work_dir,
                             real_images=lambda n, seed: render_faces(n, seed, size=size)[0])
    resumed = trainer.resume()
    started = time.monotonic()
    encoder = trainer.train(progress=progress, time_budget_s=time_budget_s, stop_at_step=stop_at_step)
    export_e4e(encoder, generator, Path(out))
    write_card(Path(out), {
        "model": "demo encoder (e4e layout, small backbone)",
        "config": encoder.config.to_dict(),
        "generator": {"file": Path(generator_path).name, "sha256": sha256_file(generator_path)},
        "training": {"objective": "latent MSE on generator samples (W+ jittered) + image L1 through the generator; "
                                  f"{config.real_fraction:.0%} of each batch are renders (image loss only)",
                     "config": asdict(config), "steps": trainer.step, "resumed": resumed,
                     "wall_time_s_this_run": round(time.monotonic() - started, 1),
                     "loss_history": trainer.history[-20:],
                     **provenance(command or (f"faceedit train encoder --generator {generator_path} "
                                              f"--work-dir {work_dir} --out {out} --steps {config.steps}"))},
    })
    return Path(out)
