"""Primers: the tokens a sample continues (a window of validation music, or a MIDI file's start)."""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from jaxcomposer.config_lib import Config, SampleConfig
from jaxcomposer.core.errors import UsageError
from jaxcomposer.data import dataset, midi_io
from jaxcomposer.music.notes import Piece
from jaxcomposer.tokenizers import BOS, EncodingError, Tokenizer


def clean_starts(tokenizer: Tokenizer, piece_tokens: np.ndarray) -> np.ndarray:
    """int64: indices where a piece can be cut so that decoding from there loses nothing
    (`Tokenizer.cut_points`: a bar line, frame or group start, a moment when no note sounds)."""
    return np.flatnonzero(tokenizer.cut_points(piece_tokens))


def primers_from_valid(
    workdir: str, tokenizer: Tokenizer, sample: SampleConfig, seed: int
) -> np.ndarray:
    """The original's behaviour: a random window of validation music (one per sample)."""
    split = dataset.load_split(workdir, "valid")
    rng = np.random.default_rng(seed)
    length = sample.primer_tokens
    candidates = []
    for i in range(len(split.offsets) - 1):
        body = split.tokens[split.offsets[i] + 1 : split.offsets[i + 1] - 1]  # no BOS/EOS
        starts = clean_starts(tokenizer, body)
        starts = starts[starts + length - 1 <= body.size]
        if starts.size:
            candidates.append((body, starts))
    if not candidates:
        raise ValueError(f"no validation piece in {workdir} has {length} tokens for a primer")
    rows = []
    for _ in range(sample.num_samples):
        body, starts = candidates[rng.integers(len(candidates))]
        start = int(rng.choice(starts))
        rows.append(np.concatenate([[BOS], body[start : start + length - 1]]))
    return np.stack(rows).astype(np.int32)


def read_midi_flag(config: Config, path: str, flag: str) -> Piece:
    """The MIDI file a flag names (`--primer_midi`, `--melody`), read by the lenient reader;
    UsageError (one line naming the flag and file) when it is missing, not MIDI, empty or holds
    only drums."""
    where = f"--{flag} {path}"
    if not os.path.isfile(path):
        raise UsageError(f"{where}: no such file")
    try:
        piece, stats = midi_io.read_midi(path, config.data)
    except midi_io.MidiReadError as e:
        raise UsageError(f"{where}: {e.reason}") from None
    if stats.get("drum_notes") and not len(piece.notes):
        raise UsageError(f"{where}: only drum notes, no {flag.split('_')[0]}")
    return piece


def primer_from_midi(config: Config, tokenizer: Tokenizer, path: str) -> tuple[np.ndarray, object]:
    """The first `primer_tokens - 1` tokens of a MIDI file after BOS, tiled per sample, and the
    piece as read. Raises UsageError naming the file when it yields no primer (missing, not
    MIDI, empty, drum-only, every note out of range); warns when notes had to be dropped."""
    where = f"--primer_midi {path}"
    piece = read_midi_flag(config, path, "primer_midi")
    kept = dataset.fit_pitch_range(piece, config)
    lost, tok = len(piece.notes) - len(kept.notes), config.tokenizer
    pitch_range = f"the pitch range [{tok.pitch_min}, {tok.pitch_max}]"
    if not len(kept.notes):
        raise UsageError(f"{where}: all {lost} notes lie outside {pitch_range}")
    if lost:
        logging.warning("%s: %d of %d notes outside %s dropped", where, lost, len(piece.notes),
                        pitch_range)  # fmt: skip
    try:
        tokens = tokenizer.encode(kept)
    except EncodingError as e:
        raise UsageError(f"{where}: {e}") from None
    if tokens.size == 0:
        raise UsageError(f"{where}: the piece encodes to no tokens")
    tokens = tokens[: config.sample.primer_tokens - 1]
    row = np.concatenate([[BOS], tokens]).astype(np.int32)
    return np.tile(row, (config.sample.num_samples, 1)), kept
