"""Read what the common readers read, and count every note or event
that does not reach the tokens (per file and in total in the manifest)."""

from __future__ import annotations

import struct

import midi_factory as mf
import mido
import numpy as np
import pytest

from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.data import dataset, midi_io
from jaxcomposer.music.notes import Piece, make_notes
from jaxcomposer.tokenizers import get_tokenizer

TPB = 480
C4, E4, G4 = 60, 64, 67


def smf_bytes(*tracks: bytes, tpb: int = TPB) -> bytes:
    """A format-1 file holding the given track bodies (event bytes, end-of-track included)."""
    header = b"MThd" + struct.pack(">IHHH", 6, 1, len(tracks), tpb)
    return header + b"".join(b"MTrk" + struct.pack(">I", len(t)) + t for t in tracks)


def varlen(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


END = b"\x00\xff\x2f\x00"


def track(*events: tuple[int, bytes]) -> bytes:
    """(delta ticks, event bytes) pairs -> a track body ending with end-of-track."""
    return b"".join(varlen(d) + e for d, e in events) + END


def config(tmp_path, midi_dir=None, **tokenizer):
    base = config_lib.freeze(tiny.get_config())
    data = {"cache_dir": str(tmp_path / "cache"), "num_workers": 1, "max_pieces": 0}
    if midi_dir is not None:
        data["midi_dir"] = str(midi_dir)
    return config_lib.replace(base, data=data, tokenizer=tokenizer)


# --- system real-time and common messages between events --------------------------------------

# A clock-driven sequencer's dump: 0xF8 clocks and 0xFE active sensing between the notes (each
# with its own delta time, as mido reads them), a song-position pointer, a song select, a MIDI
# time code quarter frame and a tune request.
REALTIME_TRACK = track(
    (0, b"\xf8"),
    (0, b"\x90" + bytes([C4, 90])),
    (0, b"\xfe"),
    (TPB, b"\xf8"),
    (0, b"\x80" + bytes([C4, 0])),
    (0, b"\xf2\x10\x02"),
    (0, b"\x90" + bytes([E4, 70])),
    (TPB // 2, b"\xf1\x21"),
    (TPB // 2, b"\x90" + bytes([E4, 0])),
    (0, b"\xf3\x05"),
    (0, b"\xf6"),
    (0, b"\x90" + bytes([G4, 60])),
    (2 * TPB, b"\xfe"),
    (0, b"\x80" + bytes([G4, 0])),
)


def test_realtime_and_system_common_messages_read_as_mido_and_pretty_midi_do(tmp_path):
    path = tmp_path / "clocked.mid"
    path.write_bytes(smf_bytes(track(), REALTIME_TRACK))
    assert sum(1 for m in mido.MidiFile(path).tracks[1] if m.type == "clock") == 2  # reference
    piece, stats = midi_io.read_midi(str(path), config(tmp_path).data)
    ours = [(int(p), s, e, int(v)) for p, s, e, v in piece.notes.as_tuples()]
    assert ours == mf.pretty_midi_beats(path)
    assert ours == [(C4, 0.0, 1.0, 90), (E4, 1.0, 2.0, 70), (G4, 2.0, 4.0, 60)]
    assert stats["ignored_realtime_messages"] == 4
    assert stats["ignored_system_common_messages"] == 4


def test_realtime_bytes_keep_running_status_and_undefined_common_bytes_are_corrupt(tmp_path):
    # MIDI 1.0: real-time bytes leave running status alone (mido trips over this one).
    running = track((0, bytes([0x90, C4, 80])), (0, b"\xf8"), (TPB, bytes([C4, 0])))
    piece, _ = midi_io.read_midi_bytes(
        smf_bytes(running), config(tmp_path).data, path="run.mid", name="run.mid"
    )
    assert piece.notes.as_tuples() == [(C4, 0.0, 1.0, 80)]
    # System common messages cancel it: a data byte after one has no status.
    cancelled = track((0, bytes([0x90, C4, 80])), (0, b"\xf6"), (TPB, bytes([C4, 0])))
    with pytest.raises(midi_io.MidiReadError, match="without a status byte"):
        midi_io.read_midi_bytes(
            smf_bytes(cancelled), config(tmp_path).data, path="c.mid", name="c.mid"
        )
    undefined = track((0, bytes([0x90, C4, 80])), (0, b"\xf4"), (TPB, bytes([0x80, C4, 0])))
    with pytest.raises(midi_io.MidiReadError, match=r"u.mid: corrupt track 0: undefined .*0xF4"):
        midi_io.read_midi_bytes(
            smf_bytes(undefined), config(tmp_path).data, path="u.mid", name="u.mid"
        )


def test_ignored_events_are_counted_per_file_and_in_total(tmp_path):
    root = tmp_path / "midi"
    root.mkdir()
    (root / "clocked.mid").write_bytes(smf_bytes(track(), REALTIME_TRACK))
    padded = REALTIME_TRACK + b"\x00\x00\x00"  # junk after the end-of-track event
    (root / "padded.mid").write_bytes(smf_bytes(padded))
    # An unknown chunk before the track and bytes after the last declared track are skipped.
    head, body = smf_bytes(REALTIME_TRACK)[:14], smf_bytes(REALTIME_TRACK)[14:]
    (root / "extra.mid").write_bytes(head + b"XFIL\x00\x00\x00\x02ab" + body + b"MTrk\x00")
    mf.simple_file(root / "plain.mid", [(C4, 0, 1), (E4, 1, 2)])
    manifest = dataset.prepare(config(tmp_path, root), str(tmp_path / "w"), progress=False)
    files = {f["name"]: f for f in manifest["files"]}
    assert manifest["skipped"] == []
    assert files["padded.mid"]["ignored_bytes_after_end_of_track"] == 3
    assert files["plain.mid"]["ignored_realtime_messages"] == 0
    assert files["extra.mid"]["ignored_unknown_chunks"] == 1
    assert files["extra.mid"]["ignored_bytes_after_last_track"] == 5
    assert manifest["totals"]["ignored"] == {
        "ignored_realtime_messages": 12,
        "ignored_system_common_messages": 12,
        "ignored_bytes_after_end_of_track": 3,
        "ignored_unknown_chunks": 1,
        "ignored_bytes_after_last_track": 5,
    }
    assert "ignored: 12 ignored realtime messages" in dataset.summarize(manifest)


# --- notes the tokens cannot hold -----------------------------------------------------------


def triplet_file(path) -> str:
    """Two beats of sixteenth-note triplets on C4 (12 notes) over a held G3 and an E4 held for
    three bars: at 4 steps per beat, triplets 2 and 3 of each half beat share one grid step."""
    spec = [(C4, k / 6, (k + 1) / 6) for k in range(12)]
    spec += [(55, 0.0, 2.0), (E4, 0.0, 12.0)]
    return mf.simple_file(path, spec)


@pytest.mark.parametrize(
    ("tokenizer", "lost", "shortened"),
    [
        # 12 triplets land on steps 0,1,1,2,3,3,4,5,5,6,7,7: 4 repeat a step. E4 lasts 48 steps.
        ({"name": "event", "max_duration_steps": 32}, {"merged_on_grid_notes": 4}, 1),
        ({"name": "frame", "mark_onsets": True}, {"merged_on_grid_notes": 4}, 0),
        # Without onset marks the 12 touching triplets are one long C4.
        ({"name": "frame", "mark_onsets": False}, {"merged_in_roll_notes": 11}, 0),
    ],
)
def test_prepare_counts_the_notes_merged_on_the_grid(tmp_path, tokenizer, lost, shortened):
    root = tmp_path / "midi"
    root.mkdir()
    triplet_file(root / "triplets.mid")
    cfg = config(tmp_path, root, steps_per_beat=4, **tokenizer)
    manifest = dataset.prepare(cfg, str(tmp_path / "w"), progress=False)
    (entry,) = manifest["files"]
    dropped = sum(lost.values())
    assert entry["notes"] == 14 - dropped  # what the comment says: the notes the tokens hold
    assert {k: entry[k] for k in lost} == lost
    assert manifest["totals"]["dropped"] == lost
    assert manifest["totals"]["notes"] == 14 - dropped
    assert manifest["totals"]["shortened"] == (
        {"duration_capped_notes": shortened} if shortened else {}
    )
    # The tokens really hold that many notes: decode them back.
    tok = get_tokenizer(cfg.tokenizer)
    split = dataset.load_split(str(tmp_path / "w"), entry["split"])
    assert len(tok.decode(split.piece(0)).notes) == entry["notes"]


def test_chord_counts_pitch_class_merges_and_caps():
    tok = get_tokenizer(
        config_lib.replace(
            config_lib.freeze(tiny.get_config()),
            tokenizer={"name": "chord", "chord_durations": True, "max_duration_steps": 4},
        ).tokenizer
    )
    # Onset 0: C3 C4 C4 E4 G4 C5: classes {C, E, G}; onset 1: D4 alone, 3 beats long.
    notes = make_notes([48, 60, 60, 64, 67, 72, 62], [0, 0, 0, 0, 0, 0, 1], [1, 1, 0.5, 1, 1, 1, 4])
    tokens, losses = tok.encode_counted(Piece("c.mid", notes))
    assert losses == {
        "merged_on_grid_notes": 1,  # the second C4
        "merged_pitch_class_notes": 2,  # C3 and C5 into the class C
        "duration_capped_notes": 1,  # D4: 12 steps > 4
    }
    assert tokens.size == 4  # two groups, each with a DURATION


@pytest.mark.parametrize("name", ["event", "frame", "performance"])
def test_counts_agree_with_quantize_on_random_pieces(name):
    """`quantize` (what the tokens represent, computed independently of encode) holds exactly the
    notes read minus those counted lost."""
    for mark_onsets in (True, False):
        tok = get_tokenizer(
            config_lib.replace(
                config_lib.freeze(tiny.get_config()),
                tokenizer={"name": name, "mark_onsets": mark_onsets, "steps_per_beat": 2},
            ).tokenizer
        )
        rng = np.random.default_rng(3)
        for _ in range(20):
            n = int(rng.integers(1, 60))
            start = rng.integers(0, 40, n) / 3.0
            notes = make_notes(rng.integers(60, 66, n), start, start + rng.integers(1, 9, n) / 3.0)
            _, losses = tok.encode_counted(Piece("r", notes))
            lost = sum(v for k, v in losses.items() if k.startswith("merged"))
            assert len(tok.quantize(Piece("r", notes))) == n - lost
