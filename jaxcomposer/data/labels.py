"""Per-token conditioning labels made at prepare time: the key in force at every token, and a
style per piece.

Key source, in order (the manifest records which one each piece used):
  "csv"        a user's labels file (data.key_labels_csv: rows `file name, key[, style]`)
  "file"       the MIDI file's key-signature events (they carry a mode), kept unless the notes
               contradict them: a key signature whose scale holds clearly fewer of the notes than
               the estimate's (FILE_KEY_TOLERANCE) is a default C major left by a sequencer
  "score"      the score's own key (the embedded chorales: music21 reads the MusicXML key)
  "estimate"   Krumhansl-Schmuckler over sliding windows of WINDOW_BEATS, smoothed by a Viterbi
               pass that charges SWITCH_PENALTY per key change, so a piece that does not modulate
               keeps one key and one that does changes where the evidence is sustained
Style: the first folder of the file's name under midi_dir (off when there is only one).
"""

from __future__ import annotations

import csv
import os

import numpy as np

from jaxcomposer.core.errors import Failure
from jaxcomposer.music import keys
from jaxcomposer.music.notes import Piece

WINDOW_BEATS = 8.0  # two 4/4 bars per estimate window
SWITCH_PENALTY = 1.0  # correlation units (one window scores in [-1, 1])
FILE_KEY_TOLERANCE = 0.1  # share of note duration


class LabelError(Failure, ValueError):
    """A labels CSV that cannot be used (the message names the file, row and problem)."""


def in_scale_share(piece: Piece, key_number: int) -> float:
    """Share of note duration in the key's scale (keys.scale_pitch_classes, all minor forms:
    the sampler's mask); 1.0 for a piece with no sounding notes."""
    weights = keys.pitch_class_weights(piece.notes)
    total = weights.sum()
    in_scale = keys.scale_pitch_classes(key_number, "all_minor_forms")
    return float(weights[in_scale].sum() / total) if total else 1.0


def window_keys(piece: Piece, window: float = WINDOW_BEATS) -> list[tuple[float, int]]:
    """[(first beat, key number)] from windowed Krumhansl-Schmuckler + Viterbi smoothing."""
    notes = piece.notes[~piece.notes.is_drum]
    end = float(notes.end.max(initial=0.0))
    count = max(int(np.ceil(end / window)), 1)
    corr_NxK = np.zeros((count, keys.NUM_KEYS))
    for n in range(count):
        lo, hi = n * window, (n + 1) * window
        overlap = np.clip(np.minimum(notes.end, hi) - np.maximum(notes.start, lo), 0.0, None)
        weights = np.bincount(notes.pitch.astype(np.int64) % 12, overlap, minlength=12)
        corr_NxK[n] = keys.key_correlations(weights)
    # The whole piece's estimate breaks ties, so flat windows follow it.
    whole = keys.key_correlations(keys.pitch_class_weights(notes))
    corr_NxK += 1e-3 * whole
    score, back = corr_NxK[0].copy(), np.zeros((count, keys.NUM_KEYS), np.int64)
    for n in range(1, count):
        stay_or_switch = score[:, None] - SWITCH_PENALTY * (1 - np.eye(keys.NUM_KEYS))
        back[n] = np.argmax(stay_or_switch, axis=0)
        score = stay_or_switch[back[n], np.arange(keys.NUM_KEYS)] + corr_NxK[n]
    path = [int(np.argmax(score))]
    for n in range(count - 1, 0, -1):
        path.append(int(back[n, path[-1]]))
    path.reverse()
    return [(n * window, k) for n, k in enumerate(path) if n == 0 or k != path[n - 1]]


def key_segments(piece: Piece, kind: str) -> tuple[list[tuple[float, int]], str]:
    """([(first beat, key number)], source) for one piece read from a file of `kind`."""
    events = sorted(piece.key_signatures, key=lambda ks: ks.beat)
    estimated = window_keys(piece)
    if events:
        segments = [(0.0 if i == 0 else ks.beat, ks.key_number) for i, ks in enumerate(events)]
        if kind == "score":
            return segments, "score"
        est_share = in_scale_share(piece, estimated[0][1])
        if in_scale_share(piece, segments[0][1]) >= est_share - FILE_KEY_TOLERANCE:
            return segments, "file"
    return estimated, "estimate"


def token_labels(tokenizer, tokens: np.ndarray, segments: list[tuple[float, int]]) -> np.ndarray:
    """int8 (n,): the key in force at each token (no BOS/EOS) given [(first beat, key)], the
    beats on the tokenizer's clock (`Tokenizer.token_time` of the piece's beats)."""
    beats = tokenizer.token_beats(tokens)
    starts = np.array([b for b, _ in segments])
    index = np.maximum(np.searchsorted(starts, beats + 1e-9, side="right") - 1, 0)
    return np.array([k for _, k in segments], np.int8)[index]


def main_key(labels: np.ndarray) -> int:
    """The most frequent key label (-1 when there is none)."""
    labels = np.asarray(labels)
    labels = labels[labels >= 0]
    return int(np.bincount(labels, minlength=24).argmax()) if labels.size else -1


def read_csv(path: str) -> dict[str, tuple[int | None, str | None]]:
    """{file name: (key number or None, style or None)} from rows `file, key[, style]`; a header
    row whose key column says 'key' is skipped. Raises LabelError naming the row."""
    out: dict[str, tuple[int | None, str | None]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise LabelError(f"{path}: cannot read the labels file ({e.strerror or e})") from e
    for number, row in enumerate(rows, start=1):
        cells = [c.strip() for c in row]
        if not cells or not cells[0] or cells[0].startswith("#"):
            continue
        if number == 1 and len(cells) > 1 and cells[1].lower() == "key":
            continue
        key = None
        if len(cells) > 1 and cells[1]:
            try:
                key = keys.parse_key(cells[1])
            except keys.KeyNameError as e:
                raise LabelError(f"{path} row {number}: {e}") from None
        style = cells[2] if len(cells) > 2 and cells[2] else None
        out[cells[0]] = (key, style)
    return out


def csv_entry(table: dict, name: str):
    """The CSV row for a file: by its name under the folder, else by its base name."""
    return table.get(name) or table.get(os.path.basename(name))


TOP_LEVEL_STYLE = "(top level)"  # the style of files directly under midi_dir


def style_of(name: str) -> str:
    """The first folder of a file name relative to midi_dir (TOP_LEVEL_STYLE for files directly
    under it, so every style has a name a user can type with --style)."""
    return name.split("/", 1)[0] if "/" in name else TOP_LEVEL_STYLE


def style_names(styles: list[str]) -> tuple[str, ...]:
    """The sorted distinct styles; () (style labels off) when there are fewer than two."""
    names = tuple(sorted(set(styles)))
    return names if len(names) >= 2 else ()
