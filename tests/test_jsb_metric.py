"""The JSB benchmark's figure, nats per frame, against a float64 hand computation.

A tiny piano roll is tokenized with the benchmark's settings (frame tokens, 1 step per beat, no
onset marks) and scored by a fake model with known logits through the evaluation code
(`likelihood.piece_token_nll` + `evaluate.piece_metrics`). The hand computation walks the ROLL,
not the tokens: it rebuilds each frame's ascending pitches and FRAME_END itself and takes the
allowed set from the benchmark's semantics (after a frame boundary: any pitch, FRAME_END or EOS;
after pitch j: a pitch above j or FRAME_END), not from the grammar table.
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from configs import jsb
from jaxcomposer import config_lib
from jaxcomposer.evaluation import evaluate, likelihood
from jaxcomposer.model.loss import masked_token_nll, token_loss_sums
from jaxcomposer.music.notes import Piece, make_notes
from jaxcomposer.tokenizers import BOS, EOS, get_tokenizer
from jaxcomposer.train import batching

PITCH_MIN, PITCH_MAX = 60, 64
# frames x pitches 60..64; frame 2 is silent, pitch 62 is held over frames 0-1 (one note).
ROLL = np.array(
    [
        [1, 0, 1, 0, 1],
        [0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [1, 0, 0, 1, 1],
        [0, 0, 0, 0, 1],
    ],
    bool,
)


def _tokenizer():
    tcfg = config_lib.freeze(jsb.get_config()).tokenizer
    assert (tcfg.name, tcfg.steps_per_beat, tcfg.mark_onsets) == ("frame", 1, False)
    return get_tokenizer(dataclasses.replace(tcfg, pitch_min=PITCH_MIN, pitch_max=PITCH_MAX))


def _roll_tokens(tokenizer) -> np.ndarray:
    """[BOS, the ROLL's frame tokens, EOS] as int32."""
    return np.concatenate([[BOS], tokenizer.encode(_piece(ROLL)), [EOS]]).astype(np.int32)


def _piece(roll: np.ndarray) -> Piece:
    frames, columns = np.nonzero(roll)
    # The held pitch as one two-beat note, every other cell as a one-beat note.
    held = (frames == 0) & (columns == 2)
    keep = ~((frames == 1) & (columns == 2))
    starts = frames[keep].astype(float)
    ends = starts + np.where(held[keep], 2.0, 1.0)
    return Piece("roll", make_notes(columns[keep] + PITCH_MIN, starts, ends))


def _model(vocab_size: int):
    """Logits = table[input] + slope * (tokens read so far): the carry counts positions, so a
    window that forgot the carry would score differently from the hand computation."""
    rng = np.random.default_rng(7)
    table = rng.normal(size=(vocab_size, vocab_size))
    slope = rng.normal(size=vocab_size) * 0.05

    def step_fn(variables, tokens_BxL, carry):
        b, n = tokens_BxL.shape
        count = jnp.zeros((b,), jnp.float32) if carry is None else carry
        position = count[:, None] + jnp.arange(n, dtype=jnp.float32)[None, :]
        logits = variables["table"][tokens_BxL] + position[..., None] * variables["slope"]
        return logits, count + n

    variables = {"table": jnp.asarray(table, jnp.float32), "slope": jnp.asarray(slope, jnp.float32)}
    return step_fn, variables, table, slope


def _hand_nats_per_frame(tokenizer, table, slope, masked: bool) -> float:
    note = lambda column: tokenizer.vocab.token("NOTE", column)  # noqa: E731
    frame_end = tokenizer.vocab.token("FRAME_END")
    num_pitches = ROLL.shape[1]
    total, previous, position, last_pitch = 0.0, BOS, 0, -1
    for frame in ROLL:
        for target_column in [*np.flatnonzero(frame).tolist(), None]:
            target = frame_end if target_column is None else note(target_column)
            logits = table[previous] + position * slope
            if masked:
                allowed = [note(c) for c in range(last_pitch + 1, num_pitches)] + [frame_end]
                if last_pitch < 0:
                    allowed.append(EOS)  # a piece may end at a frame boundary
                logits = logits[allowed]
                target = allowed.index(target)
            log_z = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
            total += log_z - logits[target]
            last_pitch = -1 if target_column is None else target_column
            previous = frame_end if target_column is None else note(target_column)
            position += 1
    return total / ROLL.shape[0]


@pytest.mark.parametrize("masked", [False, True])
def test_nats_per_frame_equals_hand_computation(masked):
    tokenizer = _tokenizer()
    tokens = _roll_tokens(tokenizer)
    step_fn, variables, table, slope = _model(tokenizer.vocab.size)
    grammar = tokenizer.grammar if masked else None
    # window 4 < piece length: the carry must cross windows, as in evaluating a long chorale
    [(nll, correct)] = likelihood.piece_token_nll(
        variables, step_fn, [tokens], window=4, batch_size=2, grammar=grammar
    )
    metrics = evaluate.finish(evaluate.piece_metrics(tokenizer, tokens, nll, correct))
    assert metrics["frames"] == ROLL.shape[0]
    expected = _hand_nats_per_frame(tokenizer, table, slope, masked)
    assert metrics["nats_per_frame"] == pytest.approx(expected, rel=1e-5)
    # The two cases genuinely differ (the mask moves probability mass).
    other = _hand_nats_per_frame(tokenizer, table, slope, not masked)
    assert abs(expected - other) > 0.1


@pytest.mark.parametrize("masked", [False, True])
def test_training_loss_uses_the_evaluation_mask(masked):
    """The loss the trainer minimises (train_step.token_loss_sums, with the states the batcher
    computes) sums to the NLL that evaluation reports, masked and unmasked."""
    tokenizer = _tokenizer()
    tokens = _roll_tokens(tokenizer)
    step_fn, variables, _, _ = _model(tokenizer.vocab.size)
    grammar = tokenizer.grammar if masked else None
    [(nll, _)] = likelihood.piece_token_nll(
        variables, step_fn, [tokens], window=64, batch_size=1, grammar=grammar
    )
    logits, _ = step_fn(variables, jnp.asarray(tokens[None, :-1]), None)
    offsets = np.array([0, tokens.size])
    states = None
    if masked:
        states = batching.grammar_states(tokens, offsets, tokenizer.grammar)[0][None, 1:]
    next_state = tokenizer.grammar.next_state if masked else None
    loss_sum, _, count = token_loss_sums(
        logits, jnp.asarray(tokens[None, 1:]), jnp.ones((1, tokens.size - 1)), states, next_state
    )
    assert float(count) == tokens.size - 1
    assert float(loss_sum) == pytest.approx(float(nll.sum()), rel=1e-5)


def test_masked_probabilities_sum_to_one_over_allowed_tokens():
    """In every grammar state, the masked model's probabilities of the allowed tokens (each
    scored as the target) sum to one; a forbidden target is flagged as such."""
    tokenizer = _tokenizer()
    vocab_size = tokenizer.vocab.size
    grammar = tokenizer.grammar
    logits = np.random.default_rng(3).normal(size=(grammar.num_states, vocab_size)) * 5
    allowed = grammar.next_state >= 0
    assert allowed.any(axis=1).all()  # every state allows something
    every_target = np.broadcast_to(np.arange(vocab_size), logits.shape)
    nll, _, forbidden = masked_token_nll(
        jnp.asarray(logits[:, None, :].repeat(vocab_size, 1), jnp.float32),
        jnp.asarray(every_target),
        jnp.asarray(allowed[:, None, :].repeat(vocab_size, 1)),
    )
    probs = np.where(allowed, np.exp(-np.asarray(nll, np.float64)), 0.0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # float64 reference: softmax over the allowed tokens only
    masked = np.where(allowed, logits, -np.inf)
    reference = np.exp(masked - masked.max(axis=1, keepdims=True))
    reference /= reference.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, reference, rtol=1e-4, atol=1e-7)
    assert (np.asarray(forbidden) == ~allowed).all()
