"""Client session against a running stack: sample, invert, edit, animate, adapt, and edit a real portrait
(aligned, pivotal tuning, pasted back into the whole photo); images to out/ and a summary."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import uuid
from pathlib import Path

from PIL import Image

from faceedit_client import Adaptation, FaceEditClient, FaceEditClientError, Step

UPSCALE = 4  # the demo generator is 64 px: enlarge so the files are easy to look at


def _api_key(args: argparse.Namespace) -> str:
    if os.environ.get("FACEEDIT_API_KEY"):
        return os.environ["FACEEDIT_API_KEY"]
    path = args.api_keys_file or os.environ.get("FACEEDIT_API_KEYS_FILE")
    if not path:
        sys.exit("set FACEEDIT_API_KEY, or FACEEDIT_API_KEYS_FILE to the stack's api_keys.json")
    return next(iter(json.loads(Path(path).read_text())))


def _pil(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def _save(out: Path, name: str, data: bytes, written: list[str]) -> Image.Image:
    image = _pil(data)
    image.resize((image.width * UPSCALE, image.height * UPSCALE), Image.NEAREST).save(out / name)
    written.append(name)
    return image


def _sheet(images: list[Image.Image], out: Path, name: str, written: list[str]) -> None:
    from faceedit.images import grid, upscale

    upscale(grid(images, columns=min(len(images), 8)), UPSCALE).save(out / name)
    written.append(name)


def _photo(size: int, seed: int, style: str = "photo") -> bytes:
    """A face the generator never produced: the synthetic renderer stands in for an uploaded photo."""
    from faceedit.images import to_pil
    from faceedit.synth import render_faces

    images, _ = render_faces(1, seed=seed, size=size, style=style)
    buffer = io.BytesIO()
    to_pil(images)[0].save(buffer, format="PNG")
    return buffer.getvalue()


def _portrait() -> bytes:
    """A real photo: scikit-image's public-domain astronaut portrait (NASA; shipped inside its wheel)."""
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


def _portrait_edits(client: FaceEditClient, attributes: list, out: Path, steps: int, timed, written: list[str]) -> None:
    """The product's main use: this person, smiling and older, in their own photo."""
    portrait = _portrait()
    (out / "portrait.png").write_bytes(portrait)
    with timed("Invert a portrait (aligned; photo kept)"):
        inversion = client.invert(portrait, align=True)
    by_name = {a.name: a for a in attributes if a.space == "w"}
    wanted = [by_name[n] for n in ("smile", "age") if n in by_name] or list(by_name.values())[:2]
    with timed("Pivotal tuning job (create + wait)"):
        job = client.create_tuning(inversion.latent_id, idempotency_key=f"demo-tune-{uuid.uuid4().hex}",
                                   display_name="astronaut", steps=steps)
        done = client.wait_for_adaptation(job.name, timeout_s=1800, poll_s=1.0)
    print(f"tuned generator: {done.generator_id}, pivot {done.pivot_latent_id}")
    row = [_pil(portrait)]
    with timed("Edit + paste back (encoder, tuned)"):
        encoder_only = client.edit([], latent_id=inversion.latent_id, paste_back=True)
        tuned = client.edit([], latent_id=done.pivot_latent_id, generator_id=done.generator_id, paste_back=True)
    for name, result in (("portrait_encoder.png", encoder_only), ("portrait_tuned.png", tuned)):
        (out / name).write_bytes(result.image.data)
        written.append(name)
        row.append(_pil(result.image.data))
    with timed(f"Edit x{len(wanted)} on the tuned generator, pasted back"):
        for a in wanted:
            result = client.edit([Step(a.name, 0.8 * a.recommended_max)], latent_id=done.pivot_latent_id,
                                 generator_id=done.generator_id, paste_back=True)
            name = f"portrait_{a.name}.png"
            (out / name).write_bytes(result.image.data)
            written.append(name)
            row.append(_pil(result.image.data))
    from faceedit.images import grid

    grid([im.resize((256, 256)) for im in row], columns=len(row)).save(out / "portrait_edits.png")
    written.append("portrait_edits.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default=os.environ.get("FACEEDIT_EDITOR_TARGET", "127.0.0.1:50051"))
    parser.add_argument("--api-keys-file", default="")
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--adapt-steps", type=int, default=int(os.environ.get("FACEEDIT_DEMO_ADAPT_STEPS", "40")))
    parser.add_argument("--tune-steps", type=int, default=int(os.environ.get("FACEEDIT_DEMO_TUNE_STEPS", "100")),
                        help="pivotal tuning steps for the portrait (after the pivot's optimisation)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    timings: list[tuple[str, float]] = []

    def timed(label: str):
        class _T:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                timings.append((label, time.perf_counter() - self.t))
        return _T()

    with FaceEditClient(args.target, _api_key(args), timeout_s=120) as client:
        with timed("ListGenerators + ListAttributes"):
            generators = client.list_generators()
            attributes = client.list_attributes()
        base = next(g for g in generators if g.kind == "base")
        print(f"generator {base.id}: {base.size} px, W+ {base.n_latent}x{base.style_dim}")
        for a in attributes:
            # Official direction files record no accuracy; Z-space ones edit seeds only.
            accuracy = "unknown" if a.accuracy is None else f"{a.accuracy:.2f}"
            print(f"  attribute {a.name:<12} {a.space.upper()}  accuracy {accuracy:<7}  "
                  f"recommended [{a.recommended_min:+.2f}, {a.recommended_max:+.2f}]"
                  f"  layers {a.default_layers or 'all'}"
                  f"  ({a.format} {a.source})")

        with timed("Generate (8 seeds)"):
            faces = client.generate(list(range(1, 9)), truncation=0.7)
        _sheet([_pil(f.image.data) for f in faces], out, "samples.png", written)

        photo = _photo(base.size, seed=2024)
        _save(out, "invert_input.png", photo, written)
        with timed("Invert"):
            inversion = client.invert(photo)
        _save(out, "invert_reconstruction.png", inversion.reconstruction.data, written)

        chosen = [a for a in attributes if a.space == "w"][:4]  # an inverted latent has no z to move
        edits = [_pil(inversion.reconstruction.data)]
        with timed(f"Edit x{2 * len(chosen)}"):
            for a in chosen:
                for sign, bound in (("minus", a.recommended_min), ("plus", a.recommended_max)):
                    result = client.edit([Step(a.name, 0.9 * bound)], latent_id=inversion.latent_id)
                    edits.append(_save(out, f"edit_{a.name}_{sign}.png", result.image.data, written))
        if chosen:
            _sheet(edits, out, "edits.png", written)
        if len(chosen) >= 2:
            a, b = chosen[0], chosen[1]
            with timed("Edit (two steps, conditioned)"):
                combined = client.edit([Step(a.name, 0.8 * a.recommended_max, conditions=[b.name]),
                                        Step(b.name, 0.8 * b.recommended_max, layers="fine")],
                                       latent_id=inversion.latent_id)
            _save(out, f"edit_{a.name}_and_{b.name}.png", combined.image.data, written)

        if chosen:
            a = chosen[0]
            frames = 0
            with timed("Animate (16 frames + GIF)"):
                for item in client.animate([Step(a.name, max(abs(a.recommended_min), abs(a.recommended_max)))],
                                           latent_id=inversion.latent_id, frames=16, start=-1, end=1,
                                           animation="gif", frame_duration_ms=90):
                    if hasattr(item, "index"):
                        frames += 1
                    else:
                        (out / f"animation_{a.name}.gif").write_bytes(item.data)
                        written.append(f"animation_{a.name}.gif")
            print(f"animation: {frames} frames streamed")

        style = _photo(base.size, seed=77, style="comic")
        _save(out, "adapt_target.png", style, written)

        def progress(job: Adaptation) -> None:
            print(f"  adaptation {job.name}: {job.state:<9} {job.progress * 100:5.1f}%  {job.message}", flush=True)

        with timed("Adaptation job (create + wait)"):
            job = client.create_adaptation(style, idempotency_key=f"demo-{uuid.uuid4().hex}",
                                           display_name="comic style", steps=args.adapt_steps)
            done = client.wait_for_adaptation(job.name, timeout_s=1800, poll_s=1.0, on_progress=progress)
        print(f"adapted generator: {done.generator_id}")
        # As in the report: the artwork is inverted with the base encoder, then rendered and edited
        # on the generator adapted to it (the same boundaries apply).
        with timed("Invert the artwork"):
            artwork = client.invert(style)
        with timed("Edit with the adapted generator"):
            adapted = [client.edit([], latent_id=artwork.latent_id, generator_id=done.generator_id)]
            if chosen:
                adapted.append(client.edit([Step(chosen[0].name, 0.9 * chosen[0].recommended_max)],
                                           latent_id=artwork.latent_id, generator_id=done.generator_id))
        images = [_save(out, f"adapted_{i}.png", r.image.data, written) for i, r in enumerate(adapted)]
        _sheet([_pil(style), _pil(artwork.reconstruction.data), *images], out, "adapted.png", written)

        _portrait_edits(client, attributes, out, args.tune_steps, timed, written)

    print("\nsummary")
    for label, seconds in timings:
        print(f"  {label:<34} {seconds * 1000:9.1f} ms")
    print(f"  {len(written)} images in {out.resolve()}: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FaceEditClientError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
