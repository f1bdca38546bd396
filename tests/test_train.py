"""Batching (pure windows, piece boundaries, transposition, grammar states), the loss, the
jitted train step and the training loop (resume, overfitting, divergence)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from jaxcomposer import config_lib, workdir_lib
from jaxcomposer.tokenizers import BOS, EOS, NAMES, PAD, get_tokenizer
from jaxcomposer.tokenizers.grammar import START_STATE
from jaxcomposer.train import batching, loop, reporting, train_step


def tiny_config(**sections):
    return config_lib.replace(config_lib.freeze(tiny.get_config()), **sections)


def stream_split(lengths):
    """Pieces whose tokens are their stream positions (+10): a window shows where it came from."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.arange(offsets[-1], dtype=np.int32) + 10, offsets


def grammar_piece(grammar, rng, length):
    """A random piece the grammar accepts: BOS, `length` allowed tokens (fewer at a dead end),
    EOS."""
    state, body = grammar.bos_state, []
    for _ in range(length):
        allowed = np.flatnonzero(grammar.next_state[state] >= 0)
        allowed = allowed[(allowed != PAD) & (allowed != EOS)]
        if allowed.size == 0:
            break
        token = int(rng.choice(allowed))
        body.append(token)
        state = int(grammar.next_state[state, token])
    return np.array([BOS, *body, EOS], np.int32)


def split_of(pieces):
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)
    return np.concatenate(pieces).astype(np.int32), offsets


# --- batching -------------------------------------------------------------------------------
def test_batches_are_a_pure_function_of_seed_and_step():
    tokens, offsets = stream_split([50, 7, 120, 33])
    kw = dict(batch_size=16, seq_len=12)
    a = batching.sample_windows(tokens, offsets, seed=3, step=5, **kw)
    b = batching.sample_windows(tokens.copy(), offsets.copy(), seed=3, step=5, **kw)
    for key in ("inputs_BxL", "targets_BxL", "weights_BxL"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["inputs_BxL"].dtype == np.int32 and a["weights_BxL"].dtype == np.float32
    other_step = batching.sample_windows(tokens, offsets, seed=3, step=6, **kw)
    other_seed = batching.sample_windows(tokens, offsets, seed=4, step=5, **kw)
    assert not np.array_equal(a["inputs_BxL"], other_step["inputs_BxL"])
    assert not np.array_equal(a["inputs_BxL"], other_seed["inputs_BxL"])


@pytest.mark.parametrize("last_only", [False, True])
def test_windows_never_cross_pieces_and_pad_with_zero_weight(last_only):
    lengths = [40, 5, 13, 90, 14]  # 5 and 13 are shorter than a window of 13 + 1 tokens
    tokens, offsets = stream_split(lengths)
    seq_len = 13
    seen_pieces = np.zeros(len(lengths), int)
    for step in range(40):
        b = batching.sample_windows(
            tokens,
            offsets,
            seed=0,
            step=step,
            batch_size=8,
            seq_len=seq_len,
            loss_on_last_only=last_only,
        )
        for inputs, targets, weights in zip(
            b["inputs_BxL"], b["targets_BxL"], b["weights_BxL"], strict=True
        ):
            window = np.concatenate([inputs, targets[-1:]])
            real = window[window != PAD] - 10  # stream positions
            piece = np.searchsorted(offsets, real[0], side="right") - 1
            seen_pieces[piece] += 1
            # One contiguous run inside one piece, as long as the piece allows.
            np.testing.assert_array_equal(real, np.arange(real[0], real[0] + len(real)))
            assert offsets[piece] <= real[0] and real[-1] < offsets[piece + 1]
            assert len(real) == min(seq_len + 1, lengths[piece] - (real[0] - offsets[piece]))
            is_real_pair = (inputs != PAD) & (targets != PAD)
            np.testing.assert_array_equal(targets[is_real_pair], inputs[is_real_pair] + 1)
            expected = is_real_pair.astype(np.float32)
            if last_only:
                expected[:-1] = 0
                assert weights[-1] == 1  # left padding keeps the last target real
            np.testing.assert_array_equal(weights, expected)
    # Pieces are drawn in proportion to their window starts (max(n - L, 1)).
    counts = batching.window_counts(offsets, seq_len)
    assert (seen_pieces > 0).all()
    assert np.argmax(seen_pieces) == np.argmax(counts)


def test_every_window_start_is_drawn_uniformly():
    tokens, offsets = stream_split([30, 10, 60])
    seq_len = 8
    starts = np.concatenate(
        [
            batching.sample_windows(
                tokens, offsets, seed=1, step=s, batch_size=64, seq_len=seq_len
            )["inputs_BxL"][:, 0]
            for s in range(200)
        ]
    )
    hist = np.bincount(starts - 10, minlength=offsets[-1])
    possible = np.zeros(offsets[-1], bool)
    for a, n in zip(offsets[:-1], batching.window_counts(offsets, seq_len), strict=True):
        possible[a : a + n] = True
    assert (hist[~possible] == 0).all()  # no window starts where it would cross a piece end
    expected = len(starts) / possible.sum()
    assert np.abs(hist[possible] - expected).max() < 5 * np.sqrt(expected)


@pytest.fixture(scope="module")
def event_corpus():
    tokenizer = get_tokenizer(tiny_config().tokenizer)
    rng = np.random.default_rng(0)
    pieces = [grammar_piece(tokenizer.grammar, rng, n) for n in (300, 40, 170, 10)]
    return tokenizer, *split_of(pieces)


def test_transposition_shifts_each_window_within_range(event_corpus):
    tokenizer, tokens, offsets = event_corpus
    k = 5
    tables = tokenizer.transposition_tables(k)
    kw = dict(seed=2, batch_size=32, seq_len=24)
    used = set()
    for step in range(10):
        plain = batching.sample_windows(tokens, offsets, step=step, **kw)
        moved = batching.sample_windows(tokens, offsets, step=step, transpose_tables=tables, **kw)
        np.testing.assert_array_equal(plain["weights_BxL"], moved["weights_BxL"])
        for b in range(32):
            window = np.concatenate([plain["inputs_BxL"][b], plain["targets_BxL"][b][-1:]])
            got = np.concatenate([moved["inputs_BxL"][b], moved["targets_BxL"][b][-1:]])
            assert ((got >= 0) & (got < tokenizer.vocab.size)).all()
            rows = [r for r in range(2 * k + 1) if np.array_equal(tables[r][window], got)]
            assert rows and (tables[rows[0]][window] >= 0).all()
            used.add(rows[0] - k)
            # The tokenizer's own transpose agrees (it raises if any token would leave the range).
            np.testing.assert_array_equal(tokenizer.transpose(window, rows[0] - k), got)
    assert len(used) > 5  # the augmentation really varies


def test_transposed_windows_near_the_range_edge_only_use_valid_shifts():
    tokenizer = get_tokenizer(tiny_config().tokenizer)
    top = tokenizer.vocab.token("PITCH", tokenizer.num_pitches - 1)  # highest pitch
    piece = np.array([BOS, tokenizer.vocab.token("BAR"), tokenizer.vocab.token("POSITION", 0), top,
                      tokenizer.vocab.token("DURATION", 3), EOS], np.int32)  # fmt: skip
    tokens, offsets = split_of([piece])
    tables = tokenizer.transposition_tables(4)
    for step in range(20):
        b = batching.sample_windows(tokens, offsets, seed=0, step=step, batch_size=4, seq_len=8,
                                    transpose_tables=tables)  # fmt: skip
        pitch = b["inputs_BxL"][:, 3] - tokenizer.vocab.offset("PITCH")
        assert (pitch <= tokenizer.num_pitches - 1).all() and (
            pitch >= tokenizer.num_pitches - 5
        ).all()


@pytest.mark.parametrize("name", NAMES)
def test_grammar_states_match_walk_for_every_shift(name):
    tokenizer = get_tokenizer(tiny_config(tokenizer={"name": name}).tokenizer)
    rng = np.random.default_rng(1)
    tokens, offsets = split_of([grammar_piece(tokenizer.grammar, rng, n) for n in (60, 3, 25)])
    tables = tokenizer.transposition_tables(2)
    states = batching.grammar_states(tokens, offsets, tokenizer.grammar, tables)
    for r, table in enumerate(tables):
        for a, b in zip(offsets[:-1], offsets[1:], strict=True):
            moved = table[tokens[a:b]].astype(np.int64)
            expected, _ = tokenizer.grammar.walk(np.where(moved >= 0, moved, -1), state=START_STATE)
            np.testing.assert_array_equal(states[r, a:b], expected)


def test_batch_states_are_the_states_before_each_target(event_corpus):
    tokenizer, tokens, offsets = event_corpus
    tables = tokenizer.transposition_tables(3)
    states = batching.grammar_states(tokens, offsets, tokenizer.grammar, tables)
    b = batching.sample_windows(tokens, offsets, seed=0, step=0, batch_size=16, seq_len=20,
                                transpose_tables=tables, states=states)  # fmt: skip
    next_state = tokenizer.grammar.next_state
    real = b["weights_BxL"] > 0
    # A real target is allowed in the state before it, and that state follows from the previous.
    assert (next_state[b["states_BxL"][real], b["targets_BxL"][real]] >= 0).all()
    follows = next_state[b["states_BxL"][:, :-1], b["targets_BxL"][:, :-1]]
    both = real[:, 1:] & real[:, :-1]
    np.testing.assert_array_equal(follows[both], b["states_BxL"][:, 1:][both])


def test_validation_batches_are_fixed_tiles():
    tokens, offsets = stream_split([30, 10, 61])
    kw = dict(batch_size=4, seq_len=8)
    batches = batching.validation_batches(tokens, offsets, num_batches=3, **kw)
    again = batching.validation_batches(tokens, offsets, num_batches=3, **kw)
    for x, y in zip(batches, again, strict=True):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    # 4 + 2 + 8 = 14 tiles > 12 wanted: evenly spread; no target position is scored twice.
    targets = np.concatenate([b["targets_BxL"][b["weights_BxL"] > 0] for b in batches])
    assert len(np.unique(targets)) == len(targets)
    firsts = np.concatenate([b["inputs_BxL"][:, 0] for b in batches]) - 10
    assert set(firsts) >= {0, 30, 40}  # every piece's BOS window is in
    everything = batching.validation_batches(tokens, offsets, num_batches=5, **kw)
    weights = np.concatenate([b["weights_BxL"] for b in everything])
    assert weights.sum() == sum(n - 1 for n in (30, 10, 61))  # every target exactly once
    assert (weights[14:] == 0).all()  # padding windows


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
        got = train_step.token_loss_sums(
            jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
            jnp.asarray(states) if mask else None, next_state if mask else None,
        )  # fmt: skip
        np.testing.assert_allclose(np.array(got, float), reference(mask), rtol=1e-5)
    # A model scoring only the last position (SeedReplica) is compared with the last targets.
    last = train_step.token_loss_sums(
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


def random_split(seed, lengths, vocab_size):
    from jaxcomposer.data.dataset import TokenSplit

    rng = np.random.default_rng(seed)
    bodies = [rng.integers(3, vocab_size, size=n).astype(np.int32) for n in lengths]
    return TokenSplit.from_pieces([f"piece{i}" for i in range(len(lengths))], bodies)


@pytest.fixture(scope="module")
def splits():
    vocab_size = get_tokenizer(tiny_config().tokenizer).vocab.size
    return random_split(0, [200, 90, 25, 140], vocab_size), random_split(1, [120, 30], vocab_size)


def latest_variables(workdir):
    _, _, variables, step = workdir_lib.restore_for_inference(workdir, "latest")
    return jax.device_get(variables), step


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, splits):
    """20 uninterrupted steps; records how often the step functions were traced."""
    train_step._STEP_CACHE.clear()
    before = dict(train_step.TRACE_COUNTS)
    workdir = str(tmp_path_factory.mktemp("straight"))
    summary = loop.fit(loop_config(), workdir, *splits)
    traces = {k: train_step.TRACE_COUNTS[k] - before.get(k, 0) for k in ("train_step", "eval_step")}
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
        for r in reporting.read_metrics(reporting.metrics_path(w))
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
        for r in reporting.read_metrics(reporting.metrics_path(str(tmp_path)))
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
