"""Batching: pure windows, piece boundaries, uniform starts, transposition, grammar states,
validation tiles."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_config

from jaxcomposer.tokenizers import BOS, EOS, NAMES, PAD, get_tokenizer
from jaxcomposer.tokenizers.grammar import START_STATE
from jaxcomposer.train import batching


def stream_split(lengths):
    """Pieces whose tokens are their stream positions (+10): a window shows where it came from."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return np.arange(offsets[-1], dtype=np.int32) + 10, offsets


def grammar_piece(grammar, rng, length):
    """A random piece the grammar accepts: BOS, `length` allowed tokens (fewer at a dead end),
    EOS. With a held-key rule (performance tokens) only sounding keys are released and only
    silent ones pressed, as `Grammar.walk` requires."""
    state, body = grammar.bos_state, []
    held = set()
    for _ in range(length):
        allowed = np.flatnonzero(grammar.next_state[state] >= 0)
        allowed = allowed[(allowed != PAD) & (allowed != EOS)]
        if grammar.press is not None:
            releases_held = [grammar.release[t] < 0 or grammar.release[t] in held for t in allowed]
            presses_silent = [grammar.press[t] < 0 or grammar.press[t] not in held for t in allowed]
            allowed = allowed[np.asarray(releases_held, bool) & np.asarray(presses_silent, bool)]
        if allowed.size == 0:
            break
        token = int(rng.choice(allowed))
        body.append(token)
        state = int(grammar.next_state[state, token])
        if grammar.press is not None:
            held.discard(int(grammar.release[token]))
            if grammar.press[token] >= 0:
                held.add(int(grammar.press[token]))
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
