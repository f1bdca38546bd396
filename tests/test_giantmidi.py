"""The GiantMIDI-Piano performances (skipped when ../shared is absent): every file prepares with
every tokenizer or is skipped with a reason, and performance tokens round-trip on them."""

import dataclasses
import os
import pathlib

import conftest
import pytest

from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.data import dataset, ingest, midi_io
from jaxcomposer.tokenizers import NAMES, get_tokenizer

# ../shared/data beside the repository (conftest.SHARED_DATA); JAXCOMPOSER_SHARED points
# elsewhere, e.g. from a git worktree.
SHARED_DATA = (
    pathlib.Path(os.environ["JAXCOMPOSER_SHARED"]) / "data"
    if os.environ.get("JAXCOMPOSER_SHARED")
    else conftest.SHARED_DATA
)
CORPUS = SHARED_DATA / "giantmidi_piano"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"{CORPUS} is absent")


def config_for(name: str, tmp) -> config_lib.Config:
    base = config_lib.freeze(tiny.get_config())
    return config_lib.replace(
        base,
        data={"cache_dir": str(tmp / "cache"), "num_workers": 1},
        tokenizer={"name": name},
    )


@pytest.mark.parametrize("name", NAMES)
def test_every_file_prepares_or_is_skipped_with_a_reason(name, tmp_path):
    files = [n for n, _ in ingest.find_midi_files(str(CORPUS))]
    split, skipped, stats = dataset.encode_folder_with_stats(
        config_for(name, tmp_path), str(CORPUS), progress=False
    )
    assert sorted(list(split.names) + [s["name"] for s in skipped]) == sorted(files)
    assert all(s["reason"] for s in skipped)
    assert len(split) == len(files), skipped  # today every one of them is usable
    assert all(stats[n]["seconds"] > 10 for n in split.names)


def test_performance_round_trip_on_real_performances(tmp_path):
    config = config_for("performance", tmp_path)
    tokenizer = get_tokenizer(config.tokenizer)
    unpedalled = get_tokenizer(dataclasses.replace(config.tokenizer, perf_sustain=False))
    for name, path in ingest.find_midi_files(str(CORPUS))[::5]:
        piece, _ = midi_io.read_midi(path, config.data, name=name)
        piece = dataset.fit_pitch_range(piece, config)
        assert piece.sustain, name  # transcribed pedalling is read
        decoded = tokenizer.decode(tokenizer.encode(piece))
        assert decoded.skipped == 0
        assert decoded.notes == tokenizer.quantize(piece)
        dry = unpedalled.quantize(piece)
        assert (decoded.notes.end - decoded.notes.start).sum() > (dry.end - dry.start).sum()
