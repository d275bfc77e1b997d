"""The editor's transport-free core: latents from seeds/ids/inline, edits, animation, tenants, adaptation jobs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from faceedit.editing import save_boundary
from faceedit.errors import InvalidInputError, NotFoundError
from faceedit.models import load_generator
from faceedit.sampling import z_from_seeds
from services.common.artifacts import LocalArtifactStore
from services.common.errors import PreconditionError, TooLargeError, UnavailableError
from services.common.jobs import JobStore
from services.common.latent_cache import LatentCache
from services.common.registry import GeneratorIndex, GeneratorRecord
from services.editor.adaptation import AdaptationCore
from services.editor.boundaries import BoundaryRegistry
from services.editor.catalog import BaseGenerator, GeneratorCatalog
from services.editor.config import EditorConfig
from services.editor.editing import EditorCore
from services.editor.metrics import EditorMetrics
from services.editor.values import LatentSource, RenderedImage, Step

from editor_fakes import FakeInference, FakeQueue, boundary_set, png_bytes


@pytest.fixture
def base(tiny_models) -> BaseGenerator:
    return BaseGenerator.load("demo", tiny_models["generator"])


@pytest.fixture
def boundaries(base) -> BoundaryRegistry:
    rng = torch.Generator().manual_seed(3)
    normals = {name: torch.randn(base.style_dim, generator=rng) for name in ("age", "smile", "glasses")}
    return BoundaryRegistry({"demo": boundary_set(normals)})


@pytest.fixture
def world(tmp_path, tiny_models, base, boundaries, redis_client, namespace):
    store = LocalArtifactStore(tmp_path / "artifacts")
    index = GeneratorIndex(redis_client, store, namespace)
    catalog = GeneratorCatalog({"demo": base}, "demo", index)
    metrics = EditorMetrics()
    cache = LatentCache(redis_client, 60, namespace, metrics.count_cache_lookup)
    inference = FakeInference(tiny_models["generator"], tiny_models["encoder"])
    config = EditorConfig(max_seeds=8, max_frames=10, frame_batch=3, max_image_bytes=100_000,
                          max_image_pixels=256 * 256)
    editor = EditorCore(catalog, boundaries, cache, inference, config, metrics)
    queue = FakeQueue()
    jobs = JobStore(redis_client, namespace)
    adaptation = AdaptationCore(catalog, jobs, index, store, queue, config)
    return dict(editor=editor, adaptation=adaptation, inference=inference, queue=queue, index=index, jobs=jobs,
                metrics=metrics, store=store)


def decode(image: RenderedImage) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image.data)).convert("RGB"), dtype=np.int16)


def add_adapted(world, tenant: str, generator_id: str = "gen-a1", shift: float = 0.5) -> None:
    world["index"].add(GeneratorRecord(id=generator_id, tenant=tenant, base_generator="demo", sha256="0" * 64,
                                       size_bytes=1, created=1.0, state="READY", artifact_key="generators/x"))
    world["inference"].adapted[(generator_id, tenant)] = shift


class TestGenerate:
    def test_seeds_map_like_the_library(self, world, tiny_models):
        faces = world["editor"].generate("t1", "", [5, 9], truncation=0.5)
        generator = load_generator(tiny_models["generator"])
        with torch.no_grad():
            w = generator.truncate(generator.mapping(z_from_seeds([5, 9], 64)), 0.5)  # [2, D]
        assert len(faces) == 2  # in the order of the seeds
        for i, face in enumerate(faces):
            assert face.latent.ws.shape == (1, generator.n_latent, 64)
            np.testing.assert_allclose(face.latent.ws[0, 3], w[i].numpy(), atol=1e-5)
            assert decode(face.image).shape == (32, 32, 3)
        assert world["inference"].calls == [("demo", "t1", (2, generator.n_latent, 64))]  # one batched call

    def test_limits_name_the_field(self, world):
        editor = world["editor"]
        with pytest.raises(TooLargeError, match="seeds"):
            editor.generate("t1", "", list(range(9)))
        with pytest.raises(InvalidInputError, match="seeds"):
            editor.generate("t1", "", [])
        with pytest.raises(InvalidInputError, match="truncation"):
            editor.generate("t1", "", [1], truncation=float("nan"))
        with pytest.raises(InvalidInputError, match="format"):
            editor.generate("t1", "", [1], image_format="bmp")
        with pytest.raises(NotFoundError, match="nope"):
            editor.generate("t1", "nope", [1])


class TestEdit:
    def test_edit_by_id_moves_along_the_normal_on_the_chosen_layers(self, world, boundaries):
        editor = world["editor"]
        face = editor.generate("t1", "", [1])[0]
        result = editor.edit("t1", "", LatentSource(latent_id=face.latent.id),
                             [Step("age", 2.0, layers="coarse")])
        delta = result.latent.ws - face.latent.ws  # [1, L, D]
        normal = boundaries.attributes("demo").get("age").direction.numpy()
        coarse = range(0, 2)  # n_latent 8: coarse is 0-1
        for layer in range(delta.shape[1]):
            expected = 2.0 * normal if layer in coarse else np.zeros_like(normal)
            np.testing.assert_allclose(delta[0, layer], expected, atol=1e-5)
        assert result.latent.id != face.latent.id
        chained = editor.cache.get("t1", result.latent.id, "latent_id")[1]
        np.testing.assert_array_equal(chained, result.latent.ws)

    def test_conditions_keep_the_other_attribute_fixed(self, world, boundaries):
        editor = world["editor"]
        ws0 = editor.generate("t1", "", [2])[0].latent
        out = editor.edit("t1", "", LatentSource(latent_id=ws0.id),
                          [Step("age", 3.0, conditions=("smile",))]).latent.ws
        smile = boundaries.attributes("demo").get("smile").direction.numpy()
        assert abs(float((out - ws0.ws)[0, 0] @ smile)) < 1e-4  # no movement along the condition

    def test_seed_and_inline_sources(self, world, base):
        editor = world["editor"]
        by_seed = editor.edit("t1", "", LatentSource(seed=4, truncation=0.7), [])
        inline = editor.edit("t1", "", LatentSource(inline=by_seed.latent.ws[0]), [])
        np.testing.assert_array_equal(inline.latent.ws, by_seed.latent.ws)
        assert inline.image.data == by_seed.image.data

    @pytest.mark.parametrize("source, field", [
        (LatentSource(), "latent"),
        (LatentSource(inline=np.zeros((1, 3, 64), np.float32)), "latent.inline"),
        (LatentSource(inline=np.full((8, 64), np.nan, np.float32)), "latent.inline"),
        (LatentSource(latent_id="lat-doesnotexist"), "latent"),
        (LatentSource(latent_id="../../etc"), "latent.latent_id"),
        (LatentSource(seed=2**33), "latent.seed"),
    ])
    def test_bad_latents_name_the_field(self, world, source, field):
        with pytest.raises((InvalidInputError, NotFoundError)) as info:
            world["editor"].edit("t1", "", source, [])
        assert field in str(info.value) or (isinstance(info.value, NotFoundError) and info.value.kind == "latent")

    @pytest.mark.parametrize("step, field", [
        (Step("wings", 1.0), "edits[0].attribute"),
        (Step("age", float("nan")), "edits[0].strength"),
        (Step("age", 1e6), "edits[0].strength"),
        (Step("age", 1.0, layers="0-99"), "edits[0].layers"),
        (Step("age", 1.0, conditions=("age",)), "edits[0].conditions[0]"),
        (Step("age", 1.0, conditions=("nope",)), "edits[0].conditions[0]"),
    ])
    def test_bad_steps_name_the_field(self, world, step, field):
        with pytest.raises((InvalidInputError, NotFoundError), match=field.replace("[", r"\[").replace("]", r"\]")):
            world["editor"].edit("t1", "", LatentSource(seed=1), [step])

    def test_a_latent_of_another_tenant_is_not_found(self, world):
        face = world["editor"].generate("t1", "", [1])[0]
        with pytest.raises(NotFoundError):
            world["editor"].edit("t2", "", LatentSource(latent_id=face.latent.id), [])

    def test_cache_hits_and_misses_are_counted(self, world):
        editor, metrics = world["editor"], world["metrics"]
        face = editor.generate("t1", "", [1])[0]
        editor.edit("t1", "", LatentSource(latent_id=face.latent.id), [])
        with pytest.raises(NotFoundError):
            editor.edit("t1", "", LatentSource(latent_id="lat-0"), [])
        assert metrics.cache.labels("hit")._value.get() == 1
        assert metrics.cache.labels("miss")._value.get() == 1


class TestInvert:
    def test_invert_caches_the_encoder_latent(self, world):
        result = world["editor"].invert("t1", png_bytes(48))
        family, ws = world["editor"].cache.get("t1", result.latent.id, "latent_id")
        assert family == "demo" and ws.shape == (1, 8, 64)
        assert decode(result.reconstruction).shape == (32, 32, 3)

    @pytest.mark.parametrize("data, error, field", [
        (b"", InvalidInputError, "image.data"),
        (b"GIF89a....", InvalidInputError, "image.data"),
        (png_bytes(32)[:60], InvalidInputError, "image.data"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 200_000, TooLargeError, "image.data"),
    ])
    def test_bad_uploads(self, world, data, error, field):
        with pytest.raises(error, match=field):
            world["editor"].invert("t1", data)
        assert world["inference"].calls == []  # rejected before the model server

    def test_decompression_bomb_is_refused_by_size_header(self, world):
        out = io.BytesIO()
        Image.new("L", (1024, 1024)).save(out, format="PNG")  # tiny file, 1 Mpx > the 256² limit
        with pytest.raises(TooLargeError, match="pixels"):
            world["editor"].invert("t1", out.getvalue())


class TestAnimate:
    def test_frames_then_one_gif(self, world):
        items = list(world["editor"].animate("t1", "", LatentSource(seed=1), [Step("smile", 2.0)],
                                             frames=4, start=-1, end=1, animation="gif"))
        frames, animation = items[:-1], items[-1]
        assert [f.index for f in frames] == [0, 1, 2, 3]
        assert [round(f.t, 3) for f in frames] == [-1.0, -0.333, 0.333, 1.0]
        with Image.open(io.BytesIO(animation.data)) as gif:
            assert gif.format == "GIF" and gif.n_frames == 4
        assert [c[2][0] for c in world["inference"].calls] == [3, 1]  # frame_batch 3

    def test_validation_happens_before_the_first_frame(self, world):
        with pytest.raises(InvalidInputError, match="frames"):
            world["editor"].animate("t1", "", LatentSource(seed=1), [Step("age", 1)], frames=11)
        with pytest.raises(InvalidInputError, match="skip_frames"):
            world["editor"].animate("t1", "", LatentSource(seed=1), [Step("age", 1)], skip_frames=True)
        assert world["inference"].calls == []


class TestTenants:
    def test_adapted_generators_are_visible_to_their_tenant_only(self, world):
        add_adapted(world, "t1")
        ids = {g.id for g in world["editor"].list_generators("t1")}
        assert ids == {"demo", "gen-a1"}
        assert {g.id for g in world["editor"].list_generators("t2")} == {"demo"}
        a = world["editor"].edit("t1", "gen-a1", LatentSource(seed=1), [])
        b = world["editor"].edit("t1", "demo", LatentSource(seed=1), [])
        assert a.image.data != b.image.data
        with pytest.raises(NotFoundError, match="gen-a1"):
            world["editor"].edit("t2", "gen-a1", LatentSource(seed=1), [])
        with pytest.raises(NotFoundError):
            world["adaptation"].delete_generator("t2", "gen-a1")
        world["adaptation"].delete_generator("t1", "gen-a1")
        assert {g.id for g in world["editor"].list_generators("t1")} == {"demo"}

    def test_a_latent_edits_with_an_adapted_generator_of_its_family(self, world):
        add_adapted(world, "t1")
        face = world["editor"].generate("t1", "demo", [3])[0]
        out = world["editor"].edit("t1", "gen-a1", LatentSource(latent_id=face.latent.id), [])
        np.testing.assert_array_equal(out.latent.ws, face.latent.ws)

    def test_base_generators_cannot_be_deleted(self, world):
        with pytest.raises(PreconditionError):
            world["adaptation"].delete_generator("t1", "demo")


class TestAdaptation:
    def test_idempotent_create_queues_once_per_key(self, world):
        adaptation, queue = world["adaptation"], world["queue"]
        first, created = adaptation.create("t1", "", png_bytes(), "key-1", "my style", {"steps": 5})
        again, created_again = adaptation.create("t1", "", png_bytes(), "key-1")
        assert created and not created_again and again.job.id == first.job.id
        other, _ = adaptation.create("t2", "", png_bytes(), "key-1")  # keys are per tenant
        assert other.job.id != first.job.id
        assert first.job.params == {"iterations": 5} and first.job.display_name == "my style"
        assert again.job.display_name == "my style"  # a retry keeps the first name
        assert world["store"].get(first.job.target_key) == png_bytes()
        # The retry re-sends the still-queued job (its first send may never have reached the broker).
        assert queue.submitted == [first.job.id, first.job.id, other.job.id]

    def test_a_broker_outage_loses_no_job(self, world):
        adaptation, queue = world["adaptation"], world["queue"]
        queue.down = True
        with pytest.raises(UnavailableError):
            adaptation.create("t1", "", png_bytes(), "key-2")
        queue.down = False
        view, created = adaptation.create("t1", "", png_bytes(), "key-2")  # the client's retry
        assert not created and queue.submitted == [view.job.id]

    def test_get_list_cancel_are_tenant_scoped(self, world):
        adaptation = world["adaptation"]
        jobs = [adaptation.create("t1", "", png_bytes(), f"k{i}")[0].job.id for i in range(3)]
        page, token = adaptation.list("t1", page_size=2)
        assert [v.job.id for v in page] == jobs[::-1][:2] and token
        rest, token2 = adaptation.list("t1", page_size=2, page_token=token)
        assert [v.job.id for v in rest] == [jobs[0]] and token2 == ""
        with pytest.raises(NotFoundError):
            adaptation.get("t2", jobs[0])
        with pytest.raises(NotFoundError):
            adaptation.cancel("t2", jobs[0])
        assert adaptation.cancel("t1", jobs[0]).job.state == "CANCELLED"

    @pytest.mark.parametrize("kwargs, field", [
        (dict(idempotency_key=""), "idempotency_key"),
        (dict(image=b"not an image"), "style_image.data"),
        (dict(base_generator_id="gen-unknown"), "gen-unknown"),
        (dict(options={"steps": -1}), "options.steps"),
        (dict(options={"learning_rate": float("inf")}), "options.learning_rate"),
    ])
    def test_bad_create_requests(self, world, kwargs, field):
        args = dict(tenant="t1", base_generator_id="", image=png_bytes(), idempotency_key="k", display_name="",
                    options={})
        args.update(kwargs)
        with pytest.raises((InvalidInputError, NotFoundError), match=field):
            world["adaptation"].create(**args)
        assert world["queue"].submitted == []


def test_boundaries_load_from_files_and_are_checked_against_the_latent_space(tmp_path, base):
    from faceedit.editing import BoundarySetError, BoundarySetSpec

    save_boundary(tmp_path / "age.safetensors", torch.ones(64),
                  {"attribute": "age", "accuracy": 0.93, "recommended_strength": [-2.5, 4.0], "layers": [0, 1]})
    entries = BoundaryRegistry.read_sets([BoundarySetSpec(str(tmp_path))], base)
    assert entries.get("age").accuracy == pytest.approx(0.93)
    assert entries.get("age").recommended == (-2.5, 4.0) and entries.get("age").layers == (0, 1)
    save_boundary(tmp_path / "bad.safetensors", torch.ones(32), {})
    with pytest.raises(BoundarySetError, match="bad.safetensors"):
        BoundaryRegistry.read_sets([BoundarySetSpec(str(tmp_path))], base)


def test_list_attributes_reports_ranges_layer_groups_and_provenance(world, base):
    world["editor"].boundaries.families["demo"] = boundary_set(
        {"age": torch.ones(64), "smile": torch.ones(64)}, accuracy=None, recommended=(-2.0, 3.0),
        layers={"age": (0, 1)})
    family, attributes, _ = world["editor"].list_attributes("t1")
    age = next(a for a in attributes if a.name == "age")
    assert family == "demo" and (age.recommended_min, age.recommended_max, age.default_layers) == (-2.0, 3.0, "coarse")
    assert age.accuracy is None and (age.source, age.format, age.space) == ("age.safetensors", "faceedit", "w")


def test_a_boundary_file_the_editor_cannot_use_stops_the_start(tmp_path, base):
    """Never silently skipped: a file that does not fit names itself, and nothing is served."""
    from faceedit.editing import BoundarySetError
    from services.common.models import load_model_config
    from services.editor.server import load_boundaries

    folder = tmp_path / "boundaries"
    save_boundary(folder / "age.safetensors", torch.ones(64), {"accuracy": 0.9})
    (tmp_path / "models.yaml").write_text(
        f"generators: {{demo: {{checkpoint: {base_checkpoint(tmp_path)}}}}}\n"
        "families: {demo: {boundaries: [boundaries]}}\n")
    registry = load_boundaries(load_model_config(tmp_path / "models.yaml"), {"demo": base})
    assert registry.attributes("demo").names() == ["age"]
    save_boundary(folder / "other.safetensors", torch.ones(64), {"generator_sha256": "f" * 64})  # another G
    save_boundary(folder / "wide.safetensors", torch.ones(128), {})  # another latent space
    (folder / "notes.txt").write_text("not a direction")
    with pytest.raises(BoundarySetError) as info:
        load_boundaries(load_model_config(tmp_path / "models.yaml"), {"demo": base})
    for name in ("other.safetensors", "wide.safetensors", "notes.txt"):
        assert name in str(info.value)


def base_checkpoint(tmp_path) -> str:
    path = tmp_path / "g.pt"
    path.write_bytes(b"")  # only its existence is checked by the config; the base is loaded already
    return str(path)


def test_job_params_are_what_the_fine_tuner_accepts(world):
    from faceedit.adaptation.finetune import FinetuneConfig

    view, _ = world["adaptation"].create("t1", "", png_bytes(), "k-ft", options={"steps": 7, "learning_rate": 0.01})
    config = FinetuneConfig.from_dict(view.job.params)
    assert (config.iterations, config.lr) == (7, 0.01)


@pytest.mark.parametrize("token", ["9999999999999999999", "-1", "1e3", "٣", "x" * 500, "100001"])
def test_page_tokens_are_checked_before_they_reach_redis(world, token):
    with pytest.raises(InvalidInputError) as info:
        world["adaptation"].list("t1", page_token=token)
    assert info.value.field == "page_token" and token[:50] not in info.value.problem


@pytest.mark.parametrize("method", ["get", "cancel"])
def test_job_errors_name_the_field_the_api_calls_name(world, method):
    for bad in ("", "j" * 129):
        with pytest.raises(InvalidInputError) as info:
            getattr(world["adaptation"], method)("t1", bad)
        assert info.value.field == "name"
