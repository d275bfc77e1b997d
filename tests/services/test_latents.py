"""The one check of W+ latents from outside a process (services/common/latents.py), as the protocol, the editor
and the generator handler use it."""

from __future__ import annotations

import numpy as np
import pytest

from faceedit.errors import InvalidInputError
from services.common.errors import TooLargeError
from services.common.latents import MAX_BATCH, check_latents


def test_a_good_batch_comes_back_as_little_endian_float32():
    ws = check_latents(np.zeros((2, 10, 64), dtype=">f8"), "ws", n_latent=10, style_dim=64)
    assert ws.dtype == np.dtype("<f4") and ws.shape == (2, 10, 64)


@pytest.mark.parametrize("ws, error, problem", [
    (np.zeros((10, 64), np.float32), InvalidInputError, "expected shape [B, n_latent, style_dim]"),
    (np.zeros((0, 10, 64), np.float32), InvalidInputError, "empty dimension"),
    (np.zeros((MAX_BATCH + 1, 10, 64), np.float32), TooLargeError, "exceeds the limit"),
    (np.zeros((1, 33, 64), np.float32), TooLargeError, "exceeds [*, 32, 1024]"),
    (np.zeros((1, 10, 32), np.float32), InvalidInputError, "expected shape [B, 10, 64] for this generator"),
    (np.zeros((1, 10, 64), np.int32), InvalidInputError, "expected floating point"),
    (np.full((1, 10, 64), np.nan, np.float32), InvalidInputError, "NaN or infinite"),
])
def test_bad_latents_are_typed_and_name_the_field(ws, error, problem):
    with pytest.raises(error) as info:
        check_latents(ws, "latent.inline", n_latent=10, style_dim=64)
    assert info.value.field == "latent.inline" and problem in info.value.problem
