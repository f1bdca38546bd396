"""The constraint encoder (model/anticipation.py): it reads only what lies ahead; a pre-encoded
row read step by step gives the whole-row logits; its random training rows are what they say
(train/constraint_masks.py); under SMC its weight is the model's constrained likelihood; and a
trained encoder workdir harmonizes a melody end to end and still samples unconstrained."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import small_run_config, tiny_config
from test_constraints import VOICES, chorale_like

from jaxcomposer import config_lib, workdir_lib
from jaxcomposer.data import dataset, midi_io
from jaxcomposer.model import StepFunction, anticipation, build_model, conditioning
from jaxcomposer.music.notes import TimeSignature, make_notes
from jaxcomposer.sample import constraints, generate, sampler, smc
from jaxcomposer.tokenizers import BOS, get_tokenizer
from jaxcomposer.train import batching, constraint_masks, loop

ENCODER = {"constraint_encoder_size": 8, "condition": "key", "condition_logits": True}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chorales")
    for i, (bars, numerator) in enumerate([(6, 3), (5, 4), (4, 4), (7, 3)]):
        notes = chorale_like(bars, numerator)
        notes = make_notes(notes.pitch + i, notes.start, notes.end, voice=notes.voice)
        midi_io.write_midi(str(folder / f"c{i}.mid"), notes, qpm=90,
                           time_signatures=(TimeSignature(0.0, numerator, 4),),
                           voice_names=VOICES)  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A voices model with a constraint encoder, 4 training steps on four-part pieces."""
    config = small_run_config(
        corpus, tmp_path_factory.mktemp("cache"),
        tokenizer={"name": "voices", "steps_per_beat": 2}, model=ENCODER,
        sample={"num_samples": 2, "particles": 8},
    )  # fmt: skip
    workdir = str(tmp_path_factory.mktemp("run"))
    loop.train(config, workdir, progress=False)
    return workdir


def untrained(vocab=20, cond=0, seed=0):
    config = tiny_config(model={"constraint_encoder_size": 6, "hidden_size": 12, "embed_dim": 5})
    model = build_model(config.model, vocab, cond)
    variables = model.init({"params": jax.random.key(seed)}, jnp.zeros((1, 4), jnp.int32))
    return model, variables


def test_the_encoder_reads_only_what_lies_ahead():
    model, variables = untrained()
    step = StepFunction(model)
    rng = np.random.default_rng(0)
    row = np.where(rng.random((3, 12)) < 0.5, rng.integers(0, 20, (3, 12)), anticipation.FREE)
    row[2] = anticipation.FREE  # nothing given: "no constraint", zeros everywhere
    base = np.asarray(step.encode(variables, row))
    assert np.abs(base[2]).max() == 0.0 and np.abs(base[:2]).max() > 0
    for s in (0, 5, 11):
        changed = row.copy()
        changed[0, s] = (row[0, s] + 7) % 20 if row[0, s] >= 0 else 3
        out = np.asarray(step.encode(variables, changed))
        assert np.array_equal(out[0, s + 1 :], base[0, s + 1 :])  # positions after s: unmoved
        assert np.abs(out[0, : s + 1] - base[0, : s + 1]).max(axis=-1).min() > 0  # before: all
        assert np.array_equal(out[1:], base[1:])


def test_a_pre_encoded_row_read_step_by_step_gives_the_whole_row_logits():
    model, variables = untrained(cond=3)
    step = StepFunction(model)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 20, (2, 9)).astype(np.int32)
    row = np.where(rng.random((2, 9)) < 0.4, rng.integers(0, 20, (2, 9)), anticipation.FREE)
    cond = rng.random((2, 9, 3)).astype(np.float32)
    whole, _ = model.apply(variables, tokens, cond_BxLxC=cond, constraints_BxL=row)
    ahead = step.encode(variables, row)
    carry, steps = None, []
    for t in range(tokens.shape[1]):  # a Python loop over one-token calls
        logits, carry = step(variables, tokens[:, t : t + 1], carry, cond[:, t : t + 1],
                             ahead[:, t : t + 1])  # fmt: skip
        steps.append(np.asarray(logits[:, 0]))
    np.testing.assert_allclose(np.stack(steps, 1), np.asarray(whole), rtol=1e-5, atol=1e-5)
    plain, _ = model.apply(variables, tokens, cond_BxLxC=cond)  # no constraint = zero features
    zeros, _ = step(variables, tokens, None, cond, jnp.zeros_like(ahead))
    np.testing.assert_allclose(np.asarray(plain), np.asarray(zeros), rtol=1e-6, atol=1e-6)
    assert np.abs(np.asarray(plain) - np.asarray(whole)).max() > 1e-4


def _valid_batch(workdir):
    config = workdir_lib.load_config(workdir)
    tokenizer = workdir_lib.restore_for_inference(workdir, "latest").tokenizer
    split = dataset.load_split(workdir, "train")
    tokens, offsets = np.asarray(split.tokens), np.asarray(split.offsets)
    states = batching.grammar_states(tokens, offsets, tokenizer.grammar)
    batch = batching.sample_windows(tokens, offsets, seed=0, step=0, batch_size=64, seq_len=40,
                                    states=states)  # fmt: skip
    return config, tokenizer, batch


def test_random_constraint_rows_are_what_their_kind_says(trained):
    config, tokenizer, batch = _valid_batch(trained)
    masker = constraint_masks.Masker.for_tokenizer(tokenizer, config.train.constraint_mix)
    voice = masker.voice_S[batch["states_BxL"]]
    bar = np.cumsum(masker.advance_V[batch["targets_BxL"]] > 0, axis=1)
    real = batch["weights_BxL"] > 0
    given, kind = constraint_masks.draw_given(batch["targets_BxL"], real, voice, bar, 4,
                                              config.train.constraint_mix,
                                              np.random.default_rng(3))  # fmt: skip
    seen = set()
    for i in range(len(kind)):
        name, g, v, r = constraint_masks.KINDS[kind[i]], given[i], voice[i], real[i]
        seen.add(name)
        assert not (g & ~r).any()  # padding is never given
        if name == "none":
            assert not g.any()
            continue
        assert g[(v < 0) & r].all()  # bar lines and meters whenever anything is
        if name == "voices":
            kept = {u for u in range(4) if g[(v == u) & r].all()}
            assert all(not g[(v == u) & r].any() for u in set(range(4)) - kept)  # whole voices
            assert 0 < len(kept) < 4 or not ((v >= 0) & r).any()
        if name == "bars":
            free_bars = np.unique(bar[i][~g & r])
            assert (v[~g & r] >= 0).all()  # only voice tokens are free
            assert free_bars.size <= constraint_masks.MAX_GAP_BARS
            if free_bars.size:
                span = np.arange(free_bars[0], free_bars[-1] + 1)
                assert np.array_equal(free_bars, span)  # one contiguous span of bars
                inside = np.isin(bar[i], span) & (v >= 0) & r
                assert not g[inside].any()  # every voice token of those bars is free
    assert seen == set(constraint_masks.KINDS)
    out = masker(batch, np.random.default_rng(3))
    cons, w = out["constraints_BxL"], out["weights_BxL"]
    assert np.array_equal(cons >= 0, given)
    assert np.array_equal(cons[given], batch["targets_BxL"][given])
    assert (w[given] == 0).all() and np.array_equal(w[~given], batch["weights_BxL"][~given])


def test_smc_weight_under_the_encoder_is_the_models_constrained_likelihood(trained, corpus):
    """Ops forcing 2 of every 3 tokens of a real row, the third FREE but limited to the true
    token: SMC's log-evidence (step scan, pre-encoded row indexed by the program counter) equals
    the whole-row apply that encodes the same constraint row itself."""
    restored = workdir_lib.restore_for_inference(trained, "best")
    tokenizer = restored.tokenizer
    piece = midi_io.read_midi(str(corpus / "c0.mid"), restored.config.data)[0]
    row = tokenizer.encode(piece).astype(np.int32)[:69]  # the tokens after BOS
    free = np.arange(row.size) % 3 == 2
    allow = [np.ones(tokenizer.vocab.size, bool)]  # token sets: all, then one per free token
    ops = []
    for t, token in enumerate(row.tolist()):
        if free[t]:
            only = np.zeros(tokenizer.vocab.size, bool)
            only[token] = True
            allow.append(only)
            ops += smc.free(1, len(allow) - 1)
        else:
            ops += smc.forced([token])
    program = smc.Program.build(ops, np.stack(allow))
    request = constraints.Request(
        kind="melody", describe="test", primer=np.array([BOS], np.int32), program=program,
        num_steps=row.size, given=make_notes([], [], []), piece=piece, key_notes=piece.notes,
        unit_V=np.zeros(tokenizer.vocab.size, np.float32),
    )  # fmt: skip
    step = StepFunction(restored.model)
    arrays = program.arrays()
    ahead = constraints.encoded_constraints(step, restored.variables, request, 1,
                                            arrays.op_K.size)  # fmt: skip
    primer = request.primers(1)
    cond = conditioning.vector(restored.spec, np.array([2])).astype(np.float32)  # D major
    def filter_with(ahead_arrays, forced_weight="model"):
        return smc.run_smc(
            restored.variables, jnp.asarray(primer),
            jnp.asarray(sampler.grammar_states_after(tokenizer.grammar, primer)),
            jnp.asarray(tokenizer.grammar.next_state),
            jnp.zeros(tokenizer.vocab.size, jnp.float32), jnp.zeros(1, jnp.float32), arrays,
            jax.random.key(0), cond[:, None], cond, None, *ahead_arrays, step_fn=step,
            num_steps=row.size,
            settings=smc.SMCSettings(num_particles=4, forced_weight=forced_weight),
        )  # fmt: skip

    result = filter_with(ahead)
    assert np.asarray(result.finished_GxN).all()
    assert (np.asarray(result.tokens_GxNxT)[0] == row).all()
    inputs = np.r_[BOS, row[:-1]][None]
    constraint_row = np.where(free, anticipation.FREE, row)[None]
    logits, _ = restored.model.apply(
        restored.variables, jnp.asarray(inputs), None, train=False,
        cond_BxLxC=jnp.repeat(jnp.asarray(cond)[:, None], row.size, axis=1),
        constraints_BxL=jnp.asarray(constraint_row),
    )  # fmt: skip
    lp = jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1)
    expected = float(lp[np.arange(row.size), row].sum())
    assert float(np.asarray(result.log_evidence_G)[0]) == pytest.approx(expected, rel=1e-4,
                                                                         abs=1e-2)  # fmt: skip
    # A model that reads the constraint is its own target: forced tokens weigh nothing (only
    # the grammar), so the evidence is the likelihood of the free tokens alone.
    own = filter_with(ahead, forced_weight="grammar")
    free_only = float(lp[np.arange(row.size), row][free].sum())
    assert float(np.asarray(own.log_evidence_G)[0]) == pytest.approx(free_only, rel=1e-4,
                                                                      abs=1e-2)  # fmt: skip
    # The same run without the row reads "no constraint": a different likelihood.
    plain = filter_with((None, None))
    assert abs(float(np.asarray(plain.log_evidence_G)[0]) - expected) > 1e-3


def test_an_encoder_workdir_harmonizes_a_melody_and_samples_freely(trained, tmp_path):
    notes = chorale_like(4, 4)
    melody = str(tmp_path / "melody.mid")
    midi_io.write_midi(melody, notes[notes.voice == 0], qpm=90)
    result = generate.generate(trained, out_dir=str(tmp_path / "m"), seed=2,
                               overrides={"melody": melody, "key": "G major"})  # fmt: skip
    assert result["settings"]["constraint_encoder"] is True
    for info in result["samples"]:
        assert info["given_kept"] == 1.0 and info["constraints_met"]
        assert info["skipped_tokens"] == 0 and info["key"] == "G major"
    free = generate.generate(trained, out_dir=str(tmp_path / "f"), seed=2,
                             overrides={"num_bars": 3})  # fmt: skip
    assert all(info["skipped_tokens"] == 0 for info in free["samples"])
    assert os.path.exists(os.path.join(str(tmp_path / "f"), free["samples"][0]["midi"]))


def test_the_encoder_needs_voices_and_the_lstm(tmp_path):
    config = small_run_config(tmp_path / "none", tmp_path / "cache", model=ENCODER)
    with pytest.raises(config_lib.ConfigError, match="voice by voice"):
        constraint_masks.Masker.for_tokenizer(get_tokenizer(config.tokenizer),
                                              config.train.constraint_mix)  # fmt: skip
    workdir = tmp_path / "run"
    with pytest.raises(config_lib.ConfigError, match="voice by voice"):
        loop.train(config, str(workdir), progress=False)  # refused before any prepare
    assert not workdir.exists()
    with pytest.raises(config_lib.ConfigError, match="model.kind"):
        config_lib.validate(tiny_config(model={"constraint_encoder_size": 4,
                                               "kind": "seed_replica"}))  # fmt: skip
    with pytest.raises(config_lib.ConfigError, match="constraint_mix"):
        config_lib.validate(tiny_config(train={"constraint_mix": config_lib.ConstraintMix(
            none=0.0, voices=0.0, bars=0.0, tokens=0.0)}))  # fmt: skip


def test_an_encoder_workdir_rewrites_bars_position_by_position(trained, tmp_path):
    """On a voice grid the encoder reads the infill as one token per position: the gap keeps its
    bar lines and meters, every other bar is kept note for note."""
    restored = workdir_lib.restore_for_inference(trained, "best")
    notes = chorale_like(6, 4)
    chorale = str(tmp_path / "chorale.mid")
    midi_io.write_midi(chorale, notes, qpm=90, voice_names=VOICES)
    config = restored.config
    piece = midi_io.read_midi(chorale, config.data)[0]
    request = constraints.infill_request_for_piece(config, restored.tokenizer, piece,
                                                   [(2, 3), (5, 5)], chorale)  # fmt: skip
    row = constraints.constraint_row(request)
    assert row is not None and row.size == request.primer.size - 1 + request.program.min_steps
    result = generate.generate(trained, out_dir=str(tmp_path / "i"), seed=3,
                               overrides={"primer": chorale, "infill": "2-3,5"})  # fmt: skip
    for info in result["samples"]:
        assert info["given_kept"] == 1.0 and info["constraints_met"]
        assert info["skipped_tokens"] == 0 and info["time_signature"] == "4/4"
