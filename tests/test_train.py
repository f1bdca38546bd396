"""The loss, the jitted train step and the training loop (resume, overfitting, divergence)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import count_compiles, random_split, tiny_config

from jaxcomposer import workdir_lib
from jaxcomposer.model import loss
from jaxcomposer.tokenizers import get_tokenizer
from jaxcomposer.train import batching, loop, reporting


# --- the loss ---------------------------------------------------------------------------------
def test_loss_matches_float64_numpy_with_and_without_grammar_mask():
    rng = np.random.default_rng(0)
    B, L, V, S = 3, 5, 7, 4
    logits = rng.normal(size=(B, L, V)).astype(np.float32) * 3
    targets = rng.integers(0, V, size=(B, L))
    weights = (rng.random((B, L)) > 0.3).astype(np.float32)
    next_state = np.where(rng.random((S, V)) > 0.5, 1, -1).astype(np.int32)
    states = rng.integers(0, S, size=(B, L))

    def reference(mask):
        x = logits.astype(np.float64)
        if mask:
            allowed = next_state[states] >= 0
            allowed[np.arange(B)[:, None], np.arange(L)[None], targets] = True
            x = np.where(allowed, x, -1e9)
        logp = (
            x
            - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True))
            - x.max(-1, keepdims=True)
        )
        nll = -np.take_along_axis(logp, targets[..., None], -1)[..., 0]
        correct = (x.argmax(-1) == targets).astype(float)
        return (nll * weights).sum(), (correct * weights).sum(), weights.sum()

    for mask in (False, True):
        got = loss.token_loss_sums(
            jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
            jnp.asarray(states) if mask else None, next_state if mask else None,
        )  # fmt: skip
        np.testing.assert_allclose(np.array(got, float), reference(mask), rtol=1e-5)
    # A model scoring only the last position (the Keras baseline) is compared with the last targets.
    last = loss.token_loss_sums(
        jnp.asarray(logits[:, -1:]), jnp.asarray(targets), jnp.asarray(weights)
    )
    np.testing.assert_allclose(float(last[2]), weights[:, -1].sum())


# --- the jitted step and the loop --------------------------------------------------------------
LOOP_TRAIN = dict(
    lr_schedule="constant", num_steps=20, eval_every=5, checkpoint_every=5, log_every=5,
    eval_batches=2, keep_best=2,
)  # fmt: skip


def loop_config(**train_fields):
    return tiny_config(model={"dropout": 0.1}, train={**LOOP_TRAIN, **train_fields})


@pytest.fixture(scope="module")
def splits():
    vocab_size = get_tokenizer(tiny_config().tokenizer).vocab.size
    return random_split(0, [200, 90, 25, 140], vocab_size), random_split(1, [120, 30], vocab_size)


def latest_variables(workdir):
    restored = workdir_lib.restore_for_inference(workdir, "latest")
    return jax.device_get(restored.variables), restored.step


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, splits):
    """20 uninterrupted steps; counts jax's compiles of the step functions (jax_log_compiles)."""
    workdir = str(tmp_path_factory.mktemp("straight"))
    with count_compiles() as compiled:
        summary = loop.fit(loop_config(), workdir, *splits)
    traces = {k: compiled.count(f"jit({k})") for k in ("train_step", "eval_step")}
    return workdir, summary, traces


def test_train_step_compiles_once_per_run(straight_run):
    _, summary, traces = straight_run
    assert summary["step"] == 20
    assert traces == {"train_step": 1, "eval_step": 1}  # 20 steps and 4 validation passes


def test_stop_and_resume_is_bitwise_identical(straight_run, splits, tmp_path):
    workdir_a, summary_a, _ = straight_run
    workdir_b = str(tmp_path)
    first = loop.fit(loop_config(num_steps=10), workdir_b, *splits)
    assert first["step"] == 10
    second = loop.fit(loop_config(num_steps=20), workdir_b, *splits)  # fresh state from disk
    assert second["step"] == 20
    (vars_a, step_a), (vars_b, step_b) = latest_variables(workdir_a), latest_variables(workdir_b)
    assert step_a == step_b == 20
    flat_a, flat_b = jax.tree.leaves(vars_a), jax.tree.leaves(vars_b)
    assert len(flat_a) == len(flat_b) > 0
    for a, b in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert summary_a["best_val_loss"] == second["best_val_loss"]
    valid = lambda w: {
        r["step"]: r["loss"]
        for r in reporting.read_metrics(workdir_lib.metrics_path(w))
        if r["kind"] == "valid"
    }
    assert valid(workdir_a) == valid(workdir_b)


def test_run_writes_progress_files(straight_run):
    workdir, summary, _ = straight_run
    records = reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [5, 10, 15, 20]
    assert all(
        np.isfinite(r["loss"]) and r["tokens_per_second"] > 0
        for r in records
        if r["kind"] == "train"
    )
    assert [r["step"] for r in records if r["kind"] == "valid"] == [5, 10, 15, 20]
    assert os.path.getsize(os.path.join(workdir, "learning_curve.png")) > 1000
    with open(os.path.join(workdir, "train_summary.json")) as f:
        assert json.load(f)["best_val_loss"] == summary["best_val_loss"]
    best = min((r["loss"], r["step"]) for r in records if r["kind"] == "valid")
    assert (summary["best_val_loss"], summary["best_step"]) == best


def test_non_finite_loss_stops_with_the_last_good_checkpoint(splits, tmp_path, monkeypatch):
    real = batching.sample_windows

    def poisoned(*args, step, **kwargs):
        batch = real(*args, step=step, **kwargs)
        if step == 7:  # the 8th update sees an infinite weight
            batch["weights_BxL"][0, 0] = np.inf
        return batch

    monkeypatch.setattr(batching, "sample_windows", poisoned)
    with pytest.raises(loop.TrainingDivergedError, match="diverged at step 8"):
        loop.fit(loop_config(), str(tmp_path), *splits)
    variables, step = latest_variables(str(tmp_path))
    assert step == 5
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


def test_small_repetitive_corpus_is_learned(tmp_path):
    from jaxcomposer.data.dataset import TokenSplit

    phrase = np.array([5, 17, 9, 40, 33, 9, 12, 60], np.int32)
    pieces = [np.tile(np.roll(phrase, i), 30) for i in range(3)]
    corpus = TokenSplit.from_pieces(["a", "b", "c"], pieces)
    config = tiny_config(
        model={"dropout": 0.0, "num_layers": 1},
        train=dict(
            num_steps=300, learning_rate=1e-2, warmup_steps=10, lr_schedule="constant",
            transpose_semitones=0, eval_every=300, checkpoint_every=300, log_every=50,
        ),
    )  # fmt: skip
    summary = loop.fit(config, str(tmp_path), corpus, corpus)
    last = [
        r
        for r in reporting.read_metrics(workdir_lib.metrics_path(str(tmp_path)))
        if r["kind"] == "train"
    ]
    # Every token but BOS's successor, EOS and a window's first target is determined by the
    # previous two: the loss over steps 251-300 is near zero, from ln(200) = 5.3 at the start.
    assert last[-1]["step"] == 300 and last[-1]["loss"] < 0.05 and last[-1]["accuracy"] > 0.98
    assert summary["final_val_loss"] < 0.15


def test_early_stopping_and_wall_clock_limit(splits, tmp_path):
    # learning_rate 0: the validation loss never improves after the first pass.
    frozen = dict(learning_rate=0.0, early_stop_patience=2, num_steps=40)
    summary = loop.fit(loop_config(**frozen), str(tmp_path / "early"), *splits)
    assert (summary["stop_reason"], summary["step"], summary["best_step"]) == (
        "early_stopping",
        15,
        5,
    )
    again = loop.fit(loop_config(**frozen), str(tmp_path / "early"), *splits)  # stays stopped
    assert (again["stop_reason"], again["step"]) == ("early_stopping", 15)
    timed = loop.fit(
        loop_config(learning_rate=0.0, max_wall_seconds=1e-9), str(tmp_path / "t"), *splits
    )
    assert (timed["stop_reason"], timed["step"]) == ("max_wall_seconds", 1)
    _, step = latest_variables(str(tmp_path / "t"))
    assert step == 1 and timed["final_val_loss"] is not None
