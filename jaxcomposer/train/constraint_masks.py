"""Random constraint rows for training a model with a constraint encoder (model/anticipation.py).

Anticipation-RNN (Hadjeres & Nielsen 2018, section 4) trains the encoder on random unary
constraints so that the forward model learns to aim at whatever is given. Here the constraints
are drawn to look like what users ask for (docs/constraints.md), one kind per training window:

  none    nothing given: the plain language model (the encoder reads zeros)
  voices  whole voices given: the top voice alone in half of them (harmonize a melody), else a
          random non-empty proper subset of the voices
  bars    everything given but the voice tokens of a span of 1-4 bars (rewrite bars, infill)
  tokens  each voice token given with a probability drawn uniformly per window

Bar lines and meters (tokens of no voice) are given whenever anything is. Which voice a token
belongs to and where bars begin are the tokenizer's answers (`voice_tables().voice_S` at the
grammar state before each target; `bar_counter().advance_V`), so the same code serves any
tokenizer written voice by voice. The loss then counts only the free targets (a given token is
copied, not predicted).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcomposer.config_lib import ConfigError, ConstraintMix
from jaxcomposer.model.anticipation import FREE

KINDS = ("none", "voices", "bars", "tokens")
MAX_GAP_BARS = 4


def draw_given(
    targets_BxL: np.ndarray,
    real_BxL: np.ndarray,
    voice_BxL: np.ndarray,
    bar_BxL: np.ndarray,
    num_voices: int,
    mix: ConstraintMix,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(given bool (B, L), kind int (B,): index into KINDS) for a batch of target windows.

    real_BxL bool: the target is a token of the piece (padding is never given); voice_BxL int:
    the voice of each target (-1: a token of no voice, e.g. a bar line); bar_BxL int: the bar
    each target lies in, counted from the window's start. Draws from `rng` only."""
    b, _ = targets_BxL.shape
    shares = np.asarray([getattr(mix, k) for k in KINDS], np.float64)
    kind_B = rng.choice(len(KINDS), size=b, p=shares / shares.sum())
    voiced_BxL = voice_BxL >= 0
    given_BxL = np.zeros(targets_BxL.shape, bool)
    for i in range(b):
        kind = KINDS[kind_B[i]]
        if kind == "none":
            continue
        if kind == "voices":
            if num_voices == 1 or rng.random() < 0.5:
                keep = np.zeros(num_voices, bool)
                keep[0] = True
            else:
                keep = rng.random(num_voices) < 0.5
                if keep.all() or not keep.any():
                    keep = np.zeros(num_voices, bool)
                    keep[rng.integers(num_voices)] = True
            row = ~voiced_BxL[i] | keep[np.maximum(voice_BxL[i], 0)]
        elif kind == "bars":
            bars = np.unique(bar_BxL[i][real_BxL[i]])
            length = int(rng.integers(1, min(MAX_GAP_BARS, bars.size) + 1)) if bars.size else 0
            first = bars[int(rng.integers(bars.size - length + 1))] if length else 0
            gap = (bar_BxL[i] >= first) & (bar_BxL[i] < first + length)
            row = ~(voiced_BxL[i] & gap)
        else:
            row = ~voiced_BxL[i] | (rng.random(voiced_BxL[i].shape) < rng.random())
        given_BxL[i] = row & real_BxL[i]
    return given_BxL, kind_B


def constrain_batch(
    batch: dict[str, np.ndarray],
    voice_S: np.ndarray,
    advance_V: np.ndarray,
    num_voices: int,
    mix: ConstraintMix,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """A batch (batching.py's, with `states_BxL`) with `constraints_BxL` int32 (the target where
    given, FREE elsewhere) added and the given targets' loss weights set to 0. voice_S int (S,):
    the voice each grammar state expects next (-1: none); advance_V float (V,): how many bars
    each token opens."""
    targets_BxL = batch["targets_BxL"]
    real_BxL = batch["weights_BxL"] > 0
    voice_BxL = np.asarray(voice_S)[batch["states_BxL"]]
    bar_BxL = np.cumsum(np.asarray(advance_V)[targets_BxL] > 0, axis=1)
    given_BxL, _ = draw_given(targets_BxL, real_BxL, voice_BxL, bar_BxL, num_voices, mix, rng)
    out = dict(batch)
    out["constraints_BxL"] = np.where(given_BxL, targets_BxL, FREE).astype(np.int32)
    out["weights_BxL"] = np.where(given_BxL, 0.0, batch["weights_BxL"]).astype(np.float32)
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class Masker:
    """What `constrain_batch` needs from the tokenizer and config, built once per run."""

    voice_S: np.ndarray
    advance_V: np.ndarray
    num_voices: int
    mix: ConstraintMix

    @staticmethod
    def for_tokenizer(tokenizer, mix: ConstraintMix) -> Masker:
        """ConfigError when the tokenizer does not write voices (no `voice_tables`)."""
        tables = tokenizer.voice_tables()
        if tables is None:
            raise ConfigError(
                "config model.constraint_encoder_size > 0: needs tokens written voice by voice "
                f"(tokenizer.name=voices); the {tokenizer.config.name} tokens have no voices"
            )
        return Masker(tables.voice_S, tokenizer.bar_counter().advance_V, tables.num_voices, mix)

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        return constrain_batch(batch, self.voice_S, self.advance_V, self.num_voices, self.mix, rng)
