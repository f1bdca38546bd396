"""Scores of performances: the beat-grid estimate (tempo up to octaves, phase), and a performance
(played with jitter, or a random grammar walk) engraves as a MusicXML score that music21 parses,
with no note or rest shorter than a 32nd."""

import dataclasses

import numpy as np
import pytest

from configs import default
from jaxcomposer import config_lib
from jaxcomposer.music.notes import make_notes
from jaxcomposer.render import beat_grid, score
from jaxcomposer.sample import generate
from jaxcomposer.tokenizers import get_tokenizer


def played(qpm=100.0, beats=48, seed=0, delay=0.37):
    """Eighth notes and chords at `qpm`, accents on beats, 15 ms timing jitter, starting at
    `delay` s; returned in seconds."""
    rng = np.random.default_rng(seed)
    grid = np.arange(0, beats, 0.5)
    onsets = delay + grid * 60.0 / qpm + rng.normal(0, 0.015, grid.size)
    pitch = 60 + rng.integers(0, 12, grid.size)
    velocity = np.where(grid % 1 == 0, 100, 60)
    return onsets, pitch, velocity


def octave_distance(a: float, b: float) -> float:
    x = np.log2(a / b)
    return abs(x - np.round(x))


@pytest.mark.parametrize("qpm", [72.0, 100.0, 132.0])
def test_tempo_and_downbeat(qpm):
    onsets, _, velocity = played(qpm)
    grid = beat_grid.estimate(onsets, velocity)
    assert octave_distance(grid.qpm, qpm) < np.log2(1.04)
    fixed = beat_grid.estimate(onsets, velocity, qpm=qpm)
    assert fixed.qpm == qpm
    assert abs(fixed.origin - 0.37) < 0.03  # the first (accented) onset's beat


def performance_notes(seed):
    onsets, pitch, velocity = played(seed=seed)
    ends = onsets + np.random.default_rng(seed).uniform(0.05, 0.9, onsets.size)
    return make_notes(pitch, onsets * 2, ends * 2, velocity=velocity)  # beats at 120 qpm


def random_performance(seed):
    """Decoded from a random walk of performance tokens: arbitrary real-time music."""
    config = config_lib.freeze(default.get_config()).tokenizer
    tok = get_tokenizer(dataclasses.replace(config, name="performance"))
    g, rng = tok.grammar, np.random.default_rng(seed)
    state, held, out = g.bos_state, np.zeros(g.num_keys + 1, bool), []
    for _ in range(400):
        allowed = g.allowed(state) & ~held[g.press] & (held[g.release] | (g.release < 0))
        allowed[2] = False  # no EOS
        token = int(rng.choice(np.flatnonzero(allowed)))
        out.append(token)
        state = int(g.next_state[state, token])
        held[g.press[token]], held[g.release[token]], held[-1] = True, False, False
    decoded = tok.decode(np.asarray(out))
    assert decoded.skipped == 0
    return decoded.notes


@pytest.mark.parametrize("make", [performance_notes, random_performance])
def test_performance_score_parses_and_has_nothing_shorter_than_a_32nd(make, tmp_path):
    from music21 import converter, note

    notes = make(1)
    grid = generate.performance_score(notes, 120.0, None)
    assert beat_grid.MIN_QPM <= grid["score_qpm"] <= beat_grid.MAX_QPM
    assert generate.performance_score(notes, 120.0, 90.0)["score_qpm"] == 90.0
    path = str(tmp_path / "p.musicxml")
    score.write_musicxml(path, grid["score_notes"], title="t", qpm=grid["score_qpm"])
    parsed = converter.parse(path)
    elements = list(parsed.recurse().getElementsByClass((note.Note, note.Rest, "Chord")))
    assert len(elements) > 20
    shortest = min(float(e.quarterLength) for e in elements if e.quarterLength > 0)
    assert shortest >= 0.125
