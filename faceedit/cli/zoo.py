"""`faceedit train generator | encoder | scorer` and `faceedit eval zoo`: build and measure the demo zoo."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faceedit.cli.groups import CommandGroups


def _command_line() -> str:
    return "faceedit " + shlex.join(sys.argv[1:])


def _budget(minutes: float | None) -> float | None:
    return None if minutes is None else minutes * 60


def cmd_train_generator(args: argparse.Namespace) -> int:
    from faceedit.synth import load_scorer
    from faceedit.training.generator import GeneratorTrainingConfig, train_demo_generator
    from faceedit.zoo import zoo_dir

    weights = {} if args.perceptual_weight is None else {"perceptual_weight": args.perceptual_weight}
    config = GeneratorTrainingConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
                                     **weights)
    out = Path(args.out) if args.out else zoo_dir() / "generator.pt"
    scorer = load_scorer(args.scorer) if config.perceptual_weight else None
    train_demo_generator(config, Path(args.work_dir), out, time_budget_s=_budget(args.time_budget_min), scorer=scorer,
                         command=_command_line(), stop_at_step=args.stop_at_step)
    print(f"wrote {out} and its model card {out.with_suffix('.json').name}")
    return 0


def cmd_train_encoder(args: argparse.Namespace) -> int:
    from faceedit.training.encoder import EncoderTrainingConfig, train_demo_encoder
    from faceedit.zoo import zoo_dir

    config = EncoderTrainingConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    generator = Path(args.generator) if args.generator else zoo_dir() / "generator.pt"
    out = Path(args.out) if args.out else zoo_dir() / "encoder.pt"
    train_demo_encoder(config, generator, Path(args.work_dir), out, time_budget_s=_budget(args.time_budget_min),
                       command=_command_line(), stop_at_step=args.stop_at_step)
    print(f"wrote {out} and its model card {out.with_suffix('.json').name}")
    return 0


def cmd_train_scorer(args: argparse.Namespace) -> int:
    from faceedit.training import scorer

    return scorer.run(args, _command_line())


def _independent_embedder(spec: str | Path | None):
    """The image encoder of the CLIP that `spec` names ("[architecture=]weights"; the demo CLIP was
    trained on renders and never seen by the generator's training), or None."""
    if spec is None:
        return None
    from faceedit.adaptation.clip import load_clip, parse_clip_spec

    return load_clip(parse_clip_spec(str(spec), field="clip")[0]).encode_image


def cmd_eval_zoo(args: argparse.Namespace) -> int:
    from faceedit.models import load_encoder, load_generator
    from faceedit.synth import load_scorer
    from faceedit.training.cards import update_card
    from faceedit.training.evaluate import (
        ZooEvalConfig,
        format_report,
        inversion_quality,
        sample_quality,
        write_figures,
    )
    from faceedit.zoo import paths

    files = paths()
    generator = load_generator(args.generator or files["generator"])
    encoder_path = args.encoder or files.get("encoder")
    encoder = load_encoder(encoder_path) if encoder_path else None
    scorer = load_scorer(args.scorer)
    config = ZooEvalConfig(n_samples=args.n_samples, n_inversion=args.n_inversion, seed=args.seed)
    sample = sample_quality(generator, scorer, config,
                            independent=_independent_embedder(args.clip or files.get("clip")))
    inversion = inversion_quality(generator, encoder, scorer, config) if encoder is not None else None
    print(format_report(sample, inversion))
    if args.docs:
        for path in write_figures(generator, encoder, Path(args.docs)):
            print(f"wrote {path}")
    if args.json:
        Path(args.json).write_text(json.dumps({"samples": sample, "inversion": inversion}, indent=2) + "\n")
    if args.write_cards:
        evaluation = {"command": _command_line(), "config": vars(config)}
        update_card(Path(args.generator or files["generator"]), metrics={"samples": sample, "evaluation": evaluation})
        if inversion is not None:
            update_card(Path(encoder_path), metrics={"inversion": inversion, "evaluation": evaluation})
        print("updated the model cards")
    return 0


def register(commands: CommandGroups) -> None:
    p = commands.train.add_parser("generator", help="distil the face renderer into the demo StyleGAN2 (resumable)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--scorer", default=None, help="perceptual critic (default: the zoo's scorer)")
    p.add_argument("--perceptual-weight", type=float, default=None,
                   help="weight of the scorer's feature and attribute distances "
                        "(0: pixels only; default: the config's)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    _resumable(p, "generator", "; resume later, maybe with more --steps")
    p.set_defaults(run=cmd_train_generator)

    p = commands.train.add_parser("encoder", help="train the demo e4e encoder for a generator (resumable)")
    p.add_argument("--generator", default=None, help="default: the zoo's generator.pt")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=16)
    _resumable(p, "encoder")
    p.set_defaults(run=cmd_train_encoder)

    from faceedit.training.scorer import add_arguments

    p = commands.train.add_parser("scorer", help="train the attribute and style scorer on renders")
    add_arguments(p)
    p.set_defaults(run=cmd_train_scorer)

    p = commands.eval.add_parser("zoo", help="sample quality and inversion metrics of the demo zoo")
    p.add_argument("--generator", default=None)
    p.add_argument("--encoder", default=None)
    p.add_argument("--scorer", default=None)
    p.add_argument("--clip", default=None,
                   help="CLIP for the independent KID, \"[architecture=]weights\" (default: the zoo's CLIP)")
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--n-inversion", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--docs", default=None, help="also write samples.png and inversion.png here (e.g. docs/zoo)")
    p.add_argument("--json", default=None, help="also write the metrics as JSON")
    p.add_argument("--write-cards", action="store_true", help="record the metrics in the model cards")
    p.set_defaults(run=cmd_eval_zoo)


def _resumable(p: argparse.ArgumentParser, model: str, stop_hint: str = "") -> None:
    """The arguments every resumable zoo trainer takes: seed, work dir, output and where to stop."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", default=f"runs/{model}", help="training state, resumed from if present")
    p.add_argument("--out", default=None, help=f"default: the zoo's {model}.pt")
    p.add_argument("--time-budget-min", type=float, default=None, help="stop (resumably) after this long")
    p.add_argument("--stop-at-step", type=int, default=None,
                   help=f"stop (resumably) at this step of the --steps schedule{stop_hint}")
