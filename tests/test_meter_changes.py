"""Every time- and key-signature change reaches the written MIDI, the MusicXML
and the engraved score (and the piano roll's bar lines), not only the first."""

from __future__ import annotations

import glob
import re

import mido
import numpy as np
import pytest

from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.data import midi_io
from jaxcomposer.music.notes import KeySignature, Piece, TimeSignature, make_notes
from jaxcomposer.render import outputs, score
from jaxcomposer.tokenizers import get_tokenizer

# A one-beat pickup, then 3/4, 2/4 and 6/8 bars; the key moves from D major to A major with 6/8.
METERS = ((0.0, 1, 4), (1.0, 3, 4), (4.0, 2, 4), (6.0, 6, 8))
KEYS = ((0.0, 2), (6.0, 9))  # pretty_midi key numbers: D major, A major


def primer_piece() -> Piece:
    start = np.arange(24) * 0.5  # a rising line in each hand, in eighths
    pitch = np.r_[62 + np.arange(24) % 12, 50 + np.arange(24) % 5]
    notes = make_notes(pitch, np.r_[start, start], np.r_[start, start] + 0.5)
    return Piece("primer", notes, time_signatures=tuple(TimeSignature(*m) for m in METERS))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The primer through the event tokens and back, rendered as generate renders a sample."""
    config = config_lib.freeze(tiny.get_config())
    tokenizer = get_tokenizer(config_lib.replace(config, tokenizer={"name": "event"}).tokenizer)
    decoded = tokenizer.decode(tokenizer.encode(primer_piece()))
    out_dir = str(tmp_path_factory.mktemp("meters"))
    info = outputs.render_sample(
        out_dir, "s", decoded.notes, title="meters", qpm=100.0,
        time_signatures=decoded.time_signatures,
        key_signatures=tuple(KeySignature(*k) for k in KEYS),
    )  # fmt: skip
    return out_dir, info, decoded, config


def test_the_tokens_carry_every_meter(rendered):
    _, _, decoded, _ = rendered
    assert [(t.beat, t.numerator, t.denominator) for t in decoded.time_signatures] == list(METERS)


def test_every_change_reaches_the_midi(rendered):
    out_dir, info, _, config = rendered
    assert info["errors"] == {}
    assert info["time_signatures"] == ["1/4@0", "3/4@1", "2/4@4", "6/8@6"]
    assert info["key_signatures"] == ["D major@0", "A major@6"]
    piece, _ = midi_io.read_midi(f"{out_dir}/s.mid", config.data)
    assert [(t.beat, t.numerator, t.denominator) for t in piece.time_signatures] == list(METERS)
    assert [(k.beat, k.key_number) for k in piece.key_signatures] == list(KEYS)
    # mido, independently: the meta events in the file itself, at their ticks
    mid = mido.MidiFile(f"{out_dir}/s.mid")
    metas, tick = [], 0
    for message in mido.merge_tracks(mid.tracks):
        tick += message.time
        if message.type == "time_signature":
            metas.append((tick / mid.ticks_per_beat, message.numerator, message.denominator))
    assert metas == list(METERS)


def test_every_change_reaches_the_musicxml(rendered):
    from music21 import converter, key, meter, stream

    out_dir, _, _, _ = rendered
    parsed = converter.parse(f"{out_dir}/s.musicxml")
    assert len(parsed.parts) == 2
    for part in parsed.parts:
        meters, keys = [], []
        for measure in part.getElementsByClass(stream.Measure):
            for ts in measure.getElementsByClass(meter.TimeSignature):
                meters.append((float(measure.offset), ts.numerator, ts.denominator))
            for ks in measure.getElementsByClass(key.KeySignature):
                keys.append((float(measure.offset), ks.sharps))
        assert meters == list(METERS)
        assert keys == [(0.0, 2), (6.0, 3)]
        bars = [float(m.barDuration.quarterLength) for m in part.getElementsByClass("Measure")]
        assert bars == [1.0, 3.0, 2.0, 3.0, 3.0]  # the 6/8 runs on to beat 12


def test_every_change_is_engraved(rendered):
    out_dir, info, _, _ = rendered
    svg = "".join(open(p, encoding="utf-8").read() for p in sorted(glob.glob(f"{out_dir}/s-*.svg")))
    assert len(info["svg"]) >= 1
    # verovio draws a meterSig / keySig group per staff (2 staves) wherever one is set.
    assert len(re.findall(r'class="meterSig"', svg)) == 2 * len(METERS)
    # verovio also repeats the key signature at the start of each later system (the tempo mark
    # and part name make this score two systems; no key change falls on a system's start).
    systems = len(re.findall(r'class="system"', svg))
    assert len(re.findall(r'class="keySig"', svg)) == 2 * (len(KEYS) + systems - 1)


def test_meter_map_orders_dedupes_and_drops_changes_after_the_music():
    ts = [TimeSignature(8.0, 3, 4), TimeSignature(2.0, 3, 4), TimeSignature(2.0, 2, 4)]
    got = score.meter_map((4, 4), ts, end=8.0)
    assert got == (TimeSignature(0.0, 4, 4), TimeSignature(2.0, 2, 4))  # 8.0 is at the end
    assert score.meter_map((3, 4), [TimeSignature(0.0, 3, 4)], end=0.0) == (
        TimeSignature(0.0, 3, 4),
    )
    keys = score.key_map(2, [KeySignature(4.0, 2), KeySignature(6.0, 9)], end=10.0)
    assert keys == (KeySignature(0.0, 2), KeySignature(6.0, 9))  # a repeat is no change


def test_bar_lines_follow_the_meter_map():
    meters = tuple(TimeSignature(*m) for m in METERS)
    assert outputs.bar_lines(meters, 12.0).tolist() == [0.0, 1.0, 4.0, 6.0, 9.0, 12.0]
    # a change off the bar line takes effect at the next one
    off = (TimeSignature(0.0, 3, 4), TimeSignature(4.0, 2, 4))
    assert outputs.bar_lines(off, 10.0).tolist() == [0.0, 3.0, 6.0, 8.0, 10.0]
