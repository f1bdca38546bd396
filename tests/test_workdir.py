"""The workdir contract, end to end on a tiny corpus: train prepares a never-prepared workdir;
prepare refuses settings that would re-map the token ids of existing checkpoints (and moves them
aside with overwrite); generate and evaluate rebuild everything from the workdir alone, and a
second generate in the same process compiles nothing new."""

from __future__ import annotations

import json
import os
import shutil

import jax
import midi_factory as mf
import numpy as np
import pytest
from conftest import count_compiles, melody_corpus, small_run_config

from jaxcomposer import config_lib, workdir_lib
from jaxcomposer.data import dataset
from jaxcomposer.evaluation import evaluate
from jaxcomposer.sample import generate
from jaxcomposer.train import loop


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return melody_corpus(tmp_path_factory.mktemp("midi"))


def config_for(corpus, cache, **tokenizer):
    return small_run_config(
        corpus, cache, sample={"num_steps": 13, "num_samples": 1},
        **({"tokenizer": tokenizer} if tokenizer else {}),
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    config = config_for(corpus, tmp_path_factory.mktemp("cache"))
    assert not workdir_lib.is_prepared(workdir)
    summary = loop.train(config, workdir, progress=False)
    return workdir, config, summary


def test_train_prepares_a_never_prepared_workdir(trained, capsys):
    workdir, _, summary = trained
    assert summary["step"] == 4
    assert workdir_lib.is_prepared(workdir)
    with open(os.path.join(workdir, "data", "manifest.json")) as f:
        assert json.load(f)["totals"]["used"] == 4
    assert workdir_lib.checkpoint_steps(workdir) == [2, 4]


def test_prepare_refuses_settings_that_remap_checkpoint_tokens(trained, tmp_path):
    workdir, config, _ = trained
    other = config_for(config.data.midi_dir, config.data.cache_dir, name="event", pitch_min=30)
    before = open(workdir_lib.config_path(workdir)).read()
    with pytest.raises(workdir_lib.WorkdirError) as err:
        dataset.prepare(other, workdir, progress=False)
    message = str(err.value)
    assert "tokenizer.pitch_min: 21 -> 30" in message and "--overwrite" in message
    assert "another --workdir" in message
    assert open(workdir_lib.config_path(workdir)).read() == before  # nothing rewritten
    # Other data would mix two datasets in one run (and compare validation losses measured on
    # different pieces): refused the same way.
    other_data = config_for(config.data.midi_dir, config.data.cache_dir)
    other_data = config_lib.replace(other_data, data={"max_pieces": 3})
    with pytest.raises(workdir_lib.WorkdirError, match=r"data.max_pieces: 24 -> 3"):
        dataset.prepare(other_data, workdir, progress=False)
    # The same settings may be prepared again; the checkpoints stay.
    dataset.prepare(config, workdir, progress=False)
    assert workdir_lib.checkpoint_steps(workdir) == [2, 4]


def test_train_needs_a_piece_held_out_for_validation(tmp_path):
    root = tmp_path / "one"
    root.mkdir()
    mf.simple_file(root / "only.mid", mf.melody(0), qpm=90)
    (root / "broken.mid").write_text("not MIDI")
    config = config_for(root, tmp_path / "cache")
    with pytest.raises(dataset.DatasetError, match=r"no piece for validation \(1 training"):
        loop.train(config, str(tmp_path / "w"), progress=False)  # prepares, then refuses


def test_overwrite_moves_the_old_checkpoints_aside(corpus, tmp_path):
    workdir = str(tmp_path / "w")
    config = config_for(corpus, tmp_path / "cache")
    loop.train(config, workdir, progress=False)
    other = config_for(corpus, tmp_path / "cache", name="event", steps_per_beat=2)
    manifest = dataset.prepare(other, workdir, progress=False, overwrite=True)
    moved = manifest["replaced_checkpoints"]
    assert sorted(os.listdir(moved)) == ["2", "4", "learning_curve.png", "metrics.jsonl",
                                         "train_summary.json"]  # fmt: skip
    assert workdir_lib.checkpoint_steps(workdir) == []
    assert workdir_lib.load_config(workdir).tokenizer.steps_per_beat == 2
    assert loop.train(other, workdir, progress=False)["step"] == 4  # a fresh run, not a resume


def test_generate_twice_compiles_once_and_evaluate_reads_the_workdir(trained, tmp_path):
    workdir, _, _ = trained
    jax.clear_caches()  # an earlier test in this process may have compiled the same sampler
    with count_compiles() as compiled_first:
        first = generate.generate(workdir, out_dir=str(tmp_path / "a"), seed=1)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "sample_07.mid").write_bytes(b"not listed in a samples.json")
    (tmp_path / "b" / "notes.txt").write_text("the user's own file")
    with count_compiles() as compiled_second:
        second = generate.generate(workdir, out_dir=str(tmp_path / "b"), seed=1)
    # Only files an earlier samples.json lists are replaced (tests/test_safety.py).
    assert (tmp_path / "b" / "sample_07.mid").read_bytes() == b"not listed in a samples.json"
    assert (tmp_path / "b" / "notes.txt").exists()
    assert compiled_first.count("jit(sample)") == 1
    assert compiled_second.count("jit(sample)") == 0
    assert first["samples"][0]["notes"] == second["samples"][0]["notes"]  # same seed, same music
    result = evaluate.evaluate(workdir, progress=False)
    assert result["overall"]["tokens"] > 0 and result["checkpoint_step"] in (2, 4)


def test_evaluate_on_a_folder_names_its_pieces_that_are_training_pieces(trained, corpus, tmp_path):
    workdir, _, _ = trained
    train_names = set(dataset.load_split(workdir, "train").names)
    folder = tmp_path / "eval"
    folder.mkdir()
    copied = sorted(train_names)[0]
    shutil.copy(corpus / copied, folder / "renamed_copy.mid")  # the same music, another name
    mf.simple_file(folder / "new.mid", mf.melody(11), qpm=90)
    result = evaluate.evaluate(workdir, eval_dir=str(folder), progress=False)
    assert result["also_in_training"] == ["renamed_copy.mid"]
    assert set(result["pieces"]) == {"renamed_copy.mid", "new.mid"}
    # Its own report file: a folder never overwrites the validation split's evaluation_valid.json.
    assert os.path.exists(os.path.join(workdir, "evaluation_dir_eval.json"))


def test_ensemble_and_transposed_views_are_mixed_and_reported(trained, tmp_path):
    workdir, _, _ = trained
    single = evaluate.evaluate(workdir, progress=False)["overall"]
    twin = str(tmp_path / "twin")
    shutil.copytree(workdir, twin)
    mixed = evaluate.evaluate(workdir, ensemble=[twin], progress=False)
    # A model mixed with itself is the same model: the same figures, and each member's own.
    assert mixed["overall"]["nll_nats"] == pytest.approx(single["nll_nats"], rel=1e-5)
    assert [m["overall"]["nll_nats"] for m in mixed["members"]] == pytest.approx(
        [single["nll_nats"]] * 2, rel=1e-6
    )
    assert os.path.exists(os.path.join(workdir, "evaluation_valid_ensemble2.json"))
    views = evaluate.evaluate(workdir, transpositions=1, progress=False)
    assert views["views"] == {"models": 1, "shifts": [0, -1, 1]}
    assert views["overall"]["tokens"] == single["tokens"]
    assert np.isfinite(views["overall"]["nll_nats"])
    assert views["overall"]["nll_nats"] != pytest.approx(single["nll_nats"], rel=1e-6)
    assert os.path.exists(os.path.join(workdir, "evaluation_valid_transposed1.json"))


def test_samples_compare_with_openings_of_their_length(trained, tmp_path):
    workdir, _, _ = trained
    out = str(tmp_path / "s")
    generate.generate(workdir, out_dir=out, seed=2)
    whole = evaluate.compare_samples(workdir, out, progress=False)["statistics"]["pitch_range"]
    cut = evaluate.compare_samples(workdir, out, progress=False, real_tokens=6)
    ranges = []
    tokenizer = workdir_lib.restore_for_inference(workdir).tokenizer
    for piece in dataset.load_split(workdir, "valid").pieces():
        pitch = tokenizer.decode(piece[:7]).notes.pitch  # BOS + 6 tokens
        if len(pitch):
            ranges.append(float(pitch.max() - pitch.min()))
    real = cut["statistics"]["pitch_range"]["real"]
    assert real["mean"] == pytest.approx(np.mean(ranges))
    assert real["mean"] <= whole["real"]["mean"]  # an opening spans no more than its piece
    assert "first 6 tokens" in open(os.path.join(workdir, "reports", "s", "report.md")).read()
