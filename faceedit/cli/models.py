"""`faceedit inspect | convert | sample | align`: checkpoints, samples and photo alignment."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from faceedit.errors import FaceEditError

if TYPE_CHECKING:
    from faceedit.cli.groups import CommandGroups


def cmd_inspect(args: argparse.Namespace) -> int:
    from faceedit.artifacts import sha256_file
    from faceedit.checkpoints import DELTA_KIND, read_checkpoint
    from faceedit.models.loading import encoder_from_checkpoint, generator_from_checkpoint

    ckpt = read_checkpoint(args.checkpoint)
    report: dict = {"file": str(ckpt.path), "format": ckpt.format, "kind": ckpt.kind,
                    "sha256": ckpt.sha256 or sha256_file(ckpt.path)}
    if ckpt.generator is not None and ckpt.kind != DELTA_KIND:
        generator = generator_from_checkpoint(ckpt)
        report["generator"] = {**generator.config.to_dict(), "n_latent": generator.n_latent,
                               "parameters": sum(p.numel() for p in generator.parameters()),
                               "has_latent_avg": ckpt.latent_avg is not None}
    if ckpt.encoder is not None:
        encoder = encoder_from_checkpoint(ckpt)
        report["encoder"] = {**encoder.config.to_dict(),
                             "parameters": sum(p.numel() for p in encoder.parameters())}
    if ckpt.format in ("psp", "e4e"):
        report["opts"] = {k: v for k, v in ckpt.config.items() if isinstance(v, (str, int, float, bool))}
    print(json.dumps(report, indent=2, default=str))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from faceedit.models import convert_checkpoint

    if args.trust_pickle:
        print("warning: --trust-pickle runs code stored in the file; use it only on files you trust",
              file=sys.stderr)
    for path in convert_checkpoint(args.checkpoint, args.out_dir, trust_pickle=args.trust_pickle):
        print(f"wrote {path} and {path.with_suffix('.json').name}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from faceedit.images import grid, to_pil
    from faceedit.models import load_generator
    from faceedit.models.precision import autocast_dtype, resolve_device, synthesis_precision
    from faceedit.sampling import parse_seeds, sample_images

    seeds = parse_seeds(args.seeds)
    device = resolve_device(args.device)
    autocast_dtype(args.precision, device)  # fp16 on CPU fails here, before the checkpoint loads
    generator = load_generator(args.checkpoint, device=device)
    with synthesis_precision(args.precision):  # synthesis only: the mapping stays fp32
        images = sample_images(generator, seeds, truncation=args.truncation, noise_mode=args.noise_mode,
                               batch_size=args.batch_size, progress=True)
    sheet = grid(to_pil(images), columns=args.columns)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    print(f"wrote {out} ({len(seeds)} faces, {generator.config.size} px)")
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from PIL import Image, ImageOps

    from faceedit.align import align_face

    try:
        photo = ImageOps.exif_transpose(Image.open(args.photo))
    except (OSError, ValueError) as exc:
        raise FaceEditError(f"{args.photo}: cannot read the image ({exc})") from None
    aligned = align_face(photo, size=args.size)
    aligned.image.save(args.out)
    extra = f"; {len(aligned.others)} other face(s) ignored" if aligned.others else ""
    print(f"wrote {args.out} ({args.size}×{args.size}){extra}")
    return 0


def register(commands: CommandGroups) -> None:
    sub = commands.top
    p = sub.add_parser("inspect", help="format, config, n_latent and sha256 of a checkpoint")
    p.add_argument("checkpoint")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("convert", help="write a checkpoint as safetensors + JSON config + sha256")
    p.add_argument("checkpoint")
    p.add_argument("out_dir")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow arbitrary unpickling (e.g. files with an 'args' Namespace); trusted files only")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("sample", help="a grid of faces from seeds")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--seeds", default="0-15", help="e.g. '1-16' or '3,7,10-12'")
    p.add_argument("--truncation", type=float, default=0.7)
    p.add_argument("--noise-mode", choices=["const", "random", "none"], default="const")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--columns", type=int, default=None)
    p.add_argument("--out", default="grid.png")
    # Checked by resolve_device when the command runs, so a bad or missing device is a typed error.
    p.add_argument("--device", default="auto", help="'auto' (CUDA if available, else CPU), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="synthesis precision: bf16/fp16 autocast the convolutions (fp16: CUDA only)")
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("align", help="FFHQ-style aligned crop of the largest face in a photo")
    p.add_argument("photo")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=1024)
    p.set_defaults(run=cmd_align)
