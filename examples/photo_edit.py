"""The README's photo-edit strip (docs/photo_edit.png): a zoo-style face on a larger photo, edited by the
encoder and after pivotal tuning with the README's `faceedit edit` commands, each the whole photo back.

    python examples/photo_edit.py --out docs/photo_edit.png      (make zoo-eval runs it)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from faceedit.cli import main as faceedit
from faceedit.images import grid, to_pil
from faceedit.synth.render import render_faces


def portrait(path: Path) -> Path:
    """A zoo-style face (one dlib finds) on a 560x460 plain background, as tests/test_photo_cli.py builds it."""
    faces, _ = render_faces(2, seed=5, size=256)
    photo = Image.new("RGB", (560, 460), (40, 90, 140))
    photo.paste(to_pil(faces[1:2])[0].resize((384, 384)), (120, 40))
    photo.save(path)
    return path


def edits(pti_steps: int) -> list[tuple[str, list[str]]]:
    """The README's two commands, after the photo: (caption, faceedit edit arguments)."""
    return [("encoder: smile +2, age +1", ["--smile", "2", "--age", "1"]),
            ("pivotal tuning: smile +2", ["--smile", "2", "--mode", "pti", "--steps", str(pti_steps)])]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/photo_edit.png"))
    parser.add_argument("--pti-steps", type=int, default=60, help="the README's 60")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        photo = portrait(Path(tmp) / "portrait.png")
        images = [Image.open(photo).convert("RGB")]
        for caption, argv in edits(args.pti_steps):
            out = Path(tmp) / f"edit{len(images)}.png"
            started = time.perf_counter()
            if faceedit(["edit", str(photo), *argv, "--out", str(out)]) != 0:
                raise SystemExit(f"faceedit edit {' '.join(argv)} failed")
            print(f"{caption}: {time.perf_counter() - started:.1f} s")
            images.append(Image.open(out).convert("RGB"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid(images, columns=len(images)).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
