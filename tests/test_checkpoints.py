"""Checkpoint retention (latest + best K), restore_for_inference, and clear errors when a
workdir's config.json / vocab.json / checkpoints do not fit together."""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_split, tiny_config

from jaxcomposer import config_lib, workdir_lib
from jaxcomposer.tokenizers import get_tokenizer
from jaxcomposer.train import loop, reporting

TRAIN = dict(
    lr_schedule="constant", num_steps=30, eval_every=5, checkpoint_every=3, log_every=5,
    eval_batches=2, keep_best=2,
)  # fmt: skip


def run_config(**train_fields):
    return tiny_config(model={"dropout": 0.1}, train={**TRAIN, **train_fields})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """30 steps, validation every 5, a periodic checkpoint every 3 steps, keep_best=2."""
    vocab_size = get_tokenizer(tiny_config().tokenizer).vocab.size
    splits = random_split(0, [200, 90, 25, 140], vocab_size), random_split(1, [120, 30], vocab_size)
    workdir = str(tmp_path_factory.mktemp("trained"))
    summary = loop.fit(run_config(), workdir, *splits)
    valid = {
        r["step"]: r["loss"]
        for r in reporting.read_metrics(workdir_lib.metrics_path(workdir))
        if r["kind"] == "valid"
    }
    return workdir, summary, valid


def stored_steps(workdir):
    folder = os.path.join(workdir, workdir_lib.CHECKPOINT_DIR)
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def copy_of(workdir, tmp_path):
    target = str(tmp_path / "copy")
    shutil.copytree(workdir, target)
    return target


def edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def test_keeps_the_latest_and_the_best_k(trained):
    workdir, summary, valid = trained
    assert sorted(valid) == [5, 10, 15, 20, 25, 30]
    best_two = sorted(valid, key=valid.get)[:2]
    assert stored_steps(workdir) == sorted({30, *best_two})  # periodic 3, 6, 9, ... are gone
    assert summary["best_step"] == best_two[0]
    assert summary["best_val_loss"] == valid[best_two[0]]


def test_restore_for_inference_picks_best_latest_or_a_step(trained):
    workdir, _, valid = trained
    best_step = min(valid, key=valid.get)
    best = workdir_lib.restore_for_inference(workdir, "best")
    config, vocab, best_vars, step = best.config, best.vocab, best.variables, best.step
    assert step == best_step
    assert vocab == get_tokenizer(config.tokenizer).vocab
    assert set(best_vars) == {"params"}  # the LSTM has no batch statistics
    latest_restore = workdir_lib.restore_for_inference(workdir, "latest")
    latest_vars, latest = latest_restore.variables, latest_restore.step
    assert latest == 30
    same_restore = workdir_lib.restore_for_inference(workdir, str(best_step))
    same_vars, same = same_restore.variables, same_restore.step
    assert same == best_step
    for a, b in zip(jax.tree.leaves(best_vars), jax.tree.leaves(same_vars), strict=True):
        np.testing.assert_array_equal(a, b)
    if best_step != latest:
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(best_vars), jax.tree.leaves(latest_vars), strict=True)
        )
    # The restored variables drive the model the config describes.
    from jaxcomposer.model import build_model

    model = build_model(config.model, vocab.size)
    logits, _ = model.apply(best_vars, jnp.ones((2, 7), jnp.int32), train=False)
    assert logits.shape[0] == 2 and logits.shape[-1] == vocab.size
    assert np.isfinite(np.asarray(logits)).all()


def test_unknown_checkpoint_choices_are_clear_errors(trained, tmp_path):
    workdir, _, _ = trained
    with pytest.raises(workdir_lib.WorkdirError, match="no checkpoint at step 7"):
        workdir_lib.restore_for_inference(workdir, 7)
    with pytest.raises(workdir_lib.WorkdirError, match="'best', 'latest' or a step"):
        workdir_lib.restore_for_inference(workdir, "newest")
    empty = str(tmp_path / "empty")
    shutil.copytree(workdir, empty, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(workdir_lib.WorkdirError, match="no checkpoints"):
        workdir_lib.restore_for_inference(empty, "best")


def test_vocab_that_differs_from_the_config_is_named(trained, tmp_path):
    workdir = copy_of(trained[0], tmp_path)
    other = get_tokenizer(tiny_config(tokenizer={"name": "frame"}).tokenizer).vocab
    with open(os.path.join(workdir, "vocab.json"), "w") as f:
        f.write(other.to_json())
    with pytest.raises(workdir_lib.WorkdirError, match=r"vocab\.json: vocabulary \(frame"):
        workdir_lib.restore_for_inference(workdir)


def test_config_whose_model_does_not_fit_the_checkpoint_is_named(trained, tmp_path):
    workdir = copy_of(trained[0], tmp_path)
    edit_json(os.path.join(workdir, "config.json"), lambda c: c["model"].update(hidden_size=48))
    with pytest.raises(workdir_lib.WorkdirError, match=r"checkpoints/\d+ params does not fit"):
        workdir_lib.restore_for_inference(workdir)


def test_missing_or_broken_config_is_named(trained, tmp_path):
    workdir = copy_of(trained[0], tmp_path)
    os.remove(os.path.join(workdir, "config.json"))
    with pytest.raises(workdir_lib.WorkdirError, match=r"config\.json: missing"):
        workdir_lib.restore_for_inference(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write('{"seed": 0}')
    with pytest.raises(workdir_lib.WorkdirError, match=r"config\.json: not a valid"):
        workdir_lib.restore_for_inference(workdir)


def test_a_run_cannot_silently_mix_configs(trained, tmp_path):
    workdir = copy_of(trained[0], tmp_path)
    config = run_config()
    vocab = get_tokenizer(config.tokenizer).vocab
    # Fields that only steer the loop may change on resume; the file then records the new run.
    longer = run_config(num_steps=50, log_every=7)
    workdir_lib.write_run_files(workdir, longer, vocab, resuming=True)
    assert workdir_lib.load_config(workdir) == longer
    bigger = config_lib.replace(config, model={"hidden_size": 48})
    with pytest.raises(
        workdir_lib.WorkdirError, match=r"config\.json: .*model\.hidden_size: 32 -> 48"
    ):
        workdir_lib.write_run_files(workdir, bigger, vocab, resuming=True)
    workdir_lib.write_run_files(workdir, bigger, vocab, resuming=False)  # a fresh run may
    other_data = config_lib.replace(config, data={"max_pieces": 3})
    with pytest.raises(
        workdir_lib.WorkdirError, match=r"prepared with a different config .*max_pieces"
    ):
        workdir_lib.write_run_files(workdir, other_data, vocab, resuming=False)
    other_recipe = run_config(learning_rate=0.5)
    with pytest.raises(workdir_lib.WorkdirError, match="train.learning_rate"):
        workdir_lib.write_run_files(workdir, other_recipe, vocab, resuming=True)


def test_no_trash_left_after_closing(tmp_path):
    """The checkpoint the last save drops is deleted when the manager closes, not kept in
    checkpoints/deleted/ (a third of the folder after a run)."""
    from jaxcomposer.model import checkpoints

    folder = tmp_path / "checkpoints"
    manager = checkpoints.make_manager(str(folder), keep_best=1)
    for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5)):
        checkpoints.save(manager, step, {"w": np.full(4, step, np.float32)}, {}, val_loss=loss)
        manager.wait_until_finished()
    checkpoints.close_manager(manager)
    assert sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) == [2, 4]
    trash = folder / checkpoints.TRASH_DIR
    assert not trash.exists() or not any(trash.iterdir())
