"""StyleGAN2 generator with rosinality's state-dict layout, written for fast batched inference."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from faceedit.errors import InvalidInputError
from faceedit.models.precision import (
    Precision,
    active_autocast_dtype,
    autocast_dtype,
    default_precision,
    full_precision,
)

NoiseMode = Literal["const", "random", "none"]

# Upstream widths per resolution; the multiplier only widens 64 px and above.
_BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512}
_SCALED_CHANNELS = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
_BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)
_SQRT2 = math.sqrt(2.0)
_LRELU_SLOPE = 0.2


def standard_channels(size: int, channel_multiplier: int) -> dict[int, int]:
    """Upstream's per-resolution widths for a generator of `size` px."""
    table = dict(_BASE_CHANNELS)
    table.update({res: width * channel_multiplier for res, width in _SCALED_CHANNELS.items()})
    return {res: table[res] for res in _resolutions(size)}


def _resolutions(size: int) -> list[int]:
    return [2**i for i in range(2, int(math.log2(size)) + 1)]


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a generator; everything `load_generator` infers from a state dict."""

    size: int
    style_dim: int = 512
    n_mlp: int = 8
    channel_multiplier: int = 2
    # Explicit widths for small models ({resolution: channels}); None means upstream's table.
    channels: dict[int, int] | None = field(default=None)
    lr_mlp: float = 0.01

    def __post_init__(self) -> None:
        if self.size < 4 or self.size & (self.size - 1):
            raise InvalidInputError("size", f"must be a power of two >= 4, got {self.size}")
        if self.style_dim < 1 or self.n_mlp < 1:
            raise InvalidInputError("style_dim/n_mlp", "must be positive")
        if self.channels is not None:
            missing = [r for r in _resolutions(self.size) if r not in self.channels]
            if missing:
                raise InvalidInputError("channels", f"no width given for resolutions {missing}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    @property
    def num_noise(self) -> int:
        return 2 * (self.log_size - 2) + 1

    def resolved_channels(self) -> dict[int, int]:
        if self.channels is not None:
            return {r: int(self.channels[r]) for r in _resolutions(self.size)}
        return standard_channels(self.size, self.channel_multiplier)

    def to_dict(self) -> dict:
        out = {
            "size": self.size,
            "style_dim": self.style_dim,
            "n_mlp": self.n_mlp,
            "channel_multiplier": self.channel_multiplier,
            "lr_mlp": self.lr_mlp,
        }
        if self.channels is not None:
            out["channels"] = {str(k): v for k, v in self.channels.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> GeneratorConfig:
        known = {"size", "style_dim", "n_mlp", "channel_multiplier", "lr_mlp", "channels"}
        unknown = set(data) - known
        if unknown:
            raise InvalidInputError("config", f"unknown generator config keys {sorted(unknown)}")
        data = dict(data)
        if data.get("channels") is not None:
            data["channels"] = {int(k): int(v) for k, v in data["channels"].items()}
        return cls(**data)


def _blur_kernel(scale: float) -> Tensor:
    taps = torch.tensor(_BLUR_TAPS)
    kernel = taps[:, None] * taps[None, :]
    return kernel / kernel.sum() * scale  # [4, 4]


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Zero-stuff upsample by `up`, pad, then FIR-filter each channel (upstream's native op)."""
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, groups=channels)


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with the equalised learning rate: weights rescaled at run time."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        if self.activate:
            out = F.linear(x, self.weight * self.scale)
            return F.leaky_relu(out + self.bias * self.lr_mul, _LRELU_SLOPE) * _SQRT2
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class Blur(nn.Module):
    """Depthwise [1,3,3,1]² low-pass filter; the kernel is a buffer so checkpoints carry it."""

    def __init__(self, pad: tuple[int, int], scale: float):
        super().__init__()
        self.register_buffer("kernel", _blur_kernel(scale))
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        if self.pad[0] == self.pad[1]:
            # Let the conv pad: no padded copy of a large activation.
            channels = x.shape[1]
            weight = torch.flip(self.kernel, [0, 1]).to(x.dtype).expand(channels, 1, *self.kernel.shape)
            return F.conv2d(x, weight, padding=self.pad[0], groups=channels)
        return upfirdn2d(x, self.kernel, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution.

    Instead of building a weight per sample (a grouped conv, slow on CPU), the style scales the
    input channels and the demodulation scales the output channels of one shared convolution:
    the same maths, and one large GEMM that oneDNN/cuDNN run near peak.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size * kernel_size)
        self.demodulate = demodulate
        self.upsample = upsample
        if upsample:
            # conv_transpose(stride 2, 3x3) gives 2H+1 pixels; blur with pad (1,1) brings it to 2H.
            self.blur = Blur(pad=(1, 1), scale=4.0)
        self.padding = kernel_size // 2

    def demodulation(self, style: Tensor, weight: Tensor) -> Tensor:
        """rsqrt of the squared norm of each sample's modulated filter: [B, out_ch]."""
        energy = weight.square().sum(dim=(2, 3))  # [out, in]
        return torch.rsqrt(style.square() @ energy.t() + 1e-8)  # [B, out]

    def forward(self, x: Tensor, w: Tensor | None, style: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Returns the convolved input and the per-sample output scale still to apply. `style` [B, in]
        (StyleSpace) replaces the one `w` [B, style_dim] would give.

        The demodulation scale is handed back (not applied) so the caller can fuse it with the
        bias and noise in one pass over the activations.
        """
        batch = x.shape[0]
        with full_precision(x):
            # Under autocast the style linear and the demodulation's matmul would run in bf16/fp16;
            # the rsqrt of a sum of squares is where that costs the most, and both are tiny.
            style = self.modulation(w) if style is None else style  # [B, in]
            weight = self.weight[0] * self.scale  # [out, in, k, k]
            out_scale = self.demodulation(style, weight) if self.demodulate else None
        if batch == 1:
            # One sample: scaling the small weight is cheaper than scaling the activation.
            weight_in = weight * style.reshape(1, self.in_ch, 1, 1)
        else:
            weight_in = weight
            low = active_autocast_dtype(x)
            if low is not None:
                # Scale in the conv's dtype: one half-width pass, not an fp32 product and a cast.
                x, style = x.to(low), style.to(low)
            x = x * style.reshape(batch, self.in_ch, 1, 1)
        if self.upsample:
            x = F.conv_transpose2d(x, weight_in.transpose(0, 1), stride=2)  # [B, out, 2H+1, 2W+1]
            x = self.blur(x)  # [B, out, 2H, 2W]
        else:
            x = F.conv2d(x, weight_in, padding=self.padding)
        return x, out_scale


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))


class StyledConv(nn.Module):
    """Modulated conv, then noise, bias and leaky ReLU (x√2) fused into two passes."""

    def __init__(self, in_ch: int, out_ch: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch)

    def forward(self, x: Tensor, w: Tensor | None, noise: Tensor | None, style: Tensor | None = None) -> Tensor:
        x, out_scale = self.conv(x, w, style)
        batch, channels = x.shape[:2]
        # leaky_relu(a)·√2 == leaky_relu(a·√2): fold √2 into the scale, bias and noise.
        shift = (self.activate.bias * _SQRT2).reshape(1, channels, 1, 1)
        if noise is not None:
            noise = noise * (self.noise.weight * _SQRT2)
            if noise.shape[0] == 1 and batch > 1:
                shift = shift + noise  # [1, C, H, W]: shared noise joins the bias, one pass saved
            else:
                x = x + noise
        # Under autocast x is bf16/fp16 and shift/scale fp32: the sum promotes to fp32, and fp32
        # activations between layers: ~1/3 less bf16-vs-fp32 error than a bf16 epilogue (demo model).
        x = torch.addcmul(shift, x, (out_scale * _SQRT2).reshape(batch, channels, 1, 1))
        return F.leaky_relu_(x, _LRELU_SLOPE)  # x is a fresh tensor: in place is safe for autograd


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Blur(pad=(2, 1), scale=4.0)
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor | None, skip: Tensor | None, style: Tensor | None = None) -> Tensor:
        if active_autocast_dtype(x) is not None:
            # The RGB of every resolution sums into the image: in bf16 (8-bit mantissa) that sum
            # would be off by about a grey level, and this 3-channel conv is cheap in fp32.
            with full_precision(x):
                return self._rgb(x.float(), w, skip, style)
        return self._rgb(x, w, skip, style)

    def _rgb(self, x: Tensor, w: Tensor | None, skip: Tensor | None, style: Tensor | None) -> Tensor:
        out, _ = self.conv(x, w, style)
        out = out + self.bias
        if skip is not None:
            out = out + upfirdn2d(skip, self.upsample.kernel, up=2, pad=self.upsample.pad)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, 4, 4))


class NoiseBuffers(nn.Module):
    """The fixed per-layer noise that `noise_mode="const"` uses (persistent, as upstream)."""

    def __init__(self, shapes: Sequence[int]):
        super().__init__()
        for i, res in enumerate(shapes):
            self.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))

    def get(self, i: int) -> Tensor:
        return getattr(self, f"noise_{i}")


class Generator(nn.Module):
    """StyleGAN2 generator: `mapping` (z → w) and `synthesis` (W+ → image) as separate steps."""

    W_AVG_SAMPLES = 4096

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        channels = config.resolved_channels()
        dim = config.style_dim

        self.style = nn.Sequential(
            PixelNorm(),
            *[EqualLinear(dim, dim, lr_mul=config.lr_mlp, activate=True) for _ in range(config.n_mlp)],
        )
        self.input = ConstantInput(channels[4])
        self.conv1 = StyledConv(channels[4], channels[4], dim)
        self.to_rgb1 = ToRGB(channels[4], dim, upsample=False)

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = channels[4]
        for res in _resolutions(config.size)[1:]:
            out_ch = channels[res]
            self.convs.append(StyledConv(in_ch, out_ch, dim, upsample=True))
            self.convs.append(StyledConv(out_ch, out_ch, dim))
            self.to_rgbs.append(ToRGB(out_ch, dim))
            in_ch = out_ch

        noise_res = [2 ** ((i + 5) // 2) for i in range(config.num_noise)]
        self.noises = NoiseBuffers(noise_res)
        self.register_buffer("w_avg_cache", torch.zeros(dim), persistent=False)
        self._w_avg_known = False

    # -- latent space -------------------------------------------------------------------------
    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    @property
    def w_avg(self) -> Tensor:
        """Mean w, [style_dim]: the checkpoint's `latent_avg`, else estimated once and cached."""
        if not self._w_avg_known:
            rng = torch.Generator(device="cpu").manual_seed(0)
            z = torch.randn(self.W_AVG_SAMPLES, self.style_dim, generator=rng)
            with torch.no_grad():
                self.set_w_avg(self.mapping(z.to(self.w_avg_cache.device)).mean(0))
        return self.w_avg_cache

    def set_w_avg(self, w_avg: Tensor) -> None:
        w_avg = w_avg.reshape(-1, self.style_dim)[0]
        self.w_avg_cache.copy_(w_avg.to(self.w_avg_cache))
        self._w_avg_known = True

    def mapping(self, z: Tensor) -> Tensor:
        """z [B, style_dim] → w [B, style_dim]."""
        _check_latent(z, "z", (self.style_dim,))
        return self.style(z)

    def truncate(self, w: Tensor, psi: float) -> Tensor:
        """Pull w (or W+) towards the mean: w_avg + psi·(w − w_avg)."""
        if psi == 1:
            return w
        w_avg = self.w_avg.to(w)
        return w_avg + psi * (w - w_avg)

    def broadcast(self, w: Tensor) -> Tensor:
        """w [B, style_dim] → W+ [B, n_latent, style_dim]; W+ passes through."""
        if w.ndim == 2:
            return w.unsqueeze(1).expand(-1, self.n_latent, -1)
        return w

    def mix(self, w_first: Tensor, w_second: Tensor, index: int) -> Tensor:
        """Style mixing: layers [0, index) from the first latent, [index, n_latent) from the second."""
        if not 0 <= index <= self.n_latent:
            raise InvalidInputError("index", f"must be in [0, {self.n_latent}], got {index}")
        first, second = self.broadcast(w_first), self.broadcast(w_second)
        return torch.cat([first[:, :index], second[:, index:]], dim=1)  # [B, n_latent, style_dim]

    # -- StyleSpace -----------------------------------------------------------------------------
    def style_layers(self) -> list[tuple[ModulatedConv2d, int]]:
        """Every modulated conv in synthesis order, with the W+ index its style is computed from."""
        layers = [(self.conv1.conv, 0), (self.to_rgb1.conv, 1)]
        for k, to_rgb in enumerate(self.to_rgbs):
            up_conv, conv = self.convs[2 * k].conv, self.convs[2 * k + 1].conv
            layers += [(up_conv, 1 + 2 * k), (conv, 2 + 2 * k), (to_rgb.conv, 3 + 2 * k)]
        return layers

    def styles(self, ws: Tensor) -> list[Tensor]:
        """W+ [B, n_latent, style_dim] → StyleSpace: one style [B, in_channels] per modulated conv (s = A(w))."""
        _check_latent(ws, "ws", (self.n_latent, self.style_dim))
        return [conv.modulation(ws[:, i]) for conv, i in self.style_layers()]

    def synthesis_from_styles(self, styles: Sequence[Tensor], noise_mode: NoiseMode = "const",
                              precision: Precision | None = None) -> Tensor:
        """`styles(ws)` (edited channel by channel, StyleCLIP's global directions) → images, as `synthesis`."""
        shapes = [(conv.in_ch,) for conv, _ in self.style_layers()]
        if len(styles) != len(shapes) or any(s.ndim != 2 or tuple(s.shape[1:]) != e for s, e in zip(styles, shapes)):
            raise InvalidInputError("styles", f"expected {len(shapes)} tensors [B, in_channels] as styles() gives")
        return self._with_precision(styles[0], precision, lambda: self._synthesis(None, noise_mode, None, list(styles)))

    # -- image synthesis -------------------------------------------------------------------
    def synthesis(self, ws: Tensor, noise_mode: NoiseMode = "const",
                  noise: Sequence[Tensor] | None = None, precision: Precision | None = None) -> Tensor:
        """W+ [B, n_latent, style_dim] → images [B, 3, size, size], raw (about [-1, 1], unclamped).

        noise_mode "const" uses the stored noise buffers (upstream's randomize_noise=False),
        "random" draws fresh noise per sample, "none" disables it; an explicit `noise` list
        (one tensor per layer) takes precedence.

        precision "bf16"/"fp16" runs the convolutions under torch.autocast; styles, demodulation,
        noise, bias and ToRGB stay fp32 and the image is float32. None: `default_precision()`
        ("fp32" unless inside `synthesis_precision(...)`); "fp32" adds no autocast of its own.
        fp16 on CPU is an InvalidInputError (use bf16 there).
        """
        _check_latent(ws, "ws", (self.n_latent, self.style_dim))
        if noise is not None and len(noise) != self.config.num_noise:
            raise InvalidInputError("noise", f"expected {self.config.num_noise} tensors, got {len(noise)}")
        return self._with_precision(ws, precision, lambda: self._synthesis(ws, noise_mode, noise))

    @staticmethod
    def _with_precision(ref: Tensor, precision: Precision | None, render: Callable[[], Tensor]) -> Tensor:
        """render() under the autocast `precision` asks for on ref's device; a float32 image either way."""
        dtype = autocast_dtype(default_precision() if precision is None else precision, ref.device)
        if dtype is None:
            return render()
        with torch.autocast(ref.device.type, dtype=dtype):
            return render().float()

    def _synthesis(self, ws: Tensor | None, noise_mode: NoiseMode, noise: Sequence[Tensor] | None,
                   styles: list[Tensor] | None = None) -> Tensor:
        ref = ws if styles is None else styles[0]
        batch = ref.shape[0]

        def w(i: int) -> Tensor | None:
            return None if ws is None else ws[:, i]

        def s(j: int) -> Tensor | None:  # j: the conv's place in style_layers()
            return None if styles is None else styles[j]

        def layer_noise(i: int, res: int) -> Tensor | None:
            if noise is not None:
                return noise[i]
            if noise_mode == "const":
                return self.noises.get(i)
            if noise_mode == "random":
                return torch.randn(batch, 1, res, res, device=ref.device, dtype=ref.dtype)
            if noise_mode == "none":
                return None
            raise InvalidInputError("noise_mode", f"must be 'const', 'random' or 'none', got {noise_mode!r}")

        # Channels-last activations: oneDNN's (and cuDNN's) fast paths for conv and depthwise blur.
        x = self.input.input.expand(batch, -1, -1, -1).contiguous(memory_format=torch.channels_last)
        x = self.conv1(x, w(0), layer_noise(0, 4), s(0))
        skip = self.to_rgb1(x, w(1), None, s(1))  # [B, 3, 4, 4]

        # W+ index per layer: up-conv 1+2k, conv 2+2k, to_rgb 3+2k (shared with the next up-conv).
        for k, to_rgb in enumerate(self.to_rgbs):
            res = 2 ** (k + 3)
            up_conv, conv = self.convs[2 * k], self.convs[2 * k + 1]
            x = up_conv(x, w(1 + 2 * k), layer_noise(1 + 2 * k, res), s(2 + 3 * k))  # [B, C, res, res]
            x = conv(x, w(2 + 2 * k), layer_noise(2 + 2 * k, res), s(3 + 3 * k))
            skip = to_rgb(x, w(3 + 2 * k), skip, s(4 + 3 * k))  # [B, 3, res, res]
        assert skip.shape[-1] == self.config.size
        return skip

    def forward(self, z: Tensor, truncation_psi: float = 1.0, noise_mode: NoiseMode = "const",
                precision: Precision | None = None) -> Tensor:
        """z [B, style_dim] → images: mapping, truncation, broadcast and synthesis (mapping in fp32)."""
        w = self.truncate(self.mapping(z), truncation_psi)
        return self.synthesis(self.broadcast(w), noise_mode=noise_mode, precision=precision)

    def make_noise(self, batch: int = 1, generator: torch.Generator | None = None) -> list[Tensor]:
        """A fresh noise list (one tensor per layer), e.g. to fix the noise of a session."""
        device = self.input.input.device
        sizes = [self.noises.get(i).shape[-1] for i in range(self.config.num_noise)]
        return [torch.randn(batch, 1, res, res, generator=generator).to(device) for res in sizes]


def _check_latent(t: Tensor, name: str, trailing: tuple[int, ...]) -> None:
    """Latents come from users: check rank, trailing shape, dtype and finiteness up front."""
    if not isinstance(t, Tensor):
        raise InvalidInputError(name, f"expected a tensor, got {type(t).__name__}")
    if t.ndim != len(trailing) + 1 or tuple(t.shape[1:]) != trailing:
        want = "[B, " + ", ".join(str(d) for d in trailing) + "]"
        raise InvalidInputError(name, f"expected shape {want}, got {list(t.shape)}")
    if not t.is_floating_point():
        raise InvalidInputError(name, f"expected a floating-point tensor, got {t.dtype}")
    if t.shape[0] == 0:
        raise InvalidInputError(name, "batch is empty")
    if not bool(torch.isfinite(t).all()):
        raise InvalidInputError(name, "contains NaN or infinite values")
