"""Real weights are a drop-in: official-layout files named by one models.yaml serve every RPC through the real stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from editor_fakes import write_models_file

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_official_layout_files_serve_every_call_through_the_stack(tmp_path):
    """bench/dropin.py at a reduced size: a 64 px config-f generator with the official key names, an e4e-layout
    encoder, the official InterfaceGAN and e4e direction files, DIFA with the demo CLIP (the 1024 run is the
    same script; its figures are in the README)."""
    figures = tmp_path / "dropin.json"
    try:
        run = subprocess.run([sys.executable, "bench/dropin.py", "--size", "64", "--encoder", "small", "--clip",
                              "demo", "--work-dir", str(tmp_path / "work"), "--json", str(figures)],
                             cwd=REPO, capture_output=True, text=True, timeout=900)
    finally:
        # A bench killed by the timeout cannot stop the stack it started (its processes have their own
        # sessions): stop it here, or it would go on using the machine's cores after the test.
        from services import launcher

        if (tmp_path / "work" / "run").is_dir():
            launcher.down(tmp_path / "work" / "run")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(figures.read_text())
    calls = {c["name"].split(" (")[0]: c for c in result["calls"]}
    for name in ("ListGenerators", "ListAttributes", "Generate 1 seed", "Generate 4 seeds", "Invert", "Invert",
                 "Edit", "Animate 8 frames + GIF", "CreateAdaptation", "adaptation job",
                 "Edit on the adapted generator"):
        assert name in calls, name
    assert calls["ListGenerators"]["detail"] == "ffhq (64 px)"
    assert (calls["Generate 4 seeds"]["detail"] == "4 images"
            and calls["Animate 8 frames + GIF"]["detail"].startswith("8 frames"))
    assert "SUCCEEDED" in calls["adaptation job"]["detail"]
    # The official InterfaceGAN files under their names, W and Z; e4e's renamed; pose.pt ([1, 18, 512]) not asked for.
    for attribute in ("age/w", "age/z", "eyeglasses/w", "gender/w", "pose/w", "smile/w", "smile/z", "age_e4e/w"):
        assert attribute in result["attributes"]
    assert set(result["peak_rss_mb"]) >= {"editor", "worker", "torchserve (java)", "torchserve (model workers)"}


def test_a_boundary_file_the_editor_cannot_use_fails_its_start_naming_the_file(tmp_path, tiny_models):
    folder = tmp_path / "boundaries"
    folder.mkdir()
    (folder / "stylegan_ffhq_age_w_boundary.npy").write_bytes(b"not numpy")
    models = write_models_file(tmp_path / "models.yaml", tiny_models, "tiny", folder)
    env = {**os.environ, "FACEEDIT_MODELS": str(models), "FACEEDIT_PORT": "0", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "services.editor.server"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert "startup failed" in run.stderr and "stylegan_ffhq_age_w_boundary.npy" in run.stderr
