"""DIFA's losses on small tensors: values against their definitions, gradients, the consistency mask and ramp."""

from __future__ import annotations

import math

import pytest
import torch

from faceedit.adaptation.difa_config import DifaConfig
from faceedit.adaptation.difa_losses import (
    CodeWindow,
    consistency_loss,
    consistency_mask,
    consistency_ramp,
    global_loss,
    local_loss,
    reference_direction,
)
from faceedit.errors import (
    InvalidInputError,
)


def test_global_loss_is_one_minus_cosine_to_the_reference_direction():
    direction = reference_direction(torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(direction, torch.tensor([1.0, 0.0, 0.0]))
    source = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    along = source + torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.0, 0.0]])  # moved exactly along the direction
    against = source - torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    sideways = source + torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    assert global_loss(along, source, direction).item() == pytest.approx(0.0, abs=1e-6)
    assert global_loss(against, source, direction).item() == pytest.approx(2.0, abs=1e-6)
    assert global_loss(sideways, source, direction).item() == pytest.approx(1.0, abs=1e-6)
    mixed = torch.cat([along[:1], against[1:]])
    assert global_loss(mixed, source, direction).item() == pytest.approx(1.0, abs=1e-6)  # batch mean


def test_global_loss_ignores_pairs_that_have_not_moved_yet():
    direction = torch.tensor([1.0, 0.0])
    source = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    target = torch.tensor([[0.0, 1.0], [1.0, 1.0]], requires_grad=True)  # first pair identical
    loss = global_loss(target, source, direction)
    assert loss.item() == pytest.approx((1.0 + 0.0) / 2)
    loss.backward()
    assert torch.isfinite(target.grad).all() and target.grad[0].abs().sum() == 0


def test_global_loss_gradient_moves_the_target_along_the_direction():
    direction = torch.tensor([1.0, 0.0])
    source = torch.tensor([[0.0, 1.0]])
    target = torch.tensor([[1.0, 2.0]], requires_grad=True)  # 45° off the direction
    global_loss(target, source, direction).backward()
    assert target.grad[0, 0] < 0 < target.grad[0, 1]  # descent adds x and removes y


def test_local_loss_is_the_larger_directed_nearest_neighbour_cost():
    e = torch.eye(3)
    same = local_loss(e[None, :2], e[None, :2])
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    # One generated token (e0) vs reference {e0, e1}: e0 finds e0 (cost 0); e1's nearest costs 1.
    subset = local_loss(e[None, :1], e[None, :2])
    assert subset.item() == pytest.approx(0.5, abs=1e-6)
    tilted = torch.nn.functional.normalize(torch.tensor([[[1.0, 1.0, 0.0]]]), dim=-1)
    assert local_loss(tilted, e[None, :1]).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    batch = torch.stack([e[:2], e[1:3]])  # [2, 2, 3]: second sample shares only e1 with the reference
    assert local_loss(batch, e[None, :2]).item() == pytest.approx((0.0 + 0.5) / 2, abs=1e-6)


def test_local_loss_gradient_pulls_tokens_towards_the_reference():
    reference_tokens = torch.eye(2)[None]  # [1, 2, 2]
    tokens = torch.tensor([[[0.6, 0.8]]], requires_grad=True)
    local_loss(tokens, reference_tokens).backward()
    assert tokens.grad.abs().sum() > 0


def test_consistency_mask_keeps_the_most_stable_dims():
    source = torch.zeros(5)
    target = torch.tensor([0.5, -0.1, 2.0, 0.0, -0.3])
    mask = consistency_mask(source, target, alpha=0.6)  # int(0.6·5) = 3 smallest |Δ|: dims 3, 1, 4
    assert mask.tolist() == [0.0, 1.0, 0.0, 1.0, 1.0]
    target_codes = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]], requires_grad=True)
    source_codes = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])
    loss = consistency_loss(target_codes, source_codes, mask)
    assert loss.item() == pytest.approx((2 + 4 + 5) / 5)  # masked dims count as zero in the mean
    loss.backward()
    assert target_codes.grad[0].tolist() == pytest.approx([0.0, 0.2, 0.0, 0.2, 0.2])


def test_code_window_uses_the_last_batch_means_only():
    window = CodeWindow(size=2)
    window.push(torch.zeros(2, 3), torch.full((2, 3), 100.0))  # pushed out by the next two
    window.push(torch.zeros(2, 3), torch.tensor([[0.0, 1.0, 4.0], [0.0, 1.0, 4.0]]))
    window.push(torch.zeros(2, 3), torch.tensor([[0.0, 3.0, 4.0], [0.0, 3.0, 4.0]]))
    assert window.mask(alpha=2 / 3).tolist() == [1.0, 1.0, 0.0]  # mean shifts 0, 2, 4


def test_consistency_ramp_matches_upstream_schedule():
    assert consistency_ramp(0, 50, 301) == 0.0
    assert consistency_ramp(50, 50, 301) == 0.0
    assert consistency_ramp(175, 50, 301) == pytest.approx(125 / 251)
    assert consistency_ramp(301, 50, 301) == 1.0
    assert consistency_ramp(10, 50, 40) == 0.0  # runs shorter than the window never enable it


def test_defaults_are_upstreams():
    config = DifaConfig()
    assert (config.iterations, config.batch_size, config.clip_layer, config.num_keep_first) == (301, 2, 3, 7)
    assert config.lr == pytest.approx(0.0016) and config.betas == pytest.approx((0.0, 0.99 ** 0.8))
    assert [c.architecture for c in config.clips] == ["ViT-B-32-quickgelu", "ViT-B-16-quickgelu"]
    with pytest.raises(InvalidInputError) as err:
        DifaConfig(psp_alpha=1.5)
    assert err.value.field == "psp_alpha"
    assert DifaConfig.from_dict(config.to_dict()) == config  # job parameters round-trip
    with pytest.raises(InvalidInputError) as err:
        DifaConfig.from_dict({"iterations": 10, "lambda_globl": 2.0})
    assert err.value.field == "lambda_globl"
