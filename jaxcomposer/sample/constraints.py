"""Generation under constraints: harmonize a given melody (`--melody`), rewrite bars of a piece
(`--infill`), both by sequential Monte Carlo over the trained model (sample/smc.py).

A request is compiled once into a constraint program shared by every particle (docs/constraints.md):
  * melody: the tokenizer writes the melody's template (`Tokenizer.melody_template`: which tokens
    are the melody's, which are free and from which token set); GIVEN items become FORCE ops,
    FREE_TOKEN items FREE ops, OPEN stretches FREE_UNTIL ops closed by the next given token;
  * infill: the piece's tokens before the first range are the primer; per range one
    FREE_UNTIL(the bar-counter units where the bar after the range begins, in the grammar state
    the kept tokens start from), then FORCE ops for the kept bars up to the next range.
Only the tokenizer's own answers are used (bar_counter, melody_template, meter_token_mask,
token_beats, grammar); a tokenizer that cannot express a constraint refuses in one line.

`decoder="argmax"` gives forced greedy decoding (BachBot: one particle, the most likely allowed
token at free steps, no resampling); otherwise SMC with `sample.particles` particles per sample
at `sample.temperature` (top_k/top_p, repetition penalty and the scale rule do not apply: the
target is the model itself, restricted to the constraints).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
import numpy as np
from absl import logging

from jaxcomposer.config_lib import PRIMER_SOURCES, Config, SampleConfig
from jaxcomposer.core.errors import Failure, UsageError
from jaxcomposer.data import dataset
from jaxcomposer.model import StepFunction, anticipation, conditioning
from jaxcomposer.music.notes import Notes, Piece
from jaxcomposer.sample import primers as primer_lib
from jaxcomposer.sample import sampler, smc
from jaxcomposer.tokenizers import BOS, PAD, EncodingError, Tokenizer
from jaxcomposer.tokenizers.common import grid_steps
from jaxcomposer.tokenizers.geometry import FREE_TOKEN, GIVEN, OPEN, skyline

OPEN_SLACK_PER_NOTE = 12  # tokens an OPEN stretch may take per melody note (event: lower notes)
OPEN_BUDGET = 48  # most tokens one OPEN stretch may take (a particle past it dies: smc budget)
GAP_SLACK = 2.0  # an infill gap may take this many times the original gap's tokens (+ 32)


@dataclasses.dataclass(frozen=True, eq=False)
class Request:
    """A compiled constraint: the primer every particle reads, the program, the steps to run.

    primer int32 (P,) starting with BOS; num_steps: tokens generated after it (>= the program's
    min_steps); given: the notes the samples must keep (beats); piece: the file as read (its
    meter and tempo for rendering); key_notes: the notes a key is estimated from; drop_last:
    scaffolding tokens after the program's last given token (removed from every sample)."""

    kind: str  # "melody" | "infill"
    describe: str  # for samples.json, e.g. "melody m.mid (top voice, 32 notes)"
    primer: np.ndarray
    program: smc.Program
    num_steps: int
    given: Notes
    piece: Piece
    key_notes: Notes
    unit_V: np.ndarray  # float32 (V,): clock units FREE_UNTIL targets count
    drop_last: int = 0
    gaps: tuple[tuple[float, float], ...] = ()  # infill: (start beat, end beat) of each range

    def primers(self, num_samples: int) -> np.ndarray:
        return np.tile(self.primer, (num_samples, 1)).astype(np.int32)


def wanted(sample: SampleConfig) -> bool:
    """Whether the sample settings ask for a constraint (--melody, --melody_track, --infill)."""
    return bool(sample.melody or sample.infill.strip() or sample.melody_track >= 0)


def check_request(sample: SampleConfig) -> None:
    """UsageError for flag combinations that ask for no constraint or two at once."""
    infill = sample.infill.strip()
    midi_primer = sample.primer not in PRIMER_SOURCES
    if infill and not midi_primer:
        raise UsageError(f"--infill={infill}: needs --primer_midi (the piece whose bars are kept)")
    if sample.melody and infill:
        raise UsageError("--melody and --infill: give one constraint")
    if sample.melody and sample.primer != "none":
        raise UsageError("--melody is the whole piece: leave out --primer and --primer_midi")
    if sample.melody_track >= 0 and not sample.melody:
        raise UsageError(f"--melody_track={sample.melody_track}: needs --melody")


def prepare(config: Config, tokenizer: Tokenizer, sample: SampleConfig) -> Request:
    """The Request the sample settings ask for (before any jax work, so bad input fails fast)."""
    check_request(sample)
    if sample.melody:
        return melody_request(config, tokenizer, sample.melody, sample.melody_track)
    return infill_request(config, tokenizer, sample.primer, parse_ranges(sample.infill))


# --- melody ------------------------------------------------------------------------------------
def melody_notes(config: Config, piece: Piece, track: int, where: str) -> Notes:
    """The melody of a file: voice part `track` (0 = the highest, for files whose tracks are
    voice parts), else every note; then its top voice on the tokenizer's grid
    (`geometry.skyline`). UsageError for a missing part, an empty melody, or melody notes
    outside the model's pitch range."""
    notes = piece.notes
    if track >= 0:
        parts = int(notes.voice.max(initial=-1)) + 1
        if parts == 0:
            raise UsageError(
                f"{where}: --melody_track={track}, but the file's tracks are not voice parts "
                "(leave --melody_track out to take the top voice)"
            )
        if track >= parts:
            raise UsageError(f"{where}: --melody_track={track}, but the file has {parts} parts")
        notes = notes[notes.voice == track]
    if not len(notes):
        raise UsageError(f"{where}: the melody is empty (no notes)")
    start, end = grid_steps(notes, config.tokenizer.steps_per_beat)
    kept, _ = skyline(notes.pitch.astype(np.int64), start, end)
    top = notes[kept]
    lo, hi = config.tokenizer.pitch_min, config.tokenizer.pitch_max
    bad = (top.pitch < lo) | (top.pitch > hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UsageError(
            f"{where}: {int(bad.sum())} melody note(s) outside the model's pitch range "
            f"[{lo}, {hi}], e.g. pitch {int(top.pitch[i])} at beat {float(top.start[i]):g} "
            "(transpose the melody)"
        )
    if float(top.start.min()) < 0:
        raise UsageError(f"{where}: the melody starts before beat 0")
    return top


def program_from_template(template) -> smc.Program:
    """GIVEN -> FORCE, FREE_TOKEN -> FREE from its set, OPEN -> FREE_UNTIL the next token (at
    most OPEN_BUDGET tokens)."""
    ops = []
    for kind, token, row in zip(
        template.kind_K.tolist(), template.token_K.tolist(), template.set_K.tolist(), strict=True
    ):
        if kind == GIVEN:
            ops += smc.forced([token])
        elif kind == FREE_TOKEN:
            ops += smc.free(1, row)
        elif kind == OPEN:
            ops += smc.free_until(-1.0, skip=1, mask=row, budget=OPEN_BUDGET)
        else:
            raise ValueError(f"unknown template item kind {kind}")
    return smc.Program.build(ops, template.allow_MxV)


def melody_request(config: Config, tokenizer: Tokenizer, path: str, track: int = -1) -> Request:
    """Harmonization of the melody in MIDI file `path` (see `melody_notes`)."""
    where = f"--melody {path}"
    piece = primer_lib.read_midi_flag(config, path, "melody")
    part = f"part {track}" if track >= 0 else "top voice"
    return melody_request_for_piece(
        config, tokenizer, piece, track, where, f"melody {os.path.basename(path)} ({part}"
    )


def melody_request_for_piece(
    config: Config, tokenizer: Tokenizer, piece: Piece, track: int, where: str, describe: str
) -> Request:
    """Harmonization of `piece`'s melody (`melody_notes(config, piece, track, where)`), in the
    piece's meters; `describe` opens the Request's description ("..., N notes)" is added).
    UsageError (naming `where`) when the tokenizer cannot write the melody."""
    top = melody_notes(config, piece, track, where)
    melody_piece = dataclasses.replace(piece, notes=top)
    try:
        template = tokenizer.melody_template(melody_piece)
    except EncodingError as e:
        raise UsageError(f"{where}: {e}") from None
    if len(template.melody) < len(top):  # e.g. a triplet on an eighth-note grid
        logging.warning(
            "%s: %d of the melody's %d notes do not fit the tokenizer's grid (%d steps per "
            "beat) and are merged; the samples keep the %d that do", where,
            len(top) - len(template.melody), len(top), tokenizer.config.steps_per_beat,
            len(template.melody),
        )  # fmt: skip
    program = program_from_template(template)
    opens = int((template.kind_K == OPEN).sum())
    slack = OPEN_SLACK_PER_NOTE * len(template.melody) + 64 if opens else 0
    return Request(
        kind="melody",
        describe=f"{describe}, {len(template.melody)} notes)",
        primer=np.asarray([BOS], np.int32),
        program=program,
        num_steps=program.min_steps + slack,
        given=template.melody,
        piece=melody_piece,
        key_notes=template.melody,
        unit_V=np.zeros(tokenizer.vocab.size, np.float32),
        drop_last=template.drop_last,
    )


# --- infill ------------------------------------------------------------------------------------
RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


def parse_ranges(text: str) -> list[tuple[int, int]]:
    """Bar ranges: "5-8" or "3-4,9-12" (bars from 1, inclusive; "7" = one bar) -> sorted
    [(first, last)]. UsageError for bad syntax, a bar 0, a reversed or an overlapping range."""
    ranges = []
    for part in text.split(","):
        m = RANGE.match(part)
        if not m:
            raise UsageError(f"--infill={text}: {part.strip()!r} is not a bar range like 5-8")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if a < 1 or b < a:
            raise UsageError(f"--infill={text}: bars {a}-{b} are not a range of bars from 1")
        ranges.append((a, b))
    ranges.sort()
    for (_, b), (a, _) in zip(ranges[:-1], ranges[1:], strict=True):
        if a <= b + 1:
            raise UsageError(f"--infill={text}: ranges overlap or touch (join them)")
    return ranges


def infill_request(
    config: Config, tokenizer: Tokenizer, path: str, ranges: list[tuple[int, int]]
) -> Request:
    """Bars `ranges` of the MIDI file `path` rewritten, the others kept (bars by the tokenizer's
    bar counter, which follows the meter in force). UsageError when the tokenizer's bars cannot
    be cut (tokens in seconds, a held-key grammar) or a range lies outside the piece or leaves
    no bar after it."""
    text = ",".join(f"{a}-{b}" for a, b in ranges)
    where = f"--infill={text}"
    if tokenizer.time_unit != "beat" or tokenizer.grammar.press is not None:
        raise UsageError(
            f"{where}: the {tokenizer.name} tokenizer's tokens cannot be cut at bar lines "
            "(tokens in seconds or held keys); use a score tokenizer such as voices or event"
        )
    piece = primer_lib.read_midi_flag(config, path, "primer_midi")
    return infill_request_for_piece(config, tokenizer, piece, ranges, path)


def infill_request_for_piece(
    config: Config, tokenizer: Tokenizer, piece: Piece, ranges: list[tuple[int, int]], path: str
) -> Request:
    """`infill_request` for a piece already read (`path` names it in messages)."""
    text = ",".join(f"{a}-{b}" for a, b in ranges)
    where = f"--infill={text}"
    kept_piece = dataset.fit_pitch_range(piece, config)
    if not len(kept_piece.notes):
        raise UsageError(f"--primer_midi {path}: every note lies outside the pitch range")
    try:
        tokens = tokenizer.encode(kept_piece).astype(np.int64)
    except EncodingError as e:
        raise UsageError(f"--primer_midi {path}: {e}") from None
    counter = tokenizer.bar_counter()
    bars = counter.bars(tokens)
    last = int(bars.max())
    for a, b in ranges:
        if b >= last:
            raise UsageError(
                f"{where}: bars {a}-{b} lie outside the piece or reach its end ({path} has "
                f"{last} bars; at least one bar must follow each range)"
            )
    states, accepted = tokenizer.grammar.walk(tokens)
    if not accepted.all():
        raise Failure(f"--primer_midi {path}: its tokens do not fit the grammar")
    after = np.r_[states[1:], tokenizer.grammar.next_state[states[-1], tokens[-1]]]
    meter_V = tokenizer.meter_token_mask()
    rows = [np.ones(tokenizer.vocab.size, bool)]
    ops: list = []
    slack = 0
    tables = tokenizer.voice_tables()
    if config.model.constraint_encoder_size and tables is not None:
        # A constraint encoder reads one token per position: on a voice grid the gap keeps its
        # length (its bar lines and meters are forced), and each voice token in it is free.
        in_gap = np.zeros(tokens.size, bool)
        for a, b in ranges:
            in_gap |= (bars >= a) & (bars <= b)
        free_T = in_gap & (tables.voice_S[states] >= 0)
        body = np.flatnonzero(bars >= ranges[0][0])
        ops = [smc.free(1)[0] if free_T[t] else smc.forced([tokens[t]])[0] for t in body]
    for k, (a, b) in enumerate(ranges if not ops else ()):
        gap = tokens[(bars >= a) & (bars <= b)]
        allowed = ~meter_V  # the gap keeps the original's meters
        allowed[gap[meter_V[gap]]] = True
        rows.append(allowed)
        skip = 1 if counter.inclusive else 0
        stop = ranges[k + 1][0] if k + 1 < len(ranges) else last + 1
        kept = np.flatnonzero((bars > b) & (bars < stop))
        state = joining_states(tokenizer.grammar, tokens[kept[skip:]], after[kept[skip:]])
        if not state:
            raise Failure(f"{where}: no grammar state leads into bar {b + 1} of {path}")
        ops += smc.free_until((b + 1 - counter.base) * counter.per_bar, skip, state, len(rows) - 1)
        ops += smc.forced(tokens[(bars > b) & (bars < stop)])
        slack += math.ceil(GAP_SLACK * gap.size) + 32
    program = smc.Program.build(ops, np.stack(rows), num_states=tokenizer.grammar.num_states)
    primer = np.r_[BOS, tokens[bars < ranges[0][0]]].astype(np.int32)
    beats = tokenizer.token_beats(tokens)
    bar_start = {int(k): float(beats[np.argmax(bars == k)]) for k in np.unique(bars)}
    end_beat = tokenizer.decode(tokens).beats
    gaps = tuple((bar_start[a], bar_start.get(b + 1, end_beat)) for a, b in ranges)
    notes = tokenizer.decode(tokens).notes
    in_gap = np.zeros(len(notes), bool)
    for lo, hi in gaps:
        in_gap |= (notes.start >= lo - 1e-9) & (notes.start < hi - 1e-9)
    return Request(
        kind="infill",
        describe=f"infill bars {text} of {os.path.basename(path)} ({last} bars)",
        primer=primer,
        program=program,
        num_steps=program.min_steps + slack,
        given=notes[~in_gap],
        piece=kept_piece,
        key_notes=notes[~in_gap],
        unit_V=counter.advance_V.astype(np.float32),
        gaps=gaps,
    )


def joining_states(grammar, kept: np.ndarray, kept_after: np.ndarray) -> tuple[int, ...]:
    """The grammar states a rewritten gap may end in: those from which the kept tokens that
    follow (`kept` int64 (n,), the original's state after each `kept_after`) are all
    grammatical and whose walk meets the original's, after which the two walks are the same.
    Found by walking every state at once (numpy); e.g. for voices tokens, a gap may end with
    any voices sounding, except that a voice the kept bar HOLDs must be sounding."""
    table = grammar.next_state
    current = np.arange(table.shape[0])
    ok = np.ones(current.size, bool)
    met = np.zeros(current.size, bool)
    for token, want in zip(kept.tolist(), kept_after.tolist(), strict=True):
        nxt = table[current, token]
        ok &= nxt >= 0
        current = np.where(nxt >= 0, nxt, current)
        met |= ok & (current == want)
        if (met | ~ok).all():
            break
    return tuple(np.flatnonzero(ok & met).tolist())


# --- sampling ----------------------------------------------------------------------------------
def smc_settings(sample: SampleConfig) -> smc.SMCSettings:
    """Forced greedy (BachBot) for decoder="argmax", else SMC with `sample.particles`."""
    if sample.decoder == "argmax":
        return smc.SMCSettings(num_particles=1, proposal="argmax", resample=False)
    return smc.SMCSettings(num_particles=sample.particles, temperature=sample.temperature)


def _round_up(x: int, to: int) -> int:
    return -(-int(x) // to) * to


def run(
    restored, request: Request, settings: smc.SMCSettings, keys_G, styles_G, seed: int,
    *, pad_ops: int = 256, pad_steps: int = 64, parallels_penalty: float = 0.0,
) -> tuple[np.ndarray, smc.SMCResult, np.ndarray]:  # fmt: skip
    """Runs one filter per sample (G = len(keys_G)); returns (tokens int32 (G, T) after the
    primer, PAD after the program's end and in place of its scaffolding tokens, the SMCResult,
    chosen particle int64 (G,), -1 where no particle met the constraints).

    keys_G: key number per sample (conditioned models; -1 or ignored otherwise); styles_G:
    style index or -1. Shapes are padded (ops to a multiple of `pad_ops`, token and state
    sets to 16, steps to a multiple of `pad_steps`) so that requests of similar size share
    one compile (a benchmark passes its largest request's sizes: one compile for all).
    `parallels_penalty` > 0 (voice tokens): the target is the model under the soft parallels
    rule (`sampler.parallels_rule`; smc.run_smc's `voices`)."""
    tokenizer, spec = restored.tokenizer, restored.spec
    g = len(keys_G)
    primers = request.primers(g)
    states = sampler.grammar_states_after(tokenizer.grammar, primers)
    units = request.unit_V[primers].sum(axis=1).astype(np.float32)
    cond_GxPxC = cond_GxC = None
    if spec.dim:
        keys = np.asarray(keys_G, np.int32)
        styles = np.asarray(styles_G, np.int32)
        cond_GxC = conditioning.vector(spec, keys, styles).astype(np.float32)
        cond_GxPxC = np.repeat(cond_GxC[:, None], primers.shape[1], axis=1)
    program = request.program
    arrays = program.arrays(
        pad_to=_round_up(program.op_K.size, pad_ops),
        pad_masks_to=_round_up(program.allow_MxV.shape[0], 16),
        pad_closes_to=_round_up(program.close_RxS.shape[0], 16),
    )
    num_steps = _round_up(request.num_steps, pad_steps)
    step_fn = StepFunction(restored.model)
    ahead = (None, None)
    if step_fn.reads_constraints:
        # The forced tokens keep the model's weight (SMCSettings.forced_weight="model"): measured
        # better joins out of an infill gap than weighing only the free tokens (constraints.md).
        ahead = encoded_constraints(step_fn, restored.variables, request, g, arrays.op_K.size)
    result = smc.run_smc(
        restored.variables, primers, states, tokenizer.grammar.next_state, request.unit_V,
        units, arrays, jax.random.key(seed), cond_GxPxC, cond_GxC,
        sampler.parallels_rule(tokenizer, primers, parallels_penalty), *ahead,
        step_fn=step_fn, num_steps=num_steps, settings=settings,
    )  # fmt: skip
    result = jax.device_get(result)
    rows, picks = smc.choose_particles(result, np.random.default_rng(seed))
    rows = np.array(rows, np.int32)
    if request.drop_last:
        for row in rows:
            body = np.flatnonzero(row != PAD)
            if body.size:
                row[body[-request.drop_last :]] = PAD
    return rows, result, picks


def constraint_row(request: Request) -> np.ndarray | None:
    """int32 (P - 1 + K,): the request as a constraint-encoder row aligned with the targets
    (model/anticipation.py): the primer's tokens after BOS, then per op its FORCE token or FREE;
    None when the program is not one token per op (a FREE_UNTIL: infill, event melodies)."""
    program = request.program
    ops = program.op_K[program.op_K != smc.END]
    if not np.isin(ops, (smc.FREE, smc.FORCE)).all():
        return None
    row = np.where(ops == smc.FORCE, program.token_K[: ops.size], anticipation.FREE)
    return np.concatenate([request.primer[1:], row]).astype(np.int32)


def encoded_constraints(step_fn, variables, request: Request, groups: int, num_ops: int):
    """(ahead_GxPxE, ahead_GxKxE) float32 for smc.run_smc: the encoder's output at the primer's
    inputs and at each of `num_ops` ops (zeros past the program's end). A program the encoder
    cannot read (`constraint_row` None) gets zeros: the model's unconstrained reading, so SMC
    alone meets the constraint."""
    p = request.primer.size
    row = constraint_row(request)
    if row is None:
        logging.info("%s: the constraint encoder reads one-token-per-position constraints only; "
                     "SMC alone meets this one", request.describe)  # fmt: skip
        width = step_fn.model.ahead_dim
        return np.zeros((groups, p, width), np.float32), np.zeros((groups, num_ops, width),
                                                                   np.float32)  # fmt: skip
    ahead_RxE = np.asarray(step_fn.encode(variables, row[None]))[0]
    ops_KxE = np.zeros((num_ops, ahead_RxE.shape[1]), np.float32)
    real = min(num_ops, ahead_RxE.shape[0] - (p - 1))
    ops_KxE[:real] = ahead_RxE[p - 1 : p - 1 + real]
    tile = lambda a: np.repeat(a[None], groups, axis=0)
    return tile(ahead_RxE[:p]), tile(ops_KxE)


def given_kept(request: Request, notes: Notes, steps_per_beat: int) -> float:
    """Share of the given notes found in `notes`: melody notes by (pitch, onset, end), kept bars'
    notes by (pitch, onset) (a note tied into a kept bar from a gap ends where the gap says)."""
    if not len(request.given):
        return 1.0
    q = lambda x: np.rint(np.asarray(x) * steps_per_beat).astype(np.int64)
    full = request.kind == "melody"

    def key(n: Notes) -> set:
        ends = q(n.end) if full else np.zeros(len(n), np.int64)
        return set(zip(n.pitch.tolist(), q(n.start).tolist(), ends.tolist(), strict=True))

    want, have = key(request.given), key(notes)
    return len(want & have) / len(want)


def final_ess(log_weights_N: np.ndarray) -> float:
    """Effective sample size (sum w)^2 / sum w^2 of final log weights (nats); 0 if none finite."""
    lw = np.asarray(log_weights_N, np.float64)
    if not np.isfinite(lw).any():
        return 0.0
    w = np.exp(lw - lw[np.isfinite(lw)].max())
    return float(w.sum() ** 2 / (w**2).sum())


def sample_info(request: Request, result, picks, i: int) -> dict:
    """The per-sample constraint facts for samples.json."""
    lw = np.asarray(result.log_weights_GxN)[i]
    return dict(
        constraint=request.kind,
        given_notes=[
            [int(p), round(float(s), 4), round(float(e), 4)]
            for p, s, e in zip(
                request.given.pitch, request.given.start, request.given.end, strict=True
            )
        ],
        constraints_met=bool(picks[i] >= 0),
        finished_particles=int(np.asarray(result.finished_GxN)[i].sum()),
        log_evidence=round(float(np.asarray(result.log_evidence_G)[i]), 3),
        resamples=int(np.asarray(result.resampled_GxT)[i].sum()),
        min_ess=round(float(np.asarray(result.ess_GxT)[i].min()), 2),
        final_ess=round(final_ess(lw), 2),
        finite_weights=int(np.isfinite(lw).sum()),
    )


def sample_for_generate(restored, request: Request, sample: SampleConfig, plan, seed: int):
    """generate()'s call: (primers (G, P), tokens (G, T), per-sample info, settings info)."""
    g = sample.num_samples
    keys_G, styles_G = [-1] * g, [-1] * g
    if plan is not None:
        keys_G = [schedule[0][1] for schedule in plan.schedules]
        styles_G = list(plan.styles)
        if any(len(s) > 1 for s in plan.schedules):
            logging.warning("%s: key changes are not followed; each sample keeps its first key",
                            request.describe)  # fmt: skip
    if sample.scale != "off" or sample.top_p < 1 or sample.top_k or sample.repetition_penalty != 1:
        logging.info("constrained sampling: the scale rule, top_k/top_p and the repetition "
                     "penalty do not apply (the target is the model, under the parallels rule "
                     "if --parallels_penalty)")  # fmt: skip
    settings = smc_settings(sample)
    tokens, result, picks = run(restored, request, settings, keys_G, styles_G, seed,
                                parallels_penalty=sample.parallels_penalty)  # fmt: skip
    if (picks < 0).all():
        raise Failure(
            f"{request.describe}: no particle met the constraints in {tokens.shape[1]} tokens "
            "(raise --particles)"
        )
    for i in np.flatnonzero(picks < 0):
        logging.warning("sample %d: no particle met the constraints; it is written as it is", i)
    infos = [sample_info(request, result, picks, i) for i in range(g)]
    settings_info = dict(
        constraint=request.describe,
        constraint_decoder=("forced greedy" if settings.proposal == "argmax" else "smc"
                            if settings.num_particles > 1 else "forced sampling (1 particle)"),
        constraint_encoder=StepFunction(restored.model).reads_constraints,
        particles=settings.num_particles,
        ess_threshold=settings.ess_threshold,
        constraint_steps=int(tokens.shape[1]),
    )
    return request.primers(g), tokens, infos, settings_info
