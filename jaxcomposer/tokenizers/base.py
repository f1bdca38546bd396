"""The interface every tokenizer implements: pure functions, numpy in, numpy out."""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

from jaxcomposer.config_lib import TokenizerConfig
from jaxcomposer.core.errors import Failure
from jaxcomposer.music.notes import Notes, Piece, TimeSignature
from jaxcomposer.tokenizers.geometry import BarCounter
from jaxcomposer.tokenizers.grammar import Grammar
from jaxcomposer.tokenizers.vocab import BOS, EOS, PAD, Vocab

# Keys of the counts `Tokenizer.encode_counted` returns. Notes the tokens cannot hold at all:
LOST_NOTE_COUNTS = (
    "merged_on_grid_notes",  # one pitch struck twice on one grid step: one note is kept
    "merged_in_roll_notes",  # frame without onset marks: same-pitch notes that overlap or touch
    "merged_pitch_class_notes",  # chord: chord notes of one pitch class (octave doublings)
    "merged_in_voice_notes",  # voices: two notes of one voice begin on one grid step
    "beyond_voices_notes",  # voices: more notes begin together than there are voices
)
# Notes the tokens hold, but shortened:
SHORTENED_NOTE_COUNTS = (
    "duration_capped_notes",  # longer than max_duration_steps
    "voice_cut_notes",  # voices: ended early by the next onset in its voice
)


class EncodingError(Failure, ValueError):
    """A piece holds a value the vocabulary cannot express (the message says which and where)."""


class TranspositionError(Failure, ValueError):
    """Shifting would move some tokens out of the pitch range."""

    def __init__(self, shift: int, out_of_range: int):
        super().__init__(
            f"transposing by {shift:+d} semitones moves {out_of_range} token(s) "
            "out of the pitch range"
        )
        self.shift = shift
        self.out_of_range = out_of_range


@dataclasses.dataclass(frozen=True)
class Decoded:
    notes: Notes
    skipped: int  # tokens that did not fit the grammar (or lay outside the vocabulary)
    beats: float  # length of the decoded music in quarter-note beats
    frames: int | None = None  # number of FRAME_END tokens (frame tokenizer), else None
    time_signatures: tuple[TimeSignature, ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class VoiceTables:
    """How tokens written voice by voice (one token per voice per grid step, top voice first)
    move each voice, for rules that follow voices while sampling.

    voice_S: int32 (S,), the voice (0 = top) whose token the grammar state s expects next, -1
    in states that expect no voice's token (bar lines, meters, start and end);
    kind_V: int32 (V,), what token v does to that voice: 0 nothing (not a voice token), 1 an
    onset of pitch_V[v], 2 it holds its pitch, 3 it rests;
    pitch_V: int32 (V,), the MIDI pitch of onset tokens, -1 for the others;
    num_voices: the number of voices.
    """

    voice_S: np.ndarray
    kind_V: np.ndarray
    pitch_V: np.ndarray
    num_voices: int

    ONSET, HOLD, REST = 1, 2, 3


class Tokenizer(abc.ABC):
    """Declared vocabulary + grammar + encode/decode. Subclasses build both in __init__."""

    name: str
    # Decoded beats are seconds at this tempo (tokens that hold real time), or None when they are
    # score beats with no tempo of their own; writers of MIDI/audio must then use this qpm.
    decoded_qpm: float | None = None

    def __init__(self, config: TokenizerConfig):
        if not 0 <= config.pitch_min <= config.pitch_max <= 127:
            raise ValueError(
                f"pitch range [{config.pitch_min}, {config.pitch_max}] is not within MIDI 0-127"
            )
        if config.steps_per_beat < 1:
            raise ValueError(f"steps_per_beat must be >= 1, got {config.steps_per_beat}")
        self.config = config
        self.vocab: Vocab = self._build_vocab()
        self.grammar: Grammar = self._build_grammar()
        self._transpose_cache: dict[int, np.ndarray] = {}

    # --- what subclasses provide -------------------------------------------------------------
    @abc.abstractmethod
    def _build_vocab(self) -> Vocab: ...

    @abc.abstractmethod
    def _build_grammar(self) -> Grammar: ...

    @abc.abstractmethod
    def encode_counted(self, piece: Piece) -> tuple[np.ndarray, dict[str, int]]:
        """Piece -> (int32 tokens without BOS/EOS, counts of the notes the tokens cannot hold
        as they are, by reason: keys from LOST_NOTE_COUNTS and SHORTENED_NOTE_COUNTS, every
        key this tokenizer can lose by, zeros included). Raises EncodingError for impossible
        values."""

    @abc.abstractmethod
    def _decode_body(self, tokens: np.ndarray, accepted: np.ndarray) -> Decoded:
        """Decodes tokens the grammar accepted (`accepted[i]`); others are already counted."""

    @abc.abstractmethod
    def quantize(self, piece: Piece) -> Notes:
        """The notes exactly as this tokenizer represents them (grid, caps, merges, velocity).

        Computed directly from the notes, not via encode/decode, so that
        `decode(encode(p)).notes == quantize(p)` is a real check.
        """

    @abc.abstractmethod
    def _shift_token(self, name: str, index: int, shift: int) -> tuple[str, int] | None:
        """The token (range, index) a token becomes when transposed, or None if impossible."""

    # --- geometry: where tokens sit in the music (each tokenizer answers for its own) -------
    @property
    @abc.abstractmethod
    def time_unit(self) -> str:
        """ "beat" (score tokens: token times are quarter-note beats) or "second" (performance
        tokens: token times are seconds of playing, decoded as beats of `decoded_qpm`)."""

    @property
    def meter_choices(self) -> tuple[tuple[int, int], ...]:
        """The (numerator, denominator) time signatures the vocabulary can hold: the keys of
        `meter_tokens` (its TIMESIG tokens), in table order; () when the tokens hold no meter."""
        return tuple(self.meter_tokens())

    @property
    @abc.abstractmethod
    def keeps_note_count(self) -> bool:
        """True when decode(encode_counted(piece)) gives one note for every note of the piece
        that the counts do not report lost (LOST_NOTE_COUNTS); False when decoding can make
        more or fewer notes than the tokens were made from."""

    @abc.abstractmethod
    def bar_counter(self) -> BarCounter:
        """The bar number of every token from the tokens alone (key schedules while sampling)."""

    @abc.abstractmethod
    def token_beats(self, tokens: np.ndarray) -> np.ndarray:
        """float64 (n,): onset of each token (no BOS/EOS) in quarter-note beats of the decoded
        music (for time_unit "second": seconds * decoded_qpm / 60)."""

    @abc.abstractmethod
    def pitch_class_table(self) -> np.ndarray:
        """bool (V, 12): the pitch classes each token sounds (note-off tokens sound none)."""

    @abc.abstractmethod
    def cut_points(self, tokens: np.ndarray) -> np.ndarray:
        """bool (n,): True at i where a primer may end just before token i, so that decoding
        tokens[i:] on their own loses nothing (tokens without BOS/EOS)."""

    @abc.abstractmethod
    def bar_lines(self, tokens: np.ndarray) -> np.ndarray:
        """float64 (k,): beats at which the bars of the music the tokens encode start, through
        the line that closes the last bar."""

    @abc.abstractmethod
    def meters(self, tokens: np.ndarray) -> tuple[TimeSignature, ...]:
        """The time signatures the tokens hold, by beat (empty when they hold none)."""

    @abc.abstractmethod
    def meter_tokens(self) -> dict[tuple[int, int], int]:
        """{(numerator, denominator): token id} of the tokens that state a meter (TIMESIG), so
        that sampling can hold the meter in force (sample.meter); empty when the tokens state
        none (their bars come from a primer file's meter, else 4/4)."""

    @abc.abstractmethod
    def voice_tables(self) -> VoiceTables | None:
        """The tables with which sampling follows each voice (sample.parallels), or None when
        the tokens are not written voice by voice (their notes carry no voice to lead)."""

    def token_time(self, piece: Piece, beats: np.ndarray) -> np.ndarray:
        """float64: the token clock (the beats `token_beats` reports) at the piece's `beats`.

        Score tokens keep the piece's beats; tokens in real time override this (performance:
        the tempo map, from the first onset)."""
        if self.time_unit != "beat":
            raise NotImplementedError(f"{type(self).__name__} must map piece beats to its clock")
        return np.asarray(beats, np.float64)

    def _grammar_starts(self, tokens: np.ndarray) -> np.ndarray:
        """bool (n,): the grammar is in its start-of-piece state before token i."""
        states, _ = self.grammar.walk(np.asarray(tokens, np.int64))
        return states == self.grammar.bos_state

    # --- shared ----------------------------------------------------------------------------
    @property
    def num_pitches(self) -> int:
        return self.config.pitch_max - self.config.pitch_min + 1

    def encode(self, piece: Piece) -> np.ndarray:
        """Piece -> int32 tokens, without BOS/EOS. Raises EncodingError for impossible values."""
        return self.encode_counted(piece)[0]

    def decode(self, tokens: np.ndarray) -> Decoded:
        """Never raises. Drops leading BOS and PAD, stops at EOS; counts what it could not use."""
        tokens = np.asarray(tokens, np.int64).reshape(-1)
        tokens = tokens[tokens != PAD]
        if tokens.size and tokens[0] == BOS:
            tokens = tokens[1:]
        eos = np.flatnonzero(tokens == EOS)
        if eos.size:
            tokens = tokens[: eos[0]]
        _, accepted = self.grammar.walk(tokens)
        decoded = self._decode_body(tokens, accepted)
        return dataclasses.replace(decoded, skipped=decoded.skipped + int((~accepted).sum()))

    def transpose_table(self, shift: int) -> np.ndarray:
        """int32 (V,): token id after shifting by `shift` semitones; -1 where impossible."""
        if shift not in self._transpose_cache:
            table = np.full(self.vocab.size, -1, np.int32)
            for token in range(self.vocab.size):
                name, index = self.vocab.lookup(token)
                moved = (name, index) if shift == 0 else self._shift_token(name, index, shift)
                if moved is not None:
                    table[token] = self.vocab.token(*moved)
            self._transpose_cache[shift] = table
        return self._transpose_cache[shift]

    def transpose(self, tokens: np.ndarray, shift: int) -> np.ndarray:
        """Shifts every pitch by `shift` semitones; raises TranspositionError if any would leave
        the pitch range (never clips)."""
        tokens = np.asarray(tokens)
        moved = self.transpose_table(shift)[tokens]
        bad = int((moved < 0).sum())
        if bad:
            raise TranspositionError(shift, bad)
        return moved.astype(tokens.dtype)

    def transposition_tables(self, max_shift: int) -> np.ndarray:
        """int32 (2*max_shift+1, V): row k is `transpose_table(k - max_shift)`."""
        return np.stack([self.transpose_table(k) for k in range(-max_shift, max_shift + 1)])

    def check_range(self, pitch: np.ndarray, where: str) -> None:
        low = pitch < self.config.pitch_min
        high = pitch > self.config.pitch_max
        if low.any() or high.any():
            bad = pitch[low | high]
            raise EncodingError(
                f"{where}: {bad.size} note(s) outside the pitch range "
                f"[{self.config.pitch_min}, {self.config.pitch_max}], e.g. pitch {int(bad[0])}"
            )
