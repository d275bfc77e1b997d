"""Text steps through the editor core: the worker-prepared relevance read from the artifact store, the prompt's
direction sent to the model server as a StyleSpace offset, equal to the library's text_edit; bad steps named."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from faceedit.adaptation.clip import load_clip, parse_clip_spec
from faceedit.editing.text import RelevanceConfig, channel_relevance, text_edit
from faceedit.errors import InvalidInputError
from faceedit.images import to_pil
from faceedit.models import load_generator
from services.common.artifacts import LocalArtifactStore
from services.common.errors import PreconditionError
from services.common.latent_cache import LatentCache
from services.common.models import load_model_config
from services.common.text_edits import RelevanceMarker
from services.editor.boundaries import BoundaryRegistry
from services.editor.catalog import GeneratorCatalog
from services.editor.config import EditorConfig
from services.editor.editing import EditorCore
from services.editor.server import load_bases
from services.editor.text_edits import TextEdits
from services.editor.values import LatentSource, Step

from editor_fakes import FakeInference

pytestmark = pytest.mark.inference

CONFIG = RelevanceConfig(samples=3, channels_per_batch=16)


@pytest.fixture(scope="module")
def prepared(tiny_models, tmp_path_factory):
    """What the worker's faceedit.prepare leaves: the relevance artifact and its marker."""
    store = LocalArtifactStore(tmp_path_factory.mktemp("text-store"))
    generator = load_generator(tiny_models["generator"]).eval()
    clip = load_clip(parse_clip_spec(str(tiny_models["clip"]))[0])
    relevance = channel_relevance(generator, clip, CONFIG)
    store.put("cache/relevance/r.safetensors", relevance.to_bytes())
    return store, generator, clip, relevance


@pytest.fixture
def editor(prepared, tiny_models, redis_client, namespace):
    store, *_ = prepared
    models = load_model_config(tiny_models["models"])
    bases = load_bases(models)
    text = TextEdits(store, models.clips[0])
    cache = LatentCache(redis_client, 60, namespace)
    return EditorCore(GeneratorCatalog(bases, "tiny", None), BoundaryRegistry(), cache,
                      FakeInference(tiny_models["generator"], generator_id="tiny"), EditorConfig(), text_edits=text)


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_a_text_step_renders_as_the_librarys_text_edit_once_prepared(editor, prepared):
    store, generator, clip, relevance = prepared
    store.delete(RelevanceMarker.key("tiny"))
    assert not editor.list_attributes("acme")[2]
    with pytest.raises(PreconditionError, match="not prepared"):
        editor.edit("acme", "", LatentSource(seed=4), [Step("", 3.0, text="an old face")])
    RelevanceMarker("tiny", "cache/relevance/r.safetensors", "clip", sum(relevance.widths)).write(store)
    assert editor.list_attributes("acme")[2]

    plain = editor.edit("acme", "", LatentSource(seed=4), [])
    edited = editor.edit("acme", "", LatentSource(seed=4), [Step("", 3.0, text="an old face", threshold=0.05)])
    ws = torch.from_numpy(editor.cache.get("acme", plain.latent.id, "x")[1])
    expected = to_pil(text_edit(generator, clip, ws, "an old face", strength=3.0, threshold=0.05,
                                relevance=relevance))[0]
    assert np.array_equal(pixels(edited.image.data), np.asarray(expected, dtype=np.int16))
    assert not np.array_equal(pixels(edited.image.data), pixels(plain.image.data))

    frames = list(editor.animate("acme", "", LatentSource(seed=4), [Step("", 3.0, text="an old face",
                                                                          threshold=0.05)],
                                 frames=3, start=0.0, end=1.0))
    assert np.array_equal(pixels(frames[0].image.data), pixels(plain.image.data))  # t = 0: unedited
    assert np.array_equal(pixels(frames[-1].image.data), pixels(edited.image.data))  # t = 1: the edit


@pytest.mark.parametrize("step, field", [
    (Step("age", 1.0, text="an old face"), "edits[0].text"),  # attribute and text
    (Step("", 1.0, text="  "), "edits[0].text"),
    (Step("", 1.0, text="x" * 301), "edits[0].text"),
    (Step("", 1.0, text="an old face", neutral="n" * 301), "edits[0].neutral"),
    (Step("", 1.0, text="an old face", threshold=1.5), "edits[0].threshold"),
    (Step("", float("nan"), text="an old face"), "edits[0].strength"),
    (Step("", 1.0, text="an old face", layers="coarse"), "edits[0].text"),
])
def test_bad_text_steps_name_the_field(editor, prepared, step, field):
    store, *_, relevance = prepared
    RelevanceMarker("tiny", "cache/relevance/r.safetensors", "clip", sum(relevance.widths)).write(store)
    with pytest.raises(InvalidInputError) as info:
        editor.edit("acme", "", LatentSource(seed=1), [step])
    assert info.value.field == field


def test_without_a_clip_text_steps_are_a_precondition(prepared, tiny_models, redis_client, namespace):
    store, *_ = prepared
    models = load_model_config(tiny_models["models"])
    editor = EditorCore(GeneratorCatalog(load_bases(models), "tiny", None), BoundaryRegistry(),
                        LatentCache(redis_client, 60, namespace), FakeInference(tiny_models["generator"],
                                                                                generator_id="tiny"),
                        EditorConfig(), text_edits=TextEdits(store, None))
    assert not editor.list_attributes("acme")[2]
    with pytest.raises(PreconditionError, match="CLIP"):
        editor.edit("acme", "", LatentSource(seed=1), [Step("", 1.0, text="an old face")])


def test_the_editors_warm_up_loads_the_text_clip_and_a_broken_one_does_not_stop_it(editor, prepared, tmp_path,
                                                                                    caplog):
    assert editor.text_edits._clip is None
    editor.warm_up()  # before the editor reports SERVING: the first text step pays no CLIP load
    assert editor.text_edits._clip is not None
    broken = TextEdits(prepared[0], str(tmp_path / "missing.safetensors"))
    with caplog.at_level("WARNING", logger="faceedit.editor"):
        broken.warm_up()
    assert broken._clip is None and "text_clip_unavailable" in caplog.text and "missing.safetensors" in caplog.text
