"""Autoregressive sampling as one jitted `lax.scan` that carries the LSTM state.

Per step: the model's step function (the same `apply` that training uses, with L=1 and the
previous carry) gives logits; a repetition penalty, the grammar mask and the decoder rule are
applied; the chosen token and the grammar state advance. No window is re-read per step, which is
what made the original project's generation slow (`model.predict` on 100 notes for every note).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomposer.config_lib import CHOICES
from jaxcomposer.model import conditioning
from jaxcomposer.model.loss import MASKED_LOGIT as NEG_INF  # the one masked-logit value
from jaxcomposer.tokenizers.grammar import held_after_tokens, held_allows  # the held-key rule
from jaxcomposer.tokenizers.vocab import BOS, EOS


@dataclasses.dataclass(frozen=True)
class DecoderSettings:
    """How logits become tokens. Hashable, so it is a static argument of the jitted sampler."""

    decoder: str = "temperature"  # "argmax" | "temperature"
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    grammar_mask: bool = True
    allow_eos: bool = False  # length is the user's choice, so EOS is masked by default

    def __post_init__(self):
        if self.decoder not in CHOICES["sample.decoder"]:
            choices = CHOICES["sample.decoder"]
            raise ValueError(f"decoder must be one of {choices}, got {self.decoder!r}")
        if self.decoder == "temperature" and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError(f"bad decoder settings: {self}")


def apply_repetition_penalty(logits_BxV, counts_BxV, penalty: float):
    """CTRL-style: logits of tokens already emitted are divided (> 0) or multiplied by penalty."""
    if penalty == 1.0:
        return logits_BxV
    seen = counts_BxV > 0
    penalized = jnp.where(logits_BxV > 0, logits_BxV / penalty, logits_BxV * penalty)
    return jnp.where(seen, penalized, logits_BxV)


def top_k_filter(logits_BxV, k: int):
    if k <= 0 or k >= logits_BxV.shape[-1]:
        return logits_BxV
    kth = jax.lax.top_k(logits_BxV, k)[0][..., -1:]
    return jnp.where(logits_BxV >= kth, logits_BxV, NEG_INF)


def top_p_filter(logits_BxV, p: float):
    """Keeps the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits_BxV
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < p  # the first token is always kept
    threshold = jnp.min(jnp.where(keep, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BxV >= threshold, logits_BxV, NEG_INF)


def choose_tokens(logits_BxV, rng, settings: DecoderSettings):
    if settings.decoder == "argmax":
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits = logits_BxV / settings.temperature
    logits = top_p_filter(top_k_filter(logits, settings.top_k), settings.top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def masked_logits(logits_BxV, state_B, next_state_SxV, counts_BxV, settings: DecoderSettings):
    logits = apply_repetition_penalty(
        logits_BxV.astype(jnp.float32), counts_BxV, settings.repetition_penalty
    )
    if settings.grammar_mask:
        logits = jnp.where(next_state_SxV[state_B] >= 0, logits, NEG_INF)
    if not settings.allow_eos:
        logits = logits.at[:, EOS].set(NEG_INF)
    return logits


def meter_hold_mask(logits_BxV, is_meter_V, in_force_B, stated_B):
    """bool (B, V): tokens the meter-hold rule allows. Any token that states no meter; a meter
    token only while no meter is in force (in_force_B == -1) or when it is the one in force;
    and a row whose meter is in force but not yet stated by its tokens (an explicit meter from
    BOS) states it at the first token where the grammar allows it (only that token is allowed
    there), so that the decoded music is in that meter (event tokens default to 4/4)."""
    vocab = jnp.arange(is_meter_V.shape[0])
    held_BxV = vocab[None] == in_force_B[:, None]
    allowed = ~is_meter_V[None] | (in_force_B < 0)[:, None] | held_BxV
    rows = jnp.arange(in_force_B.shape[0])
    can_state_B = (in_force_B >= 0) & (logits_BxV[rows, jnp.maximum(in_force_B, 0)] > NEG_INF / 2)
    return jnp.where((can_state_B & ~stated_B)[:, None], held_BxV, allowed)


def meter_hold(tokenizer, rows_meter: list, primers: np.ndarray | None = None) -> tuple | None:
    """(is_meter_V, in_force_B, stated_B) for the samplers' `meter` argument: `rows_meter[b]`
    is the (numerator, denominator) row b holds, or None to hold the first meter it samples;
    stated_B says whether primer row b's own tokens already state that meter last (else it is
    stated at the first place the grammar allows). Returns None when the tokenizer states no
    meter (nothing to hold). Raises ValueError for a meter the tokenizer cannot state."""
    table = tokenizer.meter_tokens()
    if not table:
        return None
    is_meter_V = np.zeros(tokenizer.vocab.size, bool)
    is_meter_V[list(table.values())] = True
    in_force, stated = [], []
    for b, meter in enumerate(rows_meter):
        if meter is not None and tuple(meter) not in table:
            known = ", ".join(f"{n}/{d}" for n, d in table)
            raise ValueError(f"meter {meter[0]}/{meter[1]} is not one these tokens state ({known})")
        in_force.append(-1 if meter is None else table[tuple(meter)])
        own = tokenizer.meters(primers[b]) if primers is not None else ()
        stated.append(bool(own) and (own[-1].numerator, own[-1].denominator) == meter)
    return (
        jnp.asarray(is_meter_V),
        jnp.asarray(np.asarray(in_force, np.int32)),
        jnp.asarray(np.asarray(stated, bool)),
    )


PERFECT_CLASSES = (0, 7)  # interval classes mod 12 of parallel octaves (and unisons) and fifths


def parallel_motion(state_B, voices):
    """bool (B, V): the onset tokens that would move the voice due now (`VoiceTables.voice_S`
    of each row's grammar state) in parallel perfect fifths, octaves or unisons with a voice
    above it, already written at this grid step.

    The rule of common-practice voice leading (e.g. Piston, *Harmony*, ch. 3): two voices a
    perfect fifth (or octave) apart at the previous step, both moving the same way, that are a
    fifth (or octave) apart again. `voices = (voice_S, kind_V, pitch_V, prev_BxU, now_BxU,
    penalty)` (`parallels_rule`): prev_BxU the pitch each voice sounded at the previous step,
    now_BxU at this step so far (voices above the one due), -1 where a voice rests."""
    voice_S, _, pitch_V, prev_BxU, now_BxU, _ = voices
    due_B = voice_S[state_B]
    num_voices = prev_BxU.shape[1]
    above_BxU = (jnp.arange(num_voices)[None] < due_B[:, None]) & (due_B >= 0)[:, None]
    own_prev_B = jnp.take_along_axis(prev_BxU, jnp.maximum(due_B, 0)[:, None], axis=1)[:, 0]
    cand_1xVx1 = pitch_V[None, :, None]
    own_Bx1x1 = own_prev_B[:, None, None]
    upper_prev, upper_now = prev_BxU[:, None, :], now_BxU[:, None, :]
    sounding = (cand_1xVx1 >= 0) & (own_Bx1x1 >= 0) & (upper_prev >= 0) & (upper_now >= 0)
    upper_move = jnp.sign(upper_now - upper_prev)
    same_way = (upper_move != 0) & (upper_move == jnp.sign(cand_1xVx1 - own_Bx1x1))
    before = (upper_prev - own_Bx1x1) % 12
    after = (upper_now - cand_1xVx1) % 12
    perfect = (before == after) & jnp.isin(after, jnp.asarray(PERFECT_CLASSES))
    return jnp.any(above_BxU[:, None, :] & sounding & same_way & perfect, axis=-1)


def _update_voices(voices, state_B, token_B):
    """`voices` after row b wrote token_B[b] in grammar state state_B[b]: the top voice's token
    opens a grid step (what sounded becomes the previous step); an onset sets its voice's
    pitch, a rest clears it, a hold keeps it."""
    voice_S, kind_V, pitch_V, prev_BxU, now_BxU, penalty = voices
    due_B = voice_S[state_B]
    prev_BxU = jnp.where((due_B == 0)[:, None], now_BxU, prev_BxU)
    kind_B = kind_V[token_B]
    rows = jnp.arange(token_B.shape[0])
    old_B = now_BxU[rows, jnp.maximum(due_B, 0)]
    new_B = jnp.where(kind_B == 1, pitch_V[token_B], jnp.where(kind_B == 3, -1, old_B))
    here_BxU = (jnp.arange(now_BxU.shape[1])[None] == due_B[:, None]) & (kind_B > 0)[:, None]
    now_BxU = jnp.where(here_BxU, new_B[:, None], now_BxU)
    return (voice_S, kind_V, pitch_V, prev_BxU, now_BxU, penalty)


def parallels_rule(tokenizer, primers: np.ndarray, penalty: float) -> tuple | None:
    """The samplers' `voices` argument for the soft parallels rule (`parallel_motion`): onset
    tokens that move a voice in parallel fifths or octaves with a voice above it lose `penalty`
    nats (logits, like the soft scale rule). The voices' pitches start where each primer row
    leaves them (int64 (B, P) tokens, BOS first or not). None when the tokens carry no voices
    (Tokenizer.voice_tables) or the penalty is 0."""
    tables = tokenizer.voice_tables()
    if tables is None or penalty <= 0:
        return None
    primers = np.asarray(primers)
    grammar = tokenizer.grammar
    prev = np.full((primers.shape[0], tables.num_voices), -1, np.int32)
    now = prev.copy()
    for b, row in enumerate(primers):
        states, _ = grammar.walk(np.asarray(row, np.int64))
        for state, token in zip(states, row, strict=True):
            voice = int(tables.voice_S[state]) if state >= 0 else -1
            if voice < 0:
                continue
            if voice == 0:
                prev[b] = now[b]
            kind = int(tables.kind_V[token])
            if kind == tables.ONSET:
                now[b, voice] = tables.pitch_V[token]
            elif kind == tables.REST:
                now[b, voice] = -1
    return (jnp.asarray(tables.voice_S), jnp.asarray(tables.kind_V), jnp.asarray(tables.pitch_V),
            jnp.asarray(prev), jnp.asarray(now), jnp.float32(penalty))  # fmt: skip


def _advance(
    logits_BxV, state_B, counts_BxV, rng, next_state_SxV, settings, scale=None, held=None,
    meter=None, voices=None,
):  # fmt: skip
    """Masks, chooses the next token and advances the grammar state, token counts, (when the
    grammar has a held-key rule) the held keys `held = (press_V, release_V, held_BxK)` and (when
    the meter is held) `meter = (is_meter_V, in_force_B, stated_B)` (`meter_hold`), whose first
    meter token sampled in a row with none in force becomes that row's, and (for the soft
    parallels rule) the voices' pitches `voices` (`parallels_rule`).
    `scale(logits_BxV, allowed_BxV) -> (logits_BxV, diagnostics)` applies a key's scale
    constraint. Returns (token_B, state_B, counts_BxV, held, meter, voices, diagnostics):
    `scale`'s diagnostics, returned as they are (None without a scale rule)."""
    logits = masked_logits(logits_BxV, state_B, next_state_SxV, counts_BxV, settings)
    if held is not None and settings.grammar_mask:
        logits = jnp.where(held_allows(held[2], held[0], held[1], xp=jnp), logits, NEG_INF)
    if meter is not None:
        logits = jnp.where(meter_hold_mask(logits, *meter), logits, NEG_INF)
    if voices is not None:
        logits = jnp.where(parallel_motion(state_B, voices), logits - voices[5], logits)
    diagnostics = None
    if scale is not None:
        logits, diagnostics = scale(logits, logits > NEG_INF / 2)
    token_B = choose_tokens(logits, rng, settings)
    if voices is not None:
        voices = _update_voices(voices, state_B, token_B)
    nxt = next_state_SxV[state_B, token_B]
    state_B = jnp.where(nxt >= 0, nxt, state_B)  # an ungrammatical token leaves it as is
    counts_BxV = counts_BxV.at[jnp.arange(token_B.shape[0]), token_B].add(1)
    if held is not None:
        held = (held[0], held[1], held_after_tokens(held[2], token_B, held[0], held[1], xp=jnp))
    if meter is not None:
        is_meter_V, in_force_B, stated_B = meter
        in_force_B = jnp.where((in_force_B < 0) & is_meter_V[token_B], token_B, in_force_B)
        meter = (is_meter_V, in_force_B, stated_B | (token_B == in_force_B))
    return token_B, state_B, counts_BxV, held, meter, voices, diagnostics


def _token_counts(tokens_BxP, vocab_size: int):
    return jax.vmap(lambda row: jnp.bincount(row, length=vocab_size))(tokens_BxP)


@functools.partial(jax.jit, static_argnames=("step_fn", "num_steps", "settings"))
def sample(
    variables: Any,
    primer_BxP: jax.Array,
    grammar_state_B: jax.Array,
    next_state_SxV: jax.Array,
    rng: jax.Array,
    *,
    step_fn: Callable,
    num_steps: int,
    settings: DecoderSettings,
    held: tuple | None = None,
    meter: tuple | None = None,
    voices: tuple | None = None,
) -> jax.Array:
    """Generates `num_steps` tokens after a primer; returns them as int32 (B, num_steps).

    `step_fn(variables, tokens_BxL, carry) -> (logits_BxLxV, carry)` is the model's apply;
    `grammar_state_B` is the grammar state after the primer (from `Grammar.walk`); `held` is
    `held_keys(grammar, primers)` for grammars with a held-key rule, else None; `meter` is
    `meter_hold(tokenizer, ...)` to hold each row's meter, else None (meters free); `voices`
    is `parallels_rule(tokenizer, primers, penalty)` for the soft parallels rule, else None.
    """
    logits_BxPxV, carry = step_fn(variables, primer_BxP, None)  # the whole primer in one scan

    def body(loop, step_rng):
        carry, logits_BxV, state_B, counts, held, meter, voices = loop
        token_B, state_B, counts, held, meter, voices, _ = _advance(
            logits_BxV, state_B, counts, step_rng, next_state_SxV, settings, held=held,
            meter=meter, voices=voices,
        )  # fmt: skip
        logits_Bx1xV, carry = step_fn(variables, token_B[:, None], carry)
        return (carry, logits_Bx1xV[:, -1], state_B, counts, held, meter, voices), token_B

    counts = _token_counts(primer_BxP, next_state_SxV.shape[1])
    init = (carry, logits_BxPxV[:, -1], grammar_state_B.astype(jnp.int32), counts, held, meter,
            voices)  # fmt: skip
    _, tokens_NxB = jax.lax.scan(body, init, jax.random.split(rng, num_steps))
    return tokens_NxB.T


@functools.partial(jax.jit, static_argnames=("step_fn", "num_steps", "settings", "window"))
def sample_sliding(
    variables: Any,
    primer_BxP: jax.Array,
    grammar_state_B: jax.Array,
    next_state_SxV: jax.Array,
    rng: jax.Array,
    *,
    step_fn: Callable,
    num_steps: int,
    settings: DecoderSettings,
    window: int,
    held: tuple | None = None,
    meter: tuple | None = None,
    voices: tuple | None = None,
) -> jax.Array:
    """The original project's procedure, for models trained on fixed windows (seed_replica):
    every step re-reads the last `window` tokens from a zero state (left-padded with PAD)."""
    pad = jnp.zeros((primer_BxP.shape[0], max(window - primer_BxP.shape[1], 0)), jnp.int32)
    buffer_BxW = jnp.concatenate([pad, primer_BxP.astype(jnp.int32)], axis=1)[:, -window:]

    def body(loop, step_rng):
        buffer_BxW, state_B, counts, held, meter, voices = loop
        logits_BxWxV, _ = step_fn(variables, buffer_BxW, None)
        token_B, state_B, counts, held, meter, voices, _ = _advance(
            logits_BxWxV[:, -1], state_B, counts, step_rng, next_state_SxV, settings, held=held,
            meter=meter, voices=voices,
        )  # fmt: skip
        buffer_BxW = jnp.concatenate([buffer_BxW[:, 1:], token_B[:, None]], axis=1)
        return (buffer_BxW, state_B, counts, held, meter, voices), token_B

    counts = _token_counts(primer_BxP, next_state_SxV.shape[1])
    init = (buffer_BxW, grammar_state_B.astype(jnp.int32), counts, held, meter, voices)
    _, tokens_NxB = jax.lax.scan(body, init, jax.random.split(rng, num_steps))
    return tokens_NxB.T


def grammar_states_after(grammar, primers: np.ndarray) -> np.ndarray:
    """Grammar state after each primer row (rows start with BOS or at a clean boundary)."""
    states = []
    for row in np.asarray(primers):
        body = row[1:] if row.size and row[0] == BOS else row
        before, accepted = grammar.walk(body)
        if body.size == 0:
            states.append(grammar.bos_state)
            continue
        last = int(before[-1])
        nxt = grammar.next_state[last, int(body[-1])] if accepted[-1] else last
        states.append(int(nxt))
    return np.asarray(states, np.int32)


# --- key conditioning and scale constraints ---------------------------------------------------
SCALE_MODES = CHOICES["sample.scale"]


@dataclasses.dataclass(frozen=True)
class KeySettings:
    """Static settings of conditioned sampling (hashable: a static jit argument)."""

    spec: conditioning.Spec  # what the model's [X; M] vector holds (dim 0: not fed)
    scale: str = "off"  # "off" | "soft" | "strict"
    penalty: float = 3.0  # soft: nats subtracted from out-of-scale pitch logits
    inclusive: bool = True  # BarCounter.inclusive
    per_bar: float = 1.0  # BarCounter.per_bar
    base: int = 0  # BarCounter.base

    def __post_init__(self):
        if self.scale not in SCALE_MODES:
            raise ValueError(f"scale must be one of {SCALE_MODES}, got {self.scale!r}")
        if self.penalty < 0:
            raise ValueError(f"scale_penalty must be >= 0, got {self.penalty}")


class KeyInputs(NamedTuple):
    """Per-run arrays of conditioned sampling (see `key_inputs`)."""

    primer_cond_BxPxC: jax.Array  # float32: [X; M] of each primer token
    units_B: jax.Array  # float32: bar-counter clock units the primer advanced
    bars_BxN: jax.Array  # int32: key schedule, first bar of each entry
    keys_BxN: jax.Array  # int32: key schedule, key number of each entry
    styles_B: jax.Array  # int32: style index (-1 = none)
    advance_V: jax.Array  # float32 (V,): clock units each token advances (BarCounter)
    in_scale_KxV: jax.Array  # bool (24, V): token allowed in key k (conditioning.in_scale_table)
    is_pitch_V: jax.Array  # bool (V,): tokens that sound a pitch


def key_settings(tokenizer, spec, scale: str = "off", penalty: float = 3.0) -> KeySettings:
    counter = tokenizer.bar_counter()
    return KeySettings(spec, scale, penalty, counter.inclusive, counter.per_bar, counter.base)


def key_inputs(tokenizer, ks: KeySettings, primers, schedules, styles=None) -> KeyInputs:
    """Host-side arrays for `sample_keyed`: the primer's vectors (bars counted from the primer's
    start with the tokenizer's BarCounter) and the padded schedules ([(first bar, key)] per
    row)."""
    primers = np.asarray(primers, np.int64)
    counter = tokenizer.bar_counter()
    bars_BxN, keys_BxN = conditioning.schedule_arrays(schedules)
    styles_B = np.full(len(primers), -1, np.int32) if styles is None else np.asarray(styles)
    bar_BxP = np.stack([counter.bars(row) for row in primers])
    key_BxP = np.stack(
        [conditioning.key_at_bar(bars_BxN, keys_BxN, bars) for bars in bar_BxP.T], axis=1
    )
    cond = conditioning.vector(ks.spec, key_BxP, np.broadcast_to(styles_B[:, None], key_BxP.shape))
    is_pitch = tokenizer.pitch_class_table().any(axis=1)
    return KeyInputs(
        primer_cond_BxPxC=cond.astype(np.float32),
        units_B=counter.advance_V[primers].sum(axis=1).astype(np.float32),
        bars_BxN=bars_BxN,
        keys_BxN=keys_BxN,
        styles_B=styles_B.astype(np.int32),
        advance_V=counter.advance_V.astype(np.float32),
        in_scale_KxV=conditioning.in_scale_table(tokenizer),
        is_pitch_V=is_pitch,
    )


def scale_constraint(logits_BxV, allowed_BxV, key_B, inputs: KeyInputs, ks: KeySettings, temp):
    """(logits, removed_B, pitch_step_B): the scale rule of `ks` applied to grammar-masked logits.

    strict: out-of-scale tokens are masked, except in a state where the grammar allows no
    in-scale token at all (then the grammar's choices stand, so sampling can never dead-end);
    soft: `penalty` nats come off out-of-scale logits. removed_B is the probability mass (at the
    sampling temperature) that the rule moved off out-of-scale tokens; pitch_step_B marks steps
    at which the grammar allowed a pitch token."""
    inside_BxV = inputs.in_scale_KxV[key_B]
    outside_BxV = ~inside_BxV
    if ks.scale == "strict":
        keep = allowed_BxV & inside_BxV
        keep = jnp.where(keep.any(axis=-1, keepdims=True), keep, allowed_BxV)
        new = jnp.where(keep, logits_BxV, NEG_INF)
    elif ks.scale == "soft":
        new = jnp.where(outside_BxV, logits_BxV - ks.penalty, logits_BxV)
    else:
        new = logits_BxV
    out_mass = lambda x: jnp.sum(jax.nn.softmax(x / temp, axis=-1) * outside_BxV, axis=-1)
    removed_B = out_mass(logits_BxV) - out_mass(new)
    pitch_step_B = (allowed_BxV & inputs.is_pitch_V[None]).any(axis=-1)
    return new, removed_B, pitch_step_B


def _key_of(units_B, incl_B, inputs: KeyInputs, ks: KeySettings):
    bar_B = jnp.maximum(jnp.floor((units_B + incl_B) / ks.per_bar).astype(jnp.int32) + ks.base, 1)
    return conditioning.key_at_bar(inputs.bars_BxN, inputs.keys_BxN, bar_B, xp=jnp)


@functools.partial(jax.jit, static_argnames=("step_fn", "num_steps", "settings", "ks"))
def sample_keyed(
    variables: Any,
    primer_BxP: jax.Array,
    grammar_state_B: jax.Array,
    next_state_SxV: jax.Array,
    rng: jax.Array,
    inputs: KeyInputs,
    *,
    step_fn: Callable,
    num_steps: int,
    settings: DecoderSettings,
    ks: KeySettings,
    held: tuple | None = None,
    meter: tuple | None = None,
    voices: tuple | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`sample` with a key schedule: returns (tokens int32 (B, N), removed float32 (B, N),
    pitch_step bool (B, N)).

    The scan carries the bar counter, so the key (and the [X; M] vector fed with each token)
    changes at the token where the schedule's bar begins (Tokenizer.bar_counter: e.g. the BAR
    token that opens it, or the token after the TIME_SHIFT that crosses into it). The scale
    rule (KeySettings.scale) uses the key of the latest input."""
    cond = inputs.primer_cond_BxPxC if ks.spec.dim else None
    logits_BxPxV, carry = step_fn(variables, primer_BxP, None, cond)
    incl_V = inputs.advance_V if ks.inclusive else jnp.zeros_like(inputs.advance_V)
    last_B = primer_BxP[:, -1]
    key_B = _key_of(inputs.units_B - inputs.advance_V[last_B], incl_V[last_B], inputs, ks)
    temp = settings.temperature if settings.decoder == "temperature" else 1.0

    def scale_for(key_B):
        """The scale rule in `key_B`; its diagnostics are (removed_B, pitch_step_B)."""

        def apply(logits, allowed):
            new, removed, pitch = scale_constraint(logits, allowed, key_B, inputs, ks, temp)
            return new, (removed, pitch)

        return apply

    def body(loop, step_rng):
        carry, logits_BxV, state_B, counts, units_B, key_B, held, meter, voices = loop
        token_B, state_B, counts, held, meter, voices, (removed_B, pitch_B) = _advance(
            logits_BxV, state_B, counts, step_rng, next_state_SxV, settings,
            scale_for(key_B), held, meter, voices,
        )  # fmt: skip
        key_B = _key_of(units_B, incl_V[token_B], inputs, ks)
        units_B = units_B + inputs.advance_V[token_B]
        cond = None
        if ks.spec.dim:
            cond = conditioning.vector(ks.spec, key_B, inputs.styles_B, xp=jnp)[:, None, :]
        logits_Bx1xV, carry = step_fn(variables, token_B[:, None], carry, cond)
        new_loop = (carry, logits_Bx1xV[:, -1], state_B, counts, units_B, key_B, held, meter,
                    voices)  # fmt: skip
        return new_loop, (token_B, removed_B, pitch_B)

    counts = _token_counts(primer_BxP, next_state_SxV.shape[1])
    init = (
        carry, logits_BxPxV[:, -1], grammar_state_B.astype(jnp.int32), counts,
        inputs.units_B, key_B, held, meter, voices,
    )  # fmt: skip
    _, (tokens_NxB, removed_NxB, pitch_NxB) = jax.lax.scan(
        body, init, jax.random.split(rng, num_steps)
    )
    return tokens_NxB.T, removed_NxB.T, pitch_NxB.T


def held_keys(grammar, primers: np.ndarray) -> tuple | None:
    """(press_V, release_V, held_BxK) for the samplers' `held` argument: the keys each primer
    row leaves held; None when the grammar has no held-key rule."""
    if grammar.press is None:
        return None
    rows = [row[1:] if row.size and row[0] == BOS else row for row in np.asarray(primers)]
    held = np.stack([grammar.held_after(row) for row in rows])
    return (jnp.asarray(grammar.press), jnp.asarray(grammar.release), jnp.asarray(held))
