"""Synthetic faces with known, continuously controllable attributes, in photo and artistic styles."""

from faceedit.synth.attributes import ATTRIBUTE_NAMES, ATTRIBUTES, AttributeSpec
from faceedit.synth.render import STYLES, render_faces, render_from_attributes, sample_attributes

__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_NAMES",
    "AttributeSpec",
    "STYLES",
    "render_faces",
    "render_from_attributes",
    "sample_attributes",
]
