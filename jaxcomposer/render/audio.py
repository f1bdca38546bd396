"""Notes -> a 16-bit PCM WAV, by the first synthesiser that works, each with pretty_midi's
General MIDI SoundFont (TimGM6mb.sf2):
  1. "soundfont": our SF2 sample player over the sf2utils wheel (render/soundfont.py): piano
     sound from pip wheels alone;
  2. "fluidsynth": when pyfluidsynth and the system libfluidsynth are installed;
  3. "sine": pretty_midi's pure-numpy sine synthesiser, the last resort.
The name of the one used is returned, and samples.json and the gallery show it."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import tempfile
import wave

import numpy as np
import pretty_midi

from jaxcomposer.core import atomic
from jaxcomposer.core.errors import Failure
from jaxcomposer.data import midi_io
from jaxcomposer.music.notes import Notes

TAIL_SECONDS = 1.0  # silence/release kept after the last note ends
# The longest WAV written (seconds; 5 minutes, 13.2 MB of 16-bit mono at 22,050 Hz and about
# 150 MB of memory while synthesising): a primer at 3.58 quarter notes per minute (the slowest
# tempo MIDI can state) made 47 beats into a 35 MB WAV and 830 MB of memory, and a few hundred
# beats into hours. Longer music is cut here, with a warning; the MIDI and the score keep it all.
MAX_SECONDS = 300.0
PEAK = 0.9  # normalised peak amplitude: headroom against clipping in players
SOUNDFONT, FLUIDSYNTH, SINE = "soundfont", "fluidsynth", "sine"


@functools.cache
def soundfont_problem() -> str | None:
    """Why the wheel-only SoundFont player cannot be used, or None."""
    if importlib.util.find_spec("sf2utils") is None:
        return "sf2utils is not installed (pip install sf2utils)"
    from jaxcomposer.render import soundfont

    try:
        soundfont.load_zones(soundfont.default_soundfont())
    except (OSError, ValueError, ImportError) as e:
        return f"the SoundFont cannot be read ({e})"
    return None


@functools.cache
def fluidsynth_problem() -> str | None:
    """Why fluidsynth cannot be used, or None. pretty_midi reports a missing system library as
    "pyfluidsynth is not installed" (misleading), so look for each piece separately."""
    if importlib.util.find_spec("fluidsynth") is None:
        return "pyfluidsynth is not installed (pip install pyfluidsynth)"
    try:
        import fluidsynth  # noqa: F401  (raises ImportError when libfluidsynth is missing)
    except (ImportError, OSError) as e:
        return f"system libfluidsynth not found ({e}); e.g. apt-get install libfluidsynth3"
    return None


class SoundFontError(Failure, ValueError):
    """A SoundFont file given by the user cannot be read (the message names it)."""


def soundfont_file_problem(path: str) -> str | None:
    """Why our SoundFont player cannot play `path` (a missing file, not SF2, no piano preset
    0:0), or None. The zones are cached per path, so a second call costs nothing."""
    if not os.path.isfile(path):
        return "no such file"
    if importlib.util.find_spec("sf2utils") is None:
        return "sf2utils is not installed (pip install sf2utils)"
    from jaxcomposer.render import soundfont

    try:
        if not soundfont.load_zones(os.path.abspath(path)):
            return "no piano (bank 0, program 0) zones in it"
    except Exception as e:  # noqa: BLE001 - sf2utils raises many kinds for a bad file
        return f"cannot read it as a SoundFont ({type(e).__name__}: {e})"
    return None


def _pretty_midi(notes: Notes, qpm: float):
    with tempfile.TemporaryDirectory(prefix="jaxcomposer-audio-") as tmp:
        path = os.path.join(tmp, "audio.mid")
        midi_io.write_midi(path, notes, qpm=qpm)
        return pretty_midi.PrettyMIDI(path)


def synthesize(
    notes: Notes,
    *,
    qpm: float,
    sample_rate: int = 22050,
    use_fluidsynth: bool = True,
    use_soundfont: bool = True,
    soundfont: str | None = None,
) -> tuple[np.ndarray, str]:
    """(float32 mono waveform peaking at PEAK, synthesiser name). The length is exactly the last
    note's end plus TAIL_SECONDS, whichever synthesiser made it, but at most MAX_SECONDS: notes
    starting later are dropped and the rest cut there, with a warning. `soundfont`: an .sf2
    file (preset bank 0, program 0) for the first two synthesisers instead of pretty_midi's;
    one that cannot be read raises SoundFontError."""
    notes = _bounded(notes, qpm)
    end_seconds = float(notes.end.max(initial=0.0)) * 60.0 / qpm
    num_samples = int(round((end_seconds + TAIL_SECONDS) * sample_rate))
    problem = fluidsynth_problem() if use_fluidsynth else "not requested"
    own = soundfont_problem() if use_soundfont else "not requested"
    own_font = None
    if soundfont is not None and use_soundfont:
        own = soundfont_file_problem(soundfont)
        if own is not None:
            raise SoundFontError(f"soundfont {soundfont}: {own}")
        own_font = os.path.abspath(soundfont)
    if len(notes) == 0:
        first = SOUNDFONT if own is None else FLUIDSYNTH if problem is None else SINE
        return np.zeros(num_samples, np.float32), first
    waveform, used = None, FLUIDSYNTH
    if own is None:
        from jaxcomposer.render import soundfont

        waveform = soundfont.render(
            notes, seconds_per_beat=60.0 / qpm, sample_rate=sample_rate, num_samples=num_samples,
            path=own_font,
        )  # fmt: skip
        return _normalised(waveform, num_samples), SOUNDFONT
    pm = _pretty_midi(notes, qpm)
    if problem is None:
        try:
            fonts = {"sf2_path": own_font} if own_font else {}
            waveform = pm.fluidsynth(fs=sample_rate, normalize=False, **fonts)
        except (ImportError, OSError) as e:  # pretty_midi's ImportError may misname the cause
            problem = f"fluidsynth failed: {e}"
    if problem is not None:
        logging.getLogger(__name__).info("audio by the sine synthesiser: %s", problem)
        waveform, used = pm.synthesize(fs=sample_rate), SINE
    return _normalised(waveform, num_samples), used


def _bounded(notes: Notes, qpm: float) -> Notes:
    """Notes that fit in MAX_SECONDS - TAIL_SECONDS at `qpm` (later ones dropped, the others
    cut at that time); warns when anything was cut."""
    last_beat = (MAX_SECONDS - TAIL_SECONDS) * qpm / 60.0
    if float(notes.end.max(initial=0.0)) <= last_beat:
        return notes
    logging.getLogger(__name__).warning(
        "the audio is cut at %.0f s: the music lasts %.0f s at %g quarter notes per minute",
        MAX_SECONDS, float(notes.end.max()) * 60.0 / qpm, qpm,
    )  # fmt: skip
    kept = notes[notes.start < last_beat]
    return dataclasses.replace(kept, end=np.minimum(kept.end, last_beat))


def _normalised(waveform: np.ndarray, num_samples: int) -> np.ndarray:
    waveform = np.asarray(waveform, np.float64)[:num_samples]
    waveform = np.pad(waveform, (0, num_samples - waveform.size))
    peak = np.abs(waveform).max()
    if peak > 0:
        waveform *= PEAK / peak
    return waveform.astype(np.float32)


def write_wav(path: str, waveform: np.ndarray, sample_rate: int) -> None:
    """Mono 16-bit PCM WAV (stdlib `wave`), atomically."""
    pcm = np.clip(np.round(np.asarray(waveform) * 32767.0), -32768, 32767).astype("<i2")
    with atomic.atomic_path(path) as tmp:
        with wave.open(tmp, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(sample_rate)
            w.writeframes(pcm.tobytes())


def write_audio(
    path: str,
    notes: Notes,
    *,
    qpm: float,
    sample_rate: int = 22050,
    use_fluidsynth: bool = True,
    soundfont: str | None = None,
) -> str:
    """Writes the WAV; returns which synthesiser made it ("soundfont", "fluidsynth" or "sine").
    `soundfont`: an .sf2 file instead of pretty_midi's (`synthesize`)."""
    waveform, used = synthesize(
        notes, qpm=qpm, sample_rate=sample_rate, use_fluidsynth=use_fluidsynth,
        soundfont=soundfont,
    )  # fmt: skip
    write_wav(path, waveform, sample_rate)
    return used
