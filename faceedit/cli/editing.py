"""`faceedit train boundary` and `faceedit eval edits`: InterfaceGAN boundaries for the demo zoo and their quality."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from faceedit.errors import InvalidInputError, NotFoundError

# The documented sequence that builds and measures the demo zoo's boundaries (README, docs/edits),
# run from the repository root. Sized for the 64 px zoo generator on 2 CPU cores: a scaled-down
# run of a generator of that shape took ~21 ms of one core per sampled face and ~24 ms per
# evaluated one, so ~7 core-minutes for 20k boundary samples and ~4.5 for the evaluation
# (10,176 faces plus pictures): about 7 minutes of wall time with torch on both cores.
ZOO_COMMANDS = """\
faceedit train boundary --n 20000
faceedit eval edits --n 192 --record --json model_store/demo/boundaries/edit_quality.json --docs docs/edits"""
# Attributes the animation sweeps by default: one pose, two expression and one appearance edit.
DEFAULT_ANIMATED = ("age", "smile", "yaw", "glasses")

if TYPE_CHECKING:
    from faceedit.cli.groups import CommandGroups
    from faceedit.models import Generator


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _select(available: Iterable[str], names: list[str] | None) -> list[str]:
    """Requested attributes (None = all available), each checked: an unknown one is a NotFoundError naming it."""
    available = list(available)
    for name in names or []:
        if name not in available:
            raise NotFoundError("attribute", name, f"known: {', '.join(sorted(available))}")
    return list(names) if names else available


def _generator(path: str | None) -> tuple[Generator, str, Path]:
    from faceedit.artifacts import sha256_file
    from faceedit.models import load_generator
    from faceedit.zoo import paths

    path = Path(path) if path else paths().get("generator")
    if path is None:
        raise InvalidInputError("--generator", "the demo zoo has no generator.pt yet; pass --generator PATH")
    return load_generator(path), sha256_file(path), path


def cmd_train_ganspace(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from faceedit.artifacts import sha256_file, write_sidecar
    from faceedit.editing.unsupervised import compute_ganspace, save_ganspace
    from faceedit.zoo import zoo_dir

    generator, generator_sha, _ = _generator(args.generator)
    basis = compute_ganspace(generator.eval(), n=args.n, components=args.components, seed=args.seed)
    out = save_ganspace(Path(args.out) if args.out else zoo_dir() / "ganspace.pt", basis)
    write_sidecar(out, {"kind": "ganspace", "generator_sha256": generator_sha, "samples": args.n,
                        "std": [round(float(v), 5) for v in basis.std],
                        "training": {"command": "faceedit " + shlex.join(sys.argv[1:])}}, sha256=sha256_file(out))
    print(f"wrote {out}: {args.components} components of W from {args.n} samples; std {basis.std[:4].tolist()} ...")
    return 0


def cmd_train_boundary(args: argparse.Namespace) -> int:
    import torch

    from faceedit.artifacts import sha256_file
    from faceedit.editing.boundary import MAX_SAMPLES, check_count, check_selection, sample_scores, train_boundaries
    from faceedit.editing.layers import resolve_layers
    from faceedit.synth.scorer import default_scorer_path, load_scorer
    from faceedit.zoo import zoo_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    # Every argument is checked before the sampling, which takes minutes.
    check_selection(check_count(args.n, "--n", 4, MAX_SAMPLES), args.ratio, args.split)
    generator, generator_sha, generator_path = _generator(args.generator)
    scorer_path = Path(args.scorer) if args.scorer else default_scorer_path()
    scorer = load_scorer(scorer_path)
    attributes = _select(scorer.config.attribute_names, _names(args.attributes))
    layers = None if args.layers is None else resolve_layers(args.layers, generator.n_latent, field="--layers")
    out_dir = Path(args.out_dir) if args.out_dir else zoo_dir() / "boundaries"

    started = time.monotonic()
    samples = sample_scores(generator, scorer.score, n=args.n, batch_size=args.batch_size, seed=args.seed,
                            truncation=args.truncation, attributes=attributes, progress=True)
    sampled_s = time.monotonic() - started
    arguments = {k: v for k, v in vars(args).items() if k not in ("run", "command", "what")}
    trained, failed = train_boundaries(
        samples, attributes, out_dir, generator_sha, ratio=args.ratio, split=args.split, layers=layers,
        info={"scorer_sha256": sha256_file(scorer_path), "generator_file": generator_path.name,
              "command": "faceedit train boundary", "arguments": arguments, "sampling_s": round(sampled_s, 1),
              "threads": torch.get_num_threads()},
        progress=True)
    print(f"{args.n} samples in {sampled_s:.0f} s; {len(trained)} boundaries in {out_dir} "
          f"({time.monotonic() - started - sampled_s:.0f} s of SVM fitting)")
    print("| attribute | val. acc. | remaining acc. | recommended strength |")
    print("|---|---|---|---|")
    for name, b in trained.items():
        low, high = b.strength_range
        remaining = "-" if b.remaining_accuracy is None else f"{b.remaining_accuracy:.3f}"
        print(f"| {name} | {b.accuracy:.3f} | {remaining} | [{low:.2f}, {high:.2f}] |")
    for name, exc in failed.items():
        print(f"error: {name}: no boundary ({exc})")
    return 1 if failed else 0


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError("--fractions", f"expected comma-separated numbers like -1,1, got {text!r}") from None


def cmd_eval_edits(args: argparse.Namespace) -> int:
    import torch

    from faceedit.editing.boundary import check_count, load_boundaries
    from faceedit.editing.media import edit_animation, edit_strip, strip_strengths
    from faceedit.editing.ops import Edit
    from faceedit.editing.quality import evaluate_edits
    from faceedit.synth.scorer import load_scorer
    from faceedit.zoo import boundaries as zoo_boundaries

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.monotonic()
    strip_rows = check_count(args.strip_rows, "--strip-rows", 1, 64)
    frames = check_count(args.frames, "--frames", 2, 250)
    generator, generator_sha, _ = _generator(args.generator)
    scorer = load_scorer(args.scorer)
    if args.boundaries:
        files = {p.stem: p for p in sorted(Path(args.boundaries).glob("*.safetensors"))}
        if not files:
            raise InvalidInputError("--boundaries", f"no .safetensors boundaries in {args.boundaries}")
    else:
        files = zoo_boundaries()
    order = list(scorer.config.attribute_names)
    # The scorer's order, so the table reads like the attribute list; unknown names go last.
    names = sorted(_select(files, _names(args.attributes)), key=lambda n: order.index(n) if n in order else len(order))
    boundaries = load_boundaries({n: files[n] for n in names}, generator_sha)
    if args.animate:
        animated = _select(boundaries, _names(args.animate))
    else:
        animated = [n for n in DEFAULT_ANIMATED if n in boundaries] or list(boundaries)[:len(DEFAULT_ANIMATED)]
    report = evaluate_edits(generator, scorer, boundaries, n=args.n, fractions=_fractions(args.fractions),
                            margin=args.margin, seed=args.seed, batch_size=args.batch_size,
                            truncation=args.truncation, progress=True)
    print(report.table())
    measured = report.to_dict()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"generator_sha256": generator_sha, **measured}, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.record:
        from faceedit.editing.directions import update_boundary_metadata

        for name in boundaries:
            cells = [m for m in measured["measurements"] if m["attribute"] == name]
            update_boundary_metadata(files[name], edit_quality={
                "n_samples": report.n_samples, "margin": report.margin, "measurements": cells,
                "reference_drift": report.reference_drift,
                "conditioning_effect": measured["conditioning_effect"].get(name)})
        print(f"recorded the measurements in the sidecars of {len(boundaries)} boundaries")
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        z = torch.randn(strip_rows, generator.style_dim, generator=torch.Generator().manual_seed(args.seed + 1))
        with torch.inference_mode():
            ws = generator.broadcast(generator.truncate(generator.mapping(z), args.truncation)).contiguous()
        for name, b in boundaries.items():
            edit = Edit(b.normal, 1.0, layers=b.metadata.get("layers"))
            edit_strip(generator, ws, edit, strip_strengths(*b.strength_range)).save(docs / f"{name}.png")
        sweeps = [(Edit(boundaries[n].normal, 1.0, layers=boundaries[n].metadata.get("layers")),
                   *boundaries[n].strength_range) for n in animated]
        path = edit_animation(generator, ws[:4], sweeps, docs / args.animation_name, frames_per_sweep=frames)
        (docs / "README.md").write_text(
            "# Edits of the demo zoo\n\n"
            f"`<attribute>.png`: {ws.shape[0]} faces (rows), edited from the low to the high end of each boundary's "
            "recommended strength range; the unedited face is the middle column. "
            f"`{path.name}`: the first faces swept through {', '.join(animated)}.\n\n"
            f"Generator sha256 `{generator_sha[:16]}…`. Rebuild the boundaries and this folder with:\n\n"
            f"```\n{ZOO_COMMANDS}\n```\n\n" + report.table() + "\n")
        print(f"wrote {len(boundaries)} strips, {path.name} and README.md to {docs}")
    print(f"evaluated {len(boundaries)} attributes in {time.monotonic() - started:.0f} s")
    return 0


def register(commands: CommandGroups) -> None:
    p = commands.train.add_parser("ganspace", help="GANSpace: principal components of sampled W, listed by a "
                                                   "boundary set with components: all as ganspace:K")
    p.add_argument("--generator", help="generator checkpoint (default: the demo zoo's)")
    p.add_argument("--n", type=int, default=20_000, help="w's sampled")
    p.add_argument("--components", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="default: <zoo>/ganspace.pt")
    p.set_defaults(run=cmd_train_ganspace)

    epilog = f"The demo zoo's boundaries, their measurements and docs/edits are built by:\n{ZOO_COMMANDS}"
    p = commands.train.add_parser("boundary", help="InterfaceGAN boundaries (linear SVMs in W) for scorer attributes",
                                  epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", help="generator checkpoint (default: the demo zoo's)")
    p.add_argument("--scorer", help="attribute scorer (default: the demo zoo's)")
    p.add_argument("--attributes", help="comma-separated (default: every attribute the scorer knows)")
    p.add_argument("--n", type=int, default=20_000, help="latents to sample and score")
    p.add_argument("--batch-size", type=int, default=16, help="images synthesised at once")
    p.add_argument("--ratio", type=float, default=0.02, help="top and bottom fraction (or count) used as classes")
    p.add_argument("--split", type=float, default=0.7, help="train fraction of the chosen samples")
    p.add_argument("--truncation", type=float, default=1.0)
    p.add_argument("--layers", help="W+ layers the edits should touch: coarse/middle/fine or '0-3' (default all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", help="default: <zoo>/boundaries")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(run=cmd_train_boundary)

    p = commands.eval.add_parser("edits", help="success rate, entanglement and drift of the boundary edits",
                                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generator", help="generator checkpoint (default: the demo zoo's)")
    p.add_argument("--scorer", help="attribute scorer (default: the demo zoo's)")
    p.add_argument("--boundaries", help="folder of .safetensors boundaries (default: <zoo>/boundaries)")
    p.add_argument("--attributes", help="comma-separated (default: every boundary)")
    p.add_argument("--n", type=int, default=192, help="samples edited per attribute and strength")
    p.add_argument("--fractions", default="-1,1", help="strengths as fractions of each recommended range")
    p.add_argument("--margin", type=float, default=0.1, help="success threshold, as a fraction of the range")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16, help="images synthesised at once")
    p.add_argument("--truncation", type=float, default=1.0, help="psi of the evaluated samples and the pictures")
    p.add_argument("--json", help="also write the measurements here (for the model card)")
    p.add_argument("--record", action="store_true", help="store each attribute's measurements in its boundary JSON")
    p.add_argument("--docs", help="write <attribute>.png edit strips and an animation into this folder")
    p.add_argument("--strip-rows", type=int, default=4)
    p.add_argument("--animate", default=None,
                   help=f"attributes of the animation (default: those of {','.join(DEFAULT_ANIMATED)} with a boundary)")
    p.add_argument("--animation-name", default="animation.gif")
    p.add_argument("--frames", type=int, default=16, help="animation frames per leg of each sweep")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(run=cmd_eval_edits)
