"""Network definitions (StyleGAN2 generator, pSp/e4e encoders) and their loaders."""

from faceedit.models.encoders import Encoder, EncoderConfig, infer_encoder_config
from faceedit.models.loading import (
    build_encoder,
    build_generator,
    convert_checkpoint,
    infer_generator_config,
    load_encoder,
    load_generator,
)
from faceedit.models.stylegan2 import Generator, GeneratorConfig, standard_channels

__all__ = [
    "Encoder",
    "EncoderConfig",
    "Generator",
    "GeneratorConfig",
    "build_encoder",
    "build_generator",
    "convert_checkpoint",
    "infer_encoder_config",
    "infer_generator_config",
    "load_encoder",
    "load_generator",
    "standard_channels",
]
