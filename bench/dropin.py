"""Real weights drop-in end to end: random-weight files in official layouts, one models.yaml, the stack, calls timed.

What a product team does with the official FFHQ files, with random weights of exactly those layouts
(the official files may not be shipped): rosinality's converted `stylegan2-ffhq-config-f.pt`
(`{g_ema, latent_avg}`, checked key for key against ../shared/reference/manifests), an e4e checkpoint
(`{state_dict: encoder.* + decoder.*, opts, latent_avg}`), the official InterfaceGAN `.npy` and e4e
`.pt` direction files from ../shared/reference/directions, and a CLIP. A models.yaml names them; the
launcher starts the stack with it (what `make demo-up MODELS=...` runs); a client then calls every
RPC, and each process's peak RSS is read at the end.

    python bench/dropin.py --size 1024            # ~10 min on 2 CPU cores; files are built in a temp dir
    python bench/dropin.py --size 64 --encoder small --clip demo   # what tests/services/test_dropin.py runs
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REFERENCE = REPO.parent / "shared" / "reference"
MANIFEST = REFERENCE / "manifests" / "stylegan2_ffhq_config_f_1024_g_ema.json"
DIRECTIONS = REFERENCE / "directions"
# CPU-sized DIFA: the source CLIP mean over 8 samples instead of 512 (23 min of 1024 px synthesis
# here), 2 iterations. An operator setting (FACEEDIT_DIFA_SETTINGS), not part of the drop-in itself.
CPU_DIFA_SETTINGS = {"clip_mean_samples": 8, "clip_mean_batch": 4, "batch_size": 1}


@dataclass
class OfficialFiles:
    generator: Path
    encoder: Path
    clip: str  # "[architecture=]weights"
    n_latent: int


def build_generator_file(path: Path, size: int, seed: int = 0) -> int:
    """Rosinality's converted layout {g_ema, latent_avg} for Generator(size, 512, 8, cm=2), random weights.
    Its keys and shapes are those of the official 1024 file (all of them at 1024, a prefix below)."""
    from faceedit.models import Generator, GeneratorConfig

    torch.manual_seed(seed)
    generator = Generator(GeneratorConfig(size, 512, 8, channel_multiplier=2)).eval()
    state = generator.state_dict()
    official = {k: v["shape"] for k, v in json.loads(MANIFEST.read_text())["keys"].items()}
    mismatched = [k for k, v in state.items() if official.get(k) != list(v.shape)]
    if mismatched or (size == 1024 and set(state) != set(official)):
        raise AssertionError(f"not the official layout: {mismatched[:5]} (of {len(mismatched)})")
    with torch.no_grad():
        latent_avg = generator.mapping(torch.randn(4096, 512, generator=torch.Generator().manual_seed(1))).mean(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"g_ema": state, "latent_avg": latent_avg}, path)  # [512], as the converted file has it
    return generator.n_latent


def build_encoder_file(path: Path, generator_path: Path, small: bool, seed: int = 0) -> None:
    """e4e's checkpoint layout: encoder.* (IR-SE50 at 256 px input, or a small backbone at `small`)
    and decoder.* keys in `state_dict`, `opts` as e4e writes it, `latent_avg`."""
    from faceedit.models import Encoder, EncoderConfig

    decoder = torch.load(generator_path, weights_only=True)
    n_latent = _n_latent(decoder["g_ema"])
    torch.manual_seed(seed)
    config = (EncoderConfig(kind="e4e", n_styles=n_latent, input_size=64, stage_units=(1, 1, 1, 1))
              if small else EncoderConfig(kind="e4e", n_styles=n_latent))
    encoder = Encoder(config).eval()
    state = {**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
             **{f"decoder.{k}": v for k, v in decoder["g_ema"].items()}}
    opts = {"encoder_type": "Encoder4Editing", "stylegan_size": 2 ** (n_latent // 2 + 1),
            "start_from_latent_avg": True, "input_nc": 3, "output_size": 2 ** (n_latent // 2 + 1)}
    torch.save({"state_dict": state, "opts": opts, "latent_avg": decoder["latent_avg"]}, path)


def _n_latent(g_ema: dict[str, torch.Tensor]) -> int:
    log_size = 2 + sum(1 for k in g_ema if k.startswith("to_rgbs.") and k.endswith(".conv.weight"))
    return log_size * 2 - 2


def build_clip(out: Path, kind: str) -> str:
    """'vit-b-32': a random-weight open_clip ViT-B-32 state dict (what users mount, 151 M parameters);
    'demo': the demo zoo's small CLIP (its card names the architecture)."""
    if kind == "demo":
        from faceedit.zoo import paths

        return str(paths()["clip"])
    from faceedit import artifacts
    from faceedit.adaptation.torchvision_shim import import_open_clip

    open_clip = import_open_clip()
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    artifacts.write(out / "clip-vit-b-32.safetensors", model.state_dict())  # a plain state dict, as users have
    return f"ViT-B-32={out / 'clip-vit-b-32.safetensors'}"


def build_official_files(out: Path, size: int = 1024, small_encoder: bool = False, clip: str = "vit-b-32"
                         ) -> OfficialFiles:
    out.mkdir(parents=True, exist_ok=True)
    generator = out / "stylegan2-ffhq-config-f.pt"
    n_latent = build_generator_file(generator, size)
    encoder = out / "e4e_ffhq_encode.pt"
    build_encoder_file(encoder, generator, small_encoder)
    return OfficialFiles(generator, encoder, build_clip(out, clip), n_latent)


def write_models_file(path: Path, files: OfficialFiles) -> Path:
    """The drop-in: one models.yaml naming the official files (docs/models.example.yaml is its template)."""
    boundaries: list[dict] = [{"path": str(DIRECTIONS / "interfacegan_stylegan1_ffhq")}]
    e4e: dict = {"path": str(DIRECTIONS / "e4e_stylegan2_ffhq"), "include": ["age.pt", "smile.pt"],
                 # e4e's age and smile would clash with InterfaceGAN's W-space age and smile.
                 "names": {"age.pt": "age_e4e", "smile.pt": "smile_e4e"}}
    if files.n_latent == 18:  # pose.pt is [1, 18, 512]: a 1024 px file; GANSpace components by name
        e4e["include"] += ["pose.pt", "ganspace_ffhq_pca.pt"]
        e4e["names"]["pose.pt"] = "pose_e4e"
        e4e["components"] = {"ganspace_pc0": 0, "ganspace_pc1": 1}
    boundaries.append(e4e)
    config = {"default_generator": "ffhq",
              "generators": {"ffhq": {"checkpoint": str(files.generator), "family": "ffhq"}},
              "families": {"ffhq": {"encoder": str(files.encoder), "boundaries": boundaries}},
              "clips": [files.clip]}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# -- the client run ------------------------------------------------------------------------------

@dataclass
class Call:
    name: str
    seconds: float
    detail: str


@dataclass
class FlowResult:
    calls: list[Call] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    generator_id: str = ""

    def timed(self, name: str, fn: Callable[[], object], detail: Callable[[object], str]) -> object:
        started = time.perf_counter()
        value = fn()
        self.calls.append(Call(name, time.perf_counter() - started, detail(value)))
        print(f"  {name:<34} {self.calls[-1].seconds:7.1f} s  {self.calls[-1].detail}", flush=True)
        return value


def photo_png(size: int) -> bytes:
    """A rendered synthetic portrait (a 'photo' the aligner finds a face in), as PNG bytes."""
    from faceedit.images import to_pil
    from faceedit.synth import render_faces

    images = render_faces(1, seed=5, size=max(256, size))[0]
    buffer = io.BytesIO()
    to_pil(images)[0].save(buffer, format="PNG")
    return buffer.getvalue()


def run_flow(target: str, api_key: str, size: int, adaptation_steps: int = 2, timeout_s: float = 1800
             ) -> FlowResult:
    """Every RPC the drop-in promises, in order; raises on the first that fails."""
    from faceedit_client import FaceEditClient, Step

    result = FlowResult()
    photo = photo_png(size)
    with FaceEditClient(target, api_key, timeout_s=timeout_s) as client:
        generators = result.timed("ListGenerators", client.list_generators,
                                  lambda gs: ", ".join(f"{g.id} ({g.size} px)" for g in gs))
        result.generator_id = generators[0].id
        attributes = result.timed("ListAttributes", client.list_attributes,
                                  lambda a: f"{len(a)} attributes: " + ", ".join(
                                      f"{x.name}/{x.space}" for x in a[:6]) + " …")
        result.attributes = [f"{a.name}/{a.space}" for a in attributes]
        w_attributes = [a for a in attributes if a.space == "w"]
        one = result.timed("Generate 1 seed", lambda: client.generate([1]), lambda f: f"{len(f)} image")
        result.timed("Generate 4 seeds", lambda: client.generate([1, 2, 3, 4]), lambda f: f"{len(f)} images")
        plain = result.timed("Invert", lambda: client.invert(photo), lambda r: r.latent_id)
        result.timed("Invert (align=true)", lambda: client.invert(photo, align=True), lambda r: r.latent_id)
        first, second = w_attributes[0], w_attributes[1]
        result.timed(f"Edit ({first.name} + {second.name})",
                     lambda: client.edit([Step(first.name, 2.0), Step(second.name, -1.5)], latent_id=plain.latent_id),
                     lambda r: f"{r.image.width} px")
        result.timed("Animate 8 frames + GIF",
                     lambda: [m for m in client.animate([Step(first.name, 3.0)], latent_id=one[0].latent_id,
                                                        frames=8, animation="gif")],
                     lambda items: f"{len(items) - 1} frames, GIF {len(items[-1].data) / 1e6:.1f} MB")
        job = result.timed("CreateAdaptation", lambda: client.create_adaptation(
            photo, idempotency_key=f"dropin-{uuid.uuid4().hex}", steps=adaptation_steps), lambda j: j.name)
        messages: list[str] = []

        def note(op: object) -> None:
            message = getattr(op, "message", "")
            if message and (not messages or messages[-1] != message):
                messages.append(message)

        done = result.timed(f"adaptation job ({adaptation_steps} steps), polled",
                            lambda: client.wait_for_adaptation(job.name, timeout_s=timeout_s, poll_s=1.0,
                                                               on_progress=note),
                            lambda d: f"{d.state} → {d.generator_id}; seen: {' | '.join(messages[:3])}")
        if not done.generator_id:
            raise RuntimeError(f"adaptation ended {done.state}: {done.error_message}")
        result.timed("Edit on the adapted generator",
                     lambda: client.edit([Step(first.name, 1.0)], seed=1, generator_id=done.generator_id),
                     lambda r: f"{r.image.width} px")
    return result


def peak_rss_mb(run_dir: Path) -> dict[str, float]:
    """Peak resident set (VmHWM, MB) of each service's largest process."""
    from processes import service_memory_kb

    return {name: max(values) / 1024 for name, values in service_memory_kb(run_dir, "VmHWM").items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024, choices=(64, 128, 256, 512, 1024))
    parser.add_argument("--encoder", choices=("irse50", "small"), default="irse50",
                        help="irse50: e4e's own backbone (256 px input); small: a light one for tests")
    parser.add_argument("--clip", choices=("vit-b-32", "demo"), default="vit-b-32")
    parser.add_argument("--steps", type=int, default=2, help="DIFA iterations of the adaptation job")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep files and logs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from services import launcher
    from services.inference.archive import build_archive

    with tempfile.TemporaryDirectory(prefix="faceedit-dropin-") as tmp:
        work = args.work_dir or Path(tmp)
        started = time.perf_counter()
        files = build_official_files(work / "weights", args.size, args.encoder == "small", args.clip)
        models = write_models_file(work / "models.yaml", files)
        print(f"official-layout files in {time.perf_counter() - started:.0f} s; model configuration {models}")
        store = work / "model_store"
        for kind in ("generator", "encoder"):
            build_archive(kind, store)
        os.environ["FACEEDIT_DIFA_SETTINGS"] = json.dumps(CPU_DIFA_SETTINGS)
        started = time.perf_counter()
        stack = launcher.up(work / "run", store, models=models, timeout=900)
        up_s = time.perf_counter() - started
        print(f"stack up (SERVING) in {up_s:.0f} s")
        try:
            flow = run_flow(stack.editor_target, stack.api_key, args.size, args.steps)
            rss = peak_rss_mb(stack.run_dir)
        finally:
            launcher.down(work / "run", stack.run_dir)
    print("peak RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in sorted(rss.items())))
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "stack_up_s": round(up_s, 1),
                                         "calls": [c.__dict__ for c in flow.calls], "peak_rss_mb": rss,
                                         "attributes": flow.attributes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
