"""pSp / e4e image encoders (IR-SE backbone + feature pyramid + per-style map2style blocks).

Written from the format description in the shared reference notes (FORMATS.md, section b); the
module tree reproduces the upstream state_dict key names and shapes exactly, so an upstream
checkpoint's ``encoder.*`` entries (prefix stripped) load with ``strict=True``:

- ``input_layer.{0: Conv3x3 no bias, 1: BatchNorm, 2: PReLU}``
- ``body.N`` bottleneck IR-SE units: ``shortcut_layer.{0: Conv1x1, 1: BN}`` (only where the
  channel count changes) and ``res_layer.{0: BN, 1: Conv3x3, 2: PReLU, 3: Conv3x3, 4: BN,
  5: SE (fc1, fc2)}``
- ``styles.i.convs.{0,2,4,..}`` (stride-2 Conv3x3 with bias; odd indices are LeakyReLU(0.01))
  and ``styles.i.linear`` (EqualLinear, lr_mul 1)
- ``latlayer1`` / ``latlayer2`` (FPN lateral 1x1 convs with bias)

Two forwards share those weights: ``"psp"`` (GradualStyleEncoder: every style block outputs a
code) and ``"e4e"`` (Encoder4Editing, inference stage: ``w_i = w_0 + delta_i``).

The default :class:`EncoderConfig` is upstream's IR-SE50 (units 3/4/14/3, channels
64/128/256/512, 256x256 input, 512-d styles). Smaller backbones use the same classes: the
feature taps c1/c2/c3 are the ends of stages 2/3/4, the lateral layers map c2/c1 to the last
stage width, and each style block has ``log2(spatial)`` stride-2 convs where ``spatial`` is the
side of its input map (c3 for styles 0-2, p2 for 3-6, p1 for 7+, fixed indices as upstream).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceedit.errors import CheckpointMismatchError, InvalidInputError
from faceedit.models.encoder_blocks import (
    BottleneckIRSE,
    EqualLinear,
    GradualStyleBlock,
    SEModule,
    upsample_add,
)

__all__ = [
    "COARSE_END",
    "MIDDLE_END",
    "ENCODER_KINDS",
    "EncoderConfig",
    "Encoder",
    "EqualLinear",
    "SEModule",
    "BottleneckIRSE",
    "GradualStyleBlock",
    "infer_encoder_config",
]

ENCODER_KINDS = ("psp", "e4e")
# Upstream's fixed split of the style indices over the pyramid levels (pSp `coarse_ind`,
# `middle_ind`): styles [0, 3) read c3, [3, 7) read p2, [7, n_styles) read p1.
COARSE_END = 3
MIDDLE_END = 7
# Total downsampling of the backbone (4 stride-2 stages) and of the c1/c2 taps.
_C3_FACTOR = 16
_C2_FACTOR = 8
_C1_FACTOR = 4


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a pSp/e4e encoder. The defaults (plus ``n_styles``) are upstream IR-SE50."""

    kind: str
    n_styles: int
    style_dim: int = 512
    input_nc: int = 3
    input_size: int = 256
    stage_units: tuple[int, ...] = (3, 4, 14, 3)
    stage_channels: tuple[int, ...] = (64, 128, 256, 512)
    se_reduction: int = 16

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) for the tuple fields; the dataclass is frozen.
        for name in ("stage_units", "stage_channels"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if not isinstance(self.kind, str) or self.kind not in ENCODER_KINDS:
            raise InvalidInputError("kind", f"must be one of {ENCODER_KINDS}, got {self.kind!r}")
        for name in ("n_styles", "style_dim", "input_nc", "input_size", "se_reduction"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InvalidInputError(name, f"must be a positive int, got {value!r}")
        if not _is_power_of_two(self.input_size) or self.input_size < 32:
            raise InvalidInputError(
                "input_size",
                f"must be a power of two >= 32 (the c3 map is input_size/16 and needs at least one "
                f"stride-2 conv), got {self.input_size}",
            )
        for name in ("stage_units", "stage_channels"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != 4:
                raise InvalidInputError(name, f"must be a tuple of 4 ints (one per stage), got {value!r}")
            if not all(_is_int(v) and v >= 1 for v in value):
                raise InvalidInputError(name, f"entries must be positive ints, got {value!r}")
        for i in range(1, 4):
            if self.stage_channels[i] == self.stage_channels[i - 1]:
                # Stage boundaries are only visible in a state_dict through the 1x1 shortcut
                # conv that a channel change needs; equal widths could not be inferred back.
                raise InvalidInputError(
                    "stage_channels",
                    f"consecutive stages must differ in width, got {self.stage_channels!r}",
                )
        if min(self.stage_channels) < self.se_reduction:
            raise InvalidInputError(
                "se_reduction",
                f"{self.se_reduction} exceeds the narrowest stage ({min(self.stage_channels)} "
                f"channels); the SE bottleneck would have 0 channels",
            )

    # -- derived layout ---------------------------------------------------------------------
    @property
    def feature_width(self) -> int:
        """Width of c3 and of the FPN maps p2/p1 (the last stage's width)."""
        return self.stage_channels[3]

    @property
    def tap_indices(self) -> tuple[int, int, int]:
        """Indices into ``body`` whose outputs are c1, c2, c3 (6, 20, 23 for IR-SE50)."""
        ends = []
        total = 0
        for units in self.stage_units:
            total += units
            ends.append(total - 1)
        return ends[1], ends[2], ends[3]

    def style_spatial(self, index: int) -> int:
        """Side of the feature map that style block ``index`` reads."""
        if index < COARSE_END:
            return self.input_size // _C3_FACTOR
        if index < MIDDLE_END:
            return self.input_size // _C2_FACTOR
        return self.input_size // _C1_FACTOR

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stage_units"] = list(self.stage_units)
        d["stage_channels"] = list(self.stage_channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EncoderConfig:
        if not isinstance(d, Mapping):
            raise InvalidInputError("encoder_config", f"must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise InvalidInputError(str(key), "unknown EncoderConfig field")
        for key in ("kind", "n_styles"):
            if key not in d:
                raise InvalidInputError(key, "missing (required EncoderConfig field)")
        kwargs = dict(d)
        for key in ("stage_units", "stage_channels"):
            if key in kwargs and isinstance(kwargs[key], list):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """pSp GradualStyleEncoder / e4e Encoder4Editing with upstream state_dict names."""

    latent_avg: Tensor

    def __init__(self, config: EncoderConfig):
        super().__init__()
        if not isinstance(config, EncoderConfig):
            raise InvalidInputError("config", f"must be an EncoderConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.input_layer = nn.Sequential(
            nn.Conv2d(c.input_nc, c.stage_channels[0], kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(c.stage_channels[0]),
            nn.PReLU(c.stage_channels[0]),
        )
        units: list[nn.Module] = []
        in_channels = c.stage_channels[0]
        for n_units, depth in zip(c.stage_units, c.stage_channels):
            units.append(BottleneckIRSE(in_channels, depth, 2, c.se_reduction))
            units.extend(BottleneckIRSE(depth, depth, 1, c.se_reduction) for _ in range(n_units - 1))
            in_channels = depth
        self.body = nn.Sequential(*units)
        self.styles = nn.ModuleList(
            GradualStyleBlock(c.feature_width, c.style_dim, c.style_spatial(i)) for i in range(c.n_styles)
        )
        self.latlayer1 = nn.Conv2d(c.stage_channels[2], c.feature_width, kernel_size=1)
        self.latlayer2 = nn.Conv2d(c.stage_channels[1], c.feature_width, kernel_size=1)
        self.register_buffer("latent_avg", torch.zeros(c.n_styles, c.style_dim), persistent=False)

    # -- construction from weights ----------------------------------------------------------
    # -- properties -------------------------------------------------------------------------
    @property
    def n_styles(self) -> int:
        return self.config.n_styles

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    @property
    def kind(self) -> str:
        return self.config.kind

    def set_latent_avg(self, latent_avg: Tensor) -> None:
        """Set the code offset added by :meth:`encode`: ``[style_dim]``, ``[1, style_dim]`` or
        ``[n_styles, style_dim]`` (upstream checkpoints store ``[n_styles, 512]``)."""
        n, d = self.config.n_styles, self.config.style_dim
        if not isinstance(latent_avg, Tensor):
            raise InvalidInputError("latent_avg", f"must be a tensor, got {type(latent_avg).__name__}")
        shape = tuple(latent_avg.shape)
        if shape not in ((d,), (1, d), (n, d)):
            raise InvalidInputError("latent_avg", f"shape {list(shape)} is not [{d}], [1, {d}] or [{n}, {d}]")
        if not latent_avg.is_floating_point():
            raise InvalidInputError("latent_avg", f"must be floating point, got {latent_avg.dtype}")
        if not bool(torch.isfinite(latent_avg).all()):
            raise InvalidInputError("latent_avg", "contains NaN or Inf")
        value = latent_avg.detach().reshape(-1, d).expand(n, d)
        self.latent_avg = value.to(dtype=self.latent_avg.dtype, device=self.latent_avg.device).clone()

    # -- forward passes ---------------------------------------------------------------------
    def _check_forward_input(self, x: Tensor) -> None:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.input_nc or x.shape[2] != c.input_size or x.shape[3] != c.input_size:
            raise InvalidInputError(
                "x",
                f"expected [B, {c.input_nc}, {c.input_size}, {c.input_size}], got {list(x.shape)} "
                "(use encode() to resize)",
            )

    def _backbone(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return the taps (c1, c2, c3) of the IR-SE body."""
        i1, i2, i3 = self.config.tap_indices
        x = self.input_layer(x)  # [B, C0, S, S]        (IR-SE50: [B, 64, 256, 256])
        c1 = c2 = c3 = x
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == i1:
                c1 = x  # [B, C1, S/4, S/4]    (IR-SE50: [B, 128, 64, 64])
            elif i == i2:
                c2 = x  # [B, C2, S/8, S/8]    (IR-SE50: [B, 256, 32, 32])
            elif i == i3:
                c3 = x  # [B, C3, S/16, S/16]  (IR-SE50: [B, 512, 16, 16])
        return c1, c2, c3

    def forward_psp(self, x: Tensor) -> Tensor:
        """GradualStyleEncoder: ``codes[:, i] = styles[i](level(i))`` -> ``[B, n_styles, style_dim]``."""
        self._check_forward_input(x)
        c1, c2, c3 = self._backbone(x)
        n = self.config.n_styles
        codes = [self.styles[i](c3) for i in range(min(n, COARSE_END))]  # each [B, D]
        if n > COARSE_END:
            p2 = upsample_add(c3, self.latlayer1(c2))  # [B, C3, S/8, S/8]   (IR-SE50: [B, 512, 32, 32])
            codes += [self.styles[i](p2) for i in range(COARSE_END, min(n, MIDDLE_END))]
            if n > MIDDLE_END:
                p1 = upsample_add(p2, self.latlayer2(c1))  # [B, C3, S/4, S/4] (IR-SE50: [B, 512, 64, 64])
                codes += [self.styles[i](p1) for i in range(MIDDLE_END, n)]
        return torch.stack(codes, dim=1)  # [B, n_styles, D]

    def forward_e4e(self, x: Tensor) -> Tensor:
        """Encoder4Editing (inference stage): ``codes[:, 0] = w0``, ``codes[:, i] = w0 + styles[i](level(i))``."""
        self._check_forward_input(x)
        c1, c2, c3 = self._backbone(x)
        n = self.config.n_styles
        w0 = self.styles[0](c3)  # [B, D]
        codes = [w0]
        features = c3
        p2 = None
        for i in range(1, n):
            if i == COARSE_END:
                p2 = upsample_add(c3, self.latlayer1(c2))  # [B, C3, S/8, S/8]
                features = p2
            elif i == MIDDLE_END:
                assert p2 is not None
                features = upsample_add(p2, self.latlayer2(c1))  # p1: [B, C3, S/4, S/4]
            codes.append(w0 + self.styles[i](features))  # [B, D]
        return torch.stack(codes, dim=1)  # [B, n_styles, D]

    def forward(self, x: Tensor) -> Tensor:
        """Raw codes (no latent_avg) for ``x`` ``[B, input_nc, input_size, input_size]`` in [-1, 1]."""
        if self.config.kind == "e4e":
            return self.forward_e4e(x)
        return self.forward_psp(x)

    def encode(self, images: Tensor) -> Tensor:
        """W+ codes ``[B, n_styles, style_dim]`` for ``images`` ``[B, C, H, W]`` in [-1, 1].

        Resizes to ``input_size`` when needed (bilinear, antialiased when shrinking), runs
        :meth:`forward` and adds ``latent_avg``. Differentiable with respect to ``images``.
        """
        c = self.config
        if not isinstance(images, Tensor):
            raise InvalidInputError("images", f"must be a tensor, got {type(images).__name__}")
        if images.dim() != 4:
            raise InvalidInputError("images", f"must be [B, {c.input_nc}, H, W], got shape {list(images.shape)}")
        b, ch, h, w = images.shape
        if ch != c.input_nc:
            raise InvalidInputError("images", f"must have {c.input_nc} channels, got {ch} (shape {list(images.shape)})")
        if b < 1:
            raise InvalidInputError("images", "needs at least one image")
        if h < 1 or w < 1:
            raise InvalidInputError("images", f"empty spatial size {h}x{w}")
        if not images.is_floating_point():
            raise InvalidInputError("images", f"must be floating point in [-1, 1], got {images.dtype}")
        if not bool(torch.isfinite(images).all()):
            raise InvalidInputError("images", "contains NaN or Inf")
        ref = self.styles[0].linear.weight
        x = images.to(device=ref.device, dtype=ref.dtype)
        if (h, w) != (c.input_size, c.input_size):
            shrinking = h > c.input_size or w > c.input_size
            x = F.interpolate(
                x, size=(c.input_size, c.input_size), mode="bilinear", align_corners=False, antialias=shrinking
            )  # [B, C, input_size, input_size]
        codes = self(x)  # [B, n_styles, D]
        return codes + self.latent_avg.unsqueeze(0)  # [B, n_styles, D]

    def extra_repr(self) -> str:
        return f"kind={self.config.kind!r}, n_styles={self.config.n_styles}, style_dim={self.config.style_dim}"


# ---------------------------------------------------------------------------------------------
# Config inference
# ---------------------------------------------------------------------------------------------

_STYLE_CONV_RE = re.compile(r"^styles\.(\d+)\.convs\.(\d+)\.weight$")
_STYLE_RE = re.compile(r"^styles\.(\d+)\.")
_BODY_RE = re.compile(r"^body\.(\d+)\.")


def infer_encoder_config(
    state_dict: Mapping[str, Tensor], kind: str, source: str = "<state_dict>"
) -> EncoderConfig:
    """Infer an :class:`EncoderConfig` from an encoder state_dict (``encoder.`` prefix stripped).

    Everything but ``kind`` comes from the tensor shapes: ``input_nc`` from the input conv, the
    stages from the body units (a stage starts where a unit changes the width, which is where
    a 1x1 shortcut conv appears), ``se_reduction`` from the SE convs, ``style_dim`` from the style
    linears and ``input_size = 16 * 2**(convs in styles.0)``. The full key set and every shape are
    then checked against the model that config builds. Raises ``CheckpointMismatchError`` with
    ``path=source`` for anything missing or inconsistent.
    """

    def fail(problem: str) -> CheckpointMismatchError:
        return CheckpointMismatchError(source, problem)

    if not isinstance(kind, str) or kind not in ENCODER_KINDS:
        raise InvalidInputError("kind", f"must be one of {ENCODER_KINDS}, got {kind!r}")
    if not isinstance(state_dict, Mapping) or len(state_dict) == 0:
        raise fail("encoder state_dict is empty or not a mapping")
    if any(k.startswith("encoder.") for k in state_dict) and "input_layer.0.weight" not in state_dict:
        raise fail("keys still carry the 'encoder.' prefix; strip it before inferring the encoder config")

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise fail(f"missing key {key!r}")
        value = state_dict[key]
        if not isinstance(value, Tensor):
            raise fail(f"{key!r} is not a tensor ({type(value).__name__})")
        return tuple(value.shape)

    def need(cond: bool, problem: str) -> None:
        if not cond:
            raise fail(problem)

    # Input layer.
    w_in = shape("input_layer.0.weight")
    need(len(w_in) == 4 and w_in[2:] == (3, 3), f"input_layer.0.weight has shape {list(w_in)}, expected [C0, in, 3, 3]")
    input_nc = w_in[1]
    width = w_in[0]

    # Body: walk the units in order.
    body_ids = sorted({int(m.group(1)) for k in state_dict if (m := _BODY_RE.match(k))})
    need(len(body_ids) > 0, "no body.* keys (IR-SE backbone missing)")
    need(body_ids == list(range(len(body_ids))), f"body unit indices are not contiguous from 0: {body_ids[:8]}...")
    stage_units: list[int] = []
    stage_channels: list[int] = []
    reductions: set[int] = set()
    for n in body_ids:
        prefix = f"body.{n}."
        bn0 = shape(prefix + "res_layer.0.weight")
        need(len(bn0) == 1, f"{prefix}res_layer.0.weight has shape {list(bn0)}, expected [C]")
        unit_in = bn0[0]
        conv1 = shape(prefix + "res_layer.1.weight")
        need(len(conv1) == 4, f"{prefix}res_layer.1.weight has shape {list(conv1)}")
        depth = conv1[0]
        need(unit_in == width, f"{prefix}res_layer takes {unit_in} channels but the previous layer gives {width}")
        has_shortcut = (prefix + "shortcut_layer.0.weight") in state_dict
        if depth != unit_in:
            need(has_shortcut, f"{prefix} changes width {unit_in}->{depth} but has no shortcut_layer.0 conv")
            need(
                shape(prefix + "shortcut_layer.0.weight") == (depth, unit_in, 1, 1),
                f"{prefix}shortcut_layer.0.weight has an unexpected shape",
            )
        else:
            need(not has_shortcut, f"{prefix} keeps width {depth} but has a shortcut conv")
        if n == 0 or depth != unit_in:
            stage_units.append(1)
            stage_channels.append(depth)
        else:
            stage_units[-1] += 1
        fc1 = shape(prefix + "res_layer.5.fc1.weight")
        need(len(fc1) == 4 and fc1[0] >= 1 and fc1[1] == depth, f"{prefix}res_layer.5.fc1.weight has shape {list(fc1)}")
        reductions.add(depth // fc1[0])
        width = depth
    need(
        len(stage_units) == 4,
        f"found {len(stage_units)} backbone stages (widths {stage_channels}); the pSp/e4e encoder needs 4",
    )
    need(stage_channels[0] == w_in[0], f"stage 1 width {stage_channels[0]} differs from the input layer's {w_in[0]}")
    need(len(reductions) == 1, f"inconsistent SE reductions {sorted(reductions)}")
    se_reduction = reductions.pop()

    # Style blocks.
    style_ids = sorted({int(m.group(1)) for k in state_dict if (m := _STYLE_RE.match(k))})
    need(len(style_ids) > 0, "no styles.* keys (map2style blocks missing)")
    need(style_ids == list(range(len(style_ids))), f"style indices are not contiguous from 0: {style_ids}")
    n_styles = len(style_ids)
    lin = shape("styles.0.linear.weight")
    need(len(lin) == 2 and lin[0] == lin[1], f"styles.0.linear.weight has shape {list(lin)}, expected square")
    style_dim = lin[0]
    conv_counts = {i: 0 for i in style_ids}
    for k in state_dict:
        if m := _STYLE_CONV_RE.match(k):
            conv_counts[int(m.group(1))] += 1
    n0 = conv_counts[0]
    need(n0 >= 1, "styles.0 has no convs")
    input_size = _C3_FACTOR * 2**n0
    for i in style_ids:  # every block's depth must agree with the pyramid level it reads
        expected = int(math.log2(input_size // _C3_FACTOR)) + (i >= COARSE_END) + (i >= MIDDLE_END)
        need(
            conv_counts[i] == expected,
            f"styles.{i} has {conv_counts[i]} convs, expected {expected} for input size {input_size}",
        )

    try:
        config = EncoderConfig(
            kind=kind,
            n_styles=n_styles,
            style_dim=style_dim,
            input_nc=input_nc,
            input_size=input_size,
            stage_units=tuple(stage_units),
            stage_channels=tuple(stage_channels),
            se_reduction=se_reduction,
        )
    except InvalidInputError as exc:
        raise fail(f"inferred an invalid encoder config: {exc}") from exc

    # Full check: the key set and every shape of the model this config builds (meta: no memory).
    with torch.device("meta"):
        expected_sd = Encoder(config).state_dict()
    missing = [k for k in expected_sd if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected_sd]
    need(not missing, f"{len(missing)} missing key(s), e.g. {missing[:5]}")
    need(not unexpected, f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:5]}")
    bad = [
        f"{k}: {list(state_dict[k].shape)} != {list(v.shape)}"
        for k, v in expected_sd.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    need(not bad, f"{len(bad)} shape mismatch(es), e.g. {bad[:5]}")
    return config
