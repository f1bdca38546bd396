"""The MIDI fuzzer in CI: a few hundred mutants of small files written here, with a fixed seed,
through the reader and every tokenizer; and the mutants kept in tests/data/fuzz/ (each once made
the reader fail)."""

from __future__ import annotations

import importlib.util
import pathlib
import struct
import sys

import midi_factory as mf
import mido
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
REGRESSIONS = sorted((ROOT / "tests" / "data" / "fuzz").glob("*.mid"))


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("fuzz_midi", ROOT / "launch" / "fuzz_midi.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_midi"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checker(fuzz):
    return fuzz.Checker.build()


def seed_corpus(folder: pathlib.Path) -> list[tuple[str, bytes]]:
    """Small files with what real ones hold: tempo, meter and key metas, programs, several
    tracks and channels, drums, chords, sustained and repeated notes, a sysex."""
    meta = [
        mf.tempo(0, 90),
        (0, mido.MetaMessage("time_signature", numerator=3, denominator=4)),
        (0, mido.MetaMessage("key_signature", key="D")),
        (960, mido.MetaMessage("time_signature", numerator=6, denominator=8)),
        (0, mido.Message("sysex", data=[0x7E, 0x7F, 0x09, 0x01])),
    ]
    files = {
        "melody.mid": [[mf.tempo(0, 120), *mf.notes(mf.melody(1))]],
        "tracks.mid": [
            meta,
            [mf.program(0, 0), *mf.notes(mf.melody(2, length=40))],
            [mf.program(0, 33, 1), *mf.notes(mf.melody(3), channel=1)],
            mf.notes([(36, 0, 0.5), (38, 1, 1.5), (42, 0, 0.25)], channel=9),
        ],
        "chords.mid": [
            [*mf.notes([(p, b, b + 2) for b in range(0, 16, 2) for p in (48, 60, 64, 67)])]
        ],
        "repeats.mid": [[*mf.notes([(60, k / 6, (k + 1) / 6) for k in range(24)] + [(72, 0, 30)])]],
    }
    seeds = []
    for name, tracks in files.items():
        path = mf.write_midi_file(folder / name, tracks)
        seeds.append((name, pathlib.Path(path).read_bytes()))
    return seeds


def test_a_few_hundred_mutants_are_read_or_skipped_with_a_reason(tmp_path, fuzz, checker):
    seeds = seed_corpus(tmp_path)
    results = [r for _, r in fuzz.run_serial(checker, seeds, seed=13, count=300, time_limit=20.0)]
    failures = [r for r in results if r["outcome"] in ("crash", "hang")]
    assert failures == []
    outcomes = {r["outcome"] for r in results}
    assert outcomes == {"read", "skipped"}  # the mutants reach both the reader and the tokens
    assert all(r["reason"] for r in results if r["outcome"] == "skipped")
    read = [r for r in results if r["outcome"] == "read"]
    assert all(set(r["encoded"]) == set(fuzz.TOKENIZERS) for r in read)


def test_mutants_are_deterministic_and_mutations_keep_chunk_lengths_consistent(tmp_path, fuzz):
    seeds = seed_corpus(tmp_path)
    assert fuzz.mutant(seeds, 5, 17) == fuzz.mutant(seeds, 5, 17)
    import random

    raw = bytearray(seeds[1][1])
    grown = fuzz.random_events(bytearray(raw), random.Random(0))
    spans = fuzz.chunk_spans(bytes(grown))
    assert spans[-1][1] == len(grown)  # every declared length still lands on the next chunk
    for start, _ in spans:
        assert grown[start : start + 4] == b"MTrk"
    assert struct.unpack(">H", grown[10:12])[0] == len(spans)


@pytest.mark.skipif(not REGRESSIONS, reason="no regression files")
@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: p.name)
def test_kept_fuzz_mutants_are_read_or_skipped(path, fuzz, checker):
    results = list(fuzz.run_serial(checker, [(path.name, path.read_bytes())], 0, 1, 30.0))
    # run_serial mutates; check the file itself too
    direct = checker.check(path.read_bytes())
    assert direct["outcome"] in ("read", "skipped"), direct
    assert results[0][1]["outcome"] in ("read", "skipped"), results
