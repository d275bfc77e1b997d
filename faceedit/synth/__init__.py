"""Synthetic faces with known, continuously controllable attributes, in photo and artistic styles."""

from faceedit.synth.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, AttributeSpec
from faceedit.synth.render import (
                                   RENDER_UNIFORMS,
                                   STYLES,
                                   render_faces,
                                   render_from_attributes,
                                   render_from_uniform,
                                   sample_attributes,
)
from faceedit.synth.scorer import Scorer, load_scorer

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "AttributeSpec",
    "Scorer",
    "load_scorer",
    "RENDER_UNIFORMS",
    "STYLES",
    "render_faces",
    "render_from_attributes",
    "render_from_uniform",
    "sample_attributes",
]
