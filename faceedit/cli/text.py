"""`faceedit eval text`: StyleCLIP global-direction edits on the demo zoo, measured against its boundaries."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faceedit.cli.groups import CommandGroups


def cmd_eval_text(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from faceedit.adaptation.blob_cache import DirectoryCache
    from faceedit.adaptation.clip import load_text_clip
    from faceedit.editing.boundary import load_boundaries
    from faceedit.editing.text import RelevanceConfig, apply_text_direction, cached_channel_relevance, text_direction
    from faceedit.editing.text_quality import PROMPTS, TextPrompt, evaluate_text_edits
    from faceedit.images import grid, to_pil, upscale
    from faceedit.models import load_generator
    from faceedit.synth.scorer import load_scorer
    from faceedit.zoo import boundaries as zoo_boundaries
    from faceedit.zoo import paths, text_clip_spec

    if args.threads:
        torch.set_num_threads(args.threads)
    zoo = paths()
    generator = load_generator(args.generator or zoo["generator"]).eval()
    clip = load_text_clip(args.clip or text_clip_spec(), field="--clip")
    scorer = load_scorer(args.scorer).eval()
    files = zoo_boundaries()
    boundaries = load_boundaries({n: files[n] for n in scorer.config.attribute_names if n in files})
    config = RelevanceConfig(samples=args.relevance_samples)
    with tqdm(unit="channel", desc="channel relevance") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        relevance = cached_channel_relevance(generator, clip, DirectoryCache(args.cache), config, progress)
    if args.export:
        # For a model configuration's `relevance:` (the worker then uses it instead of computing it).
        import shlex
        import sys

        from faceedit.artifacts import write_sidecar
        from faceedit.editing.text import KEY_FIELD, relevance_key

        key = relevance_key(generator, clip, config)
        out = Path(args.export)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(relevance.to_bytes({KEY_FIELD: key}))
        write_sidecar(out, {"kind": "channel_relevance", "relevance_key": key, "channels": sum(relevance.widths),
                            "samples": config.samples, "training": {"command": "faceedit " + shlex.join(sys.argv[1:])}})
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): the relevance of {sum(relevance.widths)} channels")
    prompts = [TextPrompt(p, "custom", 1.0) for p in args.prompt] if args.prompt else list(PROMPTS)
    report = evaluate_text_edits(generator, clip, scorer, relevance, boundaries, prompts, n=args.n,
                                 strength=args.strength, threshold=args.threshold, seed=args.seed)
    print(report.table())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if args.docs:
        # A strip per prompt: the same samples, unedited (first row) and edited by each prompt.
        out = Path(args.docs)
        out.mkdir(parents=True, exist_ok=True)
        z = torch.randn(args.strip_samples, generator.style_dim, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            ws = generator.broadcast(generator.truncate(generator.mapping(z), 0.7))
            styles = generator.styles(ws)
            rows = [generator.synthesis(ws)]
            for p in prompts:
                direction = text_direction(relevance, clip, p.text, threshold=args.threshold)
                rows.append(generator.synthesis_from_styles(apply_text_direction(styles, relevance, direction,
                                                                                 args.strength)))
        cells = [image for row in rows for image in to_pil(row)]
        upscale(grid(cells, columns=args.strip_samples), 2).save(out / "text_edits.png")
        print(f"wrote {out / 'text_edits.png'}: rows = unedited, then {[p.text for p in prompts]}")
    return 0


def register(commands: CommandGroups) -> None:
    p = commands.eval.add_parser("text", help="text-driven edits (StyleCLIP global directions): success of each "
                                              "prompt on the attribute it names, next to that attribute's boundary")
    p.add_argument("--generator", default=None, help="default: the demo zoo's")
    p.add_argument("--clip", default=None,
                   help="CLIP weights with a card beside them, or several comma-separated, read as one "
                        "(default: the zoo's text_clip.safetensors,text_clip_long.safetensors)")
    p.add_argument("--scorer", default=None, help="default: the demo zoo's")
    p.add_argument("--prompt", action="append", default=[], help="measure this prompt (repeatable; default: the "
                                                                 "seven the product promises)")
    p.add_argument("--n", type=int, default=64, help="samples edited per prompt")
    p.add_argument("--strength", type=float, default=4.0, help="α, in standard deviations of each channel")
    p.add_argument("--threshold", type=float, default=0.1, help="β: channels whose relevance agrees less are left")
    p.add_argument("--relevance-samples", type=int, default=16, help="samples per channel push (StyleCLIP: 100)")
    p.add_argument("--cache", default="runs/relevance", help="where the channel relevance is cached")
    p.add_argument("--seed", type=int, default=1, help="which samples are edited (the strip's are fixed)")
    p.add_argument("--strip-samples", type=int, default=6)
    p.add_argument("--docs", default=None, help="also write text_edits.png here (e.g. docs/text)")
    p.add_argument("--export", default=None, help="also write the relevance here, for a model configuration's "
                                                  "relevance: (e.g. model_store/demo/relevance.safetensors)")
    p.add_argument("--json", default=None)
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(run=cmd_eval_text)
