"""Sampler: decoders on a model with known logits, determinism, argmax vs a plain step loop,
and grammar masks giving zero skipped tokens on an untrained model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.model import StepFunction, build_model
from jaxcomposer.music.notes import Piece, make_notes
from jaxcomposer.sample import sampler
from jaxcomposer.tokenizers import BOS, get_tokenizer

V = 12
KNOWN_LOGITS = jnp.asarray([2.0, 1.5, 1.0, 0.7, 0.2, 0.1, -0.3, -1.0, -2.0, -2.5, -3.0, -4.0])


def known_step_fn(variables, tokens_BxL, carry):
    """A 'model' whose next-token logits never change: lets tests know the answer."""
    batch, length = tokens_BxL.shape
    return jnp.broadcast_to(variables["logits"], (batch, length, V)), carry


def free_grammar(vocab_size):
    return jnp.zeros((1, vocab_size), jnp.int32)  # one state; every token allowed


def run_known(settings, batch=64, steps=50, seed=0):
    primers = jnp.full((batch, 1), 5, jnp.int32)
    return np.asarray(
        sampler.sample(
            {"logits": KNOWN_LOGITS},
            primers,
            jnp.zeros(batch, jnp.int32),
            free_grammar(V),
            jax.random.key(seed),
            step_fn=known_step_fn,
            num_steps=steps,
            settings=settings,
        )
    )


def settings(**kw):
    return sampler.DecoderSettings(grammar_mask=False, allow_eos=True, **kw)


def test_top_k_never_leaves_its_set():
    out = run_known(settings(top_k=3))
    assert set(np.unique(out)) <= {0, 1, 2}
    assert len(np.unique(out)) == 3  # and it does sample, not just argmax


def test_top_p_never_leaves_the_nucleus():
    probs = np.exp(KNOWN_LOGITS) / np.exp(KNOWN_LOGITS).sum()
    order = np.argsort(-probs)
    mass_before = np.cumsum(probs[order]) - probs[order]
    nucleus = set(order[mass_before < 0.8].tolist())
    out = run_known(settings(top_p=0.8))
    assert set(np.unique(out)) <= nucleus
    assert set(np.unique(out)) == nucleus


def test_temperature_samples_follow_softmax():
    out = run_known(settings(temperature=1.0), batch=256, steps=64)
    freq = np.bincount(out.ravel(), minlength=V) / out.size
    probs = np.asarray(jax.nn.softmax(KNOWN_LOGITS))
    assert np.abs(freq - probs).max() < 0.02


def test_repetition_penalty_walks_down_the_ranking():
    out = run_known(settings(decoder="argmax", repetition_penalty=1e3), batch=2, steps=6)
    # Primer token 5 is already seen; each emitted token is then penalized. Once the five positive
    # logits are all seen they shrink to ~0 (divided by 1e3) but still beat the negative unseen
    # ones (token 6: -0.3), so argmax returns to token 0: CTRL's rule, checked by hand.
    assert out[0].tolist() == [0, 1, 2, 3, 4, 0]


def test_eos_masked_unless_allowed():
    logits = KNOWN_LOGITS.at[2].set(10.0)  # EOS (id 2) is by far the most likely
    primers = jnp.full((4, 1), BOS, jnp.int32)
    out = sampler.sample(
        {"logits": logits},
        primers,
        jnp.zeros(4, jnp.int32),
        free_grammar(V),
        jax.random.key(0),
        step_fn=known_step_fn,
        num_steps=5,
        settings=sampler.DecoderSettings(decoder="argmax", grammar_mask=False),
    )
    assert not (np.asarray(out) == 2).any()


# --- the real model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    config = config_lib.freeze(tiny.get_config())
    tokenizer = get_tokenizer(config.tokenizer)
    model = build_model(config.model, tokenizer.vocab.size)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    return config, tokenizer, model, {"params": params}, StepFunction(model)


def sample_real(tiny_model, settings, *, batch=3, steps=40, seed=0, primer=None):
    _, tokenizer, _, variables, step_fn = tiny_model
    primers = np.full((batch, 1), BOS, np.int32) if primer is None else primer
    states = sampler.grammar_states_after(tokenizer.grammar, primers)
    return np.asarray(
        sampler.sample(
            variables,
            jnp.asarray(primers),
            jnp.asarray(states),
            jnp.asarray(tokenizer.grammar.next_state),
            jax.random.key(seed),
            step_fn=step_fn,
            num_steps=steps,
            settings=settings,
        )
    )


def test_same_seed_same_music(tiny_model):
    s = sampler.DecoderSettings(top_p=0.95)
    a, b = sample_real(tiny_model, s, seed=7), sample_real(tiny_model, s, seed=7)
    c = sample_real(tiny_model, s, seed=8)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_argmax_equals_python_loop_over_single_steps(tiny_model):
    _, tokenizer, model, variables, _ = tiny_model
    piece = Piece("primer", make_notes([60, 64, 67, 72], [0, 0, 1, 2], [1, 2, 2, 3]))
    primer = np.asarray([[BOS, *tokenizer.encode(piece).tolist()]], np.int32)
    s = sampler.DecoderSettings(decoder="argmax", grammar_mask=False, allow_eos=True)
    scanned = sample_real(tiny_model, s, batch=1, steps=25, primer=primer)[0]
    # The plain loop: one (jitted) model.apply per token, carry passed by hand, argmax in numpy.
    apply = jax.jit(lambda v, t, c: model.apply(v, t, c, train=False))
    carry = model.initial_carry(1)
    for t in primer[0]:
        logits, carry = apply(variables, jnp.asarray([[t]]), carry)
    looped = []
    for _ in range(25):
        nxt = int(np.argmax(np.asarray(logits[0, -1])))
        looped.append(nxt)
        logits, carry = apply(variables, jnp.asarray([[nxt]]), carry)
    assert scanned.tolist() == looped


def test_temperature_to_zero_is_argmax(tiny_model):
    greedy = sample_real(tiny_model, sampler.DecoderSettings(decoder="argmax"), batch=2)
    cold = sample_real(tiny_model, sampler.DecoderSettings(temperature=1e-6), batch=2, seed=3)
    np.testing.assert_array_equal(greedy, cold)


def skipped_per_sample(
    tok_overrides: dict, settings, batch: int, num_steps: int = 60, held_rule: bool = True
) -> list[int]:
    """Samples an untrained tiny model from BOS and counts each sample's skipped tokens."""
    config = config_lib.freeze(tiny.get_config())
    tokenizer = get_tokenizer(dataclasses.replace(config.tokenizer, **tok_overrides))
    model = build_model(config.model, tokenizer.vocab.size)
    variables = {"params": model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]}
    primers = np.full((batch, 1), BOS, np.int32)
    tokens = sampler.sample(
        variables,
        jnp.asarray(primers),
        jnp.asarray(sampler.grammar_states_after(tokenizer.grammar, primers)),
        jnp.asarray(tokenizer.grammar.next_state),
        jax.random.key(2),
        step_fn=StepFunction(model),
        num_steps=num_steps,
        settings=settings,
        held=sampler.held_keys(tokenizer.grammar, primers) if held_rule else None,
    )
    rows = np.concatenate([primers, np.asarray(tokens)], axis=1)
    return [tokenizer.decode(row).skipped for row in rows]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(name="event"),
        dict(name="event", num_velocity_bins=4),
        dict(name="frame", mark_onsets=True),
        dict(name="frame", mark_onsets=False),
        dict(name="chord"),
        dict(name="chord", chord_durations=True),
        dict(name="performance"),
    ],
)
def test_grammar_mask_gives_zero_skips(overrides):
    skipped = skipped_per_sample(overrides, sampler.DecoderSettings(temperature=1.5), batch=100)
    assert skipped == [0] * 100


def test_performance_samples_use_the_held_key_rule():
    """300 untrained performance samples of 200 tokens: with the table alone NOTE_OFFs of silent
    pitches get through and are skipped; with the held-key rule none are."""
    settings = sampler.DecoderSettings(temperature=1.5)
    masked = skipped_per_sample(dict(name="performance"), settings, batch=300, num_steps=200)
    assert sum(masked) == 0
    table_only = skipped_per_sample(dict(name="performance"), settings, 20, held_rule=False)
    assert sum(table_only) > 0


def test_without_the_mask_an_untrained_model_writes_ungrammatical_tokens():
    unmasked = sampler.DecoderSettings(temperature=1.5, grammar_mask=False)
    assert sum(skipped_per_sample({}, unmasked, batch=20)) > 0


def test_sliding_window_sampler_equals_rereading_loop(tiny_model):
    """The original's generation: each step re-reads the last W tokens from a zero state."""
    _, tokenizer, model, variables, step_fn = tiny_model
    window, steps = 5, 12
    primer = np.asarray([[BOS, 7, 9]], np.int32)
    s = sampler.DecoderSettings(decoder="argmax", grammar_mask=False, allow_eos=True)
    states = jnp.asarray(sampler.grammar_states_after(tokenizer.grammar, primer))
    table = jnp.asarray(tokenizer.grammar.next_state)
    out = sampler.sample_sliding(
        variables, jnp.asarray(primer), states, table, jax.random.key(0),
        step_fn=step_fn, num_steps=steps, settings=s, window=window,
    )  # fmt: skip
    history = [0, 0, *primer[0].tolist()]  # left-padded with PAD (0) to the window
    apply = jax.jit(lambda v, t: model.apply(v, t, None, train=False)[0])
    for _ in range(steps):
        logits = apply(variables, jnp.asarray([history[-window:]]))
        history.append(int(np.argmax(np.asarray(logits[0, -1]))))
    assert np.asarray(out)[0].tolist() == history[-steps:]


def sample_untrained(tok_overrides: dict, batch: int, num_steps: int, temperature: float,
                     seed: int, rules) -> tuple:
    """(tokenizer, rows int (B, 1 + num_steps)): an untrained tiny model sampled from BOS with
    `rules(tokenizer, primers) -> dict` of sampler.sample's rule arguments."""
    config = config_lib.freeze(tiny.get_config())
    tokenizer = get_tokenizer(dataclasses.replace(config.tokenizer, **tok_overrides))
    model = build_model(config.model, tokenizer.vocab.size)
    variables = {"params": model.init(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]}
    primers = np.full((batch, 1), BOS, np.int32)
    tokens = sampler.sample(
        variables, jnp.asarray(primers),
        jnp.asarray(sampler.grammar_states_after(tokenizer.grammar, primers)),
        jnp.asarray(tokenizer.grammar.next_state), jax.random.key(seed),
        step_fn=StepFunction(model), num_steps=num_steps,
        settings=sampler.DecoderSettings(temperature=temperature), **rules(tokenizer, primers),
    )  # fmt: skip
    return tokenizer, np.concatenate([primers, np.asarray(tokens)], axis=1)


def sampled_meters(tok_overrides: dict, rows_meter, batch: int, num_steps: int):
    """Samples an untrained tiny model from BOS with the meter-hold rule for `rows_meter`
    (None: meters free); returns (the distinct meters each row's tokens state, skips per row)."""
    def rules(tokenizer, primers):
        meter = None if rows_meter is None else sampler.meter_hold(tokenizer, rows_meter, primers)
        return dict(held=sampler.held_keys(tokenizer.grammar, primers), meter=meter)

    tokenizer, rows = sample_untrained(tok_overrides, batch, num_steps, 2.0, 3, rules)
    # Read back independently of the sampler: the TIMESIG tokens each row holds, by id.
    by_token = {t: m for m, t in tokenizer.meter_tokens().items()}
    meters = [sorted({by_token[t] for t in row.tolist() if t in by_token}) for row in rows]
    return meters, [tokenizer.decode(row).skipped for row in rows]


@pytest.mark.parametrize("name", ["voices", "event"])
def test_meter_hold_keeps_one_meter_per_sample(name):
    """An untrained model at temperature 2 changes meter at will (voices states one in every
    bar); holding the first one sampled leaves one meter per row, an explicit 3/4 leaves 3/4
    everywhere, and nothing is skipped."""
    batch, steps = 24, 160
    free, skipped = sampled_meters({"name": name}, None, batch, steps)
    assert sum(len(m) > 1 for m in free) >= 4 and sum(skipped) == 0
    held, skipped = sampled_meters({"name": name}, [None] * batch, batch, steps)
    assert all(len(m) <= 1 for m in held) and sum(skipped) == 0  # event: none stated = 4/4
    assert len({tuple(m) for m in held}) > 2  # each row holds its own first meter
    waltz, skipped = sampled_meters({"name": name}, [(3, 4)] * batch, batch, steps)
    assert all(m == [(3, 4)] for m in waltz) and sum(skipped) == 0


def test_meter_hold_refuses_what_the_tokens_cannot_state():
    config = config_lib.freeze(tiny.get_config())
    voices = get_tokenizer(dataclasses.replace(config.tokenizer, name="voices"))
    with pytest.raises(ValueError, match="7/1"):
        sampler.meter_hold(voices, [(7, 1)])
    frame = get_tokenizer(dataclasses.replace(config.tokenizer, name="frame"))
    assert sampler.meter_hold(frame, [None]) is None  # frames state no meter: nothing to hold


def walk_voices(tokenizer, row):
    """(steps int (S, U), now, done): the pitch each voice sounds at each complete grid step of
    a voices-token row (-1 where it rests), the pitches after the last token, and how many
    voices of an unfinished step are written; read from the token names alone."""
    voices = tokenizer.config.num_voices
    steps, now, u = [], [-1] * voices, 0
    for t in np.asarray(row).tolist():
        name, index = tokenizer.vocab.lookup(t)
        if not name.startswith(("NOTE", "HOLD", "REST")):
            continue
        if name.startswith("NOTE"):
            now[u] = tokenizer.config.pitch_min + index
        elif name.startswith("REST"):
            now[u] = -1
        u += 1
        if u == voices:
            steps.append(list(now))
            u = 0
    return np.asarray(steps, np.int64).reshape(-1, voices), now, u


def voice_pitches(tokenizer, row) -> np.ndarray:
    return walk_voices(tokenizer, row)[0]


def count_parallels(steps_SxU: np.ndarray) -> int:
    """Parallel fifths, octaves and unisons between any two voices over consecutive steps, by
    the textbook rule in plain Python (both move the same way, a perfect interval both times)."""
    count = 0
    for a, b in zip(steps_SxU[:-1].tolist(), steps_SxU[1:].tolist(), strict=True):
        for hi in range(len(a)):
            for lo in range(hi + 1, len(a)):
                if min(a[hi], a[lo], b[hi], b[lo]) < 0:
                    continue
                up, down = b[hi] - a[hi], b[lo] - a[lo]
                before, after = (a[hi] - a[lo]) % 12, (b[hi] - b[lo]) % 12
                if up * down > 0 and before == after and after in (0, 7):
                    count += 1
    return count


def sample_voices(penalty: float, batch: int = 16, num_steps: int = 200, per_voice=True):
    tok = dict(name="voices", per_voice_tokens=per_voice, pitch_min=55, pitch_max=67)

    def rules(tokenizer, primers):
        return dict(voices=sampler.parallels_rule(tokenizer, primers, penalty))

    return sample_untrained(tok, batch, num_steps, 1.5, 5, rules)


@pytest.mark.parametrize("per_voice", [True, False])
def test_parallels_rule_removes_parallel_fifths_and_octaves(per_voice):
    """Voices over a 13-pitch range written by an untrained model at temperature 1.5 move in
    parallel perfect intervals often; a 30-nat parallels penalty leaves none (counted from the
    decoded voices by the plain-Python rule), with nothing skipped; 0 leaves the rule off."""
    tokenizer, free = sample_voices(0.0, per_voice=per_voice)
    assert sampler.parallels_rule(tokenizer, free[:, :1], 0.0) is None
    assert sum(count_parallels(voice_pitches(tokenizer, row)) for row in free) >= 10
    tokenizer, strict = sample_voices(30.0, per_voice=per_voice)
    assert sum(count_parallels(voice_pitches(tokenizer, row)) for row in strict) == 0
    assert sum(tokenizer.decode(row).skipped for row in strict) == 0


def test_parallels_rule_starts_where_the_primer_leaves_the_voices():
    """parallels_rule reads where each primer leaves the voices: the same pitches as the
    plain-Python reading of the token names, mid-step included."""
    tokenizer, rows = sample_voices(0.0, batch=4, num_steps=37)
    rule = sampler.parallels_rule(tokenizer, rows, 1.0)
    prev, now = np.asarray(rule[3]), np.asarray(rule[4])
    for b, row in enumerate(rows):
        steps, now_b, done = walk_voices(tokenizer, row)
        assert now[b].tolist() == now_b
        assert prev[b].tolist() == steps[-1 if done else -2].tolist()


def test_parallels_tokenizers_without_voices_have_no_rule():
    config = config_lib.freeze(tiny.get_config())
    for name in ("event", "chord", "frame", "performance"):
        tokenizer = get_tokenizer(dataclasses.replace(config.tokenizer, name=name))
        assert tokenizer.voice_tables() is None
        assert sampler.parallels_rule(tokenizer, np.full((2, 1), BOS), 3.0) is None


def test_an_unprimed_sample_holds_the_training_musics_meter():
    """held_meters' default: the meter stated most often (TIMESIG tokens by count), used where a
    row's primer states none; a primer's own meter still wins."""
    from jaxcomposer.sample import bars as bar_lib

    config = config_lib.freeze(tiny.get_config())
    voices = get_tokenizer(dataclasses.replace(config.tokenizer, name="voices"))
    table = voices.meter_tokens()
    corpus = np.asarray([table[(3, 4)]] * 5 + [table[(4, 4)]] * 3 + [table[(1, 16)]] * 4)
    assert bar_lib.corpus_meter(voices, corpus) == (3, 4)
    assert bar_lib.corpus_meter(voices, np.asarray([BOS, voices.vocab.token("BAR")])) is None
    primers = np.asarray([[BOS, voices.vocab.token("BAR"), table[(4, 4)]], [BOS, 0, 0]])
    held = bar_lib.held_meters(voices, "hold", primers, default=(3, 4))
    assert held == [(4, 4), (3, 4)]
    frame = get_tokenizer(dataclasses.replace(config.tokenizer, name="frame"))
    assert bar_lib.corpus_meter(frame, corpus) is None
