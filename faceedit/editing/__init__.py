"""InterfaceGAN editing engine: boundary training, direction files, SeFa, and latent arithmetic on W+."""

from faceedit.editing.boundary import Boundary, Samples, sample_scores, train_boundary
from faceedit.editing.boundary_files import (
                                         BoundarySetError,
                                         attribute_name,
                                         load_boundary_set,
)
from faceedit.editing.boundary_set import BoundarySet, BoundarySetSpec, DirectionEntry
from faceedit.editing.directions import (
                                         PCABasis,
                                         check_direction,
                                         check_generator_match,
                                         load_boundary_file,
                                         load_direction,
                                         load_ganspace,
                                         save_boundary,
)
from faceedit.editing.layers import GROUP_NAMES, layer_groups, resolve_layers
from faceedit.editing.ops import (
                                         MAX_STRENGTH,
                                         Edit,
                                         apply_edits,
                                         clamp_strengths,
                                         condition,
                                         edit_path,
                                         ganspace_edit,
                                         latent_path,
)
from faceedit.editing.sefa import sefa_directions
from faceedit.editing.text import (
    ChannelRelevance,
    RelevanceConfig,
    apply_text_direction,
    cached_channel_relevance,
    channel_relevance,
    text_direction,
    text_edit,
)

__all__ = [
    "Boundary",
    "BoundarySet",
    "BoundarySetError",
    "BoundarySetSpec",
    "DirectionEntry",
    "Edit",
    "GROUP_NAMES",
    "MAX_STRENGTH",
    "PCABasis",
    "Samples",
    "apply_edits",
    "attribute_name",
    "check_direction",
    "check_generator_match",
    "clamp_strengths",
    "condition",
    "edit_path",
    "ganspace_edit",
    "latent_path",
    "layer_groups",
    "load_boundary_file",
    "load_boundary_set",
    "load_direction",
    "load_ganspace",
    "resolve_layers",
    "sample_scores",
    "save_boundary",
    "sefa_directions",
    "text_direction",
    "text_edit",
    "apply_text_direction",
    "cached_channel_relevance",
    "channel_relevance",
    "ChannelRelevance",
    "RelevanceConfig",
    "train_boundary",
]
