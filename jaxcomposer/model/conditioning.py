"""The music-theory vector M of the paper's section 8.3, appended to every input step: [X; M].

A conditioned model reads, with each input token, a float vector built from per-token labels:

  key    one-hot tonic pitch class (12) + one-hot mode (2: major, minor)   -> 14 values
  style  one-hot over the training set's style names (sub-folders of midi_dir)

Labels are int arrays aligned with the tokens: key = pretty_midi key number (0-11 major,
12-23 minor) or -1 (unknown: an all-zero key block), style = index into the style list or -1.
The same `vector` builds M in numpy (training batches) and in jitted JAX (the sampler's scan).

Where a label changes is decided by the token's position in the music, which the tokenizer
answers (`Tokenizer.token_beats` for training labels, `Tokenizer.bar_counter` for the bars of
key schedules while sampling; tokenizers/geometry.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcomposer.config_lib import CHOICES
from jaxcomposer.music import keys

CONDITIONS = CHOICES["model.condition"]
KEY_DIM = 14  # 12 tonic pitch classes + 2 modes


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the vector holds. Hashable: a static argument of jitted code."""

    condition: str = "none"  # one of CONDITIONS
    styles: tuple[str, ...] = ()  # style names, index = label

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(f"model.condition must be one of {CONDITIONS}, got {self.condition!r}")

    @property
    def uses_key(self) -> bool:
        return self.condition != "none"

    @property
    def uses_style(self) -> bool:
        return self.condition == "key+style"

    @property
    def dim(self) -> int:
        if not self.uses_key:
            return 0
        return KEY_DIM + (len(self.styles) if self.uses_style else 0)


def vector(spec: Spec, key_labels, style_labels=None, xp=np):
    """float32 (..., spec.dim) from int key labels (...,) and optional style labels (...,).

    `xp` is numpy or jax.numpy (the same code runs on the host and inside jit)."""
    key_labels = xp.asarray(key_labels)
    known = (key_labels >= 0)[..., None]
    tonic = xp.where(key_labels >= 0, key_labels % 12, -1)
    mode = xp.where(key_labels >= 0, key_labels // 12, -1)
    parts = [
        (tonic[..., None] == xp.arange(12)) & known,
        (mode[..., None] == xp.arange(2)) & known,
    ]
    if spec.uses_style:
        styles = xp.full(key_labels.shape, -1) if style_labels is None else xp.asarray(style_labels)
        parts.append(styles[..., None] == xp.arange(len(spec.styles)))
    return xp.concatenate([p.astype(xp.float32) for p in parts], axis=-1)


# --- scales -----------------------------------------------------------------------------------
# The sampler's scale mask (--scale=soft/strict) admits every form of a minor scale (natural,
# harmonic, melodic: keys.SCALE_STEPS), so a minor key's leading tone and raised 6th stay open.
SAMPLER_MINOR_FORM = "all_minor_forms"


def in_scale_table(tokenizer) -> np.ndarray:
    """bool (24, V): token allowed in key k: not a pitch token, or every class it sounds lies in
    the key's scale (keys.scale_table with SAMPLER_MINOR_FORM)."""
    pcs_VxC = tokenizer.pitch_class_table()
    scales_KxC = keys.scale_table(SAMPLER_MINOR_FORM)
    outside_KxV = pcs_VxC[None, :, :] & ~scales_KxC[:, None, :]
    return ~outside_KxV.any(axis=2)


def schedule_arrays(schedules: list[list[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample [(first bar, key)] lists -> (bars_BxN, keys_BxN) int32, padded by repeating
    the last entry (so 'the last entry with bar <= b' stays correct)."""
    width = max(len(s) for s in schedules)
    bars = np.array([[b for b, _ in s] + [s[-1][0]] * (width - len(s)) for s in schedules])
    keys_ = np.array([[k for _, k in s] + [s[-1][1]] * (width - len(s)) for s in schedules])
    return bars.astype(np.int32), keys_.astype(np.int32)


def key_at_bar(bars_BxN, keys_BxN, bar_B, xp=np):
    """Key in force at bar `bar_B` of each row: the last schedule entry starting at or before."""
    index = xp.sum(bars_BxN <= bar_B[:, None], axis=1) - 1
    index = xp.maximum(index, 0)
    return xp.take_along_axis(keys_BxN, index[:, None], axis=1)[:, 0]
