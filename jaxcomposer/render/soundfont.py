"""A small SoundFont 2 sample player: piano audio from pip wheels alone (no system library).

Why our own player: symusic 0.5.9's synthesizer (the wheel the library notes suggested) renders
pretty_midi's TimGM6mb.sf2 piano at wrong pitches (A4 peaks at 1649 Hz, A3 at 495 Hz) and ignores
velocity (measured 2026-11-30); 0.6.0 fails with numpy 2.4; tinysoundfont needs pyaudio, which has
no Linux wheel. The SF2 file is parsed by `sf2utils` (a pure-Python wheel); playing it is
SoundFont 2.04 sample playback, the part of the standard a piano needs:
  * zone = the preset's instrument zone whose key and velocity ranges hold the note (instrument
    global zone as defaults, section 9.4);
  * pitch: (key - root) * scaleTuning + coarse * 100 + fine + sample correction cents (8.1.2,
    gens 51/52/56/58), played by linear interpolation, looping between the loop points while the
    note sounds (sampleModes 1 or 3);
  * volume envelope (gens 35-38): hold at full level, then a straight line in dB down to the
    sustain attenuation over the decay time, and after the note's end 100 dB per release time;
  * velocity: amplitude (v / 127)^2, close to the standard's default concave velocity-to-
    attenuation modulator (8.4.1) over the range pianos use;
  * initialAttenuation (gen 48) scaled by 0.4, as FluidSynth does for EMU-made banks.
Not modelled: filters, modulation/vibrato LFOs, reverb/chorus, pan (the output is mono).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import numpy as np

from jaxcomposer.music.notes import Notes


@dataclasses.dataclass(frozen=True, eq=False)
class Zone:
    keys: tuple[int, int]
    velocities: tuple[int, int]
    data: np.ndarray  # float32 (n,), in [-1, 1]
    sample_rate: int
    root: int  # MIDI key the sample sounds at without transposition
    cents: float  # tuning added to (key - root) * scale (coarse, fine, sample correction)
    scale: float  # cents per key (scaleTuning)
    loop: tuple[int, int] | None  # [start, end) sample indices played over and over
    gain: float  # amplitude from initialAttenuation
    hold: float  # seconds at full level
    decay: float  # seconds to fall to the sustain level
    sustain_db: float  # attenuation (dB) reached after the decay
    release: float  # seconds for 100 dB of fall after the note ends


def default_soundfont() -> str:
    """pretty_midi's bundled General MIDI SoundFont (TimGM6mb.sf2)."""
    import pretty_midi

    return os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")


def _timecents(value: int) -> float:
    return float(2.0 ** (value / 1200.0))


def _signed(word: int) -> int:
    return word - 65536 if word >= 32768 else word


@functools.cache
def load_zones(path: str, bank: int = 0, program: int = 0) -> tuple[Zone, ...]:
    """The zones of one preset; raises ValueError naming the file when it has no such preset."""
    from sf2utils.sf2parse import Sf2File

    quiet = logging.getLogger()  # sf2utils warns on the root logger about every odd drum sample
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with open(path, "rb") as f:
            sf2 = Sf2File(f)
            return _preset_zones(sf2, path, bank, program)
    finally:
        quiet.setLevel(level)


def _preset_zones(sf2, path: str, bank: int, program: int) -> tuple[Zone, ...]:
    presets = [p for p in sf2.presets if getattr(p, "bank", None) == bank
               and getattr(p, "preset", None) == program]  # fmt: skip
    if not presets:
        raise ValueError(f"{path}: no preset {bank}:{program}")
    zones = []
    for preset_bag in presets[0].bags:
        if 41 not in preset_bag.gens:  # a preset global zone
            continue
        instrument = sf2.instruments[preset_bag.gens[41].word]
        defaults = {}
        for bag in instrument.bags:
            gens = {k: g.word for k, g in bag.gens.items()}
            if 53 not in gens:  # the instrument global zone: defaults for the others
                defaults = gens
                continue
            zones.append(_zone({**defaults, **gens}, sf2.samples[gens[53]]))
    return tuple(zones)


def _zone(g: dict, sample) -> Zone:
    def rng(key: int) -> tuple[int, int]:
        return (g[key] & 0xFF, g[key] >> 8) if key in g else (0, 127)

    data = np.frombuffer(sample.raw_sample_data, "<i2").astype(np.float32) / 32768.0
    root = g.get(58, 65535)
    loop = None
    if g.get(54, 0) & 1 and 0 <= sample.start_loop < sample.end_loop <= data.size:
        loop = (int(sample.start_loop), int(sample.end_loop))
    return Zone(
        keys=rng(43),
        velocities=rng(44),
        data=data,
        sample_rate=int(sample.sample_rate),
        root=int(sample.original_pitch if root > 127 else root),
        cents=100.0 * _signed(g.get(51, 0)) + _signed(g.get(52, 0)) + sample.pitch_correction,
        scale=float(g.get(56, 100)),
        loop=loop,
        gain=float(10 ** (-0.4 * g.get(48, 0) / 200.0)),  # centibels, FluidSynth's 0.4
        hold=_timecents(_signed(g.get(35, -12000))),
        decay=_timecents(_signed(g.get(36, -12000))),
        sustain_db=min(g.get(37, 0), 1440) / 10.0,
        release=max(_timecents(_signed(g.get(38, -12000))), 0.01),
    )


def _find(zones: tuple[Zone, ...], key: int, velocity: int) -> Zone | None:
    for zone in zones:
        (low_key, high_key), (low_vel, high_vel) = zone.keys, zone.velocities
        if low_key <= key <= high_key and low_vel <= velocity <= high_vel:
            return zone
    return None


def _voice(zone: Zone, key: int, velocity: int, seconds: float, sample_rate: int) -> np.ndarray:
    """One note of `seconds` plus its release tail, float32."""
    step = 2.0 ** (((key - zone.root) * zone.scale + zone.cents) / 1200.0)
    step *= zone.sample_rate / sample_rate
    length = int(round((seconds + zone.release) * sample_rate))
    position = np.arange(length) * step
    if zone.loop is not None:
        start, end = zone.loop
        beyond = position >= start
        position[beyond] = start + np.mod(position[beyond] - start, end - start)
    else:
        position = position[position < zone.data.size - 1]
    index = position.astype(np.int64)
    frac = (position - index).astype(np.float32)
    nxt = np.minimum(index + 1, zone.data.size - 1)
    if zone.loop is not None:
        nxt = np.where(index + 1 >= zone.loop[1], zone.loop[0], nxt)
    wave = zone.data[index] * (1 - frac) + zone.data[nxt] * frac
    t = np.arange(wave.size) / sample_rate
    fall = zone.sustain_db / zone.decay if zone.decay > 0 else np.inf
    db = -np.minimum(np.maximum(t - zone.hold, 0.0) * fall, zone.sustain_db)
    after = t > seconds
    db_at_end = -min(max(seconds - zone.hold, 0.0) * fall, zone.sustain_db)
    db[after] = db_at_end - (t[after] - seconds) * 100.0 / zone.release
    gain = zone.gain * (velocity / 127.0) ** 2
    return (wave * gain * 10.0 ** (db / 20.0)).astype(np.float32)


def render(
    notes: Notes,
    *,
    seconds_per_beat: float,
    sample_rate: int,
    num_samples: int,
    path: str | None = None,
) -> np.ndarray:
    """float32 mono waveform (num_samples,) of the notes on the piano preset (0:0), not
    normalised; notes whose key has no zone are silent."""
    zones = load_zones(path or default_soundfont())
    out = np.zeros(num_samples, np.float32)
    for p, s, e, v in zip(notes.pitch.tolist(), notes.start.tolist(), notes.end.tolist(),
                          notes.velocity.tolist(), strict=True):  # fmt: skip
        zone = _find(zones, p, v)
        first = int(round(s * seconds_per_beat * sample_rate))
        if zone is None or first >= num_samples:
            continue
        voice = _voice(zone, p, v, (e - s) * seconds_per_beat, sample_rate)
        voice = voice[: num_samples - first]
        out[first : first + voice.size] += voice
    return out
