"""`faceedit train clip | eval clip | eval adaptation | prepare clip-mean`:
the demo CLIP, DIFA on the zoo, its source mean."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from faceedit.cli.groups import CommandGroups


def cmd_train_clip(args: argparse.Namespace) -> int:
    import torch

    from faceedit.training.clip import DEMO_CLIP_CONFIG, ClipTrainConfig, export_clip, train_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    budget = args.time_budget_min * 60 if args.time_budget_min else None
    model_cfg = json.loads(json.dumps(DEMO_CLIP_CONFIG))
    if args.conv_stem:
        model_cfg["vision_cfg"]["conv_stem"] = True
    config = ClipTrainConfig(faces_per_style=args.faces_per_style, steps=args.steps, batch_size=args.batch_size,
                             lr=args.lr, eval_faces_per_style=args.eval_faces_per_style, seed=args.seed,
                             time_budget_s=budget, contrast_faces_per_style=args.contrast_faces_per_style,
                             contrast_fraction=args.contrast_fraction, pair_weight=args.pair_weight,
                             fact_weight=args.fact_weight, model_cfg=model_cfg)
    clip, record = train_clip(config)
    out = Path(args.out) if args.out else _zoo_file("clip")
    card = export_clip(clip, out, config, record, command=_command(args, "train clip"))
    print(json.dumps({"weights": str(out), "card": str(card), **record}, indent=2))
    return 0


def _command(args: argparse.Namespace, name: str) -> str:
    """The command with every effective option spelled out (defaults included), to reproduce a run."""
    import shlex

    parts = ["faceedit", *name.split()]
    for key, value in vars(args).items():
        if key in ("run", "command", "what") or value is None or value is False:
            continue
        parts += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return shlex.join(parts)


def _zoo_file(name: str) -> Path:
    from faceedit.zoo import FILES, zoo_dir

    return zoo_dir() / FILES[name]


def cmd_eval_clip(args: argparse.Namespace) -> int:
    from faceedit.adaptation.clip import ClipConfig, load_clip
    from faceedit.artifacts import sidecar_path
    from faceedit.training.cards import update_card
    from faceedit.training.clip import EVAL_SEED_OFFSET, prompt_directions, zero_shot_accuracy
    from faceedit.training.clip_data import render_set

    weights = Path(args.weights) if args.weights else _zoo_file("clip")
    card = Path(args.config) if args.config else sidecar_path(weights)
    clip = load_clip(ClipConfig(config_path=str(card), weights=str(weights)))
    faces = render_set(args.faces_per_style, args.seed + EVAL_SEED_OFFSET, clip.image_size)
    metrics = zero_shot_accuracy(clip, faces)
    directions = prompt_directions(clip, faces)
    print(json.dumps({"weights": str(weights), "held_out_faces": len(faces.styles), "zero_shot": metrics,
                      "prompt_directions": directions}, indent=2))
    if args.update_card:
        update_card(weights, metrics={"zero_shot_held_out": metrics, "prompt_directions_held_out": directions})
    return 0


def cmd_eval_adaptation(args: argparse.Namespace) -> int:
    import torch

    from faceedit.adaptation.clip import load_clip, parse_clip_spec
    from faceedit.adaptation.evaluate import AdaptationEvalConfig, evaluate_adaptation
    from faceedit.artifacts import sha256_file
    from faceedit.editing.boundary import load_boundaries
    from faceedit.errors import FaceEditError, InvalidInputError, NotFoundError
    from faceedit.models import load_encoder, load_generator
    from faceedit.synth import load_scorer
    from faceedit.zoo import boundaries as zoo_boundaries

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings = json.loads(args.difa_settings) if args.difa_settings else {}
    except json.JSONDecodeError as exc:
        raise InvalidInputError("--difa-settings", f"not JSON ({exc})") from None
    if not isinstance(settings, dict):
        raise InvalidInputError("--difa-settings", "must be a JSON object of DifaConfig settings")
    styles = tuple(s.strip() for s in args.styles.split(",") if s.strip()) if args.styles else None
    config = AdaptationEvalConfig(**({"styles": styles} if styles else {}), iterations=args.iterations,
                                  samples=args.samples, edit_samples=args.edit_samples, truncation=args.truncation,
                                  reference_seed=args.reference_seed, seed=args.seed, difa_settings=settings)
    generator_path = Path(args.generator) if args.generator else _zoo_file("generator")
    encoder_path = Path(args.encoder) if args.encoder else _zoo_file("encoder")
    for flag, path in (("--generator", generator_path), ("--encoder", encoder_path)):
        if not path.is_file():
            raise InvalidInputError(flag, f"{path} does not exist; train the demo zoo or pass {flag} PATH")
    base = load_generator(generator_path)
    encoder = load_encoder(encoder_path)
    clip_configs = parse_clip_spec(args.clip or str(_zoo_file("clip")), field="--clip")
    clips = [load_clip(c) for c in clip_configs]
    scorer = load_scorer(args.scorer)

    boundaries, note = None, ""
    try:
        if args.boundaries:
            files = {p.stem: p for p in sorted(Path(args.boundaries).glob("*.safetensors"))}
            if not files:
                raise NotFoundError("boundaries", args.boundaries, "no .safetensors boundaries there")
        else:
            files = zoo_boundaries()
        known = [name for name in files if name in scorer.config.attribute_names]
        boundaries = load_boundaries({n: files[n] for n in known}, sha256_file(generator_path)) or None
        if boundaries is None:
            note = "none of the boundaries is for an attribute the scorer reads"
    except FaceEditError as exc:  # missing, or trained for another generator: the other columns still count
        note = str(exc)

    report, sheet = evaluate_adaptation(base, encoder, clips, scorer, config, boundaries, note)
    table = report.table()
    print(table)
    record = {"command": _command(args, "eval adaptation"), "generator": str(generator_path),
              "encoder": str(encoder_path), "clips": [c.to_dict() for c in clip_configs],
              "threads": torch.get_num_threads(), **report.to_json()}
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    grid_path = docs / "before_after.png"
    sheet.save(grid_path)
    (docs / "README.md").write_text(
        "# DIFA one-shot adaptation of the demo zoo\n\n"
        f"`{grid_path.name}`: top row, base samples G_A(w); each further row, one rendered artwork (first cell) "
        "and the generator adapted to it, G_B(w), on the same w.\n\n"
        f"Command: `{record['command']}`\n\n" + table + "\n")
    json_path = Path(args.json) if args.json else docs / "adaptation.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {grid_path}, {docs / 'README.md'} and {json_path}")
    return 0


def cmd_prepare_clip_mean(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from faceedit.adaptation.blob_cache import DirectoryCache
    from faceedit.adaptation.clip import load_clip, parse_clip_spec
    from faceedit.adaptation.clip_mean import prepare_source_mean
    from faceedit.adaptation.difa_config import DifaConfig
    from faceedit.errors import InvalidInputError
    from faceedit.models import load_generator

    device = _device(args.device)
    generator_path = Path(args.generator) if args.generator else _zoo_file("generator")
    if not generator_path.is_file():
        raise InvalidInputError("--generator", f"{generator_path} does not exist; train the demo zoo or pass "
                                               "--generator PATH")
    clip_configs = parse_clip_spec(",".join(args.clip) if args.clip else str(_zoo_file("clip")), field="--clip")
    flags = {"clip_mean_samples": "--samples", "clip_mean_batch": "--batch-size"}
    try:
        config = DifaConfig(clips=clip_configs, clip_mean_samples=args.samples, clip_mean_batch=args.batch_size,
                            truncation=args.truncation)
    except InvalidInputError as exc:
        raise InvalidInputError(flags.get(exc.field, exc.field), exc.problem) from None
    generator = load_generator(generator_path, device=device)
    clips = [load_clip(c, device) for c in clip_configs]
    cache = DirectoryCache(args.cache)
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # only once something is computed: a cached run shows no bar
            bar = tqdm(total=total, unit="sample", desc="source CLIP mean")
        bar.update(done - bar.n)

    try:
        keys = prepare_source_mean(generator, clips, config, cache, progress)
    finally:
        if bar is not None:
            bar.close()
    for key, computed in keys.items():
        print(f"{'wrote' if computed else 'cached'} {key} (in {cache.root})")
    if not any(keys.values()):
        print("nothing to do: the cache already holds every mean")
    return 0


def _device(name: str | None) -> torch.device:
    import torch

    from faceedit.errors import InvalidInputError

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidInputError("--device", f"not a torch device ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device", f"{name}: CUDA is not available here")
    return device


def register(commands: CommandGroups) -> None:
    from faceedit.training.clip import ClipTrainConfig

    defaults = ClipTrainConfig()
    p = commands.train.add_parser("clip", help="train the demo CLIP on rendered, captioned faces")
    p.add_argument("--out", default=None, help="weights file (default: the zoo's clip.safetensors); the model "
                                               "card is written next to it as .json")
    p.add_argument("--faces-per-style", type=int, default=defaults.faces_per_style)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--eval-faces-per-style", type=int, default=defaults.eval_faces_per_style)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--time-budget-min", type=float, default=(defaults.time_budget_s or 0) / 60,
                   help="the whole run ends within this many minutes: a run measured too slow for it plans fewer "
                        "steps (the card records them); 0: no limit")
    p.add_argument("--contrast-fraction", type=float, default=defaults.contrast_fraction,
                   help="share of each batch made of one person at both ends of one attribute (0: none)")
    p.add_argument("--contrast-faces-per-style", type=int, default=defaults.contrast_faces_per_style)
    p.add_argument("--pair-weight", type=float, default=defaults.pair_weight,
                   help="weight of the contrastive loss within each pair")
    p.add_argument("--fact-weight", type=float, default=defaults.fact_weight,
                   help="weight of a linear probe reading every caption fact off the image embedding")
    p.add_argument("--conv-stem", action="store_true", help="convolutions in place of the ViT's patch embedding")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(run=cmd_train_clip)

    p = commands.eval.add_parser("clip", help="zero-shot attribute and style accuracy of a CLIP on held-out renders")
    p.add_argument("--weights", default=None, help="default: the zoo's clip.safetensors")
    p.add_argument("--config", default=None, help="model config or card JSON (default: the card next to the weights)")
    p.add_argument("--faces-per-style", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="the training seed; held-out faces are drawn far from it")
    p.add_argument("--update-card", action="store_true", help="write the figures into the model card")
    p.set_defaults(run=cmd_eval_clip)

    from faceedit.adaptation.evaluate import ARTISTIC_STYLES

    p = commands.eval.add_parser("adaptation", help="DIFA to one artwork per style: style rate, faithfulness, "
                                                    "diversity, edit success, time")
    p.add_argument("--generator", default=None, help="base generator (default: the zoo's generator.pt)")
    p.add_argument("--encoder", default=None, help="e4e encoder for the base (default: the zoo's encoder.pt)")
    p.add_argument("--clip", default=None, help="CLIP weights, '[architecture=]weights[,…]' (default: the zoo's "
                                                "clip.safetensors; its card gives the model config)")
    p.add_argument("--scorer", default=None, help="attribute scorer (default: the zoo's)")
    p.add_argument("--boundaries", default=None, help="folder of boundaries (default: the zoo's; without any, "
                                                      "the edit columns are skipped with a note)")
    p.add_argument("--styles", default=None, help=f"comma-separated (default: {','.join(ARTISTIC_STYLES)})")
    p.add_argument("--iterations", type=int, default=301)
    p.add_argument("--samples", type=int, default=64, help="w's scored per generator")
    p.add_argument("--edit-samples", type=int, default=64, help="w's edited per boundary and strength")
    p.add_argument("--truncation", type=float, default=0.7)
    p.add_argument("--reference-seed", type=int, default=0, help="which rendered face is the artwork")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--difa-settings", default=None, help="JSON object of DifaConfig settings, e.g. "
                                                         "'{\"clip_mean_samples\": 256}'")
    p.add_argument("--docs", default="docs/adaptation", help="folder for before_after.png, README.md and the JSON")
    p.add_argument("--json", default=None, help="default: <docs>/adaptation.json")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.set_defaults(run=cmd_eval_adaptation)

    from faceedit.adaptation.difa_config import DifaConfig

    difa = DifaConfig()
    prepare = commands.top.add_parser("prepare", help="compute what later runs reuse").add_subparsers(
        dest="what", required=True)
    p = prepare.add_parser("clip-mean", help="cache DIFA's mean source CLIP embedding (minutes at 1024 px) before "
                                             "any adaptation needs it; does nothing when it is cached already")
    p.add_argument("--generator", default=None, help="base generator (default: the zoo's generator.pt)")
    p.add_argument("--clip", action="append", default=None,
                   help="CLIP weights, '[architecture=]weights[,…]', repeatable (default: the zoo's "
                        "clip.safetensors)")
    p.add_argument("--cache", required=True,
                   help="folder the means are kept in; the adaptation worker's is <artifact store>/cache (with the "
                        "default file:// store, run/artifacts/cache), so pointing this there warms the worker")
    p.add_argument("--samples", type=int, default=difa.clip_mean_samples,
                   help="source samples (part of the key: match the worker's clip_mean_samples)")
    p.add_argument("--batch-size", type=int, default=difa.clip_mean_batch)
    p.add_argument("--truncation", type=float, default=difa.truncation,
                   help="part of the key: match the worker's truncation")
    p.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    p.set_defaults(run=cmd_prepare_clip_mean)
