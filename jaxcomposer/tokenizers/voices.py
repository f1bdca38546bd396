"""`voices` tokens: voice-separated parts on a grid, in the manner of DeepBach (Hadjeres, Pachet
& Nielsen 2017, "DeepBach: a steerable model for Bach chorales generation", ICML).

Layout. Per bar: BAR, TIMESIG(k) (the bar's meter, in every bar), then the bar's grid steps
(`steps_per_beat` per quarter beat, as many as the meter's bar holds), and at each step one token
per voice, top voice first (soprano, alto, tenor, bass for num_voices=4):

  NOTE(p - pitch_min)  the voice strikes pitch p here (a new onset, also a repeated pitch)
  HOLD                 the voice's note continues (only after that voice's NOTE or HOLD)
  REST                 the voice is silent

With `per_voice_tokens` each voice u has its own NOTE_u / HOLD_u / REST_u ranges, as DeepBach has
one vocabulary per voice: every token then names its voice, so the model need not count its way
through the cycle of voices (the grammar allows only the expected voice's tokens).

Bars run up to the one holding the last sounding step; the last bar is filled (HOLD/REST), so
every piece ends at a bar line. TIMESIG reuses the event tokenizer's meter table, and meters are
read as it reads them (event.meter_segments). Unlike DeepBach's fixed 4/4 grid, bar lines follow
the meter.

Why a TIMESIG in every bar (not only where the meter changes, as in `event`): the grammar then
needs no memory of the meter across bars (its states are steps left in the bar x voice x which
voices sound: 2,048 at 4 steps per beat, not the 21,504 a remembered bar length costs), and every
BAR restarts the meter, so a primer may begin at any bar. It costs one token per bar (3% at 2
steps per beat).

Grammar (tokenizers/grammar.py): voice order, HOLD only after a sounding note of that voice,
bars exactly as long as their TIMESIG says, EOS only at a bar line. Every grammar-valid
sequence decodes with 0 skips; a sequence cut short (mid-bar) decodes to the music up to there.

Voices. A piece's own voices (`Notes.voice`, from score parts or MIDI tracks that are voices) are
used when every note has one and they are exactly 0..num_voices-1. Otherwise voices are assigned
from the notes (`assign_voices`). Notes the tokens cannot hold are counted, never dropped
silently: `merged_on_grid_notes` (voices assigned from the notes: one pitch struck twice on one
step), `merged_in_voice_notes` (two notes of one voice begin on one step: the outermost is kept,
the highest in the upper half of the voices, the lowest in the lower half),
`beyond_voices_notes` (more notes begin together than there are voices); and the notes the
tokens hold shorter: `voice_cut_notes` (a note ended early by the next onset in its voice). There
is no duration cap: a note holds as long as it sounds.

Decoding sets `Notes.voice`, so renderers can engrave voices and write one MIDI track per voice.
"""

from __future__ import annotations

import numpy as np

from jaxcomposer.music.notes import Notes, Piece, TimeSignature
from jaxcomposer.tokenizers.base import Decoded, Tokenizer, VoiceTables
from jaxcomposer.tokenizers.common import checked_grid, notes_from_steps, shift_pitch_index
from jaxcomposer.tokenizers.event import bar_grid, time_signature_table
from jaxcomposer.tokenizers.geometry import BarCounter
from jaxcomposer.tokenizers.grammar import END_STATE, START_STATE, Grammar
from jaxcomposer.tokenizers.vocab import BOS, EOS, PAD, Vocab, make_vocab

MAX_VOICES = 8  # the grammar table grows as 2**num_voices
CROSSING_COST = 12  # semitones of voice-leading cost per held note a new note's voice crosses
# Voices assigned from the notes start from these registers: evenly from C5 (soprano) down to
# C3 (bass), so that a piece's first onset with fewer notes than voices fills the right ones.
TOP_REGISTER, BOTTOM_REGISTER = 72, 48


def nominal_registers(num_voices: int) -> np.ndarray:
    """float64 (num_voices,): the MIDI pitch each voice starts from in `assign_voices`."""
    if num_voices == 1:
        return np.array([float(TOP_REGISTER + BOTTOM_REGISTER) / 2])
    return np.linspace(TOP_REGISTER, BOTTOM_REGISTER, num_voices)


def assign_voices(
    pitch: np.ndarray, start: np.ndarray, end: np.ndarray, num_voices: int
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Voices for notes that name none: (voice int64 (N,), -1 = not held; end int64 (N,), the grid
    end each kept note keeps; counts of lost and cut notes).

    `pitch`, `start`, `end`: int64 (N,) MIDI pitch and grid steps (start < end). The rule, onset
    by onset in time order (own code, after the pitch-rank-with-continuity rule of voice
    separation, e.g. Chew & Wu 2004, simplified to a fixed number of voices):
      1. one pitch struck twice on one step is one note (the longer; `merged_on_grid_notes`);
      2. notes still sounding keep their voice (a held note never changes voice);
      3. if the new notes and the held ones outnumber the voices, held notes are ended here
         (those nearest in pitch to a new note first, `voice_cut_notes`) until the new ones
         fit; of more new notes
         than voices the highest num_voices-1 and the lowest are kept (the outer voices carry
         the most; the rest are `beyond_voices_notes`);
      4. the new notes, high to low, go to free voices in top-to-bottom order (so they never
         cross each other), choosing the voices that minimise the summed distance to each
         voice's previous pitch (its nominal register before its first note), plus
         CROSSING_COST per held note crossed (dynamic programming over the order-preserving
         matchings).
    """
    n = pitch.size
    voice = np.full(n, -1, np.int64)
    new_end = end.copy()
    counts = {"merged_on_grid_notes": 0, "beyond_voices_notes": 0, "voice_cut_notes": 0}
    if n == 0:
        return voice, new_end, counts
    last_pitch = nominal_registers(num_voices)
    holder = np.full(num_voices, -1, np.int64)  # note sounding in each voice
    order = np.lexsort((-(end - start), pitch, start))
    starts_sorted = start[order]
    bounds = np.flatnonzero(np.r_[True, starts_sorted[1:] != starts_sorted[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        group = order[a:b]
        s = int(start[group[0]])
        keep = np.r_[True, pitch[group][1:] != pitch[group][:-1]]  # longest first per pitch
        counts["merged_on_grid_notes"] += int((~keep).sum())
        group = group[keep]
        group = group[np.argsort(-pitch[group], kind="stable")]  # high to low
        if group.size > num_voices:
            dropped = np.r_[group[num_voices - 1 : -1]] if num_voices > 1 else group[1:]
            counts["beyond_voices_notes"] += int(dropped.size)
            group = np.r_[group[: num_voices - 1], group[-1:]] if num_voices > 1 else group[:1]
        # Voices whose note ended are free; held notes are cut (longest-held first) to fit.
        for v in range(num_voices):
            if holder[v] >= 0 and new_end[holder[v]] <= s:
                holder[v] = -1
        held = [v for v in range(num_voices) if holder[v] >= 0]
        excess = len(held) + group.size - num_voices
        if excess > 0:
            # The held notes nearest in pitch to a new note are the lines it most plausibly
            # continues; they end here (earlier-struck first among equals).
            def nearness(v, group=group):
                note = holder[v]
                return (int(np.abs(pitch[group] - pitch[note]).min()), start[note], v)

            for v in sorted(held, key=nearness)[:excess]:
                new_end[holder[v]] = s
                counts["voice_cut_notes"] += 1
                holder[v] = -1
        free = [v for v in range(num_voices) if holder[v] < 0]
        held_pitch = {v: int(pitch[holder[v]]) for v in range(num_voices) if holder[v] >= 0}
        chosen = _order_preserving_match(pitch[group], free, last_pitch, held_pitch)
        for note, v in zip(group.tolist(), chosen, strict=True):
            voice[note] = v
            holder[v] = note
            last_pitch[v] = pitch[note]
    return voice, new_end, counts


def _order_preserving_match(
    new_pitch: np.ndarray, free: list[int], last_pitch: np.ndarray, held_pitch: dict[int, int]
) -> list[int]:
    """Free voices (ascending = top down) for the new notes (high to low), order-preserving,
    minimising sum |pitch - last_pitch[voice]| + CROSSING_COST * crossings of held notes."""
    k, m = new_pitch.size, len(free)
    if k == 0:
        return []

    def cost(i: int, j: int) -> float:
        p, v = int(new_pitch[i]), free[j]
        crossings = sum(1 for u, q in held_pitch.items() if (u < v and q < p) or (u > v and q > p))
        return abs(p - float(last_pitch[v])) + CROSSING_COST * crossings

    # best[i][j]: least cost of placing notes 0..i with note i in free voice j.
    best = np.full((k, m), np.inf)
    back = np.zeros((k, m), np.int64)
    for j in range(m - k + 1):
        best[0, j] = cost(0, j)
    for i in range(1, k):
        for j in range(i, m - k + i + 1):
            prev = int(np.argmin(best[i - 1, :j]))
            best[i, j] = best[i - 1, prev] + cost(i, j)
            back[i, j] = prev
    j = int(np.argmin(best[k - 1]))
    path = [j]
    for i in range(k - 1, 0, -1):
        j = int(back[i, j])
        path.append(j)
    return [free[j] for j in reversed(path)]


def given_voices(
    pitch: np.ndarray, start: np.ndarray, end: np.ndarray, voice: np.ndarray, num_voices: int
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """As `assign_voices`, for notes whose voices the source names (0..num_voices-1): two notes
    of a voice on one step keep the outermost (`merged_in_voice_notes`), and a note still
    sounding when its voice's next note begins ends there (`voice_cut_notes`)."""
    voice = voice.astype(np.int64).copy()
    new_end = end.copy()
    counts = {"merged_in_voice_notes": 0, "voice_cut_notes": 0}
    upper = voice < num_voices / 2  # keep the highest there, the lowest below
    order = np.lexsort((np.where(upper, -pitch, pitch), start, voice))
    v_sorted, s_sorted = voice[order], start[order]
    same = np.r_[False, (v_sorted[1:] == v_sorted[:-1]) & (s_sorted[1:] == s_sorted[:-1])]
    voice[order[same]] = -1
    counts["merged_in_voice_notes"] = int(same.sum())
    kept = order[~same]
    nxt = np.r_[kept[1:], -1]
    follows = np.r_[voice[kept[1:]] == voice[kept[:-1]], False]
    cut = follows & (new_end[kept] > start[np.maximum(nxt, 0)])
    new_end[kept[cut]] = start[nxt[cut]]
    counts["voice_cut_notes"] = int(cut.sum())
    return voice, new_end, counts


class VoicesTokenizer(Tokenizer):
    name = "voices"

    # --- vocabulary and grammar -----------------------------------------------------------------
    def _build_vocab(self) -> Vocab:
        c = self.config
        if not 1 <= c.num_voices <= MAX_VOICES:
            raise ValueError(f"num_voices must be in [1, {MAX_VOICES}], got {c.num_voices}")
        if c.max_bar_beats < 1:
            raise ValueError("max_bar_beats must be >= 1")
        self.meter_table = time_signature_table(c.max_bar_beats, c.steps_per_beat)
        self.meter_index = {m: i for i, m in enumerate(self.meter_table)}
        self.bar_steps = np.array(
            [n * 4 * c.steps_per_beat // d for n, d in self.meter_table], np.int64
        )
        if c.per_voice_tokens:
            self.voice_ranges = tuple((f"NOTE_{u}", f"HOLD_{u}", f"REST_{u}")
                                      for u in range(c.num_voices))  # fmt: skip
        else:
            self.voice_ranges = (("NOTE", "HOLD", "REST"),) * c.num_voices
        ranges = [("BAR", 1), ("TIMESIG", len(self.meter_table))]
        for note, hold, rest in dict.fromkeys(self.voice_ranges):
            ranges += [(note, self.num_pitches), (hold, 1), (rest, 1)]
        return make_vocab(
            self.name,
            ranges,
            per_voice_tokens=c.per_voice_tokens,
            pitch_min=c.pitch_min,
            pitch_max=c.pitch_max,
            steps_per_beat=c.steps_per_beat,
            max_bar_beats=c.max_bar_beats,
            num_voices=c.num_voices,
            time_signatures=[f"{n}/{d}" for n, d in self.meter_table],
        )

    def _build_grammar(self) -> Grammar:
        """States: START, END, BEGIN (after BOS), METER(mask) after a BAR, BAR_END(mask) after a
        bar's last step, and STEP(r, v, mask): r steps left in the bar (this one included), voice
        v next, `mask` bit u set when voice u sounds (its latest token at a NOTE or HOLD). The
        mask crosses bar lines, so notes tie over them. Built as a table directly: the
        GrammarBuilder's per-edge calls would take seconds for 2**V * V * steps states."""
        v, voices = self.vocab, self.config.num_voices
        self._token_tables()
        masks = 1 << voices
        max_steps = int(self.bar_steps.max())
        begin, meter0, bar_end0 = 2, 3, 3 + masks
        step0 = 3 + 2 * masks

        def step(r, voice, mask):  # r in 1..max_steps
            return step0 + ((r - 1) * voices + voice) * masks + mask

        num_states = step0 + max_steps * voices * masks
        table = np.full((num_states, v.size), -1, np.int32)
        table[START_STATE, BOS] = begin
        table[END_STATE, PAD] = END_STATE
        bar = v.token("BAR")
        table[begin, bar] = meter0
        table[begin, EOS] = END_STATE  # the empty piece
        timesig = v.range_ids("TIMESIG")
        for mask in range(masks):
            table[bar_end0 + mask, bar] = meter0 + mask
            table[bar_end0 + mask, EOS] = END_STATE
            table[meter0 + mask, timesig] = [step(int(r), 0, mask) for r in self.bar_steps]
        r_, voice_, mask_ = np.meshgrid(
            np.arange(1, max_steps + 1), np.arange(voices), np.arange(masks), indexing="ij"
        )
        r_, voice_, mask_ = r_.ravel(), voice_.ravel(), mask_.ravel()
        here = step(r_, voice_, mask_)
        bit = 1 << voice_
        self._voice_S = np.full(num_states, -1, np.int32)
        self._voice_S[here] = voice_

        def after(new_mask):
            last = voice_ == voices - 1
            return np.where(
                ~last,
                step(r_, np.minimum(voice_ + 1, voices - 1), new_mask),
                np.where(r_ > 1, step(np.maximum(r_ - 1, 1), 0, new_mask), bar_end0 + new_mask),
            )

        note_ids = self._note_offset_U[voice_][:, None] + np.arange(self.num_pitches)[None, :]
        table[here[:, None], note_ids] = after(mask_ | bit)[:, None]
        table[here, self._rest_U[voice_]] = after(mask_ & ~bit)
        sounding = (mask_ & bit) != 0
        table[here[sounding], self._hold_U[voice_][sounding]] = after(mask_)[sounding]
        names = ["START", "END", "BEGIN"]
        names += [f"METER_{m:0{voices}b}" for m in range(masks)]
        names += [f"BAR_END_{m:0{voices}b}" for m in range(masks)]
        names += [
            f"STEP_r{r}_v{u}_{m:0{voices}b}" for r, u, m in zip(r_, voice_, mask_, strict=True)
        ]
        return Grammar(next_state=table, bos_state=begin, state_names=tuple(names))

    def _token_tables(self) -> None:
        """Per voice u: first NOTE id, HOLD id, REST id (int64 (U,)); per token id: kind
        (0 other, 1 NOTE, 2 HOLD, 3 REST) and pitch (-1 for non-NOTE tokens), int64 (V,)."""
        v = self.vocab
        self._note_offset_U = np.array([v.offset(n) for n, _, _ in self.voice_ranges])
        self._hold_U = np.array([v.token(h) for _, h, _ in self.voice_ranges])
        self._rest_U = np.array([v.token(r) for _, _, r in self.voice_ranges])
        self._kind_V = np.zeros(v.size, np.int64)
        self._pitch_V = np.full(v.size, -1, np.int64)
        for note, hold, rest in self.voice_ranges:
            ids = v.range_ids(note)
            self._kind_V[ids] = 1
            self._pitch_V[ids] = self.config.pitch_min + np.arange(ids.size)
            self._kind_V[v.token(hold)] = 2
            self._kind_V[v.token(rest)] = 3

    # --- encoding -----------------------------------------------------------------------------
    def _voiced(self, piece: Piece) -> tuple[np.ndarray, ...]:
        """(pitch, start step, end step, voice) int64 of the notes the tokens hold, sorted by
        voice then start, and the counts of the notes they cannot hold as they are."""
        c = self.config
        pitch, q_start, q_end = checked_grid(self, piece)
        voice = piece.notes.voice.astype(np.int64)
        own = voice.size > 0 and np.array_equal(np.unique(voice), np.arange(c.num_voices))
        if own:
            voice, q_end, counts = given_voices(pitch, q_start, q_end, voice, c.num_voices)
            counts.update(merged_on_grid_notes=0, beyond_voices_notes=0)
        else:
            voice, q_end, counts = assign_voices(pitch, q_start, q_end, c.num_voices)
            counts["merged_in_voice_notes"] = 0
        kept = voice >= 0
        pitch, q_start, q_end, voice = (x[kept] for x in (pitch, q_start, q_end, voice))
        order = np.lexsort((q_start, voice))
        return (*(x[order] for x in (pitch, q_start, q_end, voice)), counts)

    def _bars(self, piece: Piece, last_step: int) -> tuple[np.ndarray, np.ndarray]:
        """(bar start steps, TIMESIG index of each bar) of the bars covering steps 0..last."""
        starts, changes = bar_grid(piece, last_step, self.config, self.meter_index)
        meter = np.maximum.accumulate(np.where(changes >= 0, np.arange(changes.size), 0))
        return starts, changes[meter]

    def encode_counted(self, piece: Piece) -> tuple[np.ndarray, dict[str, int]]:
        c, v = self.config, self.vocab
        pitch, start, end, voice, counts = self._voiced(piece)
        if not pitch.size:
            return np.zeros(0, np.int32), counts
        bar_start, bar_meter = self._bars(piece, int(end.max()) - 1)
        total = int(bar_start[-1] + self.bar_steps[bar_meter[-1]])
        grid_TxV = np.repeat(self._rest_U[None, :], total, axis=0)
        length = end - start
        rows = np.repeat(start, length) + _ramp(length)
        cols = np.repeat(voice, length)
        first = np.r_[0, np.cumsum(length)[:-1]]
        values = self._hold_U[cols]
        values[first] = self._note_offset_U[voice] + pitch - c.pitch_min
        grid_TxV[rows, cols] = values
        parts = []
        bar_end = np.r_[bar_start[1:], total]
        for b in range(bar_start.size):
            parts.append([v.token("BAR"), v.offset("TIMESIG") + bar_meter[b]])
            parts.append(grid_TxV[bar_start[b] : bar_end[b]].reshape(-1))
        return np.concatenate(parts).astype(np.int32), counts

    def quantize(self, piece: Piece) -> Notes:
        """Grid onsets and ends, each voice monophonic (notes cut at their voice's next onset),
        notes beyond the voices dropped; default velocity; `voice` set."""
        pitch, start, end, voice, _ = self._voiced(piece)
        notes = notes_from_steps(pitch, start, end, self.config.steps_per_beat)
        return _with_voice(notes, voice)

    # --- decoding -----------------------------------------------------------------------------
    def _decode_body(self, tokens: np.ndarray, accepted: np.ndarray) -> Decoded:
        c, v = self.config, self.vocab
        voices = c.num_voices
        bar, ts_lo = v.token("BAR"), v.offset("TIMESIG")
        ts_hi = ts_lo + len(self.meter_table)
        kind_V, pitch_V = self._kind_V.tolist(), self._pitch_V.tolist()
        step, voice, bar_start, bar_len = 0, 0, 0, 0  # grid steps
        meter = None
        sounding = [None] * voices  # (pitch, start step) of each voice's note
        notes: list[tuple[int, int, int, int]] = []
        changes: list[TimeSignature] = []
        for token in tokens[accepted].tolist():
            if token == bar:
                bar_start = step
            elif ts_lo <= token < ts_hi:
                k = token - ts_lo
                bar_len = int(self.bar_steps[k])
                if self.meter_table[k] != meter:
                    n, d = self.meter_table[k]
                    changes.append(TimeSignature(bar_start / c.steps_per_beat, n, d))
                meter = self.meter_table[k]
            elif kind_V[token]:  # NOTE, HOLD or REST of the voice the grammar expects
                if kind_V[token] != 2 and sounding[voice] is not None:
                    notes.append((*sounding[voice], step, voice))
                    sounding[voice] = None
                if kind_V[token] == 1:
                    sounding[voice] = (pitch_V[token], step)
                voice += 1
                if voice == voices:
                    voice, step = 0, step + 1
        for u in range(voices):  # a sequence cut mid-step: later voices end at the step's start
            if sounding[u] is not None:
                notes.append((*sounding[u], step + (u < voice), u))
        arr = np.asarray(notes, np.int64).reshape(-1, 4)
        decoded = _with_voice(
            notes_from_steps(arr[:, 0], arr[:, 1], arr[:, 2], c.steps_per_beat), arr[:, 3]
        )
        return Decoded(decoded, 0, (bar_start + bar_len) / c.steps_per_beat, 0, tuple(changes))

    def _shift_token(self, name: str, index: int, shift: int) -> tuple[str, int] | None:
        if name.startswith("NOTE"):
            moved = shift_pitch_index(index, shift, self.num_pitches)
            return None if moved is None else (name, moved)
        return name, index

    # --- geometry (notes/geometry.md) ---------------------------------------------------------
    @property
    def time_unit(self) -> str:
        return "beat"

    @property
    def keeps_note_count(self) -> bool:
        return True  # one NOTE token per note kept in a voice (the rest counted lost)

    def bar_counter(self) -> BarCounter:
        """Bars are counted by BAR tokens (inclusive: a BAR opens its bar), bar 1 = the first."""
        advance_V = np.zeros(self.vocab.size, np.float32)
        advance_V[self.vocab.token("BAR")] = 1.0
        return BarCounter(advance_V, True, 1.0, 0, "bars follow the meter (BAR tokens)")

    def _voice_token_mask(self, tokens: np.ndarray) -> np.ndarray:
        inside = (tokens >= 0) & (tokens < self.vocab.size)
        return inside & (self._kind_V[np.where(inside, tokens, 0)] > 0)

    def token_beats(self, tokens: np.ndarray) -> np.ndarray:
        """float64 (n,): beat of each token: its grid step for voice tokens, the bar line for
        BAR/TIMESIG (the step the next voice token opens); BOS/EOS/PAD count as nothing."""
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        is_voice = self._voice_token_mask(tokens)
        before = np.cumsum(is_voice) - is_voice
        return (before // self.config.num_voices) / self.config.steps_per_beat

    def pitch_class_table(self) -> np.ndarray:
        """bool (V, 12): NOTE tokens sound their pitch's class; HOLD continues a note already
        admitted and REST sounds nothing, so a scale rule never holds them back."""
        table = np.zeros((self.vocab.size, 12), bool)
        notes = self._kind_V == 1
        table[np.flatnonzero(notes), self._pitch_V[notes] % 12] = True
        return table

    def cut_points(self, tokens: np.ndarray) -> np.ndarray:
        """bool (n,): at BAR tokens and at the first voice token of each grid step."""
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        is_voice = self._voice_token_mask(tokens)
        before = np.cumsum(is_voice) - is_voice
        return (tokens == self.vocab.token("BAR")) | (
            is_voice & (before % self.config.num_voices == 0)
        )

    def bar_lines(self, tokens: np.ndarray) -> np.ndarray:
        """float64 (k,): the beat at which each bar (each accepted BAR token) starts."""
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        body = tokens[(tokens != PAD) & (tokens != BOS)]
        eos = np.flatnonzero(body == EOS)
        body = body[: eos[0]] if eos.size else body
        body = body[self.grammar.walk(body)[1]]
        return self.token_beats(body)[body == self.vocab.token("BAR")]

    def meter_tokens(self) -> dict[tuple[int, int], int]:
        """The TIMESIG range, one token per meter of the meter table."""
        lo = self.vocab.offset("TIMESIG")
        return {tuple(m): lo + i for i, m in enumerate(self.meter_table)}

    def voice_tables(self) -> VoiceTables:
        """Each STEP state expects the token of its voice v; NOTE tokens are onsets, HOLD and
        REST hold and rest (per voice with per_voice_tokens, shared otherwise)."""
        return VoiceTables(
            voice_S=self._voice_S,
            kind_V=self._kind_V.astype(np.int32),
            pitch_V=self._pitch_V.astype(np.int32),
            num_voices=self.config.num_voices,
        )

    def meters(self, tokens: np.ndarray) -> tuple[TimeSignature, ...]:
        """The time signatures the tokens set (one where the meter is first set or changes)."""
        return self.decode(tokens).time_signatures


def _ramp(length: np.ndarray) -> np.ndarray:
    """int64 (sum(length),): 0..length[i]-1 for each i in turn."""
    total = int(length.sum())
    starts = np.r_[0, np.cumsum(length)[:-1]]
    return np.arange(total) - np.repeat(starts, length)


def _with_voice(notes: Notes, voice: np.ndarray) -> Notes:
    return Notes(
        notes.pitch, notes.start, notes.end, notes.velocity, notes.program, notes.is_drum,
        np.asarray(voice, np.int8).reshape(-1),
    )  # fmt: skip


__all__ = ["VoicesTokenizer", "assign_voices", "given_voices"]
