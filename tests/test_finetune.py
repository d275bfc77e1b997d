"""One-shot fine-tuning: it learns, leaves the base alone, reports progress, cancels and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from faceedit.adaptation.finetune import FinetuneConfig, FinetuneState, finetune, trainable_names
from faceedit.errors import CheckpointFormatError, InvalidInputError
from faceedit.models import Generator, GeneratorConfig

pytestmark = pytest.mark.inference  # make test-services


@pytest.fixture(scope="module")
def setup():
    # One thread: OpenMP spin-waits make 2 threads far slower on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(size=32, style_dim=64, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 16})).eval()
    g.requires_grad_(False)
    ws = g.broadcast(g.w_avg.unsqueeze(0)).clone()
    # A target the base does not produce: a smooth colour gradient at a different resolution.
    ramp = torch.linspace(-0.8, 0.8, 64)
    target = torch.stack([ramp.expand(64, 64), ramp.expand(64, 64).T, -ramp.expand(64, 64)]).unsqueeze(0)
    yield g, ws, target
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_loss_falls_and_the_base_is_untouched(setup):
    g, ws, target = setup
    before = {k: v.clone() for k, v in g.state_dict().items()}
    losses = []
    result = finetune(g, target, ws, FinetuneConfig(iterations=25, lr=5e-3),
                      progress=lambda done, total, loss: losses.append((done, total, loss)))
    assert [d for d, _, _ in losses] == list(range(1, 26)) and all(t == 25 for _, t, _ in losses)
    assert losses[-1][2] < 0.8 * losses[0][2]
    assert result.iterations == 25 and not result.cancelled
    assert set(result.tensors) == set(trainable_names(g))
    assert all(k.startswith(("conv1.", "convs.")) for k in result.tensors)
    assert all(torch.equal(v, g.state_dict()[k]) for k, v in before.items())


def test_cancel_stops_between_steps(setup):
    g, ws, target = setup
    seen = []
    result = finetune(g, target, ws, FinetuneConfig(iterations=10),
                      progress=lambda done, total, loss: seen.append(done),
                      should_cancel=lambda: len(seen) >= 3)
    assert result.cancelled and result.iterations == 3 and seen == [1, 2, 3]


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(setup):
    g, ws, target = setup
    config = FinetuneConfig(iterations=6, checkpoint_every=3)
    full = finetune(g, target, ws, config)
    states: list[bytes] = []
    interrupted = finetune(g, target, ws, config, checkpoint=lambda s: states.append(s.to_bytes()),
                           should_cancel=lambda: len(states) == 1)
    assert interrupted.cancelled and interrupted.iterations == 3 and len(states) == 1
    state = FinetuneState.from_bytes(states[0])
    assert state.iteration == 3
    resumed = finetune(g, target, ws, config, resume=state)
    assert resumed.iterations == 6
    for name, value in full.tensors.items():
        torch.testing.assert_close(resumed.tensors[name], value, rtol=1e-5, atol=1e-6)


def test_resume_with_another_config_is_refused(setup):
    g, ws, target = setup
    states = []
    finetune(g, target, ws, FinetuneConfig(iterations=4, checkpoint_every=2), checkpoint=states.append)
    with pytest.raises(InvalidInputError) as info:
        finetune(g, target, ws, FinetuneConfig(iterations=5), resume=states[0])
    assert info.value.field == "resume"


def test_bad_inputs_are_named(setup):
    g, ws, target = setup
    with pytest.raises(InvalidInputError) as info:
        FinetuneConfig.from_dict({"iterations": 0})
    assert info.value.field == "iterations"
    with pytest.raises(InvalidInputError) as info:
        FinetuneConfig.from_dict({"speed": 3})
    assert info.value.field == "params"
    with pytest.raises(InvalidInputError) as info:
        finetune(g, target, ws[:, :3], FinetuneConfig(iterations=1))
    assert info.value.field == "ws"
    with pytest.raises(InvalidInputError) as info:
        finetune(g, target[:, :2], ws, FinetuneConfig(iterations=1))
    assert info.value.field == "target"
    with pytest.raises(CheckpointFormatError):
        FinetuneState.from_bytes(b"garbage!")
