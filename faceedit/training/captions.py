"""Captions of rendered faces from their ground truth: the facts a face shows, full and shortened captions.

The demo CLIP learns each phrase on its own when training captions state a random subset of a face's
facts ("a smiling woman with glasses", "a face turned to the left", "an old face"): short prompts
like the text edits' are then in distribution. A subset caption is true of many faces in a batch,
so `caption_matches` tells the contrastive loss which pairs are not negatives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from faceedit.errors import InvalidInputError

STYLE_PHRASES = {
    "photo": "a photo of",
    "sketch": "an ink sketch of",
    "comic": "a comic drawing of",
    "watercolor": "a watercolor painting of",
}
NO_STYLE_PHRASE = "a picture of"  # states no style: true of every face


@dataclass(frozen=True)
class Fact:
    """One statement a caption can make about a face, and where in the sentence it goes."""

    name: str
    slot: str  # "adjective" (before the subject), "subject", "feature" (after "with") or "pose" (the end)
    phrases: tuple[str, ...]  # the first is the canonical wording; training draws any
    holds: Callable[[Mapping[str, np.ndarray]], np.ndarray]  # attribute columns → [N] bool

    def __post_init__(self) -> None:
        assert self.slot in ("adjective", "subject", "feature", "pose"), self.slot


# Thresholds leave a margin around each attribute's middle: an ambiguous face is stated neither way.
FACTS: tuple[Fact, ...] = (
    Fact("smiling", "adjective", ("smiling",), lambda a: a["smile"] > 0.6),
    Fact("serious", "adjective", ("serious",), lambda a: a["smile"] < 0.25),
    Fact("angry", "adjective", ("angry",), lambda a: a["anger"] > 0.5),
    Fact("crying", "adjective", ("crying", "tearful"), lambda a: a["crying"] > 0.5),
    Fact("young", "adjective", ("young",), lambda a: a["age"] < 0.33),
    Fact("middle-aged", "adjective", ("middle-aged",), lambda a: (a["age"] > 0.4) & (a["age"] < 0.6)),
    Fact("old", "adjective", ("old",), lambda a: a["age"] > 0.66),
    Fact("man", "subject", ("man",), lambda a: a["gender"] > 0.65),
    Fact("woman", "subject", ("woman",), lambda a: a["gender"] < 0.35),
    Fact("glasses", "feature", ("glasses",), lambda a: a["glasses"] >= 0.5),
    Fact("beard", "feature", ("a beard",), lambda a: a["beard"] > 0.3),
    Fact("long hair", "feature", ("long hair",), lambda a: a["hair_length"] > 0.7),
    Fact("short hair", "feature", ("short hair",), lambda a: a["hair_length"] < 0.25),
    Fact("open mouth", "feature", ("an open mouth",), lambda a: a["mouth_open"] > 0.6),
    Fact("closed eyes", "feature", ("closed eyes",), lambda a: a["eyes_open"] < 0.3),
    Fact("turned left", "pose", ("head turned left", "turned to the left"), lambda a: a["yaw"] < -0.4),
    Fact("turned right", "pose", ("head turned right", "turned to the right"), lambda a: a["yaw"] > 0.4),
)
# Attribute contrasts: one face rendered at both values (each well past its facts' thresholds), so a batch
# holds two images that differ in that attribute alone and captions that say so: a hard negative that
# makes the embedding see a smile or glasses, not just the style and identity that tell most faces apart.
CONTRASTS: tuple[tuple[str, float, float], ...] = (
    ("smile", 0.9, 0.1),
    ("anger", 0.85, 0.0),
    ("crying", 0.85, 0.0),
    ("glasses", 1.0, 0.0),
    ("age", 0.85, 0.15),
    ("yaw", -0.7, 0.7),
    ("eyes_open", 0.05, 0.9),
    ("mouth_open", 0.85, 0.0),
    ("gender", 0.9, 0.1),
    ("beard", 0.8, 0.0),
    ("hair_length", 0.9, 0.1),
)
STYLE_FACTS = tuple(STYLE_PHRASES)  # one more fact per style, after FACTS
N_FACTS = len(FACTS) + len(STYLE_FACTS)
SUBJECTS_WITHOUT_GENDER = ("person", "face")


def fact_table(attrs: Mapping[str, np.ndarray], styles: list[str]) -> np.ndarray:
    """Which facts hold for each face: [N, N_FACTS] bool (FACTS, then one column per style)."""
    unknown = sorted(set(styles) - set(STYLE_PHRASES))
    if unknown:
        raise InvalidInputError("style", f"unknown style {unknown[0]!r}; valid: {', '.join(STYLE_PHRASES)}")
    columns = {name: np.asarray(value, dtype=np.float64).reshape(-1) for name, value in attrs.items()}
    table = np.zeros((len(styles), N_FACTS), dtype=bool)
    for k, fact in enumerate(FACTS):
        table[:, k] = fact.holds(columns)
    for k, style in enumerate(STYLE_FACTS):
        table[:, len(FACTS) + k] = np.array(styles) == style
    return table


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def sentence(stated: np.ndarray, rng: np.random.Generator | None = None) -> str:
    """The caption stating exactly the facts marked in `stated` [N_FACTS] (canonical wording without rng)."""
    def wording(fact: Fact) -> str:
        return fact.phrases[0] if rng is None else fact.phrases[int(rng.integers(len(fact.phrases)))]

    chosen = [fact for fact, on in zip(FACTS, stated[:len(FACTS)]) if on]
    style = [s for s, on in zip(STYLE_FACTS, stated[len(FACTS):]) if on]
    adjectives = [wording(f) for f in chosen if f.slot == "adjective"]
    subjects = [wording(f) for f in chosen if f.slot == "subject"]
    if subjects:
        subject = subjects[0]
    else:
        subject = SUBJECTS_WITHOUT_GENDER[0 if rng is None else int(rng.integers(len(SUBJECTS_WITHOUT_GENDER)))]
    noun = " ".join([*adjectives, subject])
    text = f"{STYLE_PHRASES[style[0]] if style else NO_STYLE_PHRASE} {_article(noun)} {noun}"
    features = [wording(f) for f in chosen if f.slot == "feature"]
    if features:
        text += " with " + _join(features)
    poses = [wording(f) for f in chosen if f.slot == "pose"]
    if poses:
        text += ", " + poses[0]
    return text


def caption(attrs: Mapping[str, float], style: str) -> str:
    """One face's full caption, every fact stated, e.g.
    'an ink sketch of a smiling old man with glasses and a beard, head turned left'."""
    table = fact_table({name: np.array([value]) for name, value in attrs.items()}, [style])
    return sentence(table[0])


def sample_captions(facts: np.ndarray, rng: np.random.Generator, keep: float = 0.5,
                    keep_style: float = 0.85, always: np.ndarray | None = None) -> tuple[list[str], np.ndarray]:
    """Training captions for faces with facts [B, N_FACTS]: each true fact kept with probability `keep`
    (the style with `keep_style`), worded at random; true facts marked in `always` [B, N_FACTS] are stated.
    Returns the captions and what each states [B, N_FACTS]."""
    draw = rng.random(facts.shape)
    threshold = np.full(facts.shape[1], keep)
    threshold[len(FACTS):] = keep_style
    stated = facts & (draw < threshold)
    if always is not None:
        assert always.shape == facts.shape, (always.shape, facts.shape)
        stated |= facts & always
    return [sentence(row, rng) for row in stated], stated


def caption_matches(stated: np.ndarray, facts: np.ndarray) -> np.ndarray:
    """[B_captions, B_faces] bool: caption i states nothing face j lacks (so j is no negative for i)."""
    return ~(stated[:, None, :] & ~facts[None, :, :]).any(axis=2)
