"""Text-driven edits (StyleCLIP global directions) on a tiny seeded generator and CLIP: the relevance
precomputation (batched, resumable, stored as an artifact), prompt → direction, and bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from faceedit.adaptation.clip import ClipEnsemble
from faceedit.editing.text import (
    ChannelRelevance,
    RelevanceConfig,
    apply_text_direction,
    channel_relevance,
    relevance_key,
    text_direction,
    text_edit,
)
from faceedit.errors import InvalidInputError

from factories import tiny_generator, tiny_text_clip

CONFIG = RelevanceConfig(samples=3, channels_per_batch=5)


@pytest.fixture(scope="module")
def models():
    return tiny_generator().eval(), tiny_text_clip()


@pytest.fixture(scope="module")
def relevance(models):
    generator, clip = models
    return channel_relevance(generator, clip, CONFIG)


def test_relevance_covers_every_conv_channel_and_is_the_embedding_change(models, relevance):
    generator, clip = models
    convs = [j for j, (conv, _) in enumerate(generator.style_layers()) if conv.out_ch != 3]  # toRGB left out
    assert relevance.layers == convs and relevance.complete
    assert relevance.relevance.shape == (sum(relevance.widths), clip.encode_text(["x"]).shape[1])
    assert torch.isfinite(relevance.relevance).all() and (relevance.std > 0).all()
    # Channel 0 by hand: push it ±kσ on the same samples, the mean change of the normalised embedding.
    z = torch.randn(CONFIG.samples, generator.style_dim, generator=torch.Generator().manual_seed(CONFIG.seed))
    with torch.no_grad():
        styles = generator.styles(generator.broadcast(generator.mapping(z)))
        j, sigma = relevance.layers[0], float(relevance.std[0]) * CONFIG.push
        up, down = [s.clone() for s in styles], [s.clone() for s in styles]
        up[j][:, 0] += sigma
        down[j][:, 0] -= sigma
        change = (clip.encode_image(generator.synthesis_from_styles(up))
                  - clip.encode_image(generator.synthesis_from_styles(down))).mean(0)
    torch.testing.assert_close(relevance.relevance[0], change, atol=1e-5, rtol=1e-4)


def test_an_ensembles_relevance_is_its_members_side_by_side_and_its_direction_their_mean_vote(models, relevance):
    """Several text CLIPs read as one: one relevance (each member's rows / √k), one cache key of its own,
    and a direction that averages what each member alone would say."""
    generator, clip = models
    other = tiny_text_clip(seed=5)
    ensemble = ClipEnsemble([clip, other])
    assert ensemble.embedding_groups == (clip.encode_text(["x"]).shape[1], other.encode_text(["x"]).shape[1])
    joint = channel_relevance(generator, ensemble, CONFIG)
    alone = channel_relevance(generator, other, CONFIG)
    torch.testing.assert_close(joint.relevance, torch.cat([relevance.relevance, alone.relevance], 1) / 2 ** 0.5,
                               atol=1e-5, rtol=1e-4)
    keys = {relevance_key(generator, c, CONFIG) for c in (clip, other, ensemble)}
    assert len(keys) == 3  # a relevance is never taken for another CLIP's
    votes = [text_direction(r, c, "a smiling face", threshold=0.05) / r.std
             for r, c in ((relevance, clip), (alone, other))]
    expected = (votes[0] + votes[1]) / 2
    expected = expected / expected.abs().max() * joint.std
    torch.testing.assert_close(text_direction(joint, ensemble, "a smiling face", threshold=0.05), expected,
                               atol=1e-5, rtol=1e-4)
    with pytest.raises(InvalidInputError) as info:  # measured with one CLIP, read with two
        text_direction(relevance, ensemble, "a smiling face")
    assert info.value.field == "relevance" and "another CLIP" in info.value.problem
    with pytest.raises(InvalidInputError) as info:
        ClipEnsemble([clip])
    assert info.value.field == "clips"


def test_a_partial_relevance_resumes_to_the_same_result_and_round_trips_as_bytes(models, relevance):
    generator, clip = models
    saved: list[bytes] = []
    with pytest.raises(KeyboardInterrupt):
        def stop_after_first(partial: ChannelRelevance) -> None:
            saved.append(partial.to_bytes())
            raise KeyboardInterrupt  # the job died here

        channel_relevance(generator, clip, CONFIG, checkpoint=stop_after_first, checkpoint_every=10)
    partial = ChannelRelevance.from_bytes(saved[0])
    assert 10 <= partial.done < sum(partial.widths) and not partial.complete
    resumed = channel_relevance(generator, clip, CONFIG, resume=partial)
    torch.testing.assert_close(resumed.relevance, relevance.relevance)
    with pytest.raises(InvalidInputError) as info:
        text_direction(partial, clip, "a smiling face")
    assert info.value.field == "relevance"
    with pytest.raises(InvalidInputError):  # another configuration cannot be resumed
        channel_relevance(generator, clip, RelevanceConfig(samples=4), resume=partial)


def test_a_text_edit_moves_only_the_channels_that_pass_the_threshold(models, relevance):
    generator, clip = models
    direction = text_direction(relevance, clip, "an old face", threshold=0.2)
    assert direction.abs().max() > 0 and (direction == 0).any()
    loose = text_direction(relevance, clip, "an old face", threshold=0.05)
    assert int((loose != 0).sum()) > int((direction != 0).sum())
    with pytest.raises(InvalidInputError) as info:  # a threshold no channel reaches says so
        text_direction(relevance, clip, "an old face", threshold=0.999)
    assert info.value.field == "threshold"
    ws = generator.broadcast(generator.mapping(torch.randn(2, generator.style_dim)))
    with torch.no_grad():
        base = generator.synthesis(ws)
        edited = text_edit(generator, clip, ws, "an old face", strength=3.0, threshold=0.2, relevance=relevance)
        styles = generator.styles(ws)
    assert edited.shape == base.shape and not torch.allclose(edited, base)
    torch.testing.assert_close(text_edit(generator, clip, ws, "an old face", strength=0.0, relevance=relevance),
                               base)  # strength 0 is the unedited image
    moved = apply_text_direction(styles, relevance, direction, 1.0)
    untouched = set(range(len(styles))) - set(relevance.layers)
    assert all(torch.equal(moved[j], styles[j]) for j in untouched)  # toRGB styles stay


@pytest.mark.parametrize("kwargs, field", [
    ({"target": ""}, "target"), ({"target": "x" * 301}, "target"), ({"neutral": "  "}, "neutral"),
    ({"threshold": 1.5}, "threshold"), ({"threshold": -0.1}, "threshold"),
])
def test_bad_prompts_and_settings_name_the_field(models, relevance, kwargs, field):
    args = {"target": "a smiling face", **kwargs}
    with pytest.raises(InvalidInputError) as info:
        text_direction(relevance, models[1], **args)
    assert info.value.field == field


def test_bad_relevance_settings_name_the_field():
    for kwargs, field in (({"samples": 1}, "samples"), ({"push": 0.0}, "push"), ({"channels_per_batch": 0},
                                                                                  "channels_per_batch")):
        with pytest.raises(InvalidInputError) as info:
            RelevanceConfig(**kwargs)
        assert info.value.field == field


def test_the_cached_relevance_is_computed_once_and_a_partial_one_is_resumed(models, relevance, tmp_path):
    from faceedit.adaptation.blob_cache import DirectoryCache
    from faceedit.editing.text import cached_channel_relevance, relevance_key

    generator, clip = models
    cache = DirectoryCache(tmp_path)
    key = relevance_key(generator, clip, CONFIG)
    partial = channel_relevance(generator, clip, dataclasses.replace(CONFIG))  # a finished one, cut back to 10
    cut = ChannelRelevance(partial.relevance[:10], partial.std, partial.layers, partial.widths, 10, CONFIG)
    cache.put(key + ".partial", cut.to_bytes())
    seen: list[int] = []
    first = cached_channel_relevance(generator, clip, cache, CONFIG, progress=lambda done, total: seen.append(done))
    assert seen[0] > 10 and first.complete  # resumed after the 10 it had
    torch.testing.assert_close(first.relevance, relevance.relevance)
    again = cached_channel_relevance(generator, clip, cache, CONFIG, progress=lambda *_: seen.append(-1))
    assert -1 not in seen and torch.equal(again.relevance, first.relevance)  # read, not recomputed


def test_the_evaluation_scores_each_prompt_on_what_it_names_next_to_the_boundary(models, relevance):
    from faceedit.editing.boundary import Boundary
    from faceedit.editing.text_quality import PROMPTS, TextPrompt, evaluate_text_edits
    from faceedit.synth import load_scorer

    generator, clip = models
    normal = torch.nn.functional.normalize(torch.randn(generator.style_dim, generator=torch.Generator().manual_seed(3)),
                                           dim=0)
    age = Boundary(normal, 0.0, 0.9, None, {"attribute": "age", "recommended_strength": [-3.0, 3.0]})
    freckles = TextPrompt("a freckled face", "freckles", 1.0)  # nothing the scorer reads
    report = evaluate_text_edits(generator, clip, load_scorer(), relevance, {"age": age}, prompts=(*PROMPTS, freckles),
                                 n=6, threshold=0.05)
    rows = {m.prompt: m for m in report.measurements}
    assert list(rows) == [p.text for p in PROMPTS] + ["a freckled face"]
    old = rows["an old face"]
    assert 0 <= old.success_rate <= 1 and old.channels > 0 and old.boundary_success is not None
    assert 0 <= rows["an angry face"].success_rate <= 1  # the renderer draws anger since issue 16
    assert rows["a freckled face"].success_rate is None and "no ground truth" in rows["a freckled face"].note
    assert rows["a watercolor painting of a face"].boundary_success is None  # styles have no boundary
    assert rows["a smiling face"].boundary_success is None  # no smile boundary was given
    assert "| an old face | age |" in report.table()
    assert old.side_attribute in load_scorer().config.attribute_names and old.side_attribute != "age"
    assert old.side_change is not None and f"{old.side_attribute} {old.side_change:+.3f}" in report.table()


def test_the_largest_side_change_is_the_other_attribute_that_moved_most_in_units_of_its_range():
    from faceedit.editing.text_quality import _largest_side_change

    base = {"age": torch.zeros(4), "smile": torch.zeros(4), "yaw": torch.zeros(4)}
    # yaw spans 2, so its 0.4 is 0.2 of its range; smile moves ±0.3 (mean 0) and age, the target, the most.
    edited = {"age": torch.ones(4), "smile": torch.tensor([0.3, -0.3, 0.3, -0.3]), "yaw": torch.full((4,), 0.4)}
    name, change = _largest_side_change(base, edited, {"age": 1.0, "smile": 1.0, "yaw": 2.0}, target="age")
    assert name == "smile" and change == pytest.approx(0.0)
    assert _largest_side_change(base, edited, {"age": 1.0}, target="age") == ("", None)
