"""Sequential Monte Carlo over a trained token model: sampling under constraints that lie ahead.

A left-to-right model cannot see a note fixed in the future; forcing it when its turn comes
(BachBot) writes music that walks into it unprepared. SMC (Doucet & Johansen 2009, "A tutorial
on particle filtering and smoothing"; for language models Lew et al. 2023, "Sequential Monte
Carlo steering of large language models") runs many continuations (particles) at once, weights
each by how well the model liked the constraints it met, and resamples, so the particles that
led well into a given token are the ones that survive.

Target. For a constraint program c, the target is the model's distribution over token rows x
of length T conditioned on x being grammatical and meeting c:
    pi(x) = prod_t p(x_t | x_<t) * 1[grammar allows x_t] * 1[x meets c] / Z.
Proposal per step and particle, by the program's current op:
  * FREE / FREE_UNTIL: x_t ~ p(. | x_<t) restricted to the grammar's allowed set A_t and
    renormalised; incremental weight log sum_{v in A_t} p(v | x_<t) (the mass the mask keeps);
  * FORCE(v): x_t = v; incremental weight log p(v | x_<t) (-inf when the grammar forbids v);
  * END: the program is complete; PAD is emitted with weight 0 (rows are padded to T).
With these weights, prod_t mean-weight over the resampling epochs is an unbiased estimate of Z
(the log-evidence log Z is reported), and the weighted particles estimate expectations under pi.
Resampling is systematic (Kitagawa 1996), done per group when its effective sample size
ESS = (sum w)^2 / sum w^2 falls below `ess_threshold * num_particles`.

The program is a small state machine per particle (a program counter `pc` into op arrays), so
constraints whose position depends on what the particle wrote (a gap closed when the bar counter
reaches the end of an infill range) run under jit with static shapes:
  FREE_UNTIL(target, skip, state): free tokens until the particle's bar-counter units equal
    `target` with the grammar in one of the states `state` (a row of the close_RxS table: the
    states the forced tokens that follow can start from, e.g. after a chord group's DURATION,
    not between its tokens, or with the voices a kept tied note needs sounding); then `pc` moves
    past the op and past `skip` ops (skip = 1 when the closing marker is itself the first
    forced token, as an event BAR that opens the bar after the gap). A particle whose units
    pass `target` before that has written too many bars and gets weight -inf; so does one whose
    marker (skip > 0) reaches `target` in a state outside `state`.
  A FREE_UNTIL with a `budget` > 0 that has written that many tokens without closing gets
    weight -inf too (its free steps, weighing about 1, would otherwise outweigh the particles
    that closed and paid for the forced tokens after it).
  FREE_UNTIL with target < 0 closes on a token instead: the stretch ends when the particle
    writes the token of the FORCE op that follows (skip = 1: that token is the marker), as a
    melody note's POSITION closes the free notes before it.
Token sets. Every FREE and FREE_UNTIL op names a row of the program's `allow_MxV` table (row 0:
every token); its tokens are drawn from the grammar's allowed set intersected with that row, and
its weight is the mass of that intersection (the target is then the model restricted to rows
whose free tokens lie in their op's set, e.g. notes below a fixed melody).
A particle that can no longer finish its program in the steps left (`need_K[pc] > T - t`) gets
weight -inf. The token history is recovered at the end by following the ancestor indices back.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomposer.sample import sampler as sampler_lib
from jaxcomposer.tokenizers.vocab import EOS, PAD

FREE, FORCE, FREE_UNTIL, END = 0, 1, 2, 3
OP_NAMES = ("FREE", "FORCE", "FREE_UNTIL", "END")
PROPOSALS = ("sample", "argmax")


class ProgramArrays(NamedTuple):
    """The arrays of a constraint program, K ops (the last is END). See `Program`."""

    op_K: Any  # int32: FREE | FORCE | FREE_UNTIL | END
    token_K: Any  # int32: the token of FORCE ops (PAD elsewhere)
    target_K: Any  # float32: FREE_UNTIL's bar-counter units that close the free stretch
    skip_K: Any  # int32: FREE_UNTIL's ops passed after it closes (its marker is their token)
    need_K: Any  # int32: fewest steps from op k to the END op
    state_K: Any  # int32: FREE_UNTIL's row of close_RxS: the grammar states it may close in
    mask_K: Any  # int32: row of allow_MxV that FREE / FREE_UNTIL ops draw from (0: any token)
    allow_MxV: Any  # bool (M, V): the token sets; row 0 is all True
    close_RxS: Any  # bool (R, S): per row, the grammar states a FREE_UNTIL may close in; row 0
    #                 (any state) is all True; states >= S are never in a row but row 0
    budget_K: Any  # int32: most tokens a FREE_UNTIL stretch may take (0: no limit)


@dataclasses.dataclass(frozen=True, eq=False)
class Program:
    """A constraint program: what each particle must do at each of its steps.

    Built with `Program.build(ops, allow_MxV)` from a list of (op, token, target, skip, state[,
    mask[, budget]]) tuples; `free(n)`, `forced(tokens)` and `free_until(target, skip, state,
    mask, budget)` make the
    pieces; `mask` (default 0) is a row of `allow_MxV` (bool (M, V), row 0 all True; default
    None: only row 0, over a vocabulary of `vocab_size` tokens; without it a (1, 0) table that
    means "no token sets").
    `need_K[k]` counts the fewest steps from op k to END (a FREE_UNTIL needs at least one and
    covers its skip)."""

    op_K: np.ndarray
    token_K: np.ndarray
    target_K: np.ndarray
    skip_K: np.ndarray
    need_K: np.ndarray
    state_K: np.ndarray
    mask_K: np.ndarray
    allow_MxV: np.ndarray
    close_RxS: np.ndarray
    budget_K: np.ndarray

    @staticmethod
    def build(
        ops: list[tuple],
        allow_MxV: np.ndarray | None = None,
        vocab_size: int | None = None,
        num_states: int | None = None,
    ) -> Program:
        """`ops`' state field: -1 (close in any state), a state id, or a tuple of state ids
        (close in any of them); each distinct set becomes a row of close_RxS over
        `num_states` states (default: the largest id named + 1)."""
        ops = [(*o, 0, 0)[:7] if len(o) < 7 else tuple(o) for o in [*ops, (END, PAD, 0.0, 0, -1)]]
        budget = np.asarray([o[6] for o in ops], np.int32)
        sets = [() if isinstance(o[4], int | np.integer) and o[4] < 0
                else tuple(sorted({int(x) for x in np.atleast_1d(o[4])})) for o in ops]  # fmt: skip
        named = [x for st in sets for x in st]
        width = max(num_states if num_states is not None else max(named, default=-1) + 1, 1)
        if named and (min(named) < 0 or max(named) >= width):
            raise ValueError(f"FREE_UNTIL states must lie in [0, {width})")
        distinct = list(dict.fromkeys(st for st in sets if st))
        close_RxS = np.zeros((1 + len(distinct), width), bool)
        close_RxS[0] = True
        for r, st in enumerate(distinct, start=1):
            close_RxS[r, list(st)] = True
        row_of = {st: r for r, st in enumerate(distinct, start=1)}
        mask = np.asarray([o[5] for o in ops], np.int32)
        if allow_MxV is None:  # no token sets: a (1, 0) table, which run_smc skips
            allow_MxV = np.ones((1, vocab_size or 0), bool)
        allow_MxV = np.asarray(allow_MxV, bool)
        if not allow_MxV[0].all():
            raise ValueError("allow_MxV's row 0 must allow every token")
        if mask.min() < 0 or mask.max() >= allow_MxV.shape[0]:
            raise ValueError(f"mask rows must lie in [0, {allow_MxV.shape[0]})")
        op = np.asarray([o[0] for o in ops], np.int32)
        token = np.asarray([o[1] for o in ops], np.int32)
        target = np.asarray([o[2] for o in ops], np.float32)
        skip = np.asarray([o[3] for o in ops], np.int32)
        state = np.asarray([row_of.get(st, 0) for st in sets], np.int32)
        for k in np.flatnonzero(op == FREE_UNTIL):
            if skip[k] and (
                k + skip[k] >= op.size - 1 or (op[k + 1 : k + 1 + skip[k]] != FORCE).any()
            ):
                raise ValueError(f"op {k}: FREE_UNTIL's skip {skip[k]} must cover FORCE ops")
        # steps each op takes at least: 1, except ops a FREE_UNTIL's skip covers (0) and END (0)
        cost = (op != END).astype(np.int32)
        for k in np.flatnonzero(op == FREE_UNTIL):
            cost[k + 1 : k + 1 + skip[k]] = 0
        need = np.cumsum(cost[::-1])[::-1].astype(np.int32)
        return Program(op, token, target, skip, need, state, mask, allow_MxV, close_RxS, budget)

    @staticmethod
    def from_forced(forced_T: np.ndarray, vocab_size: int | None = None) -> Program:
        """One op per position: FORCE(v) where forced_T >= 0, FREE where it is -1."""
        values = np.asarray(forced_T).reshape(-1).tolist()
        ops = [forced([v])[0] if v >= 0 else free(1)[0] for v in values]
        return Program.build(ops, vocab_size=vocab_size)

    @property
    def min_steps(self) -> int:
        """Fewest tokens a particle writes to complete the program."""
        return int(self.need_K[0])

    def arrays(
        self,
        pad_to: int | None = None,
        pad_masks_to: int | None = None,
        pad_closes_to: int | None = None,
    ) -> ProgramArrays:
        """The op arrays, padded with END ops to `pad_to` ops, the token-set table with
        all-True rows to `pad_masks_to` rows and the close-state table with all-False rows to
        `pad_closes_to` rows (fewer compiles across programs)."""
        close = self.close_RxS
        close = np.concatenate(
            [close, np.zeros((max((pad_closes_to or 0) - close.shape[0], 0), close.shape[1]), bool)]
        )
        k = self.op_K.size
        extra = 0 if pad_to is None else max(pad_to - k, 0)
        pad = lambda a, v: np.concatenate([a, np.full(extra, v, a.dtype)])
        return ProgramArrays(
            pad(self.op_K, END), pad(self.token_K, PAD), pad(self.target_K, 0.0),
            pad(self.skip_K, 0), pad(self.need_K, 0), pad(self.state_K, 0), pad(self.mask_K, 0),
            np.concatenate([self.allow_MxV, np.ones(
                (max((pad_masks_to or 0) - self.allow_MxV.shape[0], 0), self.allow_MxV.shape[1]),
                bool)]),
            close, pad(self.budget_K, 0),
        )  # fmt: skip


def free(n: int, mask: int = 0) -> list[tuple[int, int, float, int, int, int]]:
    """n FREE ops drawing from row `mask` of the program's token sets."""
    return [(FREE, PAD, 0.0, 0, -1, int(mask))] * int(n)


def forced(tokens) -> list[tuple[int, int, float, int, int]]:
    """One FORCE op per token of `tokens`."""
    return [(FORCE, int(t), 0.0, 0, -1) for t in np.asarray(tokens).reshape(-1).tolist()]


def free_until(
    target_units: float, skip: int = 0, state=-1, mask: int = 0, budget: int = 0
) -> list[tuple]:
    """A FREE_UNTIL op: free until the units equal `target_units` in grammar state `state`
    (-1: any; an int: that state; a tuple of ints: any of them) (target_units < 0: until the
    particle writes the next FORCE op's token; skip must be 1)."""
    if target_units < 0 and skip != 1:
        raise ValueError("a FREE_UNTIL that closes on a token must skip that token's FORCE op")
    state = int(state) if np.ndim(state) == 0 else tuple(int(x) for x in state)
    return [(FREE_UNTIL, PAD, float(target_units), int(skip), state, int(mask), int(budget))]


@dataclasses.dataclass(frozen=True)
class SMCSettings:
    """Static settings of `run_smc` (hashable: a static jit argument).

    proposal "sample" is SMC proper; "argmax" with resample=False is forced greedy decoding
    (BachBot: force the given tokens, take the most likely allowed token elsewhere; its
    weights are reported but are not importance weights)."""

    num_particles: int = 64
    ess_threshold: float = 0.5  # resample when ESS < ess_threshold * num_particles
    temperature: float = 1.0  # the target is the model at this temperature
    proposal: str = "sample"
    resample: bool = True
    allow_eos: bool = False
    # What a FORCE op weighs: "model", log p(v | x_<t) (the target is the model conditioned on
    # the constraint); "grammar", 0 where the grammar allows v (-inf where not): for a model that
    # already reads the constraint (a constraint encoder), whose own distribution at the free
    # positions is the target and whose given tokens were never scored in training.
    forced_weight: str = "model"

    def __post_init__(self):
        if self.num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {self.num_particles}")
        if not 0.0 <= self.ess_threshold <= 1.0:
            raise ValueError(f"ess_threshold must be in [0, 1], got {self.ess_threshold}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {self.proposal!r}")
        if self.forced_weight not in ("model", "grammar"):
            raise ValueError(f"forced_weight must be model or grammar, got {self.forced_weight!r}")


class SMCResult(NamedTuple):
    """What `run_smc` returns, G groups (independent filters) of N particles, T steps."""

    tokens_GxNxT: jax.Array  # int32: each final particle's tokens after the primer (PAD-padded)
    log_weights_GxN: jax.Array  # float32: final log weights (since the last resampling)
    log_evidence_G: jax.Array  # float32: log Z estimate per group (-inf: no particle finished)
    ess_GxT: jax.Array  # float32: effective sample size after each step's weight update
    resampled_GxT: jax.Array  # bool: whether the group resampled after step t
    finished_GxN: jax.Array  # bool: the particle's program reached END


def _log_ess(lw_GxN):
    """log ESS per group; -inf where every weight is zero."""
    lse = jax.nn.logsumexp(lw_GxN, axis=-1)
    lse2 = jax.nn.logsumexp(2.0 * lw_GxN, axis=-1)
    return jnp.where(jnp.isfinite(lse), 2.0 * lse - lse2, -jnp.inf), lse


def systematic_resample(rng, lw_GxN):
    """int32 (G, N): ancestor indices by systematic resampling of each group's weights
    (one uniform per group; Kitagawa 1996). Groups whose weights are all zero keep their own."""
    g, n = lw_GxN.shape
    finite = jnp.isfinite(jax.nn.logsumexp(lw_GxN, axis=-1))
    probs = jax.nn.softmax(jnp.where(finite[:, None], lw_GxN, 0.0), axis=-1)
    cdf = jnp.cumsum(probs, axis=-1)
    cdf = cdf.at[:, -1].set(1.0)  # rounding must not leave the last point outside
    u = jax.random.uniform(rng, (g, 1))
    points = (u + jnp.arange(n)[None]) / n
    idx = jax.vmap(lambda c, p: jnp.searchsorted(c, p, side="right"))(cdf, points)
    idx = jnp.minimum(idx, n - 1).astype(jnp.int32)
    return jnp.where(finite[:, None], idx, jnp.arange(n, dtype=jnp.int32)[None])


@functools.partial(jax.jit, static_argnames=("step_fn", "num_steps", "settings"))
def run_smc(
    variables: Any,
    primer_GxP: jax.Array,
    grammar_state_G: jax.Array,
    next_state_SxV: jax.Array,
    unit_V: jax.Array,
    units_G: jax.Array,
    program: ProgramArrays,
    rng: jax.Array,
    cond_GxPxC: jax.Array | None = None,
    cond_GxC: jax.Array | None = None,
    voices: tuple | None = None,
    ahead_GxPxE: jax.Array | None = None,
    ahead_GxKxE: jax.Array | None = None,
    *,
    step_fn: Callable,
    num_steps: int,
    settings: SMCSettings,
) -> SMCResult:
    """Runs G independent particle filters of N = settings.num_particles particles for
    `num_steps` steps after each group's primer, all under one jit (static shapes).

    primer_GxP int32: each group's primer (BOS first), read in one scan; grammar_state_G int32:
    the grammar state after it (`sampler.grammar_states_after`); next_state_SxV int32: the
    grammar table; unit_V float32 (V,): bar-counter units each token advances (zeros when the
    program has no FREE_UNTIL); units_G float32: units in the primer; program: the constraint
    program (`Program.arrays()`), shared by all groups; cond_GxPxC / cond_GxC float32: the
    [X; M] vectors of the primer and of every later token for conditioned models (else None).
    `step_fn(variables, tokens_BxL, carry[, cond_BxLxC]) -> (logits_BxLxV, carry)`; the carry is
    a pytree whose leaves have the batch (G*N) first. The model at `settings.temperature` is the
    target (module docstring); with `voices` (`sampler.parallels_rule` for the G primers) the
    target is that model with the soft parallels rule's penalty subtracted from the logits of
    onsets that move a voice in parallel fifths/octaves (`sampler.parallel_motion`), then
    renormalised: still a token-by-token model, so the weights stay proper. For a model with a
    constraint encoder (model/anticipation.py), ahead_GxPxE / ahead_GxKxE float32 are the
    encoder's output for the primer's inputs and for each op of a position-aligned program
    (one token per op: FREE and FORCE only); the input that predicts op k reads row k. Returns
    an SMCResult; units: log weights in nats."""
    n = settings.num_particles
    g = primer_GxP.shape[0]
    b = g * n
    rep = lambda x: jnp.repeat(x, n, axis=0)
    primer_BxP = rep(primer_GxP)
    cond_BxC = None if cond_GxC is None else rep(cond_GxC)
    if (ahead_GxPxE is None) != (ahead_GxKxE is None):
        raise ValueError("give both ahead_GxPxE and ahead_GxKxE, or neither")

    def call(tokens, carry, cond, ahead=None):
        if ahead is not None:
            return step_fn(variables, tokens, carry, cond, ahead)
        if cond is None:
            return step_fn(variables, tokens, carry)
        return step_fn(variables, tokens, carry, cond)

    logits_BxPxV, carry = call(
        primer_BxP, None, None if cond_GxPxC is None else rep(cond_GxPxC),
        None if ahead_GxPxE is None else rep(ahead_GxPxE),
    )  # fmt: skip
    group_B = jnp.arange(b) // n
    vocab = next_state_SxV.shape[1]
    eos_ok = jnp.arange(vocab) != EOS if not settings.allow_eos else jnp.ones(vocab, bool)
    op_K, token_K, target_K, skip_K, need_K, state_K, mask_K, allow_MxV, close_RxS, budget_K = (
        program
    )
    close_width = close_RxS.shape[1]
    rows = jnp.arange(b)
    group_base = (jnp.arange(g) * n)[:, None]
    if voices is not None:  # per particle: the voices' pitches (prev_BxU, now_BxU) repeated
        voices = (*voices[:3], rep(voices[3]), rep(voices[4]), voices[5])

    def body(loop, xs):
        carry, logits_BxV, state_B, pc_B, units_B, since_B, lw_B, logz_G, voices = loop
        t, step_rng = xs
        draw_rng, resample_rng = jax.random.split(step_rng)
        logits_BxV = logits_BxV.astype(jnp.float32) / settings.temperature
        if voices is not None:
            parallel_BxV = sampler_lib.parallel_motion(state_B, voices)
            logits_BxV = jnp.where(parallel_BxV, logits_BxV - voices[5], logits_BxV)
        lp_BxV = jax.nn.log_softmax(logits_BxV, -1)
        op_B = op_K[pc_B]
        allowed_BxV = (next_state_SxV[state_B] >= 0) & eos_ok[None]
        forced_score_BxV = lp_BxV if settings.forced_weight == "model" else jnp.zeros_like(lp_BxV)
        forced_lp_B = jnp.where(allowed_BxV, forced_score_BxV, -jnp.inf)[rows, token_K[pc_B]]
        if allow_MxV.shape[-1]:  # FORCE and END ops use row 0 (every token)
            allowed_BxV = allowed_BxV & allow_MxV[mask_K[pc_B]]
        masked_BxV = jnp.where(allowed_BxV, lp_BxV, -jnp.inf)
        if settings.proposal == "argmax":
            proposal_B = jnp.argmax(masked_BxV, axis=-1).astype(jnp.int32)
        else:
            proposal_B = jax.random.categorical(draw_rng, masked_BxV, axis=-1).astype(jnp.int32)
        mass_B = jax.nn.logsumexp(masked_BxV, axis=-1)
        forced_B = token_K[pc_B]
        is_free = (op_B == FREE) | (op_B == FREE_UNTIL)
        is_end = op_B == END
        token_B = jnp.where(is_end, PAD, jnp.where(is_free, proposal_B, forced_B))
        inc_B = jnp.where(is_end, 0.0, jnp.where(is_free, mass_B, forced_lp_B))
        late = need_K[pc_B] > num_steps - t  # cannot finish in the steps left
        inc_B = jnp.where(late & ~is_end, -jnp.inf, inc_B)
        if voices is not None:
            voices = sampler_lib.update_voices(voices, state_B, token_B)
        nxt = next_state_SxV[state_B, token_B]
        state_B = jnp.where(nxt >= 0, nxt, state_B)
        units_B = units_B + unit_V[token_B]
        in_gap = op_B == FREE_UNTIL
        close_row_B = state_K[pc_B]
        state_ok_B = (close_row_B == 0) | (
            (state_B < close_width) & close_RxS[close_row_B, jnp.minimum(state_B, close_width - 1)]
        )
        skip_B = skip_K[pc_B]
        # the closing marker stands for the first skipped FORCE op: it must be that token
        next_token_B = token_K[jnp.minimum(pc_B + 1, op_K.size - 1)]
        by_token = target_K[pc_B] < 0  # closes when it writes the marker token
        at_target = jnp.where(by_token, token_B == next_token_B, units_B == target_K[pc_B])
        closes = in_gap & at_target & state_ok_B
        # wrote more bars than the gap holds; or, where the marker closes the gap (skip > 0),
        # wrote the marker that reaches the target without closing (a grammar state the kept
        # tokens cannot follow): doomed now, not a bar later, so that its weight (free steps
        # weigh ~1, forced ones less) never draws the resampling away from particles that closed
        overshoot = in_gap & ~by_token & (units_B > target_K[pc_B])
        overshoot |= in_gap & ~by_token & (skip_B > 0) & (units_B >= target_K[pc_B]) & ~closes
        # took the stretch's whole budget of tokens without closing (e.g. an OPEN stretch of
        # lower notes that never reaches the melody's next note): doomed now, as above
        budget_B = budget_K[pc_B]
        overshoot |= in_gap & (budget_B > 0) & (since_B + 1 >= budget_B) & ~closes
        bad_close = closes & (skip_B > 0) & (token_B != next_token_B)
        inc_B = jnp.where(bad_close | overshoot, -jnp.inf, inc_B)
        old_pc_B = pc_B
        pc_B = jnp.where(
            is_end, pc_B, jnp.where(in_gap, jnp.where(closes, pc_B + 1 + skip_B, pc_B), pc_B + 1)
        )
        since_B = jnp.where(pc_B == old_pc_B, since_B + 1, 0)
        lw_B = lw_B + inc_B
        ahead_Bx1xE = None
        if ahead_GxKxE is not None:  # what lies ahead of the op the next token fills
            ahead_Bx1xE = ahead_GxKxE[group_B, jnp.minimum(pc_B, ahead_GxKxE.shape[1] - 1)][
                :, None
            ]
        logits_Bx1xV, carry = call(
            token_B[:, None], carry, None if cond_BxC is None else cond_BxC[:, None], ahead_Bx1xE
        )
        logits_BxV = logits_Bx1xV[:, -1]

        lw_GxN = lw_B.reshape(g, n)
        log_ess_G, lse_G = _log_ess(lw_GxN)
        ess_G = jnp.exp(log_ess_G)
        if settings.resample:
            need_G = (ess_G < settings.ess_threshold * n) & jnp.isfinite(lse_G)
        else:
            need_G = jnp.zeros(g, bool)
        idx_GxN = jnp.where(
            need_G[:, None], systematic_resample(resample_rng, lw_GxN), jnp.arange(n)[None]
        )
        anc_B = (idx_GxN + group_base).reshape(b)
        logz_G = logz_G + jnp.where(need_G, lse_G - jnp.log(n), 0.0)
        lw_B = jnp.where(jnp.repeat(need_G, n), 0.0, lw_B[anc_B])
        carry = jax.tree.map(lambda x: x[anc_B], carry)
        logits_BxV, state_B, pc_B, units_B, since_B = (
            x[anc_B] for x in (logits_BxV, state_B, pc_B, units_B, since_B)
        )
        if voices is not None:
            voices = (*voices[:3], voices[3][anc_B], voices[4][anc_B], voices[5])
        new_loop = (carry, logits_BxV, state_B, pc_B, units_B, since_B, lw_B, logz_G, voices)
        return new_loop, (token_B, anc_B, ess_G, need_G)

    init = (
        carry,
        logits_BxPxV[:, -1],
        rep(grammar_state_G.astype(jnp.int32)),
        jnp.zeros(b, jnp.int32),
        rep(units_G.astype(jnp.float32)),
        jnp.zeros(b, jnp.int32),
        jnp.zeros(b, jnp.float32),
        jnp.zeros(g, jnp.float32),
        voices,
    )
    xs = (jnp.arange(num_steps), jax.random.split(rng, num_steps))
    (_, _, _, pc_B, _, _, lw_B, logz_G, _), (tok_TxB, anc_TxB, ess_TxG, res_TxG) = jax.lax.scan(
        body, init, xs
    )

    def back(idx_B, step):
        tokens_B, anc_B = step
        old_B = anc_B[idx_B]
        return old_B, tokens_B[old_B]

    _, path_TxB = jax.lax.scan(back, rows, (tok_TxB, anc_TxB), reverse=True)
    lw_GxN = lw_B.reshape(g, n)
    logz_G = logz_G + jax.nn.logsumexp(lw_GxN, axis=-1) - jnp.log(n)
    return SMCResult(
        tokens_GxNxT=path_TxB.T.reshape(g, n, num_steps),
        log_weights_GxN=lw_GxN,
        log_evidence_G=logz_G,
        ess_GxT=ess_TxG.T,
        resampled_GxT=res_TxG.T,
        finished_GxN=(op_K[pc_B] == END).reshape(g, n),
    )


def choose_particles(result: SMCResult, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One particle per group drawn by its final weight (an approximate draw from the target):
    (tokens int32 (G, T), particle index int64 (G,)). Groups with no finished particle give
    index -1 and their first particle's tokens."""
    lw = np.asarray(result.log_weights_GxN, np.float64)
    tokens = np.asarray(result.tokens_GxNxT)
    picks = np.full(lw.shape[0], -1, np.int64)
    for i, row in enumerate(lw):
        if np.isfinite(row).any():
            p = np.exp(row - row[np.isfinite(row)].max())
            picks[i] = rng.choice(row.size, p=p / p.sum())
    return tokens[np.arange(lw.shape[0]), np.maximum(picks, 0)], picks
