"""Notes -> a 16-bit PCM WAV: fluidsynth with pretty_midi's General MIDI soundfont when the
system libfluidsynth is installed, else pretty_midi's pure-numpy sine synthesiser."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import tempfile
import wave

import numpy as np
import pretty_midi

from jaxcomposer import atomic
from jaxcomposer.data import midi_io
from jaxcomposer.notes import Notes

TAIL_SECONDS = 1.0  # silence/release kept after the last note ends
PEAK = 0.9  # normalised peak amplitude: headroom against clipping in players
FLUIDSYNTH, SINE = "fluidsynth", "sine"


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


def _pretty_midi(notes: Notes, qpm: float):
    with tempfile.TemporaryDirectory(prefix="jaxcomposer-audio-") as tmp:
        path = os.path.join(tmp, "audio.mid")
        midi_io.write_midi(path, notes, qpm=qpm)
        return pretty_midi.PrettyMIDI(path)


def synthesize(
    notes: Notes, *, qpm: float, sample_rate: int = 22050, use_fluidsynth: bool = True
) -> tuple[np.ndarray, str]:
    """(float32 mono waveform peaking at PEAK, synthesiser name). The length is exactly the last
    note's end plus TAIL_SECONDS, whichever synthesiser made it."""
    end_seconds = float(notes.end.max(initial=0.0)) * 60.0 / qpm
    num_samples = int(round((end_seconds + TAIL_SECONDS) * sample_rate))
    problem = fluidsynth_problem() if use_fluidsynth else "not requested"
    if len(notes) == 0:
        return np.zeros(num_samples, np.float32), FLUIDSYNTH if problem is None else SINE
    pm = _pretty_midi(notes, qpm)
    waveform, used = None, FLUIDSYNTH
    if problem is None:
        try:
            waveform = pm.fluidsynth(fs=sample_rate, normalize=False)
        except (ImportError, OSError) as e:  # pretty_midi's ImportError may misname the cause
            problem = f"fluidsynth failed: {e}"
    if problem is not None:
        logging.getLogger(__name__).info("audio by the sine synthesiser: %s", problem)
        waveform, used = pm.synthesize(fs=sample_rate), SINE
    waveform = np.asarray(waveform, np.float64)[:num_samples]
    waveform = np.pad(waveform, (0, num_samples - waveform.size))
    peak = np.abs(waveform).max()
    if peak > 0:
        waveform *= PEAK / peak
    return waveform.astype(np.float32), used


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
    path: str, notes: Notes, *, qpm: float, sample_rate: int = 22050, use_fluidsynth: bool = True
) -> str:
    """Writes the WAV; returns which synthesiser made it ("fluidsynth" or "sine")."""
    waveform, used = synthesize(
        notes, qpm=qpm, sample_rate=sample_rate, use_fluidsynth=use_fluidsynth
    )
    write_wav(path, waveform, sample_rate)
    return used
