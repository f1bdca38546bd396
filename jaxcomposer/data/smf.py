"""A lean Standard MIDI File parser: bytes -> note array in ticks plus tempo/meter/key events.

Private to `midi_io`. One pass per track in plain Python over the bytes, with pretty_midi's
note-pairing rule (a note-off ends every open note of that channel and pitch that began at an
earlier tick; notes begun at the same tick stay open, unless nothing else was open, in which case
they were zero-length and are dropped and counted).
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

from jaxcomposer.core.errors import Failure

MAX_TICK = 1 << 40  # beyond any real file (~10^9 beats at 960 ticks per beat)


class MidiReadError(Failure, ValueError):
    """A MIDI (or score) file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class _Corrupt(Exception):
    """Raised inside the parser; turned into MidiReadError with the file name."""


class _Absurd(Exception):
    """Raised inside the parser when a file holds more notes than max_notes allows."""


@dataclasses.dataclass
class SmfFile:
    resolution: int  # ticks per quarter note
    num_tracks: int
    notes: np.ndarray  # int64 (N, 6): start_tick, end_tick, pitch, velocity, channel, program
    tempos: list[tuple[int, int]]  # (tick, microseconds per quarter note)
    time_signatures: list[tuple[int, int, int]]  # (tick, numerator, denominator)
    key_signatures: list[tuple[int, int]]  # (tick, key_number in pretty_midi's convention)
    zero_length: int = 0
    unterminated: int = 0
    bad_meta: int = 0  # malformed time/key signature events that were ignored
    # What mido (and so pretty_midi) reads past, counted (see `_system_message`).
    realtime: int = 0  # system real-time messages (0xF8-0xFE) between events
    system_common: int = 0  # system common messages (0xF1-0xF3, 0xF6)
    after_end: int = 0  # bytes that follow a track's end-of-track event inside its chunk
    unknown_chunks: int = 0  # chunks of other types than MTrk among the tracks (skipped)
    after_tracks: int = 0  # bytes after the last declared track
    # Sustain pedal (controller 64) changes: (tick, channel, value); value >= 64 = down.
    sustain: list[tuple[int, int, int]] = dataclasses.field(default_factory=list)
    last_tick: int = 0  # the latest event tick in any track (where an unreleased pedal ends)
    format: int = 1  # 0 (one track), 1 (tracks played together), 2 (independent patterns)
    budget: int = 0  # note-ons and pedal changes the parser may still store (max_notes)
    # int64 (N,): index of the MTrk chunk each row of `notes` came from (voices in tracks)
    note_tracks: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    # Track-name meta events (0x03) in file order, as UTF-8 with undecodable bytes replaced:
    # text from the file, to be escaped wherever it is shown.
    track_names: list[str] = dataclasses.field(default_factory=list)


def read_header(raw: bytes, path: str) -> tuple[int, int, int]:
    """(format, tracks, ticks per quarter) from the MThd chunk, checked before any parsing."""
    if not raw:
        raise MidiReadError(path, "empty file")
    if raw[:4] != b"MThd":
        raise MidiReadError(path, f"not a MIDI file (no MThd header; starts with {raw[:8]!r})")
    if len(raw) < 14:
        raise MidiReadError(path, "truncated MIDI header")
    length, fmt, tracks, division = struct.unpack(">IHHH", raw[4:14])
    if length < 6:
        raise MidiReadError(path, f"corrupt MIDI header (length {length})")
    if fmt > 2:
        raise MidiReadError(path, f"corrupt MIDI header (format {fmt})")
    if division & 0x8000:
        raise MidiReadError(path, "SMPTE time division is not supported (needs ticks per beat)")
    if division == 0:
        raise MidiReadError(path, "corrupt MIDI header (0 ticks per quarter note)")
    return fmt, tracks, division


def parse_smf(raw: bytes, path: str, *, max_tracks: int, max_notes: int) -> SmfFile:
    """Parses the whole file; raises MidiReadError (empty, not MIDI, corrupt, truncated, absurd)."""
    fmt, num_tracks, resolution = read_header(raw, path)
    if num_tracks > max_tracks:
        raise MidiReadError(path, f"absurd: {num_tracks} tracks (max_tracks={max_tracks})")
    if num_tracks == 0:
        raise MidiReadError(path, "the MIDI header declares no tracks")
    smf = SmfFile(resolution, num_tracks, np.zeros((0, 6), np.int64), [], [], [])
    # Every stored note-on and pedal change spends one of max_notes while parsing, so a file
    # of running-status note-ons (3 bytes each) is refused after max_notes of them, not after
    # filling memory with its tens of millions of events.
    smf.format, smf.budget = fmt, max_notes
    notes: list[tuple[int, int, int, int, int, int]] = []
    per_track: list[int] = []  # notes read from each track
    pos = 8 + struct.unpack(">I", raw[4:8])[0]
    track = 0
    while track < num_tracks:
        if pos + 8 > len(raw):
            raise MidiReadError(path, f"truncated: found {track} of {num_tracks} tracks")
        chunk, length = raw[pos : pos + 4], struct.unpack(">I", raw[pos + 4 : pos + 8])[0]
        start, end = pos + 8, pos + 8 + length
        if end > len(raw):
            raise MidiReadError(
                path, f"truncated: track {track} declares {length} bytes, {len(raw) - start} remain"
            )
        pos = end
        if chunk != b"MTrk":
            smf.unknown_chunks += 1
            continue  # unknown chunk types are skipped, as the standard asks
        try:
            _parse_track(raw, start, end, smf, notes)
        except _Absurd as e:
            raise MidiReadError(
                path, f"absurd: more than {max_notes} notes (max_notes; refused at {e})"
            ) from None
        except (_Corrupt, IndexError) as e:
            reason = (
                str(e) if isinstance(e, _Corrupt) else "an event runs past the end of its track"
            )
            raise MidiReadError(path, f"corrupt track {track}: {reason}") from None
        if len(notes) > max_notes:
            raise MidiReadError(path, f"absurd: more than {max_notes} notes (max_notes)")
        per_track.append(len(notes) - sum(per_track))
        track += 1
    smf.after_tracks = len(raw) - pos
    if notes:
        smf.notes = np.array(notes, np.int64)
        smf.note_tracks = np.repeat(np.arange(len(per_track)), per_track).astype(np.int64)
    return smf


def _read_varlen(d: bytes, i: int) -> tuple[int, int]:
    b = d[i]
    i += 1
    value = b & 0x7F
    while b & 0x80:
        b = d[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
    return value, i


def _parse_track(d: bytes, i: int, end: int, smf: SmfFile, notes: list) -> None:
    # Hot loop (~180k events for the 92-file corpus): locals and inlined varlen on purpose.
    tick = 0
    status = 0
    program = [0] * 16  # per channel, reset per track (as pretty_midi does)
    open_notes: dict[int, list[tuple[int, int]]] = {}
    append = notes.append
    while i < end:
        b = d[i]
        i += 1
        delta = b & 0x7F
        while b & 0x80:
            b = d[i]
            i += 1
            delta = (delta << 7) | (b & 0x7F)
        tick += delta
        b = d[i]
        if b & 0x80:
            i += 1
            if b == 0xFF:
                kind = d[i]
                length, i = _read_varlen(d, i + 1)
                if kind == 0x2F:
                    i = min(i + length, end)  # an overlong end-of-track payload ends the chunk
                    break
                _meta(kind, d[i : i + length], tick, smf)
                i += length
                continue
            if b == 0xF0 or b == 0xF7:
                length, i = _read_varlen(d, i)
                i += length
                continue
            if b > 0xF0:
                i = _system_message(d, i, b, tick, smf)
                if b < 0xF8:
                    status = 0  # system common cancels running status; real-time does not
                continue
            status = b
        elif not status:
            raise _Corrupt(f"data byte 0x{b:02X} without a status byte at tick {tick}")
        kind = status & 0xF0
        channel = status & 0x0F
        if kind == 0xC0 or kind == 0xD0:
            value = d[i]
            i += 1
            if value & 0x80:
                raise _Corrupt(f"data byte 0x{value:02X} out of range at tick {tick}")
            if kind == 0xC0:
                program[channel] = value
            continue
        pitch = d[i]
        velocity = d[i + 1]
        i += 2
        if (pitch | velocity) & 0x80:
            raise _Corrupt(f"data byte out of range at tick {tick}")
        if kind == 0xB0:
            if pitch == 64:  # (pitch, velocity) are (controller, value) for 0xB0
                smf.budget -= 1
                if smf.budget < 0:
                    raise _Absurd(f"a pedal change at tick {tick}, pedal changes counted")
                smf.sustain.append((tick, channel, velocity))
        elif kind == 0x90 and velocity:
            smf.budget -= 1
            if smf.budget < 0:
                raise _Absurd(f"a note-on at tick {tick}")
            open_notes.setdefault(channel << 7 | pitch, []).append((tick, velocity))
        elif kind == 0x80 or kind == 0x90:
            key = channel << 7 | pitch
            pending = open_notes.get(key)
            if not pending:
                continue  # a note-off with no note on: ignored, as by every player
            keep = [p for p in pending if p[0] == tick]
            if len(keep) < len(pending):
                for start, vel in pending:
                    if start != tick:
                        append((start, tick, pitch, vel, channel, program[channel]))
                if keep:
                    open_notes[key] = keep
                else:
                    del open_notes[key]
            else:
                smf.zero_length += len(keep)
                del open_notes[key]
    if i > end:
        raise _Corrupt("an event runs past the end of its track")
    smf.after_end += end - i
    smf.last_tick = max(smf.last_tick, tick)
    if tick >= MAX_TICK:  # only overlong delta times get here; int64 arrays must hold ticks
        raise _Corrupt(f"delta times add up to an impossible tick {tick}")
    smf.unterminated += sum(len(p) for p in open_notes.values())


# Data bytes of each system common message (MIDI 1.0: quarter frame, song position, song select,
# tune request); 0xF4 and 0xF5 are undefined.
_SYSTEM_COMMON_DATA = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0}


def _system_message(d: bytes, i: int, status: int, tick: int, smf: SmfFile) -> int:
    """Skips a system real-time or common message at d[i - 1] == status; returns the index after
    it. Neither belongs in a file (they are for the wire), but mido, and so pretty_midi, reads
    them as messages of their standard length, so a file holding them still plays there: they
    are ignored and counted here. Real-time bytes of undefined kinds (0xF9, 0xFD) are ignored as
    the MIDI 1.0 spec asks of receivers; undefined system common bytes (0xF4, 0xF5) are corrupt
    (mido raises there too). Raises _Corrupt."""
    if status >= 0xF8:
        smf.realtime += 1
        return i
    size = _SYSTEM_COMMON_DATA.get(status)
    if size is None:
        raise _Corrupt(f"undefined system message 0x{status:02X} at tick {tick}")
    if any(b & 0x80 for b in d[i : i + size]):
        raise _Corrupt(f"system message 0x{status:02X} with a status byte as data at tick {tick}")
    smf.system_common += 1
    return i + size


def _meta(kind: int, payload: bytes, tick: int, smf: SmfFile) -> None:
    if kind == 0x51 and len(payload) == 3:
        smf.tempos.append((tick, int.from_bytes(payload, "big")))
    elif kind == 0x58 and len(payload) >= 2:
        numerator, power = payload[0], payload[1]
        if numerator >= 1 and power <= 6:
            smf.time_signatures.append((tick, numerator, 1 << power))
        else:
            smf.bad_meta += 1
    elif kind == 0x59 and len(payload) == 2:
        sharps = payload[0] - 256 if payload[0] > 127 else payload[0]
        minor = payload[1]
        if -7 <= sharps <= 7 and minor in (0, 1):
            tonic = (7 * sharps) % 12  # the major key with this many sharps
            smf.key_signatures.append((tick, (tonic + 9) % 12 + 12 if minor else tonic))
        else:
            smf.bad_meta += 1
    elif kind in (0x51, 0x58, 0x59):
        smf.bad_meta += 1
    elif kind == 0x03:
        smf.track_names.append(payload.decode("utf-8", "replace"))
