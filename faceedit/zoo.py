"""Where the shipped demo models live: an explicit folder, $FACEEDIT_ZOO_DIR, or the checkout's `model_store/demo`.

The zoo (~87 MB of weights) is not packaged with the library: a wheel or non-editable install of faceedit
carries none, and there the folder comes from $FACEEDIT_ZOO_DIR (a checkout's `model_store/demo`, or a copy)
or from the `root` argument. Running from a checkout (editable install, PYTHONPATH, the container images'
/app), the checkout's own folder is the default.
"""

from __future__ import annotations

import os
from pathlib import Path

from faceedit.errors import NotFoundError

ZOO_ENV = "FACEEDIT_ZOO_DIR"
# The source tree this module runs from, if it runs from one (its pyproject.toml sits beside the package).
CHECKOUT = Path(__file__).resolve().parents[1]
FILES = {
    "generator": "generator.pt",
    "encoder": "encoder.pt",
    "scorer": "scorer.safetensors",
    "clip": "clip.safetensors",  # DIFA's judge of style
    "text_clip": "text_clip.safetensors",  # what text edits read, with the next: it sees expressions and glasses
    "text_clip_long": "text_clip_long.safetensors",  # the same recipe, twice the steps
}
TEXT_CLIPS = ("text_clip", "text_clip_long")  # text edits read these two as one (adaptation.clip.ClipEnsemble)


def text_clip_spec(root: str | Path | None = None) -> str:
    """The zoo's text-edit CLIPs as one "weights,weights" spec (faceedit.adaptation.clip.load_text_clip)."""
    found = paths(root)
    missing = [FILES[name] for name in TEXT_CLIPS if name not in found]
    if missing:
        raise NotFoundError("demo text CLIP", str(zoo_dir(root) / missing[0]), "train it (mk/zoo.mk)")
    return ",".join(str(found[name]) for name in TEXT_CLIPS)


def zoo_dir(root: str | Path | None = None) -> Path:
    """The demo zoo folder: `root` if given, else $FACEEDIT_ZOO_DIR if set, else `model_store/demo` of the
    checkout faceedit runs from. Installed outside a checkout with neither: NotFoundError saying what to set."""
    if root is not None:
        return Path(root).expanduser()
    override = os.environ.get(ZOO_ENV)
    if override:
        return Path(override).expanduser()
    if (CHECKOUT / "pyproject.toml").is_file():
        return CHECKOUT / "model_store" / "demo"
    raise NotFoundError("demo zoo", "model_store/demo",
                        f"faceedit is installed outside its checkout ({Path(__file__).resolve().parent}) and the "
                        f"zoo is not packaged: set {ZOO_ENV} to the zoo folder (a checkout's model_store/demo)")


def paths(root: str | Path | None = None) -> dict[str, Path]:
    """The shipped generator, encoder, scorer and CLIP files (those that exist) in `zoo_dir(root)`."""
    root = zoo_dir(root)
    found = {name: root / file for name, file in FILES.items() if (root / file).is_file()}
    if not found:
        raise NotFoundError("demo zoo", str(root), f"no models there; train them (see README) or set {ZOO_ENV}")
    return found


def boundaries(root: str | Path | None = None) -> dict[str, Path]:
    """The shipped InterfaceGAN boundaries, by attribute name: `zoo_dir(root)/boundaries/<attribute>.safetensors`."""
    folder = zoo_dir(root) / "boundaries"
    found = {p.stem: p for p in sorted(folder.glob("*.safetensors"))} if folder.is_dir() else {}
    if not found:
        raise NotFoundError("demo boundaries", str(folder), "train them with `faceedit train boundary`")
    return found
