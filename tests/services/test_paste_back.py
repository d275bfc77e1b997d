"""The editor keeps an aligned photo with its latent: Edit/Animate paste the edited face back into the whole photo,
DeleteLatent and the sweep remove it, and a tuning job can only be made from such a photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from faceedit.errors import InvalidInputError, NotFoundError
from services.common.artifacts import LocalArtifactStore
from services.common.jobs import JobStore
from services.common.latent_cache import LatentCache
from services.common.photos import PhotoStore, kept_photo_id
from services.common.registry import GeneratorIndex
from services.editor.adaptation import AdaptationCore
from services.editor.boundaries import BoundaryRegistry
from services.editor.catalog import GeneratorCatalog
from services.editor.config import EditorConfig
from services.editor.editing import EditorCore
from services.editor.server import load_bases
from services.editor.values import LatentSource, Step

from editor_fakes import FakeInference, FakeQueue, boundary_set, fake_placement

pytestmark = pytest.mark.inference

PHOTO_SIZE = (96, 64)  # wider than high: the "aligned" crop is its centre 64 x 64


def photo_png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.fixture
def world(tmp_path, tiny_models, redis_client, namespace):
    from services.common.models import load_model_config

    models = load_model_config(tiny_models["models"])
    bases = load_bases(models)
    store = LocalArtifactStore(tmp_path / "artifacts")
    index = GeneratorIndex(redis_client, store, namespace)
    catalog = GeneratorCatalog(bases, "tiny", index)
    base = bases["tiny"]
    rng = torch.Generator().manual_seed(0)
    boundaries = BoundaryRegistry({"tiny": boundary_set({"age": torch.randn(base.style_dim, generator=rng)})})
    cache = LatentCache(redis_client, 60, namespace)
    photos = PhotoStore(store)
    inference = FakeInference(tiny_models["generator"], tiny_models["encoder"], generator_id="tiny")
    editor = EditorCore(catalog, boundaries, cache, inference, EditorConfig(), photos=photos)
    adaptation = AdaptationCore(catalog, JobStore(redis_client, namespace), index, store, FakeQueue(), EditorConfig(),
                                cache=cache, photos=photos)
    return dict(editor=editor, adaptation=adaptation, photos=photos, store=store, inference=inference)


def test_an_edit_pasted_back_is_the_whole_photo_changed_only_inside_the_face_mask(world):
    editor, photo = world["editor"], photo_png()
    inverted = editor.invert("acme", photo, align=True)
    assert world["inference"].inverted[-1].return_aligned  # the crop was asked for, to keep it
    edited = editor.edit("acme", "", LatentSource(latent_id=inverted.latent.id), [Step("age", 3.0)], paste_back=True)
    assert (edited.image.width, edited.image.height) == PHOTO_SIZE
    before, after = pixels(photo), pixels(edited.image.data)
    assert after.shape == before.shape
    # The face mask is the jaw/brow hull of the placement: everything outside it is the photo's own pixels.
    from faceedit.blending import face_mask

    mask = np.asarray(face_mask(world["photos"].get("acme", editor.cache.entry("acme", inverted.latent.id, "x")
                                                    .photo_id).aligned_face()))
    outside = np.ones(PHOTO_SIZE[::-1], bool)
    outside[:, 16:80] = mask == 0  # the crop is the centre square, unrotated
    assert np.array_equal(after[outside], before[outside])
    assert np.abs(after - before)[~outside].mean() > 5  # the face itself did change
    # A chained edit keeps the photo; the crop alone is still what a caller gets without paste_back.
    again = editor.edit("acme", "", LatentSource(latent_id=edited.latent.id), [Step("age", -1.0)], paste_back=True)
    assert (again.image.width, again.image.height) == PHOTO_SIZE
    crop = editor.edit("acme", "", LatentSource(latent_id=edited.latent.id), [])
    assert (crop.image.width, crop.image.height) == (32, 32)


def test_animate_pastes_every_frame_and_the_animation(world):
    editor = world["editor"]
    inverted = editor.invert("acme", photo_png(), align=True)
    items = list(editor.animate("acme", "", LatentSource(latent_id=inverted.latent.id), [Step("age", 2.0)],
                                frames=3, animation="gif", paste_back=True))
    assert len(items) == 4
    assert all((i.image.width, i.image.height) == PHOTO_SIZE for i in items[:3])
    assert Image.open(io.BytesIO(items[-1].data)).size == PHOTO_SIZE


@pytest.mark.parametrize("source", [LatentSource(seed=3), "unaligned"])
def test_paste_back_needs_a_latent_with_a_photo(world, source):
    editor = world["editor"]
    if source == "unaligned":  # inverted without alignment: no placement, so nothing is kept
        source = LatentSource(latent_id=editor.invert("acme", photo_png()).latent.id)
    with pytest.raises(InvalidInputError) as info:
        editor.edit("acme", "", source, [Step("age", 1.0)], paste_back=True)
    assert info.value.field == "paste_back"
    assert not list(world["store"].keys("photos"))


def test_delete_latent_removes_the_photo_its_edits_shared(world):
    editor = world["editor"]
    inverted = editor.invert("acme", photo_png(), align=True)
    edited = editor.edit("acme", "", LatentSource(latent_id=inverted.latent.id), [Step("age", 1.0)])
    assert len(list(world["store"].keys("photos"))) == 1
    with pytest.raises(NotFoundError):  # another tenant's latent is as good as missing
        editor.delete_latent("other", inverted.latent.id)
    editor.delete_latent("acme", inverted.latent.id)
    assert not list(world["store"].keys("photos"))
    with pytest.raises(NotFoundError):
        editor.edit("acme", "", LatentSource(latent_id=inverted.latent.id), [])
    with pytest.raises(NotFoundError) as info:  # the edit's latent lives on, its photo does not
        editor.edit("acme", "", LatentSource(latent_id=edited.latent.id), [], paste_back=True)
    assert info.value.kind == "photo"


def test_photos_expire_with_their_latent_and_are_tenant_private(world):
    photos, store = world["photos"], world["store"]
    placement = fake_placement(PHOTO_SIZE)
    short = photos.put("acme", photo_png(), b"crop", placement, ttl_s=-5)  # already past
    kept = photos.put("acme", photo_png(), b"crop", placement, None, kept_photo_id("gen-1"))
    live = photos.put("acme", photo_png(), b"crop", placement, ttl_s=600)
    with pytest.raises(NotFoundError):
        photos.get("other", live)
    assert photos.get("acme", live).aligned == b"crop"
    assert photos.sweep() == 1
    assert sorted(k.rpartition("/")[2] for k in store.keys("photos")) == sorted([kept, live])
    with pytest.raises(NotFoundError):
        photos.get("acme", short)


def test_a_tuning_job_is_made_from_a_kept_photo_only(world):
    editor, adaptation = world["editor"], world["adaptation"]
    aligned = editor.invert("acme", photo_png(), align=True)
    view, created = adaptation.create("acme", "", b"", "tune-1", method="pti", latent_id=aligned.latent.id)
    assert created and view.job.kind == "tune" and view.job.target_key == ""  # no second copy of the face
    # The generator-to-be keeps its own copy of the photo, independent of the latent's TTL ...
    from services.common.registry import generator_id_for

    kept = kept_photo_id(generator_id_for(view.job.id))
    assert world["photos"].get("acme", kept).image == world["photos"].get(
        "acme", editor.cache.entry("acme", aligned.latent.id, "x").photo_id).image
    assert not list(world["store"].keys("targets"))
    editor.delete_latent("acme", aligned.latent.id)  # ... which the latent's deletion leaves alone
    assert world["photos"].get("acme", kept)
    plain = editor.invert("acme", photo_png()).latent.id
    cases = [(dict(latent_id=plain), "latent_id"), (dict(latent_id=""), "latent_id"),
             (dict(latent_id=aligned.latent.id, image=photo_png()), "style_image"),
             (dict(latent_id=aligned.latent.id, method="nope"), "method")]
    for i, (kwargs, field) in enumerate(cases):
        args = {"image": b"", "method": "pti", **kwargs}
        with pytest.raises(InvalidInputError) as info:
            adaptation.create("acme", "", args.pop("image"), f"bad-{i}", **args)
        assert info.value.field == field, kwargs
    with pytest.raises(InvalidInputError) as info:  # DIFA takes an artwork, not a latent
        adaptation.create("acme", "", photo_png(), "difa-1", latent_id=aligned.latent.id)
    assert info.value.field == "latent_id"


def test_an_edited_latent_never_outlives_its_photo(world):
    editor, photos = world["editor"], world["photos"]
    from services.common.photos import expires_at

    photo_id = photos.put("acme", photo_png(), photo_png(), fake_placement(PHOTO_SIZE), ttl_s=10)
    ws = editor.invert("acme", photo_png(), align=True).latent.ws
    latent = editor.cache.put("acme", "tiny", ws, photo_id)  # a latent sharing a photo that goes in 10 s
    edited = editor.edit("acme", "", LatentSource(latent_id=latent.id), [Step("age", 1.0)])
    assert edited.latent.expires_at <= expires_at(photo_id) + 1  # 10 s, not the cache's 60


def test_an_animation_pasted_back_is_bounded_by_frames_times_photo_pixels(world, monkeypatch):
    import services.editor.editing as editing

    editor = world["editor"]
    inverted = editor.invert("acme", photo_png(), align=True)
    monkeypatch.setattr(editing, "MAX_PASTED_PIXELS", 2 * PHOTO_SIZE[0] * PHOTO_SIZE[1])
    assert len(list(editor.animate("acme", "", LatentSource(latent_id=inverted.latent.id), [Step("age", 1.0)],
                                   frames=2, paste_back=True))) == 2
    with pytest.raises(InvalidInputError) as info:
        editor.animate("acme", "", LatentSource(latent_id=inverted.latent.id), [Step("age", 1.0)], frames=3,
                       paste_back=True)
    assert info.value.field == "paste_back" and "at most 2 frames" in info.value.problem


def test_a_photo_whose_latent_could_not_be_cached_is_not_kept(world, monkeypatch):
    from services.common.errors import UnavailableError

    editor = world["editor"]

    def redis_down(*args, **kwargs):
        raise UnavailableError("redis", "ConnectionError")

    monkeypatch.setattr(editor.cache, "put", redis_down)
    with pytest.raises(UnavailableError):
        editor.invert("acme", photo_png(), align=True)
    assert not list(world["store"].keys("photos"))


def test_a_phone_photo_is_kept_without_its_metadata_and_pasted_back_upright(world):
    from services.common.uploads import decode_upload

    rng = np.random.default_rng(3)
    sensor = rng.integers(0, 256, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3), dtype=np.uint8)  # 96 x 64 as the sensor saw it
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns it 90° clockwise: 64 wide, 96 high
    exif[0x010F] = "PhoneCo"
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 24.0)})  # where it was taken
    out = io.BytesIO()
    Image.fromarray(sensor).save(out, format="JPEG", quality=95, exif=exif.tobytes())
    photo = out.getvalue()
    editor = world["editor"]
    inverted = editor.invert("acme", photo, align=True)
    kept = world["photos"].get("acme", editor.cache.entry("acme", inverted.latent.id, "x").photo_id).image
    assert b"PhoneCo" not in kept and not Image.open(io.BytesIO(kept)).getexif().get_ifd(0x8825)
    edited = editor.edit("acme", "", LatentSource(latent_id=inverted.latent.id), [Step("age", 3.0)], paste_back=True)
    assert (edited.image.width, edited.image.height) == PHOTO_SIZE[::-1]  # upright, as its owner sees it
    upright = np.asarray(decode_upload(photo, "image")[0], dtype=np.int16)
    unchanged = np.all(pixels(edited.image.data) == upright, axis=-1)
    assert unchanged[:10].all() and unchanged[-10:].all()  # above and below the face: the photo's own pixels


def test_a_photo_kept_before_uploads_were_turned_upright_is_pasted_into_its_stored_pixels(world):
    """Photos kept by an earlier version (a tuned generator's, kept for good) have no `upright` in their record:
    their placement is on the pixels as stored, so paste-back must not turn them."""
    import json

    from services.common.photos import _key

    photos, store = world["photos"], world["store"]
    placement = fake_placement(PHOTO_SIZE)
    new = photos.put("acme", photo_png(), b"crop", placement, ttl_s=600)
    assert photos.get("acme", new).upright
    old = photos.put("acme", photo_png(), b"crop", placement, ttl_s=600)
    head, _, body = store.get(_key(old)).partition(b"\n")
    record = json.loads(head)
    del record["upright"]  # as the earlier version wrote it
    store.put(_key(old), json.dumps(record).encode() + b"\n" + body)
    assert not photos.get("acme", old).upright
    assert not photos.get("acme", photos.copy(photos.get("acme", old), kept_photo_id("gen-2"))).upright
