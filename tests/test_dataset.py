"""dataset.prepare / load_split / encode_folder on small generated folders."""

import json
import os

import midi_factory as mf
import numpy as np
import pytest

from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.core import atomic
from jaxcomposer.data import dataset, ingest, midi_io
from jaxcomposer.data.dataset import DatasetError, PrepareError
from jaxcomposer.tokenizers import BOS, EOS, get_tokenizer

GOOD = ("a.mid", "b.mid", "c.MID", "sub/d.midi", "sub/deeper/e.mid", "f.mid", "g.mid")


@pytest.fixture
def midi_dir(tmp_path):
    root = tmp_path / "midi"
    for i, name in enumerate(GOOD):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        mf.simple_file(root / name, mf.melody(i), qpm=80 + 10 * i)
    (root / "sub" / "bad.mid").write_text("not a midi file")
    (root / "notes.txt").write_text("ignored: not .mid")
    return root


def make_config(tmp_path, midi_dir, **data):
    base = config_lib.freeze(tiny.get_config())
    fields = {
        "midi_dir": str(midi_dir),
        "cache_dir": str(tmp_path / "cache"),
        "num_workers": 1,
        "max_pieces": 0,
        **data,
    }
    return config_lib.replace(base, data=fields)


def splits(workdir):
    return {s: dataset.load_split(str(workdir), s) for s in ("train", "valid")}


def test_prepare_writes_a_dataset_that_decodes_back(tmp_path, midi_dir):
    config = make_config(tmp_path, midi_dir)
    workdir = tmp_path / "work"
    manifest = dataset.prepare(config, str(workdir), progress=False)

    assert manifest["skipped"] == [
        {"name": "sub/bad.mid", "reason": manifest["skipped"][0]["reason"]}
    ]
    assert "not a MIDI file" in manifest["skipped"][0]["reason"]
    assert manifest["totals"]["found"] == 8 and manifest["totals"]["used"] == 7
    on_disk = json.loads((workdir / "data" / "manifest.json").read_text())
    assert on_disk["totals"] == manifest["totals"]
    tokenizer = get_tokenizer(config.tokenizer)
    assert json.loads((workdir / "vocab.json").read_text()) == json.loads(tokenizer.vocab.to_json())
    assert config_lib.from_json((workdir / "config.json").read_text()) == config

    loaded = splits(workdir)
    names = sorted(n for s in loaded.values() for n in s.names.tolist())
    assert names == sorted(GOOD)
    for split in loaded.values():
        assert split.tokens.dtype == np.int32 and split.offsets.dtype == np.int64
        for name, tokens in zip(split.names, split.pieces(), strict=True):
            assert tokens[0] == BOS and tokens[-1] == EOS
            piece, _ = midi_io.read_midi(str(midi_dir / name), config.data, name=name)
            decoded = tokenizer.decode(tokens)
            assert decoded.skipped == 0
            assert decoded.notes == tokenizer.quantize(piece)
    summary = dataset.summarize(manifest)
    assert "8 found, 7 used, 1 skipped" in summary and "not a MIDI file (1)" in summary


def test_second_prepare_hits_the_cache_and_a_new_tokenizer_misses(tmp_path, midi_dir):
    config = make_config(tmp_path, midi_dir)
    first = dataset.prepare(config, str(tmp_path / "w1"), progress=False)
    assert first["totals"]["cache_misses"] == 8 and first["totals"]["cache_hits"] == 0
    second = dataset.prepare(config, str(tmp_path / "w2"), progress=False)
    assert second["totals"]["cache_hits"] == 8 and second["totals"]["cache_misses"] == 0
    assert second["skipped"] == first["skipped"]  # failures are cached with their reason
    a, b = splits(tmp_path / "w1"), splits(tmp_path / "w2")
    for s in a:
        np.testing.assert_array_equal(a[s].tokens, b[s].tokens)
        np.testing.assert_array_equal(a[s].names, b[s].names)

    frame = config_lib.replace(config, tokenizer={"name": "frame"})
    third = dataset.prepare(frame, str(tmp_path / "w3"), progress=False)
    assert third["totals"]["cache_misses"] == 8
    finer = config_lib.replace(config, tokenizer={"steps_per_beat": 8})
    assert dataset.prepare(finer, str(tmp_path / "w4"), progress=False)["totals"]["cache_hits"] == 0


def test_a_damaged_cache_entry_is_a_miss(tmp_path, midi_dir):
    config = make_config(tmp_path, midi_dir)
    dataset.prepare(config, str(tmp_path / "w1"), progress=False)
    entries = sorted((tmp_path / "cache" / ingest.CACHE_SUBDIR).iterdir())
    assert len(entries) == 8
    entries[0].write_bytes(b"garbage")
    again = dataset.prepare(config, str(tmp_path / "w2"), progress=False)
    assert again["totals"]["cache_misses"] == 1
    a, b = splits(tmp_path / "w1"), splits(tmp_path / "w2")
    np.testing.assert_array_equal(a["train"].tokens, b["train"].tokens)


def test_pool_and_serial_agree(tmp_path, midi_dir):
    serial = make_config(tmp_path, midi_dir, cache_dir=str(tmp_path / "c1"))
    pooled = make_config(tmp_path, midi_dir, cache_dir=str(tmp_path / "c2"), num_workers=2)
    m1 = dataset.prepare(serial, str(tmp_path / "w1"), progress=False)
    m2 = dataset.prepare(pooled, str(tmp_path / "w2"), progress=False)
    assert m1["timing"]["workers"] == 1 and m2["timing"]["workers"] == 2
    assert m1["files"] == m2["files"] and m1["skipped"] == m2["skipped"]
    a, b = splits(tmp_path / "w1"), splits(tmp_path / "w2")
    for s in a:
        np.testing.assert_array_equal(a[s].tokens, b[s].tokens)


def test_split_is_by_piece_and_deterministic(tmp_path, midi_dir):
    config = make_config(tmp_path, midi_dir, valid_fraction=0.3)
    dataset.prepare(config, str(tmp_path / "w1"), progress=False)
    loaded = splits(tmp_path / "w1")
    train, valid = set(loaded["train"].names.tolist()), set(loaded["valid"].names.tolist())
    assert train and valid and not train & valid
    expected = dataset.assign_splits(sorted(GOOD), 0.3)
    assert valid == {n for n, s in zip(sorted(GOOD), expected, strict=True) if s == "valid"}
    # Adding a file never moves another piece between splits.
    mf.simple_file(midi_dir / "zz_new.mid", mf.melody(99))
    dataset.prepare(config, str(tmp_path / "w2"), progress=False)
    again = splits(tmp_path / "w2")
    assert set(again["valid"].names.tolist()) - {"zz_new.mid"} == valid


def test_assign_splits_keeps_one_of_each():
    names = [f"piece{i}.mid" for i in range(5)]
    assert dataset.assign_splits(names, 0.0).count("valid") == 1
    assert dataset.assign_splits(names, 1.0).count("train") == 1
    assert dataset.assign_splits(names[:1], 0.5) in (["train"], ["valid"])
    # A piece's split depends on its own name only: reordering the files changes nothing.
    forward = dict(zip(names, dataset.assign_splits(names, 0.5), strict=True))
    backward = dict(zip(names[::-1], dataset.assign_splits(names[::-1], 0.5), strict=True))
    assert forward == backward
    assert forward == {n: "valid" if dataset.valid_hash(n) < 0.5 else "train" for n in names}


def test_valid_dir_holds_out_a_folder(tmp_path, midi_dir):
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    for i in range(2):
        mf.simple_file(held_out / f"v{i}.mid", mf.melody(50 + i))
    config = make_config(tmp_path, midi_dir, valid_dir=str(held_out))
    manifest = dataset.prepare(config, str(tmp_path / "w"), progress=False)
    loaded = splits(tmp_path / "w")
    assert sorted(loaded["train"].names.tolist()) == sorted(GOOD)
    assert loaded["valid"].names.tolist() == ["v0.mid", "v1.mid"]
    assert manifest["totals"]["valid"]["pieces"] == 2


def test_max_pieces_keeps_the_first_files_by_name(tmp_path, midi_dir):
    config = make_config(tmp_path, midi_dir, max_pieces=3)
    manifest = dataset.prepare(config, str(tmp_path / "w"), progress=False)
    assert sorted(f["name"] for f in manifest["files"]) == ["a.mid", "b.mid", "c.MID"]


def test_out_of_range_notes_dropped_or_file_skipped(tmp_path):
    root = tmp_path / "midi"
    root.mkdir()
    mf.simple_file(root / "low.mid", [(10, 0, 1), (60, 0, 1), (64, 1, 2)])
    mf.simple_file(root / "fine.mid", [(60, 0, 1), (62, 1, 2)])
    manifest = dataset.prepare(make_config(tmp_path, root), str(tmp_path / "w1"), progress=False)
    low = next(f for f in manifest["files"] if f["name"] == "low.mid")
    assert low["out_of_range_notes"] == 1 and low["notes"] == 2
    assert manifest["totals"]["dropped"]["out_of_range_notes"] == 1

    strict = make_config(tmp_path, root, drop_out_of_range_notes=False)
    manifest = dataset.prepare(strict, str(tmp_path / "w2"), progress=False)
    assert [s["name"] for s in manifest["skipped"]] == ["low.mid"]
    assert "outside the pitch range" in manifest["skipped"][0]["reason"]


def test_nothing_usable_is_a_clear_error(tmp_path):
    root = tmp_path / "midi"
    root.mkdir()
    (root / "x.mid").write_bytes(b"")
    mf.write_midi_file(root / "drums.mid", [mf.notes([(36, 0, 1)], channel=9)])
    with pytest.raises(PrepareError, match=r"no usable pieces.*2 of 2 file\(s\) skipped"):
        dataset.prepare(make_config(tmp_path, root), str(tmp_path / "w"), progress=False)
    assert not (tmp_path / "w" / "data").exists()
    with pytest.raises(PrepareError, match="does not exist"):
        dataset.prepare(
            make_config(tmp_path, tmp_path / "nope"), str(tmp_path / "w"), progress=False
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="no .mid/.midi files"):
        dataset.prepare(
            make_config(tmp_path, tmp_path / "empty"), str(tmp_path / "w"), progress=False
        )


def test_interrupted_prepare_keeps_the_previous_dataset(tmp_path, midi_dir, monkeypatch):
    config = make_config(tmp_path, midi_dir)
    workdir = tmp_path / "w"
    dataset.prepare(config, str(workdir), progress=False)
    before = splits(workdir)

    real_save = dataset._save_split

    def crash_on_valid(path, results, *rest):
        if path.endswith("valid.npz"):
            raise KeyboardInterrupt
        real_save(path, results, *rest)

    monkeypatch.setattr(dataset, "_save_split", crash_on_valid)
    frame = config_lib.replace(config, tokenizer={"name": "frame"})
    with pytest.raises(KeyboardInterrupt):
        dataset.prepare(frame, str(workdir), progress=False)
    assert sorted(os.listdir(workdir)) == ["config.json", "data", "vocab.json"]  # no leftovers
    after = splits(workdir)
    for s in before:
        np.testing.assert_array_equal(before[s].tokens, after[s].tokens)
    monkeypatch.undo()

    # Killed after the new data folder is in place but before vocab.json: not trusted.
    real_write_text = atomic.write_text

    def crash_on_vocab(path, text):
        if path.endswith("vocab.json"):
            raise KeyboardInterrupt
        real_write_text(path, text)

    monkeypatch.setattr(atomic, "write_text", crash_on_vocab)
    with pytest.raises(KeyboardInterrupt):
        dataset.prepare(frame, str(workdir), progress=False)
    with pytest.raises(DatasetError, match="vocab.json does not match"):
        dataset.load_split(str(workdir), "train")


def test_load_split_errors_clearly(tmp_path, midi_dir):
    with pytest.raises(DatasetError, match="run --mode=prepare first"):
        dataset.load_split(str(tmp_path / "nothing"), "train")
    workdir = tmp_path / "w"
    dataset.prepare(make_config(tmp_path, midi_dir), str(workdir), progress=False)
    with pytest.raises(ValueError, match="split must be one of"):
        dataset.load_split(str(workdir), "test")

    good = dataset.load_split(str(workdir), "train")
    path = workdir / "data" / "train.npz"
    np.savez(path, tokens=good.tokens, offsets=good.offsets[:-1], names=good.names[:-1])
    with pytest.raises(DatasetError, match="inconsistent.*offsets"):
        dataset.load_split(str(workdir), "train")
    np.savez(
        path,
        tokens=good.tokens[1:],
        offsets=good.offsets - 1 + (good.offsets == 0),
        names=good.names,
    )
    with pytest.raises(DatasetError, match="inconsistent"):
        dataset.load_split(str(workdir), "train")
    path.write_bytes(b"PK\x03\x04 garbled")
    with pytest.raises(DatasetError, match="unreadable.*run --mode=prepare again"):
        dataset.load_split(str(workdir), "train")


def test_encode_folder_matches_prepare(tmp_path, midi_dir):
    config = make_config(tmp_path, midi_dir, cache_dir=str(tmp_path / "c1"))
    dataset.prepare(config, str(tmp_path / "w"), progress=False)
    loaded = splits(tmp_path / "w")
    fresh = make_config(tmp_path, midi_dir, cache_dir=str(tmp_path / "c2"))
    split, skipped = dataset.encode_folder(fresh, str(midi_dir), progress=False)
    assert [s["name"] for s in skipped] == ["sub/bad.mid"]
    by_name = {n: t for s in loaded.values() for n, t in zip(s.names, s.pieces(), strict=True)}
    assert sorted(split.names.tolist()) == sorted(by_name)
    for name, tokens in zip(split.names, split.pieces(), strict=True):
        np.testing.assert_array_equal(tokens, by_name[name])
    with pytest.raises(DatasetError, match="does not exist"):
        dataset.encode_folder(fresh, str(tmp_path / "missing"), progress=False)


def test_fit_pitch_range(tmp_path):
    path = mf.simple_file(tmp_path / "x.mid", [(10, 0, 1), (60, 0, 1), (120, 1, 2)])
    config = make_config(tmp_path, tmp_path)
    piece, _ = midi_io.read_midi(path, config.data)
    assert dataset.fit_pitch_range(piece, config).notes.pitch.tolist() == [60]
    keep = config_lib.replace(config, data={"drop_out_of_range_notes": False})
    assert len(dataset.fit_pitch_range(piece, keep).notes) == 3


def test_bach_chorales_become_pieces(tmp_path):
    """Two chorales from music21's embedded corpus: sensible pieces, and a prepare run on them.
    Tie-stripping must keep each pitch's total sounding time, which music21's raw notes give."""
    from music21 import converter

    from jaxcomposer.data import corpus

    sources = corpus.bach_chorale_sources(str(tmp_path / "cache"))
    assert len(sources) > 300 and all(n.startswith("bach/") for n, _ in sources)
    assert corpus.bach_chorale_sources(str(tmp_path / "cache")) == sources  # cached listing
    config = make_config(tmp_path, "", max_pieces=2)
    for name, path in sources[:2]:  # bwv10.7 has 6 tied notes, bwv101.7 one
        piece, stats = corpus.read_score(path, config.data, name)
        notes = piece.notes
        assert stats["parts"] == 4 and len(notes) > 50
        assert 36 <= notes.pitch.min() and notes.pitch.max() <= 84  # SATB voices
        assert notes.start.min() == 0 and np.all(notes.end > notes.start)
        assert 8 <= notes.end.max() <= 400
        assert piece.time_signatures and piece.key_signatures
        raw = converter.parse(path).flatten().notes
        expected = {}
        for element in raw:
            for p in element.pitches:
                expected[p.midi] = expected.get(p.midi, 0.0) + float(element.quarterLength)
        ours = {}
        for p, a, b in zip(notes.pitch.tolist(), notes.start, notes.end, strict=True):
            ours[p] = ours.get(p, 0.0) + float(b - a)
        assert ours == pytest.approx(expected)
        tied = sum(1 for e in raw if e.tie is not None and e.tie.type in ("stop", "continue"))
        assert len(notes) == len(raw) - tied and not any(e.isChord for e in raw)
        assert stats["zero_length_notes"] == 0

    manifest = dataset.prepare(config, str(tmp_path / "w"), progress=False)
    assert "Bach chorales" in manifest["source"]
    assert [f["name"] for f in manifest["files"]] == [n for n, _ in sources[:2]]
    assert manifest["totals"]["train"]["pieces"] == 1 and manifest["totals"]["valid"]["pieces"] == 1


def test_key_labels_csv_overrides_and_reports_rows_naming_no_file(tmp_path, midi_dir):
    table = tmp_path / "keys.csv"
    table.write_text(
        "file,key,style\n"
        "sub/d.midi,F# minor,mine\n"  # by the name under midi_dir
        "a.mid,Bb major\n"  # by the base name
        "sub/bad.mid,D minor\n"  # skipped at reading: no piece to label
        "missing.mid,C\n"  # misspelt or absent
    )
    config = make_config(tmp_path, midi_dir, key_labels_csv=str(table))
    manifest = dataset.prepare(config, str(tmp_path / "w"), progress=False)
    files = {f["name"]: f for f in manifest["files"]}
    assert files["sub/d.midi"]["key"] == "F# minor" and files["sub/d.midi"]["style"] == "mine"
    assert files["a.mid"]["key"] == "Bb major" and files["a.mid"]["key_source"] == "csv"
    assert files["b.mid"]["key_source"] != "csv"
    assert manifest["key_labels_unmatched"] == ["missing.mid", "sub/bad.mid"]
    assert "key labels CSV rows naming no usable file: 2" in dataset.summarize(manifest)
    table.write_text("a.mid,H major\n")
    with pytest.raises(PrepareError, match=r"keys\.csv row 1: unknown key 'H major'"):
        dataset.prepare(config, str(tmp_path / "w2"), progress=False)
