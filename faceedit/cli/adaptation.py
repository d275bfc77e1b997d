"""`faceedit train clip` / `faceedit eval clip`: the zoo's demo CLIP (used by DIFA on CPU)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faceedit.cli import CommandGroups


def cmd_train_clip(args: argparse.Namespace) -> int:
    import torch

    from faceedit.training.clip import ClipTrainConfig, export_clip, train_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    config = ClipTrainConfig(faces_per_style=args.faces_per_style, steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, eval_faces_per_style=args.eval_faces_per_style, seed=args.seed,
                             max_seconds=args.max_minutes * 60 if args.max_minutes else None)
    clip, record = train_clip(config)
    card = export_clip(clip, Path(args.out), config, record)
    print(json.dumps({"weights": args.out, "card": str(card), **record}, indent=2))
    return 0


def cmd_eval_clip(args: argparse.Namespace) -> int:
    from faceedit.adaptation.clip import ClipConfig, load_clip
    from faceedit.checkpoints import sidecar_path
    from faceedit.training.cards import update_card
    from faceedit.training.clip import EVAL_SEED_OFFSET, render_set, zero_shot_accuracy

    weights = Path(args.weights)
    card = Path(args.config) if args.config else sidecar_path(weights)
    clip = load_clip(ClipConfig(config_path=str(card), weights=str(weights)))
    faces = render_set(args.faces_per_style, args.seed + EVAL_SEED_OFFSET, clip.image_size)
    metrics = zero_shot_accuracy(clip, faces)
    print(json.dumps({"weights": str(weights), "held_out_faces": len(faces.styles), "zero_shot": metrics}, indent=2))
    if args.update_card:
        update_card(weights, metrics={"zero_shot_held_out": metrics})
    return 0


def register(commands: "CommandGroups") -> None:
    p = commands.train.add_parser("clip", help="train the demo CLIP on rendered, captioned faces")
    p.add_argument("--out", default="model_store/demo/clip.safetensors",
                   help="weights file; the model card is written next to it as .json")
    p.add_argument("--faces-per-style", type=int, default=4000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--eval-faces-per-style", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop training after this long (smoke runs); the card records the steps done")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(run=cmd_train_clip)

    p = commands.eval.add_parser("clip", help="zero-shot attribute and style accuracy of a CLIP on held-out renders")
    p.add_argument("--weights", default="model_store/demo/clip.safetensors")
    p.add_argument("--config", default=None, help="model config or card JSON (default: the card next to the weights)")
    p.add_argument("--faces-per-style", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="the training seed; held-out faces are drawn far from it")
    p.add_argument("--update-card", action="store_true", help="write the figures into the model card")
    p.set_defaults(run=cmd_eval_clip)
