"""`faceedit invert PHOTO` and `faceedit edit PHOTO --smile +2`: a photo edited in process, the full photo back."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from faceedit.errors import FaceEditError, InvalidInputError

if TYPE_CHECKING:
    from faceedit.cli.groups import CommandGroups
    from faceedit.inversion import Inversion

def _zoo_attributes() -> tuple[str, ...]:
    """The demo zoo's boundary names, each a flag of `faceedit edit` (`--smile 2`); none when the zoo is not
    there (a non-editable install): `--edit NAME=S` works with any boundary folder."""
    from faceedit.errors import NotFoundError
    from faceedit.zoo import boundaries

    try:
        return tuple(sorted(boundaries()))
    except NotFoundError:
        return ()


def _models(args: argparse.Namespace):
    from faceedit.models import load_encoder, load_generator
    from faceedit.zoo import paths

    zoo = paths() if not (args.generator and args.encoder) else {}
    generator = load_generator(args.generator or zoo["generator"]).eval()
    encoder = load_encoder(args.encoder or zoo["encoder"]).eval()
    return generator, encoder


def _photo_and_crop(args: argparse.Namespace, size: int):
    """The photo, and its face as the generator's crop: aligned from dlib's landmarks, or, with --no-align,
    the photo's centre square (a photo that is already an aligned crop)."""
    from PIL import Image, ImageOps

    from faceedit.align import align_face

    try:
        photo = ImageOps.exif_transpose(Image.open(args.photo)).convert("RGB")
    except (OSError, ValueError) as exc:
        raise FaceEditError(f"{args.photo}: cannot read the image ({exc})") from None
    if args.no_align:
        return photo, None, ImageOps.fit(photo, (size, size), Image.Resampling.LANCZOS)
    aligned = align_face(photo, size=size)
    return photo, aligned, aligned.image


def _invert(args: argparse.Namespace) -> tuple:
    import dataclasses

    from tqdm.auto import tqdm

    from faceedit.images import from_pil
    from faceedit.inversion import InversionConfig, invert, scorer_distance

    generator, encoder = _models(args)
    photo, aligned, crop = _photo_and_crop(args, generator.config.size)
    config = InversionConfig()
    if args.steps is not None:
        config = dataclasses.replace(config, optimize_steps=args.steps, tune_steps=args.steps)
    total = {"encoder": 0, "optimize": config.optimize_steps, "pti": config.optimize_steps + config.tune_steps}
    # The demo zoo's scorer is the perceptual distance here; its distance is not on LPIPS's scale, so PTI's
    # early stop is off (as in bench/inversion.py).
    config = dataclasses.replace(config, perceptual_stop=0.0)
    with tqdm(total=total[args.mode], unit="step", desc=f"invert ({args.mode})", disable=not total[args.mode]) as bar:
        result = invert(from_pil([crop]), generator, encoder, mode=args.mode, config=config,
                        perceptual=scorer_distance(), progress=lambda *_: bar.update(1))
    return photo, aligned, crop, result, generator


def _render(result: Inversion, ws) -> object:
    import torch

    from faceedit.images import to_pil

    with torch.no_grad():
        return to_pil(result.generator.synthesis(ws, noise_mode="const"))[0]


def _put_back(photo, aligned, image, args: argparse.Namespace):
    from faceedit.blending import paste_back

    if aligned is None:  # --no-align: the crop was the photo's centre square; it goes back there
        side = min(photo.size)
        left, top = (photo.width - side) // 2, (photo.height - side) // 2
        out = photo.copy()
        out.paste(image.resize((side, side)), (left, top))
        return out
    return paste_back(photo, image, aligned, colour_match=not args.no_colour_match)


def cmd_invert(args: argparse.Namespace) -> int:
    import numpy as np

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    photo, aligned, crop, result, base = _invert(args)
    crop.save(out / "aligned.png")
    reconstruction = _render(result, result.ws)
    reconstruction.save(out / "reconstruction.png")
    _put_back(photo, aligned, reconstruction, args).save(out / "photo.png")
    np.save(out / "latent.npy", result.ws.numpy())
    written = ["aligned.png", "reconstruction.png", "photo.png", "latent.npy"]
    if args.mode == "pti":
        from faceedit.models.delta import save_delta

        save_delta(result.generator, base, out / "tuned.safetensors")
        written.append("tuned.safetensors (a delta: load_generator(path, base=the generator))")
    print(f"{args.mode}: pixel MSE {result.losses['l2']:.4f} in {result.seconds:.1f} s; wrote {', '.join(written)} "
          f"in {out}")
    return 0


def _steps(args: argparse.Namespace) -> list[tuple[str, float]]:
    steps = [(name, getattr(args, name)) for name in args.attribute_flags if getattr(args, name) is not None]
    for item in args.edit:
        name, sep, strength = item.partition("=")
        try:
            steps.append((name, float(strength)))
        except ValueError:
            raise InvalidInputError("--edit", f"{item!r} is not NAME=STRENGTH (e.g. smile=1.5)") from None
        if not sep or not name:
            raise InvalidInputError("--edit", f"{item!r} is not NAME=STRENGTH (e.g. smile=1.5)")
    if not steps:
        raise InvalidInputError("edits", "give at least one, e.g. --smile 2 or --edit age=1.5")
    return steps


def cmd_edit(args: argparse.Namespace) -> int:
    from faceedit.editing import Edit, apply_edits, attribute_name, load_direction
    from faceedit.editing.boundary_set import DIRECTION_SUFFIXES
    from faceedit.zoo import boundaries

    steps = _steps(args)
    if args.boundaries:
        folder = Path(args.boundaries)
        if not folder.is_dir():
            raise InvalidInputError("--boundaries", f"{folder} is not a folder")
        known = {attribute_name(f.name)[0]: f for f in sorted(folder.iterdir()) if f.suffix in DIRECTION_SUFFIXES}
    else:
        known = boundaries()
    missing = [name for name, _ in steps if name not in known]
    if missing:
        raise InvalidInputError("edits", f"no boundary for {missing}; known: {sorted(known)}")
    photo, aligned, _, result, _ = _invert(args)
    edits = [Edit(load_direction(known[name]), strength=strength) for name, strength in steps]
    edited = _put_back(photo, aligned, _render(result, apply_edits(result.ws, edits)), args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    edited.save(args.out)
    said = ", ".join(f"{name} {strength:+g}" for name, strength in steps)
    print(f"{said} ({args.mode} inversion, {result.seconds:.1f} s): wrote {args.out} ({edited.width}×{edited.height})")
    return 0


def cmd_eval_inversion(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import torch
    from PIL import Image
    from tqdm.auto import tqdm

    from faceedit.editing.boundary import load_boundaries
    from faceedit.inversion import InversionConfig
    from faceedit.inversion_quality import evaluate_inversion
    from faceedit.synth.render import render_faces
    from faceedit.synth.scorer import load_scorer
    from faceedit.zoo import boundaries as zoo_boundaries

    if args.threads:
        torch.set_num_threads(args.threads)
    generator, encoder = _models(args)
    scorer = load_scorer(args.scorer).eval().requires_grad_(False)
    files = ({p.stem: p for p in sorted(Path(args.boundaries).glob("*.safetensors"))} if args.boundaries
             else zoo_boundaries())
    names = [n for n in scorer.config.attribute_names if n in files]
    if not names:
        raise InvalidInputError("--boundaries", f"no boundary of the scorer's attributes in {args.boundaries}")
    boundaries = load_boundaries({n: files[n] for n in names})
    config = InversionConfig(perceptual_stop=0.0)
    if args.steps is not None:
        config = dataclasses.replace(config, optimize_steps=args.steps, tune_steps=args.steps)
    faces, _ = render_faces(args.faces, seed=args.seed, size=generator.config.size)  # held out: not a training seed
    portraits = [Image.open(p).convert("RGB") for p in args.portrait]
    if args.astronaut:
        from skimage import data

        portraits.append(Image.fromarray(data.astronaut()))
    steps = 3 * (args.faces + len(portraits))
    with tqdm(total=steps, unit="inversion", desc="eval inversion") as bar:
        report = evaluate_inversion(generator, encoder, scorer, boundaries, faces, portraits, config,
                                    sample_edits=args.edit_samples, seed=args.seed,
                                    progress=lambda message: (bar.set_postfix_str(message), bar.update(1)))
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2, default=float) + "\n")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("photo")
    p.add_argument("--mode", choices=["encoder", "optimize", "pti"], default="encoder",
                   help="encoder: instant; optimize: W+ fitted to the photo; pti: the generator tuned to it too")
    p.add_argument("--steps", type=int, default=None, help="optimisation and tuning steps (default: PTI's 450 + 350)")
    p.add_argument("--generator", default=None, help="default: the demo zoo's")
    p.add_argument("--encoder", default=None, help="default: the demo zoo's")
    p.add_argument("--no-align", action="store_true", help="the photo is already an aligned crop (no dlib)")
    p.add_argument("--no-colour-match", action="store_true", help="paste the edit back without matching colours")


def register(commands: CommandGroups) -> None:
    p = commands.top.add_parser("invert", help="a photo's latents (and tuned generator): aligned crop, "
                                               "reconstruction and the photo with it pasted back")
    _common(p)
    p.add_argument("--out", required=True, help="a folder")
    p.set_defaults(run=cmd_invert)

    p = commands.top.add_parser("edit", help="edit the face in a photo; the full photo comes back")
    _common(p)
    attributes = _zoo_attributes()
    for name in attributes:
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=None, metavar="S",
                       help=argparse.SUPPRESS)
    p.add_argument("--edit", action="append", default=[], metavar="NAME=S",
                   help="any boundary by name; the zoo's also as flags: " + " ".join(f"--{a}" for a in attributes[:4]))
    p.add_argument("--boundaries", default=None, help="a boundary folder (default: the demo zoo's)")
    p.add_argument("--out", required=True, help="the edited photo (.png, .jpg)")
    p.set_defaults(run=cmd_edit, attribute_flags=attributes)

    p = commands.eval.add_parser("inversion", help="reconstruction, attribute agreement and editability of the "
                                                   "encoder, optimize and pti modes; real portraits' face MSE")
    p.add_argument("--faces", type=int, default=3, help="held-out renders (their ground truth is known)")
    p.add_argument("--seed", type=int, default=90_210, help="of the renders and the edited samples")
    p.add_argument("--portrait", action="append", default=[], help="a real photo to align and invert (repeatable)")
    p.add_argument("--astronaut", action="store_true", help="also scikit-image's public-domain astronaut portrait")
    p.add_argument("--steps", type=int, default=None, help="optimisation and tuning steps (default: PTI's 450 + 350)")
    p.add_argument("--edit-samples", type=int, default=64, help="random samples per edit on each generator; 0: skip")
    p.add_argument("--generator", default=None, help="default: the demo zoo's")
    p.add_argument("--encoder", default=None, help="default: the demo zoo's")
    p.add_argument("--scorer", default=None, help="default: the demo zoo's")
    p.add_argument("--boundaries", default=None, help="folder of .safetensors boundaries (default: the zoo's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the report here")
    p.set_defaults(run=cmd_eval_inversion)
