"""Key conditioning ([X; M]): key names, labels, the vector reaching the LSTM, schedules inside the
jitted sampler, and the strict scale mask composed with the grammar."""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxcomposer.data import labels
from jaxcomposer.data.dataset import TokenSplit
from jaxcomposer.model import StepFunction, build_model, conditioning
from jaxcomposer.music import keys
from jaxcomposer.music.notes import KeySignature, Piece, TimeSignature, make_notes
from jaxcomposer.sample import keyplan, sampler
from jaxcomposer.tokenizers import BOS, get_tokenizer
from jaxcomposer.train import batching

KEY_SPEC = conditioning.Spec("key")


# --- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, name",
    [("D minor", "D minor"), ("F# major", "F# major"), ("Bb minor", "Bb minor"), ("d", "D minor"),
     ("Dm", "D minor"), ("D min", "D minor"), ("Eb", "Eb major"), ("c#", "C# minor"),
     ("E- major", "Eb major"), ("bbm", "Bb minor"), ("G maj", "G major")],
)  # fmt: skip
def test_key_names_parse(text, name):
    assert keys.key_name(keys.parse_key(text)) == name


def test_every_key_name_round_trips():
    assert [keys.parse_key(keys.key_name(k)) for k in range(24)] == list(range(24))


@pytest.mark.parametrize("bad", ["H major", "D dorian", "", "7", "D minor minor"])
def test_bad_key_names_get_one_line_listing_the_forms(bad):
    with pytest.raises(keys.KeyNameError) as info:
        keys.parse_key(bad)
    message = str(info.value)
    assert "\n" not in message and "accepted forms" in message and "F# major" in message


def test_schedules_parse_and_reject_bad_bars():
    assert keys.parse_key_schedule("1:D minor, 9:F major") == [(1, 14), (9, 5)]
    assert keys.parse_key_schedule("5:G") == [(1, 7), (5, 7)]
    with pytest.raises(keys.KeyNameError, match="bar"):
        keys.parse_key_schedule("0:D minor")
    with pytest.raises(keys.KeyNameError, match="accepted forms"):
        keys.parse_key_schedule("1:D minor,9:Q")


# --- labels -----------------------------------------------------------------------------------
def _scale_piece(tonic: int, start: float, bars: int) -> list[tuple[int, float, float]]:
    steps = [0, 2, 4, 5, 7, 9, 11, 12, 7, 4]
    return [
        (60 + tonic + steps[i % len(steps)], start + i * 0.5, start + i * 0.5 + 0.5)
        for i in range(bars * 8)
    ]


def _piece(rows, key_signatures=(), time_signatures=()) -> Piece:
    table = np.asarray(rows, np.float64)
    notes = make_notes(table[:, 0], table[:, 1], table[:, 2], np.full(len(table), 80))
    return Piece("x.mid", notes, (), tuple(time_signatures), tuple(key_signatures))


def test_windowed_estimate_finds_a_modulation_and_labels_follow_the_beats():
    piece = _piece(_scale_piece(0, 0.0, 8) + _scale_piece(6, 32.0, 8))
    segments, source = labels.key_segments(piece, "midi")
    assert source == "estimate"
    assert [k for _, k in segments] == [0, 6]  # C major, then F# major
    assert segments[1][0] == pytest.approx(32.0, abs=8.0)
    tokenizer = get_tokenizer(tiny_config().tokenizer)
    tokens = tokenizer.encode(piece)
    track = labels.token_labels(tokenizer, tokens, [(0.0, 0), (32.0, 6)])
    pitch_ids = tokenizer.vocab.range_ids("PITCH")
    is_pitch = np.isin(tokens, pitch_ids)
    # Second computation: the decoder's note onsets, in the order the pitch tokens appear.
    onsets = np.sort(tokenizer.decode(np.r_[BOS, tokens]).notes.start)
    np.testing.assert_array_equal(track[is_pitch], np.where(onsets < 32.0, 0, 6))


def test_token_beats_agree_with_the_decoder_across_a_meter_change():
    rows = [(60 + i % 12, i * 0.75, i * 0.75 + 0.5) for i in range(40)]
    piece = _piece(rows, time_signatures=[TimeSignature(0.0, 3, 4), TimeSignature(12.0, 6, 8)])
    tokenizer = get_tokenizer(tiny_config().tokenizer)
    tokens = tokenizer.encode(piece)
    beats = tokenizer.token_beats(tokens)
    is_pitch = np.isin(tokens, tokenizer.vocab.range_ids("PITCH"))
    decoded = tokenizer.decode(np.r_[BOS, tokens]).notes
    np.testing.assert_allclose(beats[is_pitch], np.sort(decoded.start))


def test_file_key_kept_unless_the_notes_contradict_it():
    piece = _piece(_scale_piece(2, 0.0, 4), key_signatures=[KeySignature(0.0, 2)])
    assert labels.key_segments(piece, "midi") == ([(0.0, 2)], "file")
    sequencer_default = dataclasses.replace(piece, key_signatures=(KeySignature(0.0, 6),))
    segments, source = labels.key_segments(sequencer_default, "midi")
    assert source == "estimate" and segments[0][1] == 2


def test_labels_transpose_with_the_notes():
    """Each pitch token carries the label 'major key on this pitch's class'; after the random
    transposition of each window, the vector fed with a pitch token must name the transposed
    token's pitch class, whatever shift the batch chose."""
    config = tiny_config()
    tokenizer = get_tokenizer(config.tokenizer)
    rng = np.random.default_rng(0)
    pitch_ids = tokenizer.vocab.range_ids("PITCH")
    bodies = [rng.choice(pitch_ids[20:60], size=50).astype(np.int32) for _ in range(4)]
    pcs = lambda t: (t - pitch_ids[0] + config.tokenizer.pitch_min) % 12
    split = TokenSplit.from_pieces(list("abcd"), bodies, [pcs(b).astype(np.int8) for b in bodies])
    tables = tokenizer.transposition_tables(5)
    batch = batching.sample_windows(
        split.tokens, split.offsets, seed=1, step=3, batch_size=16, seq_len=12,
        transpose_tables=tables, labels=split.labels, spec=KEY_SPEC,
    )  # fmt: skip
    inputs, cond = batch["inputs_BxL"], batch["cond_BxLxC"]
    pitch = np.isin(inputs, pitch_ids)
    assert pitch.sum() > 100
    tonic = cond[..., :12].argmax(-1)
    np.testing.assert_array_equal(tonic[pitch], pcs(inputs[pitch]))
    assert (cond[..., 12][pitch] == 1).all()  # mode kept (major)
    shifted = (tables[:, bodies[0]] != bodies[0]).any()
    assert shifted  # the tables really move pitches


def test_a_split_without_key_labels_cannot_feed_a_key_conditioned_model():
    split = TokenSplit.from_pieces(["a"], [np.arange(3, 40, dtype=np.int32)])
    assert split.labels == {}
    with pytest.raises(ValueError, match="prepare again"):
        batching.sample_windows(
            split.tokens, split.offsets, seed=0, step=0, batch_size=2, seq_len=8,
            labels=split.labels, spec=KEY_SPEC,
        )  # fmt: skip


# --- the model --------------------------------------------------------------------------------
def _init(model):
    return model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


def test_the_vector_reaches_the_lstm_and_an_unconditioned_model_ignores_it():
    config = tiny_config()
    vocab = get_tokenizer(config.tokenizer).vocab.size
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, vocab, (2, 10)), jnp.int32)
    c_major = conditioning.vector(KEY_SPEC, np.zeros((2, 10), int))
    d_minor = conditioning.vector(KEY_SPEC, np.full((2, 10), 14))
    d_minor[:, :5] = c_major[:, :5]  # the key changes mid-sequence
    keyed = build_model(config.model, vocab, KEY_SPEC.dim)
    variables = _init(keyed)
    a = keyed.apply(variables, tokens, cond_BxLxC=jnp.asarray(c_major))[0]
    b = keyed.apply(variables, tokens, cond_BxLxC=jnp.asarray(d_minor))[0]
    np.testing.assert_array_equal(a[:, :5], b[:, :5])  # causal: same before the change
    assert np.abs(np.asarray(a[:, 5:] - b[:, 5:])).min(axis=-1).min() > 0
    plain = build_model(config.model, vocab)
    variables = _init(plain)
    base = plain.apply(variables, tokens)[0]
    for cond in (c_major, d_minor):
        np.testing.assert_array_equal(plain.apply(variables, tokens, cond_BxLxC=cond)[0], base)


def test_condition_logits_add_m_times_w_to_the_plain_models_logits():
    config = tiny_config()
    vocab = get_tokenizer(config.tokenizer).vocab.size
    tokens = jnp.asarray(np.random.default_rng(1).integers(3, vocab, (2, 7)), jnp.int32)
    key_track = np.array([[0] * 3 + [14] * 4, [21] * 7])  # C major -> D minor; A minor
    cond = conditioning.vector(KEY_SPEC, key_track).astype(np.float32)
    plain = build_model(config.model, vocab, KEY_SPEC.dim)
    biased = build_model(dataclasses.replace(config.model, condition_logits=True), vocab,
                         KEY_SPEC.dim)  # fmt: skip
    variables = _init(biased)
    assert not np.asarray(variables["params"]["cond_logits"]["kernel"]).any()  # zero at init
    params = {k: v for k, v in variables["params"].items() if k != "cond_logits"}
    base = np.asarray(plain.apply({"params": params}, tokens, cond_BxLxC=cond)[0], np.float64)
    w_CxV = np.random.default_rng(2).normal(size=(KEY_SPEC.dim, vocab))
    variables["params"]["cond_logits"]["kernel"] = jnp.asarray(w_CxV, jnp.float32)
    got = np.asarray(biased.apply(variables, tokens, cond_BxLxC=cond)[0], np.float64)
    np.testing.assert_allclose(got - base, cond.astype(np.float64) @ w_CxV, atol=1e-5)


# --- the sampler ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _KeyEcho:
    """A fake step function that walks BAR -> POSITION(tonic) -> PITCH -> DURATION(tonic) ->
    BAR ..., where tonic is the tonic of the vector fed with the input token: the chosen
    POSITION shows the key fed with each BAR, the DURATION the key fed with each PITCH."""

    vocab: object

    def __call__(self, variables, tokens_BxL, carry=None, cond_BxLxC=None):
        v = self.vocab
        size = v.size
        tonic = jnp.argmax(cond_BxLxC[..., :12], axis=-1)
        kind = jnp.searchsorted(
            jnp.asarray([v.offset(n) for n in ("POSITION", "PITCH", "DURATION")]),
            tokens_BxL, side="right",
        )  # fmt: skip  # 0: BOS/BAR/TIMESIG, 1: POSITION, 2: PITCH, 3: DURATION
        target = jnp.select(
            [kind == 0, kind == 1, kind == 2],
            [v.offset("POSITION") + tonic, v.offset("PITCH") + 39, v.offset("DURATION") + tonic],
            v.token("BAR"),
        )
        return 10.0 * jax.nn.one_hot(target, size), carry


def test_a_schedule_changes_the_vector_at_the_bar_token_inside_the_scan():
    config = tiny_config()
    tokenizer = get_tokenizer(config.tokenizer)
    ks = sampler.key_settings(tokenizer, KEY_SPEC)
    schedule = keys.parse_key_schedule("1:C major,3:F# major,4:D minor")
    primers = np.full((2, 1), BOS, np.int32)
    inputs = sampler.key_inputs(tokenizer, ks, primers, [schedule, [(1, 9)]])
    states = sampler.grammar_states_after(tokenizer.grammar, primers)
    tokens = sampler.sample_keyed(
        {}, jnp.asarray(primers), jnp.asarray(states), jnp.asarray(tokenizer.grammar.next_state),
        jax.random.key(0), inputs, step_fn=_KeyEcho(tokenizer.vocab), num_steps=20,
        settings=sampler.DecoderSettings(decoder="argmax"), ks=ks,
    )[0]  # fmt: skip
    v = tokenizer.vocab
    for row, expect in zip(np.asarray(tokens), ([0, 0, 6, 2, 2], [9] * 5), strict=True):
        assert [v.describe(t).split("(")[0] for t in row[:4]] == [
            "BAR", "POSITION", "PITCH", "DURATION"
        ]  # fmt: skip
        positions = row[row >= v.offset("POSITION")]
        positions = positions[positions < v.offset("PITCH")] - v.offset("POSITION")
        durations = row[row >= v.offset("DURATION")] - v.offset("DURATION")
        np.testing.assert_array_equal(positions, expect)  # key fed with each bar's BAR
        np.testing.assert_array_equal(durations, expect)  # key fed with each bar's PITCH


def test_primer_vectors_count_bars_like_the_scan():
    tokenizer = get_tokenizer(tiny_config().tokenizer)
    bar = tokenizer.vocab.token("BAR")
    pos = tokenizer.vocab.token("POSITION", 0)
    row = np.array([BOS, bar, pos, bar, pos, bar, pos])
    counter = tokenizer.bar_counter()
    np.testing.assert_array_equal(counter.bars(row), [1, 1, 1, 2, 2, 3, 3])
    ks = sampler.key_settings(tokenizer, KEY_SPEC)
    inputs = sampler.key_inputs(tokenizer, ks, row[None], [[(1, 0), (3, 7)]])
    tonic = inputs.primer_cond_BxPxC[0, :, :12].argmax(-1)
    np.testing.assert_array_equal(tonic, [0, 0, 0, 0, 0, 7, 7])


@pytest.mark.parametrize("name", ["event", "chord", "performance"])
def test_strict_scale_never_leaves_the_key_and_decodes_with_zero_skips(name):
    """An untrained model, 24 keys x 12 samples each, 60 tokens: no pitch token outside the
    scale of the key in force (recomputed from the tokens with the bar counter), no skips."""
    config = tiny_config(tokenizer={"name": name})
    tokenizer = get_tokenizer(config.tokenizer)
    model = build_model(config.model, tokenizer.vocab.size, KEY_SPEC.dim)
    variables = _init(model)
    ks = sampler.key_settings(tokenizer, KEY_SPEC, scale="strict")
    batch = 288
    schedules = [[(1, i % 24), (2, (i * 7 + 3) % 24)] for i in range(batch)]
    primers = np.full((batch, 1), BOS, np.int32)
    inputs = sampler.key_inputs(tokenizer, ks, primers, schedules)
    states = sampler.grammar_states_after(tokenizer.grammar, primers)
    tokens, removed, pitch = sampler.sample_keyed(
        variables, jnp.asarray(primers), jnp.asarray(states),
        jnp.asarray(tokenizer.grammar.next_state), jax.random.key(1), inputs,
        step_fn=StepFunction(model), num_steps=60, settings=sampler.DecoderSettings(), ks=ks,
        held=sampler.held_keys(tokenizer.grammar, primers),
    )  # fmt: skip
    rows = np.concatenate([primers, np.asarray(tokens)], axis=1)
    counter = tokenizer.bar_counter()
    in_scale = conditioning.in_scale_table(tokenizer)
    is_pitch = tokenizer.pitch_class_table().any(axis=1)
    schedule_BxN = conditioning.schedule_arrays(schedules)
    pitches = 0
    for i, row in enumerate(rows):
        bar = counter.bars(row)
        sched_bars, sched_keys = (np.repeat(a[i : i + 1], row.size, 0) for a in schedule_BxN)
        key_in_force = conditioning.key_at_bar(sched_bars, sched_keys, bar)
        # The mask for token t uses the key of input t - 1.
        assert in_scale[key_in_force[:-1], row[1:]].all()
        assert tokenizer.decode(row).skipped == 0
        pitches += int(is_pitch[row].sum())
    assert pitches > 2000
    removed, pitch = np.asarray(removed), np.asarray(pitch)
    assert 0.1 < removed[pitch].mean() < 0.99  # an untrained model spreads mass everywhere


def test_soft_scale_removes_less_mass_than_strict():
    config = tiny_config()
    tokenizer = get_tokenizer(config.tokenizer)
    model = build_model(config.model, tokenizer.vocab.size)
    variables = _init(model)
    primers = np.full((32, 1), BOS, np.int32)
    states = sampler.grammar_states_after(tokenizer.grammar, primers)
    means = {}
    for scale in ("strict", "soft", "off"):
        ks = sampler.key_settings(tokenizer, conditioning.Spec(), scale=scale, penalty=1.0)
        inputs = sampler.key_inputs(tokenizer, ks, primers, [[(1, 3)]] * 32)
        _, removed, pitch = sampler.sample_keyed(
            variables, jnp.asarray(primers), jnp.asarray(states),
            jnp.asarray(tokenizer.grammar.next_state), jax.random.key(2), inputs,
            step_fn=StepFunction(model), num_steps=30, settings=sampler.DecoderSettings(), ks=ks,
        )  # fmt: skip
        means[scale] = float(np.asarray(removed)[np.asarray(pitch)].mean())
    assert means["off"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < means["soft"] < means["strict"]


def test_a_key_change_after_the_last_bar_is_warned_about(caplog):
    sample = dataclasses.replace(
        tiny_config().sample, key="1:C,3:G,99:D minor", num_bars=4, num_samples=1
    )
    with caplog.at_level(logging.WARNING):
        plan = keyplan.plan_keys("unused", sample, KEY_SPEC, [None], seed=0)
    assert plan.schedules == [[(1, 0), (3, 7), (99, 14)]]
    assert "change(s) at bar 99 come after the last bar (--num_bars=4)" in caplog.text


@pytest.mark.parametrize(
    "name, expected",
    [
        ("d-moll", "D minor"), ("D-Dur", "D major"), ("h-moll", "B minor"), ("H-Dur", "B major"),
        ("fis-moll", "F# minor"), ("Es-Dur", "Eb major"), ("As-Dur", "Ab major"),
        ("b-moll", "Bb minor"), ("B-Dur", "Bb major"), ("cis", "C# minor"), ("Fis", "F# major"),
        # English forms keep their reading, including "-" as a flat and "B" alone as B major.
        ("B", "B major"), ("b", "B minor"), ("Bb minor", "Bb minor"), ("B-", "Bb major"),
        ("D minor", "D minor"), ("Eb", "Eb major"),
    ],
)  # fmt: skip
def test_german_key_names_read_as_germans_mean_them(name, expected):
    assert keys.key_name(keys.parse_key(name)) == expected


@pytest.mark.parametrize(
    "german, english",
    [
        ("cis-moll", "C# minor"), ("Cis-Dur", "C# major"), ("dis", "D# minor"),
        ("fis", "F# minor"), ("gis-moll", "G# minor"), ("ais-moll", "A# minor"),
        ("eis-moll", "E# minor"), ("His-Dur", "B# major"),
        ("Es-Dur", "Eb major"), ("es-moll", "Eb minor"), ("As", "Ab major"),
        ("as-moll", "Ab minor"), ("Des-Dur", "Db major"), ("Ges-Dur", "Gb major"),
        ("Ces-Dur", "Cb major"), ("Fes-Dur", "Fb major"), ("b-moll", "Bb minor"),
        ("heses-moll", "Bbb minor"), ("Eses-Dur", "Ebb major"), ("ases", "Abb minor"),
        ("h", "B minor"), ("H-Dur", "B major"), ("d-moll", "D minor"), ("D-Dur", "D major"),
    ],
)  # fmt: skip
def test_german_names_give_the_key_of_their_english_spelling(german, english):
    # Two readings: the German suffix rules against the English letter + #/b path.
    assert keys.parse_key(german) == keys.parse_key(english)


def test_a_misspelt_german_name_is_refused_with_the_accepted_forms():
    with pytest.raises(keys.KeyNameError, match="German"):
        keys.parse_key("Ds-Dur")


def test_minor_scale_variants_are_built_from_the_natural_minor():
    # Written out from the natural minor by raising degrees, against the table in keys.
    natural = set(keys.SCALE_STEPS["natural_minor"])
    melodic_ascending = (natural - {8, 10}) | {9, 11}
    assert set(keys.SCALE_STEPS["harmonic_minor"]) == (natural - {10}) | {11}
    assert set(keys.SCALE_STEPS["minor_leading_tone"]) == natural | {11}
    assert set(keys.SCALE_STEPS["all_minor_forms"]) == natural | {11} | melodic_ascending
    # A minor with the leading tone: A B C D E F G G#; C major stays major whatever the form.
    a_minor = np.flatnonzero(keys.scale_pitch_classes(12 + 9, "minor_leading_tone"))
    assert a_minor.tolist() == [0, 2, 4, 5, 7, 8, 9, 11]
    for form in keys.MINOR_FORMS:
        assert np.flatnonzero(keys.scale_pitch_classes(0, form)).tolist() == [0, 2, 4, 5, 7, 9, 11]
    with pytest.raises(ValueError, match="minor_form"):
        keys.scale_pitch_classes(12, "dorian")


def test_each_scale_user_names_its_variant():
    from jaxcomposer.evaluation import musicstats
    from jaxcomposer.finetune import rewards

    assert (musicstats.SCALE_MASKS_24x12 == keys.scale_table("natural_minor")).all()
    for key in range(keys.NUM_KEYS):
        assert (rewards.key_scale(key) == keys.scale_pitch_classes(key, "minor_leading_tone")).all()
    tokenizer = get_tokenizer(tiny_config().tokenizer)
    pcs_VxC = tokenizer.pitch_class_table()
    table = conditioning.in_scale_table(tokenizer)
    d_minor = 12 + 2
    for token in np.flatnonzero(pcs_VxC.any(axis=1)):
        expected = all((pc - 2) % 12 in keys.SCALE_STEPS["all_minor_forms"]
                       for pc in np.flatnonzero(pcs_VxC[token]))  # fmt: skip
        assert table[d_minor, token] == expected
