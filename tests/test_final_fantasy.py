"""The real 92-file piano corpus (skipped when ../shared is absent): every file prepares or is
skipped with a reason; the reader agrees with pretty_midi; frame and event tokens round-trip."""

import pathlib
import warnings

import numpy as np
import pytest
from midi_factory import pretty_midi_beats

from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.data import dataset, ingest, midi_io
from jaxcomposer.tokenizers import get_tokenizer

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
CORPUS = SHARED / "data" / "final_fantasy"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"{CORPUS} is absent")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ff")
    base = config_lib.freeze(tiny.get_config())
    config = config_lib.replace(
        base,
        data={
            "midi_dir": str(CORPUS),
            "cache_dir": str(tmp / "cache"),
            "max_pieces": 0,
            "num_workers": 1,
        },
    )
    manifest = dataset.prepare(config, str(tmp / "work"), progress=False)
    return config, manifest, str(tmp / "work")


@pytest.fixture(scope="module")
def pieces(prepared):
    config, manifest, _ = prepared
    out = []
    for entry in manifest["files"]:
        piece, _ = midi_io.read_midi(str(CORPUS / entry["name"]), config.data, name=entry["name"])
        out.append(dataset.fit_pitch_range(piece, config))
    return out


def test_every_file_is_prepared_or_skipped_with_a_reason(prepared):
    _, manifest, _ = prepared
    names = [n for n, _ in ingest.find_midi_files(str(CORPUS))]
    used = [f["name"] for f in manifest["files"]]
    skipped = {s["name"]: s["reason"] for s in manifest["skipped"]}
    assert sorted(used + list(skipped)) == names
    assert all(reason for reason in skipped.values())
    assert len(used) >= 0.9 * len(names)
    assert manifest["totals"]["train"]["pieces"] > manifest["totals"]["valid"]["pieces"] > 0


def test_reader_agrees_with_pretty_midi_on_every_file(prepared):
    """pretty_midi's seconds mapped back to beats through its tempo map (an independent route)
    give exactly the notes read from ticks."""
    config, manifest, _ = prepared
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pretty_midi warns about tempo events on later tracks
        for entry in manifest["files"]:
            piece, _ = midi_io.read_midi(str(CORPUS / entry["name"]), config.data)
            ours = sorted(piece.notes.as_tuples())
            assert ours == pretty_midi_beats(CORPUS / entry["name"]), entry["name"]


@pytest.mark.parametrize("name", ["event", "frame"])
def test_tokens_round_trip_to_the_quantized_notes(prepared, pieces, name):
    config, _, _ = prepared
    tokenizer = get_tokenizer(config_lib.replace(config, tokenizer={"name": name}).tokenizer)
    for piece in pieces:
        tokens = tokenizer.encode(piece)
        decoded = tokenizer.decode(tokens)
        assert decoded.skipped == 0, piece.name
        assert decoded.notes == tokenizer.quantize(piece), piece.name


def test_prepared_tokens_are_the_encoded_pieces(prepared, pieces):
    config, _, workdir = prepared
    loaded = {s: dataset.load_split(workdir, s) for s in ("train", "valid")}
    tokenizer = get_tokenizer(config.tokenizer)
    by_name = {n: t for s in loaded.values() for n, t in zip(s.names, s.pieces(), strict=True)}
    for piece in pieces:
        np.testing.assert_array_equal(by_name[piece.name][1:-1], tokenizer.encode(piece))
