"""Small MIDI files for tests, written with mido so that every byte is under the test's control.

Events are given at absolute ticks; `write_midi_file` sorts them per track (stable, so events at
one tick keep their order) and converts to delta times.
"""

from __future__ import annotations

import mido
import numpy as np

TICKS_PER_BEAT = 480


def note(
    pitch: int,
    start: float,
    end: float,
    *,
    velocity: int = 80,
    channel: int = 0,
    tpb: int = TICKS_PER_BEAT,
) -> list[tuple[int, mido.Message]]:
    """A note from beat `start` to beat `end` as two (tick, message) events."""
    return [
        (
            round(start * tpb),
            mido.Message("note_on", note=pitch, velocity=velocity, channel=channel),
        ),
        (round(end * tpb), mido.Message("note_off", note=pitch, velocity=0, channel=channel)),
    ]


def notes(spec, **kwargs) -> list[tuple[int, mido.Message]]:
    """[(pitch, start_beat, end_beat), ...] -> events."""
    return [event for p, a, b in spec for event in note(p, a, b, **kwargs)]


def tempo(tick: int, qpm: float) -> tuple[int, mido.MetaMessage]:
    return tick, mido.MetaMessage("set_tempo", tempo=round(6e7 / qpm))


def program(tick: int, number: int, channel: int = 0) -> tuple[int, mido.Message]:
    return tick, mido.Message("program_change", program=number, channel=channel)


def write_midi_file(
    path, tracks: list[list[tuple[int, object]]], *, tpb: int = TICKS_PER_BEAT
) -> str:
    mid = mido.MidiFile(type=1 if len(tracks) > 1 else 0, ticks_per_beat=tpb)
    for events in tracks:
        track = mido.MidiTrack()
        now = 0
        for tick, message in sorted(events, key=lambda e: e[0]):
            track.append(message.copy(time=tick - now))
            now = tick
        track.append(mido.MetaMessage("end_of_track", time=0))
        mid.tracks.append(track)
    mid.save(str(path))
    return str(path)


def simple_file(
    path,
    spec=((60, 0, 1), (64, 1, 2), (67, 2, 4)),
    *,
    qpm: float = 120.0,
    channel: int = 0,
    program_number: int = 0,
    tpb: int = TICKS_PER_BEAT,
) -> str:
    """One track: a tempo, a program and the notes of `spec` (pitch, start beat, end beat)."""
    events = [tempo(0, qpm), program(0, program_number, channel)]
    events += notes(spec, channel=channel, tpb=tpb)
    return write_midi_file(path, [events], tpb=tpb)


def melody(
    seed: int, length: int = 24, low: int = 48, high: int = 84
) -> list[tuple[int, float, float]]:
    """A deterministic little two-voice piece on a sixteenth-note grid (beats)."""
    rng = np.random.default_rng(seed)
    spec, t = [], 0.0
    for _ in range(length):
        dur = float(rng.choice([0.25, 0.5, 1.0]))
        spec.append((int(rng.integers(low + 12, high)), t, t + dur))
        if rng.random() < 0.5:
            spec.append((int(rng.integers(low, low + 12)), t, t + 2 * dur))
        t += dur
    return spec


def pretty_midi_beats(path) -> list[tuple[int, float, float, int]]:
    """pretty_midi's notes (seconds) mapped back to beats through its own tempo map: an
    independent route to the numbers read_midi computes from ticks."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(str(path))
    times, qpms = pm.get_tempo_changes()
    beats_at = np.concatenate([[0.0], np.cumsum(np.diff(times) * qpms[:-1] / 60.0)])

    def to_beats(seconds):
        seconds = np.asarray(seconds, np.float64)
        i = np.searchsorted(times, seconds, side="right") - 1
        beats = beats_at[i] + (seconds - times[i]) * qpms[i] / 60.0
        return np.round(beats * pm.resolution) / pm.resolution

    rows = [
        (n.pitch, n.start, n.end, n.velocity)
        for inst in pm.instruments
        if not inst.is_drum
        for n in inst.notes
    ]
    if not rows:
        return []
    p, s, e, v = (np.array(c) for c in zip(*rows, strict=True))
    return sorted(
        zip(p.tolist(), to_beats(s).tolist(), to_beats(e).tolist(), v.tolist(), strict=True)
    )
