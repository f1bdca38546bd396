"""One sample's notes -> every file a person uses: MIDI, MusicXML, score SVG pages + PNG, WAV and
a piano-roll PNG. Each stage runs on its own: a failure is recorded and the others still run."""

from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, MultipleLocator

from jaxcomposer.core import atomic
from jaxcomposer.data import midi_io
from jaxcomposer.music.notes import KeySignature, Notes, TimeSignature
from jaxcomposer.render import audio, score
from jaxcomposer.tokenizers.geometry import bar_lines_of

estimate_key = score.estimate_key
write_musicxml = score.write_musicxml
render_score = score.render_score
write_audio = audio.write_audio

_RIGHT_COLOUR, _LEFT_COLOUR = "#1f5fa8", "#d9822b"
_BLACK_KEYS = {1, 3, 6, 8, 10}


def bar_lines(meters: Sequence[TimeSignature], end: float) -> np.ndarray:
    """float64 (B,): the beats of the bar lines in [0, end] under a meter map (`score.meter_map`:
    sorted, the first at beat 0); a change takes effect at the first bar line at or after it.
    The lines of tokenizers/geometry.bar_lines_of, cut at `end`."""
    lines = bar_lines_of(meters, end)
    return lines[lines <= end + 1e-9]


def plot_piano_roll(
    path: str,
    notes: Notes,
    *,
    title: str,
    bar_beats: float = 4.0,
    time_signatures: Sequence[TimeSignature] = (),
) -> None:
    """Pitch against beats, one bar per note (right hand blue, left hand orange, more opaque when
    louder), bar lines (every `bar_beats`, or as `time_signatures` cut the bars), C octaves
    labelled, black-key rows shaded; PNG, atomically."""
    end = max(float(notes.end.max(initial=0.0)), bar_beats)
    meters = score.meter_map((4, 4), time_signatures, end) if time_signatures else ()
    lines = bar_lines(meters, end) if meters else np.arange(0.0, end + 1e-9, bar_beats)
    low = int(notes.pitch.min(initial=60)) - 2
    high = int(notes.pitch.max(initial=72)) + 2
    if high - low < 14:  # show at least an octave around the notes
        low, high = (low + high) // 2 - 7, (low + high) // 2 + 7
    fig = Figure(figsize=(float(np.clip(6 + end / 8, 8, 16)), 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for p in range(low, high + 1):
        if p % 12 in _BLACK_KEYS:
            ax.axhspan(p - 0.5, p + 0.5, color="#f0f0f0", zorder=0, lw=0)
    for bar in lines:
        ax.axvline(bar, color="#b0b0b0", lw=0.8, zorder=1)
    if low < score.MIDDLE_C <= high:
        ax.axhline(score.MIDDLE_C - 0.5, color="#888888", lw=0.8, ls="--", zorder=1)
    pitch = notes.pitch.astype(np.float64)
    x0, x1, y0, y1 = notes.start, notes.end, pitch - 0.4, pitch + 0.4
    verts_Nx4x2 = np.stack([np.stack(c, -1) for c in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], 1)
    colours = np.where(
        (notes.pitch >= score.MIDDLE_C)[:, None], _rgb(_RIGHT_COLOUR), _rgb(_LEFT_COLOUR)
    )
    alpha = 0.45 + 0.55 * np.clip(notes.velocity, 1, 127)[:, None] / 127.0
    ax.add_collection(
        PolyCollection(
            verts_Nx4x2,
            facecolors=np.hstack([colours, alpha]),
            edgecolors="#222222",
            linewidths=0.4,
            zorder=2,
        )  # fmt: skip
    )
    c_pitches = [p for p in range(low, high + 1) if p % 12 == 0]
    ax.set_yticks(c_pitches, [f"C{p // 12 - 1}" for p in c_pitches])
    ax.set_xlim(0, end)
    ax.set_ylim(low - 0.5, high + 0.5)
    if len(meters) <= 1:
        bar_beats = meters[0].bar_beats if meters else bar_beats
        ax.set_xlabel(f"beats (quarter notes; grey lines = bars of {bar_beats:g} beats)")
    else:
        ax.set_xlabel("beats (quarter notes; grey lines = bar lines)")
    ax.set_ylabel("pitch")
    ax.set_title(title, loc="left")
    if len(notes) == 0:
        ax.text(0.5, 0.5, "no notes", transform=ax.transAxes, ha="center", va="center")
    handles = [Patch(color=_RIGHT_COLOUR, label="right hand (>= C4)")]
    handles.append(Patch(color=_LEFT_COLOUR, label="left hand (< C4)"))
    ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, fontsize=8)
    if len(meters) <= 1:
        bars_per_tick = max(1, int(np.ceil(end / bar_beats / 16)))  # at most ~16 labelled bars
        ax.xaxis.set_major_locator(MultipleLocator(bar_beats * bars_per_tick))
    else:
        ax.xaxis.set_major_locator(FixedLocator(lines[:: max(1, int(np.ceil(lines.size / 16)))]))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic.write_bytes(path, buffer.getvalue())


class _Skipped(RuntimeError):
    """A stage that cannot run because a stage it needs failed."""


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i : i + 2], 16) / 255.0 for i in (1, 3, 5)])


def _svg_pages_on_disk(svg_stem: str) -> list[str]:
    pages, number = [], 1
    while os.path.exists(f"{svg_stem}-{number}.svg"):
        pages.append(f"{svg_stem}-{number}.svg")
        number += 1
    return pages


def render_sample(
    out_dir: str,
    stem: str,
    notes: Notes,
    *,
    title: str,
    qpm: float = 100.0,
    time_signature: tuple[int, int] = (4, 4),
    sample_rate: int = 22050,
    time_signatures: Sequence[TimeSignature] = (),
    key_signatures: Sequence[KeySignature] = (),
    key_number: int | None = None,
    score_notes: Notes | None = None,
    score_qpm: float | None = None,
    guess_voices: bool = False,
    soundfont: str | None = None,
    skip: Sequence[str] = (),
    given: Notes | None = None,
) -> dict:
    """Writes stem.mid, stem.musicxml, stem-N.svg, stem.png, stem.wav, stem-roll.png in out_dir.

    Meter and key: `time_signature` and the estimated key hold from beat 0 until the first of
    `time_signatures` / `key_signatures` (e.g. `Decoded.time_signatures`); every change before
    the music ends reaches the MIDI, the MusicXML, the engraved score and the piano roll.

    Returns {stem, title, key, key_number, qpm, time_signature, time_signatures (every change as
    "n/d@beat"), key_signatures (as "name@beat"), midi, musicxml, svg (list),
    png, wav, roll (paths relative to out_dir; None when that stage failed), synthesizer,
    seconds (per stage), errors (stage -> message)}. Never raises for a failing stage: a batch
    job reports the error and goes on; the failed stage's old output (if any) is removed.
    `key_number` (pretty_midi numbering) sets the key signature; None = estimated from the notes.
    `score_notes` at `score_qpm` (a performance put on a beat grid) replace `notes` in the
    score only; the MIDI, audio and piano roll keep the notes as played. The score carries a
    tempo mark at its tempo (`score_qpm` or `qpm`). Four-part notes (`score.four_voices`:
    voices 0-3 known, or with `guess_voices` assigned to a four-part texture) give a MIDI
    track per voice (Soprano, Alto, Tenor, Bass) and a score with two voices per staff; other
    notes give two tracks (right and left hand, split at middle C) and a two-hand piano score.
    `soundfont`: the .sf2 file the audio is played from (default: pretty_midi's General-MIDI
    bank; `audio.write_audio`). `skip`: stages not run ("png", "roll"; their entries stay None
    and no error is recorded), for a caller that shows the SVG pages and draws its own roll.
    `given`: notes fixed in advance (--melody, --infill), coloured in the score
    (`score.mark_given`).
    """
    unknown = set(skip) - {"png", "roll"}
    if unknown:
        raise ValueError(f"render_sample: only the png and roll stages can be skipped: {unknown}")
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem)
    if key_number is None:  # no requested key: the notes' estimate
        key_number, _ = score.estimate_key(notes)
    end = float(notes.end.max(initial=0.0))
    meters = score.meter_map(time_signature, time_signatures, end)
    keys = score.key_map(key_number, key_signatures, end)
    key_number, key = keys[0].key_number, score.key_name(keys[0].key_number)
    numerator, denominator = meters[0].numerator, meters[0].denominator
    info: dict = dict(
        stem=stem, title=title, key=key, key_number=key_number, qpm=float(qpm),
        time_signature=f"{numerator}/{denominator}",
        time_signatures=[f"{t.numerator}/{t.denominator}@{t.beat:g}" for t in meters],
        key_signatures=[f"{score.key_name(k.key_number)}@{k.beat:g}" for k in keys],
        midi=None, musicxml=None, svg=[], png=None, wav=None, roll=None, synthesizer=None,
        seconds={}, errors={},
    )  # fmt: skip
    if score_notes is not None:
        info["score_qpm"] = float(score_qpm or qpm)

    def stage(name: str, outputs: list[str], fn: Callable[[], object]) -> object:
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as e:  # any stage failure is reported, not fatal
            skipped = isinstance(e, _Skipped)  # an earlier stage failed; its traceback was logged
            logging.getLogger(__name__).warning("%s: %s failed", base, name, exc_info=not skipped)
            info["errors"][name] = str(e) if skipped else f"{type(e).__name__}: {e}"
            for path in outputs:  # never leave an earlier run's file looking current
                if os.path.exists(path):
                    os.remove(path)
            result = None
        info["seconds"][name] = round(time.perf_counter() - started, 4)
        return result

    def write_mid() -> str:
        # Four-part music: a track per voice, as engraved.
        voiced = score.four_voices(notes, guess=guess_voices)
        tracks = (
            dict(voice_names=score.VOICE_NAMES) if voiced is not None
            else dict(split_hands_at=score.MIDDLE_C)
        )  # fmt: skip
        midi_io.write_midi(
            f"{base}.mid", notes if voiced is None else voiced, qpm=qpm, time_signatures=meters,
            key_signatures=keys, **tracks,
        )  # fmt: skip
        return f"{stem}.mid"

    def write_xml() -> str:
        engraved, engraved_qpm = notes, qpm
        if score_notes is not None:
            engraved, engraved_qpm = score_notes, score_qpm or qpm
        score.write_musicxml(
            f"{base}.musicxml", engraved, title=title, qpm=engraved_qpm,
            time_signature=(numerator, denominator), key_number=key_number,
            time_signatures=meters, key_signatures=keys, guess_voices=guess_voices,
            given=given if score_notes is None else None,
        )  # fmt: skip
        return f"{stem}.musicxml"

    def write_svgs() -> list[str]:
        if info["musicxml"] is None:
            raise _Skipped("skipped: no MusicXML to engrave (the musicxml stage failed)")
        with open(f"{base}.musicxml", encoding="utf-8") as f:
            svg_pages = score.engrave(f.read())
        info["svg"] = [os.path.basename(p) for p in score.write_svg_pages(svg_pages, base)]
        return svg_pages

    def write_png() -> str:
        if not pages:
            raise _Skipped("skipped: no SVG pages to rasterise (the svg stage failed)")
        score.write_png(pages, f"{base}.png")
        return f"{stem}.png"

    def write_roll() -> str:
        plot_piano_roll(
            f"{base}-roll.png", notes, title=title, bar_beats=meters[0].bar_beats,
            time_signatures=meters,
        )  # fmt: skip
        return f"{stem}-roll.png"

    info["midi"] = stage("midi", [f"{base}.mid"], write_mid)
    info["musicxml"] = stage("musicxml", [f"{base}.musicxml"], write_xml)
    pages = stage("svg", _svg_pages_on_disk(base), write_svgs) or []
    if "png" not in skip:
        info["png"] = stage("png", [f"{base}.png"], write_png)
    info["synthesizer"] = stage(
        "wav",
        [f"{base}.wav"],
        lambda: audio.write_audio(
            f"{base}.wav", notes, qpm=qpm, sample_rate=sample_rate, soundfont=soundfont
        ),
    )
    info["wav"] = f"{stem}.wav" if info["synthesizer"] else None
    if "roll" not in skip:
        info["roll"] = stage("roll", [f"{base}-roll.png"], write_roll)
    return info
