"""Synthetic faces: shapes, determinism, attributes visible in the pixels, styles, and argument checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from faceedit.errors import InvalidInputError
from faceedit.synth import ATTRIBUTE_NAMES, ATTRIBUTES, STYLES, render_faces, render_from_attributes, sample_attributes

SEED = 5
PEOPLE = 6  # identities each visibility test looks at

# Regions of a 64 px face in a neutral pose (rows, cols), from the aligned layout: eyes on row ~30,
# mouth on row ~45, crown hair above row ~14, cheeks either side of the nose.
EYES = (slice(25, 35), slice(14, 50))
INNER_EYES = (slice(25, 35), slice(20, 44))
MOUTH = (slice(40, 51), slice(20, 44))
CROWN = (slice(5, 13), slice(26, 38))
LEFT_CHEEK = (slice(33, 42), slice(17, 25))
RIGHT_CHEEK = (slice(33, 42), slice(39, 47))
CORNER = (slice(0, 4), slice(0, 4))
BESIDE_NECK = (slice(46, 55), slice(8, 15))
JAW = (slice(46, 54), slice(16, 48))

NEUTRAL = dict(yaw=0.0, pitch=0.0, glasses=0.0, beard=0.0, mouth_open=0.0, eyes_open=1.0, smile=0.3,
               lighting=0.0, age=0.2, hair_length=0.5, gender=0.5, anger=0.0, crying=0.0)


def luma(images: torch.Tensor) -> np.ndarray:
    """[n, 3, h, w] in [-1, 1] -> [n, h, w] luminance in [-1, 1]."""
    return (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).numpy()


def sweep(name: str, values, people: int = PEOPLE, **fixed: float) -> np.ndarray:
    """Luminance of the same `people` with `name` set to each value: [len(values), people, 64, 64]."""
    base = sample_attributes(people, SEED)
    for key, value in {**NEUTRAL, **fixed}.items():
        base[key] = np.full(people, value)
    attrs = {key: np.tile(col, len(values)) for key, col in base.items()}
    attrs[name] = np.repeat(np.asarray(values, dtype=np.float64), people)
    images = render_from_attributes(attrs, seed=SEED, identities=list(range(people)) * len(values))
    return luma(images).reshape(len(values), people, 64, 64)


def region_change(a: np.ndarray, b: np.ndarray, region) -> np.ndarray:
    """Per-person mean absolute luminance change inside a region."""
    return np.abs(a[(slice(None), *region)] - b[(slice(None), *region)]).mean(axis=(1, 2))


def region_mean(a: np.ndarray, region) -> np.ndarray:
    return a[(slice(None), *region)].mean(axis=(1, 2))


def dark_centroid(lum: np.ndarray) -> np.ndarray:
    """(row, col) centre of mass of the darkest inner-face pixels (eyes, brows, nostrils, lips), per person."""
    inner = lum[:, 18:52, 16:48]
    weights = np.clip(np.quantile(inner, 0.08, axis=(1, 2), keepdims=True) - inner, 0.0, None)
    rows, cols = np.mgrid[18:52, 16:48]
    total = weights.sum(axis=(1, 2))
    return np.stack([(weights * rows).sum(axis=(1, 2)) / total, (weights * cols).sum(axis=(1, 2)) / total], -1)


class TestOutput:
    def test_shapes_dtype_and_range(self):
        images, attrs = render_faces(6, 0)
        assert images.shape == (6, 3, 64, 64) and images.dtype == torch.float32
        assert images.min() >= -1.0 and images.max() <= 1.0
        assert images.std() > 0.2  # not blank
        assert list(attrs) == [*ATTRIBUTE_NAMES, "style"]
        for name, values in attrs.items():
            assert values.shape == (6,) and values.dtype == torch.float32, name
        assert torch.all(attrs["style"] == 0)

    @pytest.mark.parametrize("size", [16, 128])
    def test_other_sizes(self, size):
        images, _ = render_faces(2, 0, size=size)
        assert images.shape == (2, 3, size, size)
        assert images.min() >= -1.0 and images.max() <= 1.0

    def test_same_arguments_same_output(self):
        a, attrs_a = render_faces(4, 11)
        b, attrs_b = render_faces(4, 11)
        assert torch.equal(a, b)
        assert all(torch.equal(attrs_a[k], attrs_b[k]) for k in attrs_a)

    def test_prefix_of_a_batch_is_the_smaller_batch(self):
        big, big_attrs = render_faces(7, 3)
        small, small_attrs = render_faces(3, 3)
        assert torch.equal(big[:3], small)
        assert all(torch.equal(big_attrs[k][:3], small_attrs[k]) for k in small_attrs)

    def test_seeds_give_different_faces(self):
        a, _ = render_faces(2, 1)
        b, _ = render_faces(2, 2)
        assert (a - b).abs().mean() > 0.1

    def test_render_from_attributes_reproduces_render_faces(self):
        images, attrs = render_faces(4, 7)
        assert torch.equal(render_from_attributes(sample_attributes(4, 7), seed=7), images)
        assert torch.equal(render_from_attributes(attrs, seed=7), images)  # the returned dict round-trips

    def test_scalars_broadcast_and_identities_pick_people(self):
        attrs = {k: v[0] for k, v in sample_attributes(1, 2).items()}
        attrs["smile"] = np.array([0.0, 1.0])
        images = render_from_attributes(attrs, seed=2, identities=[0, 0])
        assert images.shape == (2, 3, 64, 64)
        assert torch.equal(images[0], render_from_attributes({**attrs, "smile": 0.0}, seed=2)[0])


class TestAttributesAreVisible:
    def test_gender_reshapes_the_jaw_and_features_not_the_crown(self):
        lum = sweep("gender", [0.0, 1.0])
        jaw, crown = region_change(lum[0], lum[1], JAW), region_change(lum[0], lum[1], CROWN)
        assert np.all(jaw > 0.05)
        assert np.all(jaw > 3 * crown)

    def test_anger_moves_brows_and_eyes_and_leaves_the_cheeks(self):
        lum = sweep("anger", [0.0, 1.0])
        eyes = region_change(lum[0], lum[1], INNER_EYES)
        assert np.all(eyes > 0.03)
        for region in (CROWN, LEFT_CHEEK, RIGHT_CHEEK):
            assert np.all(region_change(lum[0], lum[1], region) < 0.005)

    def test_crying_draws_tears_down_the_cheeks(self):
        lum = sweep("crying", [0.0, 1.0])
        cheeks = np.maximum(region_change(lum[0], lum[1], LEFT_CHEEK), region_change(lum[0], lum[1], RIGHT_CHEEK))
        assert np.all(region_change(lum[0], lum[1], INNER_EYES) > 0.03)
        assert cheeks.mean() > 0.03 and (cheeks > 0.03).sum() >= PEOPLE - 1  # hair may cover one cheek
        assert np.all(region_change(lum[0], lum[1], CROWN) == 0)

    def test_the_new_attributes_are_neutral_at_their_defaults(self):
        """gender 0.5, anger 0, crying 0 draw the face exactly as before these attributes existed."""
        from faceedit.synth.expression import brow_offsets, eye_openness, gendered, mouth_offsets
        from faceedit.synth.identity import sample_identity

        ident = sample_identity(np.random.default_rng(0))
        calm = {"eyes_open": 0.7, "anger": 0.0, "crying": 0.0}
        assert gendered(ident, 0.5) is ident and gendered(ident, 0.9).jaw_power > ident.jaw_power
        assert eye_openness(calm) == 0.7 and eye_openness(dict(calm, anger=1.0)) < 0.7
        drop, inward = brow_offsets(calm, np.linspace(0, 1, 9))
        assert not drop.any() and inward == 0.0
        assert mouth_offsets(calm) == (0.0, 1.0, 1.0)

    def test_smile_changes_the_mouth_not_the_eyes(self):
        lum = sweep("smile", [0.0, 1.0])
        mouth, eyes = region_change(lum[0], lum[1], MOUTH), region_change(lum[0], lum[1], EYES)
        assert np.all(mouth > 0.01)  # lips are low-contrast on dark skin, so the floor is modest
        assert np.all(mouth > 4 * eyes)

    def test_mouth_open_changes_the_mouth_not_the_eyes(self):
        lum = sweep("mouth_open", [0.0, 1.0])
        mouth, eyes = region_change(lum[0], lum[1], MOUTH), region_change(lum[0], lum[1], EYES)
        assert np.all(mouth > 0.04)
        assert np.all(mouth > 4 * eyes)

    def test_eyes_open_changes_the_eyes_not_the_mouth(self):
        lum = sweep("eyes_open", [0.0, 1.0])
        eyes, mouth = region_change(lum[0], lum[1], EYES), region_change(lum[0], lum[1], MOUTH)
        assert np.all(eyes > 0.02)
        assert np.all(eyes > 4 * mouth)

    def test_eyes_close_gradually(self):
        lum = sweep("eyes_open", [0.0, 0.5, 1.0])
        half, closed = region_change(lum[1], lum[2], EYES), region_change(lum[0], lum[2], EYES)
        assert np.all(half > 0.005) and np.all(closed > 1.3 * half)

    def test_glasses_add_dark_frames_around_the_eyes(self):
        lum = sweep("glasses", [0.0, 1.0], skin_tone=0.3)  # dark frames on very dark skin hardly darken it
        changed = (np.abs(lum[1] - lum[0])[(slice(None), *EYES)] > 0.25).sum(axis=(1, 2))
        assert np.all(changed >= 25)
        assert region_mean(lum[1], EYES).mean() < region_mean(lum[0], EYES).mean()
        assert np.all(region_change(lum[0], lum[1], EYES) > 4 * region_change(lum[0], lum[1], MOUTH))

    def test_yaw_moves_the_features_sideways(self):
        lum = sweep("yaw", [-1.0, 0.0, 1.0], hair_color=1.0, age=0.0, skin_tone=0.1, background=0.5)
        cols = np.stack([dark_centroid(x)[:, 1] for x in lum])
        assert np.all(cols[1] - cols[0] > 2.0) and np.all(cols[2] - cols[1] > 2.0)

    def test_pitch_moves_the_features_up(self):
        lum = sweep("pitch", [-1.0, 0.0, 1.0], hair_color=1.0, age=0.0, skin_tone=0.1, background=0.5)
        rows = np.stack([dark_centroid(x)[:, 0] for x in lum])
        assert np.all(rows[0] - rows[1] > 1.5) and np.all(rows[1] - rows[2] > 1.5)

    def test_age_greys_dark_hair(self):
        lum = sweep("age", [0.0, 1.0], hair_color=0.0)
        assert np.all(region_mean(lum[1], CROWN) - region_mean(lum[0], CROWN) > 0.8)

    def test_hair_color_goes_from_black_to_blond(self):
        lum = sweep("hair_color", [0.0, 0.5, 1.0], age=0.0)
        crown = np.stack([region_mean(x, CROWN) for x in lum])
        assert np.all(np.diff(crown, axis=0) > 0.2)

    def test_skin_tone_darkens_the_cheeks(self):
        lum = sweep("skin_tone", [0.0, 0.5, 1.0], beard=0.0)
        cheeks = np.stack([region_mean(x, LEFT_CHEEK) + region_mean(x, RIGHT_CHEEK) for x in lum]) / 2
        assert np.all(np.diff(cheeks, axis=0) < -0.25)

    def test_lighting_brightens_the_side_it_comes_from(self):
        lum = sweep("lighting", [-1.0, 1.0])
        balance = [region_mean(x, LEFT_CHEEK) - region_mean(x, RIGHT_CHEEK) for x in lum]
        assert np.all(balance[0] > 0.25) and np.all(balance[1] < -0.25)

    def test_beard_covers_the_lower_face(self):
        lum = sweep("beard", [0.0, 1.0], skin_tone=0.1, hair_color=0.1)
        chin = (slice(46, 54), slice(22, 42))
        assert np.all(region_mean(lum[0], chin) - region_mean(lum[1], chin) > 0.3)
        assert np.all(region_change(lum[0], lum[1], chin) > 4 * region_change(lum[0], lum[1], EYES))

    def test_long_hair_falls_beside_the_neck(self):
        lum = sweep("hair_length", [0.0, 1.0])
        assert np.all(region_change(lum[0], lum[1], BESIDE_NECK) > 0.1)
        assert np.all(region_change(lum[0], lum[1], INNER_EYES) < 0.01)

    def test_background_goes_from_dark_to_light(self):
        lum = sweep("background", [0.0, 0.5, 1.0])
        corner = np.stack([region_mean(x, CORNER) for x in lum])
        assert np.all(np.diff(corner, axis=0) > 0.15)
        assert np.all(region_change(lum[0], lum[2], EYES) < 0.02)


class TestStyles:
    @pytest.fixture(scope="class")
    @classmethod
    def renders(cls) -> dict[str, torch.Tensor]:
        return {style: render_faces(4, 9, style=style) for style in STYLES}

    def test_style_attribute_is_its_index(self, renders):
        for index, style in enumerate(STYLES):
            assert torch.all(renders[style][1]["style"] == index)

    def test_same_attributes_in_every_style(self, renders):
        for style in STYLES[1:]:
            attrs = renders[style][1]
            assert all(torch.equal(attrs[k], renders["photo"][1][k]) for k in ATTRIBUTE_NAMES)

    def test_styles_differ_from_photo(self, renders):
        photo = renders["photo"][0]
        for style in STYLES[1:]:
            assert (renders[style][0] - photo).abs().mean() > 0.05, style

    def test_sketch_is_greyscale_on_white_paper(self, renders):
        sketch = renders["sketch"][0]
        assert (sketch.max(dim=1).values - sketch.min(dim=1).values).max() < 0.02
        assert np.all(region_mean(luma(sketch), CORNER) > 0.8)

    def test_comic_has_few_flat_colours(self, renders):
        for comic, photo in zip(renders["comic"][0], renders["photo"][0]):
            assert len(torch.unique(comic.reshape(3, -1), dim=1).T) <= 16
            assert len(torch.unique(photo.reshape(3, -1), dim=1).T) > 300

    def test_watercolor_is_softer_and_less_saturated(self, renders):
        def spread(x):
            return (x.max(dim=1).values - x.min(dim=1).values).mean().item()

        def edges(x):  # gradient energy: blurring spreads an edge out, which lowers its square
            return (x[..., 1:] - x[..., :-1]).pow(2).mean().item()

        water, photo = renders["watercolor"][0], renders["photo"][0]
        assert spread(water) < 0.8 * spread(photo)
        assert edges(water) < 0.7 * edges(photo)


class TestAttributeDistributions:
    @pytest.fixture(scope="class")
    @classmethod
    def attrs(cls) -> dict[str, np.ndarray]:
        return sample_attributes(500, 0)

    def test_every_attribute_covers_its_range(self, attrs):
        for name, spec in ATTRIBUTES.items():
            values, span = attrs[name], spec.high - spec.low
            assert values.min() >= spec.low and values.max() <= spec.high, name
            assert values.min() < spec.low + 0.05 * span and values.max() > spec.high - 0.05 * span, name
            assert values.std() > 0.15 * span, name

    def test_binary_and_mostly_absent_attributes(self, attrs):
        assert set(np.unique(attrs["glasses"])) == {0.0, 1.0}
        assert 0.15 < attrs["glasses"].mean() < 0.45
        assert 0.4 < (attrs["beard"] == 0).mean() < 0.8
        assert (attrs["eyes_open"] < 0.5).mean() > 0.05
        assert 0.4 < (attrs["anger"] < 0.1).mean() < 0.7 and 0.5 < (attrs["crying"] < 0.1).mean() < 0.8

    def test_attributes_are_not_correlated(self, attrs):
        table = np.stack([attrs[name] for name in ATTRIBUTE_NAMES])
        corr = np.corrcoef(table) - np.eye(len(ATTRIBUTE_NAMES))
        assert np.abs(corr).max() < 0.2


class TestValidation:
    @pytest.mark.parametrize("n", [0, -3, 1.5, True, "4"])
    def test_bad_n(self, n):
        with pytest.raises(InvalidInputError) as err:
            render_faces(n, 0)
        assert err.value.field == "n"
        with pytest.raises(InvalidInputError):
            sample_attributes(n, 0)

    @pytest.mark.parametrize("seed", [-1, 2.0, None])
    def test_bad_seed(self, seed):
        with pytest.raises(InvalidInputError) as err:
            render_faces(1, seed)
        assert err.value.field == "seed"

    @pytest.mark.parametrize("size", [8, 48, 2048, 64.0])
    def test_bad_size(self, size):
        with pytest.raises(InvalidInputError) as err:
            render_faces(1, 0, size=size)
        assert err.value.field == "size"

    def test_bad_style_lists_the_valid_ones(self):
        with pytest.raises(InvalidInputError) as err:
            render_faces(1, 0, style="oil")
        assert err.value.field == "style"
        assert all(style in str(err.value) for style in STYLES)

    @pytest.mark.parametrize("change", [
        {"smile": 1.5},  # out of range
        {"yaw": float("nan")},
        {"glasses": 0.5},  # binary
        {"colour": 0.0},  # unknown
        {"smile": [0.1, 0.2], "age": [0.1, 0.2, 0.3]},  # ragged
        {"style": 2.0},  # not the style asked for
    ])
    def test_bad_attributes(self, change):
        attrs = {**{k: v[0] for k, v in sample_attributes(1, 0).items()}, **change}
        with pytest.raises(InvalidInputError) as err:
            render_from_attributes(attrs)
        assert err.value.field == "attrs"

    def test_missing_attribute(self):
        attrs = sample_attributes(1, 0)
        del attrs["age"]
        with pytest.raises(InvalidInputError) as err:
            render_from_attributes(attrs)
        assert err.value.field == "attrs" and "age" in str(err.value)

    @pytest.mark.parametrize("identities", [[0], [0, -1], [0.5, 1]])
    def test_bad_identities(self, identities):
        with pytest.raises(InvalidInputError) as err:
            render_from_attributes(sample_attributes(2, 0), identities=identities)
        assert err.value.field == "identities"
