"""CLIP through open_clip (preprocessing, tokens, local weights, errors) and the demo-CLIP training pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from faceedit.adaptation.clip import (
    OPENAI_MEAN,
    OPENAI_STD,
    ClipConfig,
    ConvStem,
    build_clip_module,
    load_clip,
    wrap_clip,
)
from faceedit.adaptation.torchvision_shim import import_open_clip
from faceedit.errors import (
    CheckpointFormatError,
    CheckpointMismatchError,
    ChecksumMismatchError,
    InvalidInputError,
    NotFoundError,
)
from faceedit.synth import ATTRIBUTE_NAMES, STYLES
from faceedit.training.captions import (
    CONTRASTS,
    FACTS,
    N_FACTS,
    caption,
    caption_matches,
    fact_table,
    sample_captions,
    sentence,
)
from faceedit.training.clip import (
    ClipTrainConfig,
    contrastive_loss,
    export_clip,
    fact_probe_loss,
    fit_steps,
    lr_at,
    prompt_directions,
    train_clip,
    zero_shot_accuracy,
    zero_shot_tasks,
)
from faceedit.training.clip_data import FaceSet, render_contrast_set, style_pairs, training_batch

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 3, "head_width": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return wrap_clip(build_clip_module(TINY_CLIP), TINY_CLIP).eval().requires_grad_(False)


def test_open_clip_imports_offline_through_the_shim():
    open_clip = import_open_clip()
    import torchvision.transforms  # noqa: F401  (open_clip's dependency must import too)

    assert open_clip.__version__ == "3.3.0"
    assert import_open_clip() is open_clip  # cached after the first import


@pytest.mark.slow
def test_the_torchvision_workaround_is_applied_only_when_a_plain_import_fails():
    import subprocess
    import sys

    from faceedit.adaptation.torchvision_shim import workaround_applied

    import_open_clip()
    plain = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True, timeout=120)
    assert workaround_applied() == (plain.returncode != 0)
    if plain.returncode != 0:
        assert "torchvision::" in plain.stderr  # the failure the workaround is for, not another one


def test_preprocess_resizes_and_applies_clip_normalisation(tiny):
    grey = torch.full((2, 3, 64, 48), 0.5)  # non-square: centre-cropped to 48x48 first
    x = tiny.preprocess(grey)
    assert x.shape == (2, 3, 32, 32)
    expected = (0.75 - torch.tensor(OPENAI_MEAN)) / torch.tensor(OPENAI_STD)
    assert torch.allclose(x[0, :, 5, 5], expected, atol=1e-5)
    stripes = torch.full((1, 3, 64, 48), -1.0)
    stripes[..., :8, :] = 1.0  # only in the rows the centre crop drops
    assert torch.allclose(tiny.preprocess(stripes), tiny.preprocess(torch.full((1, 3, 48, 48), -1.0)))
    with pytest.raises(InvalidInputError) as err:
        tiny.preprocess(torch.zeros(3, 32, 32))
    assert err.value.field == "images"


def test_embeddings_are_unit_and_differentiable_wrt_images(tiny):
    images = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    emb = tiny.encode_image(images)
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    emb.sum().backward()
    assert images.grad.abs().sum() > 0


def test_tokens_are_the_patch_tokens_of_the_chosen_block(tiny):
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    emb, tokens = tiny.features(images, block=1)
    assert tokens.shape == (2, 16, 32)  # 4x4 patches, class token dropped, width 32
    assert torch.allclose(tokens.norm(dim=-1), torch.ones(2, 16), atol=1e-5)
    assert torch.allclose(emb, tiny.encode_image(images))
    visual = tiny.model.visual
    x = visual._embeds(tiny.preprocess(images))  # patch + class embeddings, positions, ln_pre
    for block in visual.transformer.resblocks[:2]:
        x = block(x)
    assert torch.allclose(tokens, torch.nn.functional.normalize(x[:, 1:], dim=-1), atol=1e-5)
    assert not torch.allclose(tiny.tokens(images, 0), tokens)  # a different block, different tokens
    with pytest.raises(InvalidInputError) as err:
        tiny.tokens(images, block=3)
    assert err.value.field == "clip_layer"


def test_load_clip_from_a_config_json_and_local_weights(tiny, tmp_path):
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(weights))
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"model": "tiny", "model_cfg": TINY_CLIP}))
    loaded = load_clip(ClipConfig(config_path=str(card), weights=str(weights)))
    images = torch.rand(2, 3, 48, 48) * 2 - 1
    assert torch.allclose(loaded.encode_image(images), tiny.encode_image(images), atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters())
    text = loaded.encode_text(["a photo of a smiling person", "an ink sketch of a face"])
    assert text.shape == (2, 16)

    plain = tmp_path / "plain.json"  # open_clip's own layout, no "model_cfg" wrapper
    plain.write_text(json.dumps(TINY_CLIP))
    assert load_clip(ClipConfig(config_path=str(plain), weights=str(weights))).image_size == 32


def test_load_clip_errors_name_the_file_or_field(tiny, tmp_path):
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(weights))
    wider = dict(TINY_CLIP, vision_cfg=dict(TINY_CLIP["vision_cfg"], width=48))
    config = tmp_path / "wider.json"
    config.write_text(json.dumps(wider))
    with pytest.raises(CheckpointMismatchError) as err:
        load_clip(ClipConfig(config_path=str(config), weights=str(weights)))
    assert err.value.path == str(weights)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"vision_cfg": {}}))
    with pytest.raises(CheckpointFormatError):
        load_clip(ClipConfig(config_path=str(broken)))
    with pytest.raises(NotFoundError):
        load_clip(ClipConfig(architecture="No-Such-ViT"))
    with pytest.raises(NotFoundError):
        load_clip(ClipConfig(config_path=str(config), weights=str(tmp_path / "missing.pt")))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFormatError) as err:
        load_clip(ClipConfig(config_path=str(config), weights=str(garbage)))
    assert err.value.path == str(garbage)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_weights_are_refused_with_a_conversion_hint(tmp_path):
    archive = tmp_path / "ViT-B-32.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(archive))
    with pytest.raises(CheckpointFormatError, match="TorchScript") as err:
        load_clip(ClipConfig(config_path=None, architecture="ViT-B-32-quickgelu", weights=str(archive)))
    assert err.value.path == str(archive)


def test_load_clip_checks_a_recorded_sha256(tiny, tmp_path):
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(weights))
    weights.with_suffix(".json").write_text(json.dumps({"model_cfg": TINY_CLIP, "sha256": "0" * 64}))
    with pytest.raises(ChecksumMismatchError):
        load_clip(ClipConfig(config_path=str(weights.with_suffix(".json")), weights=str(weights)))


# -- demo CLIP training -------------------------------------------------------------------------------
BASE = {"age": 0.5, "smile": 0.4, "mouth_open": 0.1, "eyes_open": 0.9, "yaw": 0.0, "pitch": 0.0, "glasses": 0.0,
        "beard": 0.0, "hair_length": 0.5, "hair_color": 0.5, "skin_tone": 0.5, "background": 0.5, "lighting": 0.0,
        "gender": 0.5, "anger": 0.0, "crying": 0.0}


def test_captions_follow_the_ground_truth():
    old_smiling = dict(BASE, age=0.9, smile=0.9, glasses=1.0, beard=0.8, yaw=-0.8, gender=0.9)
    assert caption(old_smiling, "sketch") == ("an ink sketch of a smiling old man with glasses and a beard, "
                                              "head turned left")
    assert caption(BASE, "photo") == "a photo of a middle-aged person"
    young = dict(BASE, age=0.1, smile=0.1, hair_length=0.9, eyes_open=0.1, yaw=0.7, gender=0.1)
    assert caption(young, "watercolor") == ("a watercolor painting of a serious young woman with long hair "
                                            "and closed eyes, head turned right")
    upset = dict(BASE, anger=0.8, crying=0.9, age=0.2)
    assert caption(upset, "comic") == "a comic drawing of an angry crying young person"
    with pytest.raises(InvalidInputError, match="oil"):
        caption(BASE, "oil")


def _facts(**changes) -> np.ndarray:
    return fact_table({k: np.array([v]) for k, v in dict(BASE, **changes).items()}, ["photo"])[0]


def test_training_captions_state_random_true_subsets_and_know_which_faces_they_fit():
    faces = np.stack([_facts(glasses=1.0, smile=0.9, gender=0.9), _facts(glasses=1.0, smile=0.1), _facts(yaw=-0.9)])
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        captions, stated = sample_captions(faces, rng, keep=0.5)
        assert not (stated & ~faces).any()  # only true facts are ever stated
        seen.update(captions)
        matches = caption_matches(stated, faces)  # [captions, faces]
        assert matches.diagonal().all()  # a caption fits its own face
        for i, j in zip(*np.nonzero(matches)):
            assert not (stated[i] & ~faces[j]).any()
    assert {"a photo of a face with glasses", "a photo of a smiling man", "a picture of a face, turned to the left",
            "a photo of a person"} <= seen
    glasses_only = np.zeros(N_FACTS, dtype=bool)
    glasses_only[[f.name for f in FACTS].index("glasses")] = True
    assert sentence(glasses_only) == "a picture of a person with glasses"
    assert caption_matches(glasses_only[None], faces).tolist() == [[True, True, False]]


def test_batches_pair_each_face_with_itself_in_another_style():
    rows = style_pairs(faces_per_style=50, batch_size=9, rng=torch.Generator().manual_seed(0))
    face, style = rows % 50, rows // 50
    assert rows.shape == (9,) and bool((style < 4).all())
    first, second = slice(0, 4), slice(5, 9)  # the odd row out is a face without its pair
    assert torch.equal(face[first], face[second]) and bool((style[first] != style[second]).all())


def test_contrast_pairs_are_one_person_differing_in_one_attribute_that_their_facts_tell_apart():
    pairs = 6
    faces = render_contrast_set(pairs, seed=3, size=32)
    assert faces.images.shape == (len(STYLES) * 2 * pairs, 3, 32, 32) and faces.images.dtype == torch.uint8
    assert faces.styles == [s for s in STYLES for _ in range(2 * pairs)]
    contrasted = {name: (first, second) for name, first, second in CONTRASTS}
    for p in range(pairs):
        a, b = 2 * p, 2 * p + 1
        changed = [name for name in ATTRIBUTE_NAMES if faces.attrs[name][a] != faces.attrs[name][b]]
        assert len(changed) == 1 and changed[0] in contrasted
        assert (faces.attrs[changed[0]][a], faces.attrs[changed[0]][b]) == pytest.approx(contrasted[changed[0]])
        assert (faces.facts[a] != faces.facts[b]).any()  # the two values lie on either side of a fact
        assert not torch.equal(faces.images[a], faces.images[b])
        same_pair_as_sketch = 2 * pairs + a  # the same pair in the next style: same values, other pixels
        assert all(faces.attrs[n][a] == faces.attrs[n][same_pair_as_sketch] for n in ATTRIBUTE_NAMES)
        assert not torch.equal(faces.images[a], faces.images[same_pair_as_sketch])


def test_a_batch_pairs_every_row_and_captions_state_what_tells_a_pair_apart():
    faces_per_style, contrast_pairs = 50, 20
    rows, partner = training_batch(faces_per_style, contrast_pairs, batch_size=11, contrast_fraction=0.5,
                                   rng=torch.Generator().manual_seed(0))
    assert torch.equal(partner[partner], torch.arange(11))  # partnership is mutual
    style_rows, contrast_rows = rows[:7], rows[7:]
    assert bool((style_rows < 4 * faces_per_style).all()) and bool((contrast_rows >= 4 * faces_per_style).all())
    assert torch.equal((contrast_rows - 4 * faces_per_style) // 2, (contrast_rows[partner[7:] - 7] - 200) // 2)
    assert int((partner == torch.arange(11)).sum()) == 1  # the odd style row out has no pair
    for i in range(7):
        if partner[i] != i:
            assert rows[i] % faces_per_style == rows[partner[i]] % faces_per_style  # one face, two styles

    smiling, serious = _facts(smile=0.9), _facts(smile=0.1)
    facts = np.stack([smiling, serious])
    differs = facts ^ facts[[1, 0]]
    for seed in range(20):
        _, stated = sample_captions(facts, np.random.default_rng(seed), keep=0.0, keep_style=0.0, always=differs)
        assert stated.tolist() == (facts & differs).tolist()  # "smiling" and "serious", every time
    names = [f.name for f in FACTS]
    assert stated[0, names.index("smiling")] and stated[1, names.index("serious")] and stated.sum() == 2


def test_contrastive_loss_rewards_matching_pairs_and_ignores_captions_true_of_other_faces():
    emb = torch.eye(4)
    no_repeat = torch.eye(4, dtype=torch.bool)
    scale = torch.tensor(np.log(10.0))
    matched = contrastive_loss(emb, emb, scale, no_repeat)
    shuffled = contrastive_loss(emb, emb[[1, 0, 2, 3]], scale, no_repeat)
    assert matched < shuffled
    # Caption 1 is also true of image 0 (and 0 of 1): image 0 matching caption 1 must not count against it.
    swapped = emb[[1, 0, 2, 3]]
    repeat = no_repeat.clone()
    repeat[0, 1] = repeat[1, 0] = True
    assert contrastive_loss(emb, swapped, scale, repeat) > contrastive_loss(emb, emb, scale, repeat)
    assert torch.isfinite(contrastive_loss(emb, swapped, scale, repeat))


def test_the_pair_term_punishes_a_caption_that_fits_its_partner_as_well_as_its_own_face():
    scale = torch.tensor(np.log(10.0))
    text = torch.eye(4)
    # Images 0 and 1 are a pair: 1 sits between both captions, so caption 1 hardly tells them apart.
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 1.0, 0],
                                                        [0, 0, 0, 1.0]]), dim=1)
    no_repeat = torch.eye(4, dtype=torch.bool)
    partner = torch.tensor([1, 0, 2, 3])  # rows 2 and 3 are unpaired
    plain = contrastive_loss(image, text, scale, no_repeat)
    assert contrastive_loss(image, text, scale, no_repeat, partner, pair_weight=0.0) == plain
    with_pairs = contrastive_loss(image, text, scale, no_repeat, partner, pair_weight=1.0)
    apart = image.clone()
    apart[1] = torch.tensor([0.0, 1.0, 0, 0])  # the pair's images told apart
    gain = with_pairs - plain
    apart_gain = contrastive_loss(apart, text, scale, no_repeat, partner, 1.0) - contrastive_loss(apart, text, scale,
                                                                                                  no_repeat)
    assert gain > apart_gain > 0
    # A partner's caption that is also true of this face (e.g. it states no fact the pair differs in) is no negative.
    fits = no_repeat.clone()
    fits[0, 1] = fits[1, 0] = True
    masked = contrastive_loss(image, text, scale, fits, partner, 1.0) - contrastive_loss(image, text, scale, fits)
    assert masked == 0


def test_the_fact_probe_rewards_an_embedding_that_encodes_the_facts():
    facts = np.array([[True, False], [False, True], [True, False], [False, True]])
    probe = torch.nn.Linear(2, 2)
    with torch.no_grad():
        probe.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
        probe.bias.zero_()
    readable = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    blind = torch.nn.functional.normalize(torch.ones(4, 2), dim=1)
    assert fact_probe_loss(probe, readable, facts) < 0.01
    assert float(fact_probe_loss(probe, blind, facts).detach()) == pytest.approx(np.log(2), abs=1e-6)  # chance


def test_a_conv_stem_replaces_the_patch_embedding_on_the_same_token_grid(tmp_path):
    stem_cfg = dict(TINY_CLIP, vision_cfg=dict(TINY_CLIP["vision_cfg"], conv_stem=True))
    torch.manual_seed(0)
    clip = wrap_clip(build_clip_module(stem_cfg), stem_cfg).eval()
    assert isinstance(clip.model.visual.conv1, ConvStem)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    emb, tokens = clip.features(images, block=1)
    assert emb.shape == (2, 16) and tokens.shape == (2, 16, 32)  # 4x4 grid as with the 8x8 patch embedding
    weights = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.model.state_dict().items()}, str(weights))
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"model": "tiny", "model_cfg": stem_cfg}))
    loaded = load_clip(ClipConfig(config_path=str(card), weights=str(weights)))
    assert torch.allclose(loaded.encode_image(images), clip.encode_image(images), atol=1e-6)
    plain = tmp_path / "plain.json"  # the same weights under a config without the stem do not fit
    plain.write_text(json.dumps({"model": "tiny", "model_cfg": TINY_CLIP}))
    with pytest.raises(CheckpointMismatchError):
        load_clip(ClipConfig(config_path=str(plain), weights=str(weights)))
    odd = dict(TINY_CLIP, vision_cfg=dict(TINY_CLIP["vision_cfg"], patch_size=6, image_size=36, conv_stem=True))
    with pytest.raises(InvalidInputError) as err:
        build_clip_module(odd)
    assert err.value.field == "clip.vision_cfg.patch_size"


def test_zero_shot_labels_and_accuracy_on_a_perfect_toy_model(tiny):
    styles = ["photo", "sketch", "comic", "watercolor"]
    attrs = {k: np.full(4, v) for k, v in BASE.items()}
    attrs["smile"] = np.array([0.9, 0.1, 0.5, 0.9])
    faces = FaceSet(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), attrs, styles, fact_table(attrs, styles))
    tasks = zero_shot_tasks(faces)
    assert tasks["style"][1].tolist() == [0, 1, 2, 3]
    assert tasks["smile"][1].tolist() == [0, 1, -1, 0]  # the middle one is ambiguous and skipped
    assert tasks["photo_vs_sketch"][1].tolist() == [0, 1, -1, -1]  # only photos and sketches count
    assert tasks["photo_vs_watercolor"][0] == ["a photo of a face", "a watercolor painting of a face"]
    results = zero_shot_accuracy(tiny, faces)
    assert set(results) == {"style", "smile", "age", "glasses", "gender", "anger", "crying", "head_pose",
                            "photo_vs_sketch", "photo_vs_comic", "photo_vs_watercolor", "sketch_vs_comic",
                            "sketch_vs_watercolor", "comic_vs_watercolor"}
    assert tasks["sketch_vs_watercolor"][1].tolist() == [-1, 0, -1, 1]
    assert results["smile"]["faces"] == 3 and results["style"]["chance"] == 0.25
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results.values() if r["faces"])


@pytest.mark.slow
def test_train_clip_smoke_exports_a_loadable_model_with_a_card(tmp_path):
    config = ClipTrainConfig(faces_per_style=4, steps=2, batch_size=8, eval_faces_per_style=2, warmup_steps=1,
                             size=32, model_cfg=TINY_CLIP)
    clip, record = train_clip(config, log=lambda line: None)
    assert record["steps_done"] == 2 and record["stopped_by"] == "steps" and np.isfinite(record["final_loss"])
    out = tmp_path / "clip.safetensors"
    card_path = export_clip(clip, out, config, record, command="faceedit train clip --test")
    card = json.loads(card_path.read_text())
    assert card["model_cfg"] == TINY_CLIP and len(card["sha256"]) == 64
    assert {"style", "photo_vs_sketch", "glasses"} <= set(card["metrics"]["zero_shot_held_out"])
    training = card["training"]  # the one card schema: command, commit and hardware (a string) under "training"
    assert training["command"] == "faceedit train clip --test" and training["wall_seconds"] == record["wall_seconds"]
    assert training["commit"] and ("CPU" in training["hardware"] or "CUDA" in training["hardware"])
    loaded = load_clip(ClipConfig(config_path=str(card_path), weights=str(out)))
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(loaded.encode_image(images), clip.encode_image(images), atol=1e-6)


def test_fit_steps_only_shrinks_the_plan_to_what_the_measured_speed_allows():
    assert fit_steps(done=10, elapsed_s=10.0, remaining_s=1000.0, planned=500) == 500  # time to spare: unchanged
    assert fit_steps(done=10, elapsed_s=10.0, remaining_s=100.0, planned=500) == 10 + 95  # 1 s/step, 5 % margin
    assert fit_steps(done=10, elapsed_s=10.0, remaining_s=-5.0, planned=500) == 11  # over time: one more at most
    assert fit_steps(done=0, elapsed_s=0.0, remaining_s=1.0, planned=500) == 500  # nothing measured yet


def test_learning_rate_warms_up_then_anneals_to_zero_at_the_planned_end():
    config = ClipTrainConfig(faces_per_style=1, steps=100, warmup_steps=10, lr=1e-3, size=32, model_cfg=TINY_CLIP)
    assert lr_at(0, 100, config) == pytest.approx(1e-4)
    assert lr_at(9, 100, config) == pytest.approx(1e-3)
    assert lr_at(55, 100, config) == pytest.approx(5e-4)
    assert lr_at(99, 100, config) < 1e-6
    assert lr_at(39, 40, config) < 1e-5  # a shortened plan still ends annealed
    with pytest.raises(InvalidInputError) as err:
        ClipTrainConfig(time_budget_s=-1, size=32, model_cfg=TINY_CLIP)
    assert err.value.field == "time_budget_s"


@pytest.mark.slow
def test_a_run_too_slow_for_its_budget_plans_fewer_steps_and_still_anneals():
    ticks = iter(range(10**6))  # a fake clock: every reading is one second later

    config = ClipTrainConfig(faces_per_style=2, steps=400, batch_size=4, eval_faces_per_style=1, warmup_steps=2,
                             size=32, model_cfg=TINY_CLIP, time_budget_s=70.0)
    lines: list[str] = []
    _, record = train_clip(config, log=lines.append, clock=lambda: float(next(ticks)))
    assert record["steps_planned"] < 400 and record["steps_done"] <= record["steps_planned"]
    assert record["steps_done"] > 10  # it trained as long as the budget allowed, not zero steps
    assert record["stopped_by"] in ("steps", "time_budget")
    assert any("planning" in line for line in lines)
    if record["stopped_by"] == "steps":
        assert record["final_lr"] < 0.05 * config.lr


def test_train_clip_command_takes_a_time_budget(monkeypatch, tmp_path):
    from faceedit.cli import adaptation as cli_adaptation
    from faceedit.cli import build_parser

    seen = {}

    def fake_train(config, log=print):
        seen["config"] = config
        raise InvalidInputError("stop", "captured")

    monkeypatch.setattr("faceedit.training.clip.train_clip", fake_train)
    args = build_parser().parse_args(["train", "clip", "--time-budget-min", "12", "--steps", "50"])
    with pytest.raises(InvalidInputError):
        cli_adaptation.cmd_train_clip(args)
    assert seen["config"].time_budget_s == 720 and seen["config"].steps == 50
    args = build_parser().parse_args(["train", "clip", "--time-budget-min", "0"])
    with pytest.raises(InvalidInputError):
        cli_adaptation.cmd_train_clip(args)
    assert seen["config"].time_budget_s is None
    assert build_parser().parse_args(["train", "clip"]).time_budget_min == 15
    assert seen["config"].contrast_fraction == 0 and "conv_stem" not in seen["config"].model_cfg["vision_cfg"]
    args = build_parser().parse_args(["train", "clip", "--contrast-fraction", "0.5", "--pair-weight", "1",
                                      "--fact-weight", "0.5", "--conv-stem"])
    with pytest.raises(InvalidInputError):
        cli_adaptation.cmd_train_clip(args)
    config = seen["config"]
    assert (config.contrast_fraction, config.pair_weight, config.fact_weight) == (0.5, 1.0, 0.5)
    assert config.model_cfg["vision_cfg"]["conv_stem"] is True


@pytest.mark.slow
def test_eval_clip_command_updates_the_card(tiny, tmp_path, capsys):
    import argparse

    from faceedit.cli import CommandGroups
    from faceedit.cli import adaptation as cli_adaptation

    out = tmp_path / "clip.safetensors"
    config = ClipTrainConfig(faces_per_style=1, steps=1, size=32, model_cfg=TINY_CLIP)
    export_clip(tiny, out, config, {"zero_shot": {}})
    parser = argparse.ArgumentParser()
    top = parser.add_subparsers(dest="command", required=True)
    groups = CommandGroups(top, top.add_parser("train").add_subparsers(), top.add_parser("eval").add_subparsers())
    cli_adaptation.register(groups)
    args = parser.parse_args(["eval", "clip", "--weights", str(out), "--faces-per-style", "2", "--update-card"])
    assert args.run(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["held_out_faces"] == 8
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["metrics"]["zero_shot_held_out"] == printed["zero_shot"]
    assert load_clip(ClipConfig(config_path=str(out.with_suffix(".json")), weights=str(out))) is not None


@pytest.mark.slow
@pytest.mark.parametrize("architecture, tokens", [("ViT-B-32-quickgelu", 49), ("ViT-B-16-quickgelu", 196)])
def test_upstream_backbones_give_upstreams_token_grids(architecture, tokens):
    torch.manual_seed(0)
    module = build_clip_module(import_open_clip().get_model_config(architecture))
    clip = wrap_clip(module).eval().requires_grad_(False)
    emb, block_tokens = clip.features(torch.zeros(1, 3, 64, 64), block=3)  # generator size, upsampled to 224
    assert clip.image_size == 224 and emb.shape == (1, 512) and block_tokens.shape == (1, tokens, 768)


class _AgeOnlyClip(torch.nn.Module):
    """Sees only age: images embed as (age, 1 - age), texts naming "old" point along the first axis."""

    def encode_image(self, images):
        age = images[:, 0, 0, 0] * 0.5 + 0.5  # the toy faces carry their age in one pixel
        return torch.nn.functional.normalize(torch.stack([age, 1 - age], 1) + 1e-3, dim=1)

    def encode_text(self, texts):
        return torch.tensor([[1.0, 0.0] if "old" in t else [0.5, 0.5] for t in texts])


def test_prompt_directions_rank_faces_only_where_the_clip_sees_the_attribute():
    rng = np.random.default_rng(0)
    n = 200
    attrs = {k: np.full(n, v) for k, v in BASE.items()}
    attrs["age"] = rng.uniform(size=n)
    attrs["smile"] = rng.uniform(size=n)
    images = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.from_numpy(np.round(attrs["age"] * 255).astype(np.uint8))
    styles = ["photo"] * (n // 2) + ["watercolor"] * (n // 2)
    faces = FaceSet(images, attrs, styles, fact_table(attrs, styles))
    directions = prompt_directions(_AgeOnlyClip(), faces)
    assert directions["an old face"]["auc"] > 0.99
    assert directions["a smiling face"]["auc"] == 0.5  # "smiling" reads as the neutral text: blind to it
    assert directions["a watercolor painting of a face"]["faces"] == n
    assert directions["an old face"]["faces"] == int(((attrs["age"] > 0.6) | (attrs["age"] < 0.25)).sum())
