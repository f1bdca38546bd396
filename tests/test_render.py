"""Rendering: every file a person gets (MIDI, MusicXML, SVG, PNG, WAV, piano roll, index.html)
exists, parses and says what the notes say; key estimation on known keys."""

from __future__ import annotations

import html.parser
import os
import urllib.parse
import wave
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from jaxcomposer.music.notes import Notes, concat, make_notes
from jaxcomposer.render import audio, gallery, outputs, score

QPM = 120.0
MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11, 12)


def scale_piece(tonic: int = 62) -> Notes:
    """A rising major scale in eighths (right hand) over tonic/subdominant/dominant triads
    (left hand) in 3/4: 4 bars, with notes on both sides of middle C."""
    melody = make_notes([tonic + s for s in MAJOR_STEPS], np.arange(8) * 0.5, np.arange(1, 9) * 0.5)
    chords = []
    for bar, root in enumerate((tonic - 12, tonic - 7, tonic - 5, tonic - 12)):
        pitches = [root, root + 4, root + 7]
        chords.append(make_notes(pitches, [3.0 * bar] * 3, [3.0 * bar + 3.0] * 3))
    tail = make_notes([tonic + 12, tonic + 4], [4.0, 9.0], [6.0, 12.0])
    return concat([melody, *chords, tail]).sorted()


def random_piece(n: int = 200, seed: int = 0) -> Notes:
    rng = np.random.default_rng(seed)
    start = np.sort(rng.integers(0, n // 2, n)) * 0.25
    duration = rng.choice([0.25, 0.5, 1.0, 1.5, 2.0], n)
    return make_notes(rng.integers(36, 85, n), start, start + duration, rng.integers(30, 120, n))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("samples"))
    scale = scale_piece()
    infos = {
        "scale": outputs.render_sample(
            out_dir, "scale", scale, title='Scale <in D> & "co"', qpm=QPM, time_signature=(3, 4)
        ),
        "random": outputs.render_sample(out_dir, "random", random_piece(), title="Random", qpm=QPM),
    }
    return out_dir, {"scale": scale, "random": random_piece()}, infos


# --- key estimation ---------------------------------------------------------------------------


def _scale_and_triad(tonic: int, minor: bool) -> Notes:
    steps = (0, 2, 3, 5, 7, 8, 11, 12) if minor else MAJOR_STEPS  # harmonic minor
    scale_notes = make_notes([60 + tonic + s for s in steps], np.arange(8), np.arange(1, 9))
    triad = [48 + tonic, 48 + tonic + (3 if minor else 4), 48 + tonic + 7]
    return concat([scale_notes, make_notes(triad, [0.0] * 3, [8.0] * 3)])


@pytest.mark.parametrize(
    "tonic, minor, expected",
    [(0, False, (0, "C major")), (7, False, (7, "G major")), (3, False, (3, "Eb major")),
     (9, True, (21, "A minor")), (2, True, (14, "D minor")), (6, True, (18, "F# minor"))],
)  # fmt: skip
def test_estimate_key_known_keys(tonic, minor, expected):
    assert score.estimate_key(_scale_and_triad(tonic, minor)) == expected


def test_estimate_key_is_transposition_equivariant():
    for minor in (False, True):
        base = _scale_and_triad(0, minor)
        for shift in range(12):
            shifted = make_notes(base.pitch + shift, base.start, base.end)
            number, _ = score.estimate_key(shifted)
            assert number == shift + (12 if minor else 0)


@pytest.mark.parametrize(
    "profile, solver", [("krumhansl_kessler", "KrumhanslKessler"), ("aarden_essen", "AardenEssen")]
)
def test_key_correlations_match_music21(profile, solver):
    from music21 import analysis, note, stream

    from jaxcomposer.music import keys

    rng = np.random.default_rng(3)
    for _ in range(8):
        pcs = (rng.integers(12) + np.array([0, 2, 4, 5, 7, 9, 11])) % 12
        pitch = 48 + rng.choice(pcs, 30) + 12 * rng.integers(0, 3, 30)
        start, duration = np.arange(30) * 0.5, rng.choice([0.25, 0.5, 1.0, 2.0], 30)
        s = stream.Stream()
        for p, a, d in zip(pitch, start, duration, strict=True):
            s.insert(float(a), note.Note(int(p), quarterLength=float(d)))
        k = getattr(analysis.discrete, solver)(s).getSolution(s)
        expected = k.tonic.pitchClass + (12 if k.mode == "minor" else 0)
        weights = keys.pitch_class_weights(make_notes(pitch, start, start + duration))
        assert int(np.argmax(keys.key_correlations(weights, profile))) == expected


def test_estimate_key_opening_bass_decides_between_relative_keys():
    # The white keys, each one beat: the profiles alone cannot tell C major from A minor well;
    # the first onset's lowest note (the bass) tips it.
    white = [60, 62, 64, 65, 67, 69, 71]
    for bass, expected in ((45, 21), (48, 0)):
        pitch = [bass, *white]
        start = np.array([0.0, *range(len(white))])
        assert score.estimate_key(make_notes(pitch, start, start + 1.0))[0] == expected


def test_estimate_key_without_notes_and_key_names():
    assert score.estimate_key(Notes.empty()) == (0, "C major")
    names = [score.key_name(k) for k in range(24)]
    assert len(set(names)) == 24 and names[10] == "Bb major" and names[22] == "Bb minor"
    for k in range(24):  # every key becomes a music21 key with that tonic and mode
        m21 = score._music21_key(k)
        assert (m21.tonic.pitchClass, m21.mode) == (k % 12, "minor" if k >= 12 else "major")
        assert abs(m21.sharps) <= 6
    with pytest.raises(ValueError, match="key number"):
        score.key_name(24)


# --- files of one sample ----------------------------------------------------------------------


def test_render_sample_reports_every_file(rendered):
    out_dir, _, infos = rendered
    for info in infos.values():
        assert info["errors"] == {}
        files = [info[k] for k in ("midi", "musicxml", "png", "wav", "roll")] + info["svg"]
        assert info["svg"] and all(os.path.getsize(os.path.join(out_dir, f)) > 0 for f in files)
        assert set(info["seconds"]) == {"midi", "musicxml", "svg", "png", "wav", "roll"}
    assert infos["scale"]["key"] == "D major" and infos["scale"]["time_signature"] == "3/4"


def test_midi_has_both_hands_and_every_note(rendered):
    import pretty_midi

    out_dir, pieces, infos = rendered
    for name, notes in pieces.items():
        pm = pretty_midi.PrettyMIDI(os.path.join(out_dir, infos[name]["midi"]))
        right, left = pm.instruments
        assert all(n.pitch >= 60 for n in right.notes) and all(n.pitch < 60 for n in left.notes)
        got = sorted((n.pitch, round(n.start * QPM / 60, 3)) for n in right.notes + left.notes)
        assert got == sorted(
            zip(notes.pitch.tolist(), np.round(notes.start, 3).tolist(), strict=True)
        )


def _sounding_notes(part) -> list[tuple[int, float]]:
    """(midi pitch, offset in quarters) per attack; tie continuations are not attacks."""
    out = []
    for n in part.recurse().notes:
        for p in n.pitches:
            if n.tie is None or n.tie.type == "start":
                out.append((int(p.midi), float(n.getOffsetInHierarchy(part))))
    return sorted(out)


def test_musicxml_is_a_grand_staff_with_title_key_and_all_notes(rendered):
    from music21 import clef, converter, key, meter

    out_dir, pieces, infos = rendered
    path = os.path.join(out_dir, infos["scale"]["musicxml"])
    assert ET.parse(path).getroot().findtext("work/work-title") == 'Scale <in D> & "co"'
    parsed = converter.parse(path)
    assert parsed.metadata.bestTitle == 'Scale <in D> & "co"'
    assert parsed.metadata.composer == "jaxcomposer"
    right, left = parsed.parts
    for part, clef_class in ((right, clef.TrebleClef), (left, clef.BassClef)):
        assert isinstance(part.recurse().getElementsByClass(clef.Clef).first(), clef_class)
        assert part.recurse().getElementsByClass(key.KeySignature).first().sharps == 2
        assert part.recurse().getElementsByClass(meter.TimeSignature).first().ratioString == "3/4"
    notes = pieces["scale"]
    expected = sorted(zip(notes.pitch.tolist(), notes.start.tolist(), strict=True))
    assert sorted(_sounding_notes(right) + _sounding_notes(left)) == expected
    # In D major, F#/C# come from the key signature: no accidental is printed on them.
    printed = [p for n in right.recurse().notes for p in n.pitches if p.accidental is not None]
    assert printed and not any(p.accidental.displayStatus for p in printed)
    assert len(converter.parse(os.path.join(out_dir, infos["random"]["musicxml"])).parts) == 2


def test_accidentals_follow_the_key_signature(tmp_path):
    # D major, one bar: C5 needs a natural, the C#5 after it a sharp again, F#5 nothing; Bb4 is
    # spelled with a flat (not A#) and the repeated Bb4 in the same bar shows no accidental.
    notes = make_notes(
        [72, 73, 78, 70, 70, 50, 54, 57], [0, 1, 2, 3, 3.5, 0, 0, 0], [1, 2, 3, 3.5, 4, 4, 4, 4]
    )
    path = str(tmp_path / "acc.musicxml")
    score.write_musicxml(path, notes, title="acc", key_number=2)
    right = ET.parse(path).getroot().findall("part")[0]
    got = [
        (n.findtext("pitch/step"), int(n.findtext("pitch/alter") or 0), n.findtext("accidental"))
        for n in right.iter("note")
        if n.find("pitch") is not None and n.find("chord") is None
    ]
    assert got[:5] == [
        ("C", 0, "natural"), ("C", 1, "sharp"), ("F", 1, None), ("B", -1, "flat"), ("B", -1, None),
    ]  # fmt: skip


def test_score_notes_are_playable_and_one_voice_per_hand():
    notes = make_notes(
        pitch=[60, 60, 64, 64, 67, 48, 52, 55],
        start=[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 2.0],
        end=[1.0, 2.0, 3.0, 2.0, 1.0, 4.0, 1.0, 3.0],
        is_drum=[False] * 7 + [True],
    )
    playable = score.playable_notes(notes)  # duplicate C4 (longest kept), E4 cut when restruck
    assert playable.as_tuples() == [
        (48, 0.0, 4.0, 80), (52, 0.0, 1.0, 80), (60, 0.0, 2.0, 80), (64, 0.0, 1.0, 80),
        (67, 0.0, 1.0, 80), (64, 1.0, 2.0, 80),
    ]  # fmt: skip
    chords = score.chords_per_hand(playable)  # right: {60,64,67} end at 1 (next onset); left: 4
    assert chords.as_tuples() == [
        (48, 0.0, 4.0, 80), (52, 0.0, 4.0, 80), (60, 0.0, 1.0, 80), (64, 0.0, 1.0, 80),
        (67, 0.0, 1.0, 80), (64, 1.0, 2.0, 80),
    ]  # fmt: skip


def test_one_handed_and_empty_music_still_gets_a_grand_staff(tmp_path):
    from music21 import converter

    for name, notes in (
        ("right_only", make_notes([72, 76], [0, 1], [1, 2])),
        ("empty", Notes.empty()),
    ):
        path = str(tmp_path / f"{name}.musicxml")
        score.write_musicxml(path, notes, title=name)
        assert len(converter.parse(path).parts) == 2


def test_svg_pages_parse_and_stale_pages_are_removed(rendered, tmp_path):
    out_dir, _, infos = rendered
    for info in infos.values():
        assert info["svg"] == [f"{info['stem']}-{i}.svg" for i in range(1, len(info["svg"]) + 1)]
        for page in info["svg"]:
            assert ET.parse(os.path.join(out_dir, page)).getroot().tag.endswith("svg")
    page = '<svg xmlns="http://www.w3.org/2000/svg" width="100px" height="50px"></svg>'
    stem = str(tmp_path / "s")
    score.write_svg_pages([page] * 3, stem)
    assert score.write_svg_pages([page], stem) == [f"{stem}-1.svg"]
    assert not os.path.exists(f"{stem}-2.svg") and not os.path.exists(f"{stem}-3.svg")
    stacked = ET.fromstring(score.stack_pages([page, page.replace("50px", "70px")]))
    assert stacked.get("height") == "120.0px" and len(stacked) == 2


def _image(path: str) -> np.ndarray:
    from matplotlib import image

    return image.imread(path)[..., :3]


def test_png_score_and_piano_roll_are_not_blank(rendered):
    out_dir, _, infos = rendered
    for info in infos.values():
        for key in ("png", "roll"):
            pixels = _image(os.path.join(out_dir, info[key]))
            assert pixels.std() > 0.05 and (pixels < 0.5).mean() > 0.005, (info["stem"], key)
    score_png = _image(os.path.join(out_dir, infos["scale"]["png"]))
    assert score_png.shape[1] >= 1000  # readable width
    assert np.all(score_png[:5, :5] == 1.0)  # white page, not transparent black


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    with wave.open(path, "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(
            np.float64
        ), w.getframerate()


def test_wav_duration_and_content(rendered):
    out_dir, pieces, infos = rendered
    for name, notes in pieces.items():
        samples, rate = _read_wav(os.path.join(out_dir, infos[name]["wav"]))
        music_seconds = notes.end.max() * 60.0 / QPM
        assert abs(samples.size / rate - (music_seconds + audio.TAIL_SECONDS)) < 60.0 / QPM
        assert np.abs(samples).max() > 10000
        playing = samples[: int(music_seconds * rate)]
        tail = samples[int((music_seconds + 0.2) * rate) :]
        assert np.sqrt(np.mean(playing**2)) > 3 * np.sqrt(np.mean(tail**2))


def test_wav_plays_the_right_pitch(tmp_path):
    path = str(tmp_path / "a4.wav")
    audio.write_audio(path, make_notes([69], [0.0], [4.0]), qpm=QPM, sample_rate=16000)
    samples, rate = _read_wav(path)
    spectrum = np.abs(np.fft.rfft(samples[: 2 * rate]))
    assert abs(np.fft.rfftfreq(2 * rate, 1 / rate)[spectrum.argmax()] - 440.0) < 2.0


@pytest.mark.parametrize("pitch", [45, 69, 81, 93])
def test_soundfont_piano_is_in_tune(pitch):
    """The SF2 player's spectral peak is the note's fundamental (A2 to A6); symusic 0.5.9 put A4
    at 1649 Hz with the same SoundFont."""
    from jaxcomposer.render import soundfont

    rate = 22050
    wave_ = soundfont.render(
        make_notes([pitch], [0.0], [2.0], velocity=[90]), seconds_per_beat=0.5,
        sample_rate=rate, num_samples=rate,
    )  # fmt: skip
    spectrum = np.abs(np.fft.rfft(wave_ * np.hanning(rate)))
    peak = np.fft.rfftfreq(rate, 1 / rate)[spectrum.argmax()]
    assert peak == pytest.approx(440.0 * 2 ** ((pitch - 69) / 12), rel=0.005)


@pytest.mark.parametrize("soundfont", [True, False])
def test_wav_plays_the_velocities(tmp_path, monkeypatch, soundfont):
    """A soft then a loud A4 in one file (normalisation keeps their ratio): the loud one has more
    energy, and both at 440 Hz; by the SoundFont player and by the fallback."""
    if not soundfont:
        monkeypatch.setattr(audio, "soundfont_problem", lambda: "test: the fallback")
    path = str(tmp_path / "dynamics.wav")
    notes = make_notes([69, 69], [0.0, 4.0], [3.0, 7.0], velocity=[40, 110])
    used = audio.write_audio(path, notes, qpm=QPM, sample_rate=16000)
    assert (used == audio.SOUNDFONT) == soundfont
    samples, rate = _read_wav(path)
    beat = int(rate * 60.0 / QPM)
    soft, loud = samples[: 2 * beat], samples[4 * beat : 6 * beat]
    assert np.sqrt(np.mean(loud**2)) > 1.5 * np.sqrt(np.mean(soft**2))
    for part in (soft, loud):
        spectrum = np.abs(np.fft.rfft(part))
        assert abs(np.fft.rfftfreq(part.size, 1 / rate)[spectrum.argmax()] - 440.0) < 2.0


def test_fallback_synth_is_used_and_reported(rendered, tmp_path, monkeypatch):
    import pretty_midi.fluidsynth

    _, _, infos = rendered
    # fluidsynth is usable exactly when pretty_midi could import pyfluidsynth (and its library).
    assert (audio.fluidsynth_problem() is None) == pretty_midi.fluidsynth._HAS_FLUIDSYNTH
    assert audio.soundfont_problem() is None  # sf2utils is a dependency: piano from wheels
    assert {info["synthesizer"] for info in infos.values()} == {audio.SOUNDFONT}
    notes = make_notes([60, 64], [0.0, 1.0], [1.0, 2.0])
    monkeypatch.setattr(audio, "soundfont_problem", lambda: "test: no sf2utils here")
    expected = audio.SINE if audio.fluidsynth_problem() else audio.FLUIDSYNTH
    assert audio.write_audio(str(tmp_path / "c.wav"), notes, qpm=QPM) == expected
    monkeypatch.setattr(audio, "fluidsynth_problem", lambda: "test: no fluidsynth here")
    assert audio.write_audio(str(tmp_path / "a.wav"), notes, qpm=QPM) == audio.SINE

    def misleading(*args, **kwargs):
        raise ImportError("fluidsynth() was called but pyfluidsynth is not installed.")

    monkeypatch.setattr(audio, "fluidsynth_problem", lambda: None)
    monkeypatch.setattr(pretty_midi.PrettyMIDI, "fluidsynth", misleading)
    assert audio.write_audio(str(tmp_path / "b.wav"), notes, qpm=QPM) == audio.SINE
    assert _read_wav(str(tmp_path / "b.wav"))[0].any()


def test_failing_stage_is_recorded_and_the_rest_still_written(tmp_path, monkeypatch):
    out_dir = str(tmp_path)
    for stale in ("x.png", "x-1.svg", "x-2.svg"):  # an earlier run's score must not look current
        (tmp_path / stale).write_text("old")

    def broken(*args, **kwargs):
        raise ValueError("music21 choked")

    monkeypatch.setattr(score, "build_score", broken)
    info = outputs.render_sample(out_dir, "x", scale_piece(), title="x", qpm=QPM)
    assert info["errors"]["musicxml"] == "ValueError: music21 choked"
    assert set(info["errors"]) == {"musicxml", "svg", "png"}
    assert info["errors"]["png"].startswith("skipped")
    assert (info["musicxml"], info["svg"], info["png"]) == (None, [], None)
    assert sorted(os.listdir(out_dir)) == ["x-roll.png", "x.mid", "x.wav"]
    page = gallery_page(out_dir, [info])
    assert "music21 choked" in page and "x.png" not in page


# --- gallery ----------------------------------------------------------------------------------


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def gallery_page(out_dir: str, samples: list[dict], settings: dict | None = None) -> str:
    path = gallery.write_gallery(out_dir, samples, title="T", settings=settings or {})
    with open(path, encoding="utf-8") as f:
        return f.read()


def test_gallery_is_offline_complete_and_escaped(rendered):
    out_dir, _, infos = rendered
    samples = [dict(info, name=name, notes=7) for name, info in infos.items()]
    settings = {"decoder": "top_p", "seed": 3, "note": "<script>alert('x')</script>"}
    path = gallery.write_gallery(out_dir, samples, title="Samples <b>&</b>", settings=settings)
    with open(path, encoding="utf-8") as f:
        page = f.read()
    links = _Links()
    links.feed(page)
    assert "script" not in links.tags and "link" not in links.tags
    files = {urllib.parse.unquote(u) for u in links.urls if not u.startswith("#")}
    for url in files:
        assert "//" not in url and ":" not in url, url  # relative, nothing fetched from outside
        assert os.path.isfile(os.path.join(out_dir, url)), url
    for info in infos.values():
        wanted = {info[k] for k in ("midi", "musicxml", "png", "wav", "roll")} | set(info["svg"])
        assert wanted <= files
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "Samples &lt;b&gt;&amp;&lt;/b&gt;" in page
    assert "Scale &lt;in D&gt; &amp; &quot;co&quot;" in page
    assert "top_p" in page and "D major" in page and "<audio controls" in page


def test_gallery_music_before_settings_and_relative_paths(tmp_path):
    """Players load their length (preload=metadata), the settings come after the music and an
    absolute workdir is shown relative to the gallery's folder."""
    out_dir = tmp_path / "run" / "samples"
    out_dir.mkdir(parents=True)
    (out_dir / "s.wav").write_bytes(b"RIFF")
    settings = {"workdir": str(tmp_path / "run"), "seed": 1}
    page = gallery_page(str(out_dir), [{"name": "s", "wav": "s.wav"}], settings)
    assert 'preload="metadata"' in page and 'preload="none"' not in page
    assert page.index("<audio") < page.index("Settings")
    assert str(tmp_path) not in page and "<td>..</td>" in page


def test_gallery_names_each_sample_once(tmp_path):
    """The heading and the contents show the title; the stem is not a third name."""
    sample = {"name": "sample_00", "stem": "sample_00", "title": "Sample <1>"}
    page = gallery_page(str(tmp_path), [sample])
    assert page.count("Sample &lt;1&gt;") == 2 and "sample_00<" not in page
