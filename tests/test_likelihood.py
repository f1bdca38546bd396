"""Evaluation likelihood: hand computations, carried state across windows, per-frame figures."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.evaluation import ensemble, evaluate, likelihood
from jaxcomposer.model import StepFunction, build_model
from jaxcomposer.tokenizers import BOS, EOS, PAD, get_tokenizer

V = 6
TABLE = np.random.default_rng(0).normal(size=(V, V)).astype(np.float32)  # logits given input


def bigram_step_fn(variables, tokens_BxL, carry):
    """A model with known logits: the next-token logits are a fixed row per input token."""
    return variables["table"][tokens_BxL], carry


def test_nll_equals_hand_computation():
    pieces = [
        np.asarray([BOS, 3, 4, 5, 3, EOS]),
        np.asarray([BOS, 4, EOS]),
        np.asarray([BOS, 5, 5, 5, 4, 3, 3, 4, EOS]),
    ]
    scored = likelihood.piece_token_nll(
        {"table": jnp.asarray(TABLE)}, bigram_step_fn, pieces, window=4, batch_size=2
    )
    for piece, (nll, correct) in zip(pieces, scored, strict=True):
        expected, hits = [], []
        for prev, target in zip(piece[:-1], piece[1:], strict=True):
            row = TABLE[prev].astype(np.float64)
            log_z = math.log(np.exp(row).sum())
            expected.append(log_z - row[target])
            hits.append(int(np.argmax(row)) == target)
        np.testing.assert_allclose(nll, expected, rtol=1e-5)
        assert correct.tolist() == hits


def test_frame_figures_by_hand():
    config = config_lib.freeze(tiny.get_config())
    tokenizer = get_tokenizer(
        dataclasses.replace(config.tokenizer, name="frame", mark_onsets=False)
    )
    note = lambda p: tokenizer.vocab.token("NOTE", p - tokenizer.config.pitch_min)  # noqa: E731
    end = tokenizer.vocab.token("FRAME_END")
    tokens = np.asarray([BOS, note(60), end, end, note(62), note(64), end, EOS])
    nll = np.asarray([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])  # NLL of tokens[1:]
    metrics = evaluate.finish(evaluate.piece_metrics(tokenizer, tokens, nll, np.zeros(7, bool)))
    assert metrics["frames"] == 3
    assert metrics["nats_per_frame"] == pytest.approx(
        (1 + 2 + 3 + 4 + 5 + 6) / 3
    )  # EOS is outside frames
    assert metrics["nats_per_token"] == pytest.approx(28 / 7)
    assert metrics["nats_per_beat"] == pytest.approx(28 / (3 / tokenizer.config.steps_per_beat))
    assert metrics["bits_per_token"] == pytest.approx(4 / math.log(2))


def test_carried_state_across_windows_equals_one_long_scan():
    config = config_lib.freeze(tiny.get_config())
    vocab_size = get_tokenizer(config.tokenizer).vocab.size
    model = build_model(config.model, vocab_size)
    variables = {"params": model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]}
    step_fn = StepFunction(model)
    rng = np.random.default_rng(1)
    pieces = [np.concatenate([[BOS], rng.integers(3, vocab_size, n), [EOS]]) for n in (37, 5, 20)]
    windowed = likelihood.piece_token_nll(variables, step_fn, pieces, window=8, batch_size=2)
    whole_sequence = jax.jit(lambda v, t: model.apply(v, t, None, train=False)[0])
    for piece, (nll, _) in zip(pieces, windowed, strict=True):
        logits = whole_sequence(variables, jnp.asarray(piece[None, :-1]))
        log_probs = jax.nn.log_softmax(logits[0].astype(jnp.float32))
        whole = -np.asarray(log_probs)[np.arange(piece.size - 1), piece[1:]]
        np.testing.assert_allclose(nll, whole, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["event", "chord", "performance"])
def test_nats_per_second_uses_the_tempo_map(tmp_path, name):
    """Seconds come from the file's tempo map (not the tokens): a piece of 2 beats at 60 qpm then
    4 beats at 240 qpm, from its first onset (beat 1) on, lasts 1 + 1 = 2 s."""
    import midi_factory as mf

    from jaxcomposer.data import dataset

    folder = tmp_path / "midi"
    folder.mkdir()
    events = [mf.tempo(0, 60.0), mf.tempo(2 * mf.TICKS_PER_BEAT, 240.0)]
    events += mf.notes([(60, 1, 2), (64, 2, 5), (67, 3, 6)])
    mf.write_midi_file(folder / "a.mid", [events])
    config = config_lib.freeze(tiny.get_config())
    config = dataclasses.replace(
        config,
        tokenizer=dataclasses.replace(config.tokenizer, name=name),
        data=dataclasses.replace(config.data, cache_dir=str(tmp_path / "cache")),
    )
    split, skipped, stats = dataset.encode_folder_with_stats(config, str(folder), progress=False)
    assert skipped == []
    assert stats["a.mid"]["seconds"] == pytest.approx(2.0)
    tokenizer = get_tokenizer(config.tokenizer)
    tokens = split.piece(0)
    nll = np.full(tokens.size - 1, 0.5)
    one = evaluate.piece_metrics(tokenizer, tokens, nll, np.zeros(nll.size, bool), 2.0)
    both = evaluate.total({"a": one, "b": dict(one)})
    assert both["nats_per_second"] == pytest.approx(2 * 0.5 * nll.size / 4.0)
    assert "nats_per_second" not in evaluate.finish(
        evaluate.piece_metrics(tokenizer, tokens, nll, np.zeros(nll.size, bool))
    )


def _small_frame_tokenizer():
    """Frame tokens over five pitches (60-64), so a shift of one moves an edge note out."""
    config = config_lib.freeze(tiny.get_config())
    return get_tokenizer(
        dataclasses.replace(
            config.tokenizer, name="frame", mark_onsets=False, pitch_min=60, pitch_max=64
        )
    )


@pytest.mark.parametrize("masked", [False, True])
def test_ensemble_of_models_and_transposed_views_equals_a_float64_hand_mixture(masked):
    """Two bigram models, each reading the pieces as they are and transposed by -1 and +1; the
    ensemble code (log_probs -> map_back -> Mixture) against the definition, term by term."""
    tokenizer = _small_frame_tokenizer()
    V = tokenizer.vocab.size
    note = lambda p: tokenizer.vocab.token("NOTE", p - 60)  # noqa: E731
    end = tokenizer.vocab.token("FRAME_END")
    pieces = [
        np.asarray([BOS, note(61), note(63), end, note(62), end, EOS]),  # every shift fits
        np.asarray([BOS, note(61), end, note(64), end, note(60), end, EOS]),  # 64 and 60 don't
    ]
    rng = np.random.default_rng(3)
    tables = [rng.normal(size=(V, V)).astype(np.float32) for _ in range(2)]
    grammar = tokenizer.grammar if masked else None
    mixtures = [ensemble.Mixture(p.size - 1, V) for p in pieces]
    for table in tables:
        for shift in (0, -1, 1):
            move = tokenizer.transpose_table(shift)
            views = [ensemble.transposed_piece(p, move, PAD) for p in pieces]
            scored = likelihood.piece_token_nll(
                {"table": jnp.asarray(table)}, bigram_step_fn, [v for v, _ in views],
                window=4, batch_size=2, grammar=grammar, log_probs=True,
            )  # fmt: skip
            for mixture, (_, k), (_, _, log_probs) in zip(mixtures, views, scored, strict=True):
                mixture.add(ensemble.map_back(log_probs, move), np.arange(len(log_probs)) < k)
    for piece, mixture in zip(pieces, mixtures, strict=True):
        nll, correct = mixture.scores(piece)
        expected = []
        for t in range(piece.size - 1):
            q = np.zeros(V)
            for table in tables:
                for shift in (0, -1, 1):
                    move = tokenizer.transpose_table(shift)
                    if np.any(move[piece[: t + 1]] < 0):
                        continue  # this view cannot read the history
                    history = move[piece[: t + 1]]
                    logits = table[history[-1]].astype(np.float64)
                    if masked:  # the state after reading the history, by the grammar's table
                        state = tokenizer.grammar.bos_state
                        for token in history[1:]:
                            state = tokenizer.grammar.next_state[state, token]
                        allowed = tokenizer.grammar.next_state[state] >= 0
                        logits = np.where(allowed, logits, -np.inf)
                    p = np.exp(logits - logits.max())
                    p /= p.sum()
                    q += np.where(move >= 0, p[np.maximum(move, 0)], 0.0)
            q /= q.sum()
            expected.append(-np.log(q[piece[t + 1]]))
        np.testing.assert_allclose(nll, expected, rtol=1e-5)
        assert np.all(np.isfinite(nll))
