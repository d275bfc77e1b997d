"""The `faceedit` command line: one parser; each module under faceedit.cli registers its commands."""

from __future__ import annotations

import argparse
import sys

from faceedit.cli.groups import CommandGroups
from faceedit.errors import FaceEditError


def build_parser() -> argparse.ArgumentParser:
    from faceedit.cli import adaptation, editing, models, photo, text, zoo

    parser = argparse.ArgumentParser(prog="faceedit", description="GAN face editing tools")
    top = parser.add_subparsers(dest="command", required=True)
    train = top.add_parser("train", help="train a demo-zoo model").add_subparsers(dest="what", required=True)
    evaluate = top.add_parser("eval", help="measure the demo zoo").add_subparsers(dest="what", required=True)
    groups = CommandGroups(top, train, evaluate)
    for module in (models, zoo, editing, adaptation, photo, text):
        module.register(groups)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except FaceEditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
