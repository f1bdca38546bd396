"""MIDI fuzzer: mutated real files through the reader and every tokenizer (prints JSON lines).

Each mutant is a real file (../shared/data final_fantasy + giantmidi_piano) after 1-3 random
mutations: byte flips, header flips, truncation, duplicated or deleted chunks, inflated chunk
lengths, random events (channel, system, sysex, meta; running-status data; out-of-range data
bytes), huge or overlong delta times, a pile of note-ons held across a huge delta, thousands of
tracks, spliced byte ranges. Every mutant is read (data.midi_io.read_midi_bytes) and, when read,
encoded by every tokenizer configuration in TOKENIZERS (as data.ingest does: pitch range, then
encode_counted) and decoded back (up to DECODE_MAX_TOKENS tokens).

Outcomes: read (and encoded, or refused by a tokenizer with an EncodingError reason), skipped
(MidiReadError reason), crash (any other exception: a bug), hang (past --time_limit, or the
worker died, e.g. past --memory_mb). Workers are separate processes (--workers) with an address
space limit (resource.setrlimit); the parent kills a worker that runs past the time limit and
starts another. Crashing and hanging mutants are written to --keep_dir; `--minimize FILE` shrinks
a crashing one (same exception type and place) for tests/data/fuzz/.

As a peer, mido (the parser under pretty_midi) reads every mutant too (--no_peer to skip): the
figures say how many mutants each reader accepts and why we skip the ones mido reads.

  nice -n 5 python launch/fuzz_midi.py                      # 10,000 mutants, 2 workers
  python launch/fuzz_midi.py --mutants 200 --workers 1      # a quick check
  python launch/fuzz_midi.py --minimize /tmp/fuzz_failures/x.mid --out tests/data/fuzz/x.mid
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import re
import signal
import struct
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from jaxcomposer import config_lib  # noqa: E402
from jaxcomposer.data import midi_io  # noqa: E402
from jaxcomposer.data.midi_io import MidiReadError  # noqa: E402
from jaxcomposer.tokenizers import EncodingError, get_tokenizer  # noqa: E402

CORPORA = ("final_fantasy", "giantmidi_piano")
# Every tokenizer, in the settings that change what encode does (the defaults of configs/default).
TOKENIZERS = {
    "event": {"name": "event"},
    "event_velocity_12spb": {"name": "event", "num_velocity_bins": 32, "steps_per_beat": 12},
    "frame_onsets": {"name": "frame", "mark_onsets": True},
    "frame_2012": {"name": "frame", "mark_onsets": False, "steps_per_beat": 1},
    "chord": {"name": "chord"},
    "chord_durations": {"name": "chord", "chord_durations": True},
}
PEER_SECONDS = 5.0  # mido's own time limit per mutant (it is pure Python)
# Decoding walks the grammar in Python (~3 us a token): a 22,000-beat mutant with 88 pitches
# held throughout encodes to 7.8 M frame tokens (linear, ~4-9 s) and took 25 s more to decode.
# Samples are thousands of tokens; longer encodings are checked for encoding only.
DECODE_MAX_TOKENS = 1_000_000


def base_config() -> config_lib.Config:
    from configs import default

    return config_lib.freeze(default.get_config())


# --- mutations ---------------------------------------------------------------------------------


def varlen(value: int) -> bytes:
    out = [value & 0x7F]
    while value > 0x7F:
        value >>= 7
        out.append(0x80 | (value & 0x7F))
    return bytes(reversed(out))


def chunk_spans(data: bytes) -> list[tuple[int, int]]:
    """[(start, end)] of the chunks after the header (8-byte head included), as far as the
    declared lengths reach; the last one is clipped to the data."""
    spans, pos = [], 8 + (struct.unpack(">I", data[4:8])[0] if len(data) >= 8 else 0)
    while pos + 8 <= len(data):
        end = min(pos + 8 + struct.unpack(">I", data[pos + 4 : pos + 8])[0], len(data))
        spans.append((pos, end))
        pos = end
    return spans


def _set_length(data: bytearray, span: tuple[int, int], length: int) -> None:
    data[span[0] + 4 : span[0] + 8] = struct.pack(">I", length & 0xFFFFFFFF)


def _varlen_at(data: bytes, i: int) -> tuple[int, int]:
    value = 0
    while True:
        value = (value << 7) | (data[i] & 0x7F)
        i += 1
        if not data[i - 1] & 0x80:
            return value, i


def event_starts(data: bytes, start: int, end: int) -> list[int]:
    """Offsets in data[start:end] where an event (its delta time) begins, as far as a plain scan
    of well-formed events reaches; inserting there keeps the rest of the track readable."""
    starts, i, status = [], start, 0
    try:
        while i < end:
            starts.append(i)
            _, i = _varlen_at(data, i)
            b = data[i]
            if b == 0xFF:
                length, i = _varlen_at(data, i + 2)
                i += length
            elif b in (0xF0, 0xF7):
                length, i = _varlen_at(data, i + 1)
                i += length
            else:
                if b & 0x80:
                    status, i = b, i + 1
                i += 1 if status & 0xF0 in (0xC0, 0xD0) else 2
    except IndexError:
        pass
    return [s for s in starts if s < end]


def _insert_in_chunk(data: bytearray, rng: random.Random, payload: bytes) -> bytearray:
    """Inserts payload into a random chunk (mostly between two of its events) and fixes the
    chunk's declared length."""
    spans = chunk_spans(bytes(data))
    if not spans:
        return data + payload
    span = rng.choice(spans)
    starts = event_starts(bytes(data), span[0] + 8, span[1]) if rng.random() < 0.8 else []
    at = rng.choice(starts) if starts else rng.randint(span[0] + 8, span[1])
    data[at:at] = payload
    _set_length(data, span, span[1] - span[0] - 8 + len(payload))
    return data


def flip_bytes(data: bytearray, rng: random.Random) -> bytearray:
    for _ in range(rng.choice((1, 1, 2, 4, 16, 64))):
        if data:
            i = rng.randrange(len(data))
            data[i] = (
                rng.randrange(256) if rng.random() < 0.5 else data[i] ^ (1 << rng.randrange(8))
            )
    return data


def flip_header(data: bytearray, rng: random.Random) -> bytearray:
    if len(data) >= 14:
        field = rng.choice(("length", "format", "tracks", "division"))
        at = {"length": 4, "format": 8, "tracks": 10, "division": 12}[field]
        value = rng.choice((0, 1, 2, 3, 0x7FFF, 0x8000, 0xFFFF, rng.randrange(65536)))
        if field == "length":
            data[4:8] = struct.pack(">I", rng.choice((0, 5, 7, 100, 0xFFFFFFFF)))
        else:
            data[at : at + 2] = struct.pack(">H", value)
    return data


def truncate(data: bytearray, rng: random.Random) -> bytearray:
    return data[: rng.randrange(len(data) + 1)]


def duplicate_chunk(data: bytearray, rng: random.Random) -> bytearray:
    spans = chunk_spans(bytes(data))
    if spans:
        start, end = rng.choice(spans)
        copy = data[start:end]
        at = rng.choice([s for s, _ in spans] + [len(data)])
        data[at:at] = copy
        if rng.random() < 0.7 and len(data) >= 12:  # usually also declared in the header
            tracks = struct.unpack(">H", data[10:12])[0]
            data[10:12] = struct.pack(">H", min(tracks + 1, 0xFFFF))
    return data


def delete_chunk(data: bytearray, rng: random.Random) -> bytearray:
    spans = chunk_spans(bytes(data))
    if spans:
        start, end = rng.choice(spans)
        del data[start:end]
        if rng.random() < 0.5 and len(data) >= 12:
            tracks = struct.unpack(">H", data[10:12])[0]
            data[10:12] = struct.pack(">H", max(tracks - 1, 0))
    return data


def inflate_length(data: bytearray, rng: random.Random) -> bytearray:
    spans = chunk_spans(bytes(data))
    if spans:
        span = rng.choice(spans)
        length = span[1] - span[0] - 8
        _set_length(data, span, rng.choice((length + rng.randint(1, 1000), 2**31, 2**32 - 1, 0)))
    return data


def _random_event(rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:  # channel message, data bytes maybe out of range
        status = rng.randrange(0x80, 0xF0)
        size = 1 if status & 0xF0 in (0xC0, 0xD0) else 2
        return bytes([status] + [rng.randrange(256 if rng.random() < 0.2 else 128)] * size)
    if kind == 1:  # running-status data
        return bytes([rng.randrange(128), rng.randrange(128)])
    if kind == 2:  # system real-time or common, defined or not
        return bytes([rng.randrange(0xF1, 0xFF)]) + bytes(rng.randrange(128) for _ in range(2))
    if kind == 3:  # sysex with a random (maybe huge) length
        return bytes([rng.choice((0xF0, 0xF7))]) + varlen(rng.choice((0, 3, 1 << 20, 1 << 27)))
    if kind == 4:  # meta of a random type and length
        length = rng.choice((0, 1, 2, 3, 4, 5, 300, 1 << 27))
        body = bytes(rng.randrange(256) for _ in range(min(length, 8)))
        return b"\xff" + bytes([rng.randrange(128)]) + varlen(length) + body
    if kind == 5:  # tempo / time / key signature with random values
        meta = rng.choice(((0x51, 3), (0x58, 4), (0x59, 2), (0x2F, 0)))
        body = bytes(rng.randrange(256) for _ in range(meta[1]))
        return b"\xff" + bytes([meta[0]]) + varlen(rng.choice((meta[1], 0, 1))) + body
    if kind == 6:  # a note on or off
        status = rng.choice((0x80, 0x90)) | rng.randrange(16)
        return bytes([status, rng.randrange(128), rng.randrange(128)])
    if kind == 7:  # program change, drum channel included
        return bytes([0xC0 | rng.randrange(16), rng.randrange(128)])
    return bytes(rng.randrange(256) for _ in range(rng.randint(1, 6)))  # noise


def random_events(data: bytearray, rng: random.Random) -> bytearray:
    for _ in range(rng.randint(1, 20)):
        delta = varlen(rng.choice((0, 0, 1, 120, rng.randrange(1 << 21))))
        data = _insert_in_chunk(data, rng, delta + _random_event(rng))
    return data


def huge_delta(data: bytearray, rng: random.Random) -> bytearray:
    if rng.random() < 0.6:
        delta = varlen(rng.choice((0x0FFFFFFF, 0x0FFFFFFF, 1 << 21, 1 << 24)))
    else:  # an overlong varlen: more continuation bytes than the standard's four
        delta = b"\xff" * rng.randint(4, 40) + b"\x7f"
    return _insert_in_chunk(data, rng, delta + b"\x90\x3c\x40")


def note_pileup(data: bytearray, rng: random.Random) -> bytearray:
    """Hundreds to thousands of note-ons, one huge delta, then note-offs: long notes en masse."""
    count, channel = rng.choice((100, 1000, 5000)), rng.randrange(16)
    pitches = [rng.choice((rng.randrange(128), 60)) for _ in range(count)]
    ons = b"".join(b"\x00" + bytes([0x90 | channel, p, 64]) for p in pitches)
    gap = varlen(rng.choice((1 << 16, 1 << 20, 0x0FFFFFFF)))
    offs = b"".join(b"\x00" + bytes([0x80 | channel, p, 0]) for p in set(pitches))
    return _insert_in_chunk(data, rng, ons + gap + offs[1:])


def many_tracks(data: bytearray, rng: random.Random) -> bytearray:
    count = rng.choice((100, 255, 256, 257, 2000, 5000))
    tiny = b"MTrk" + struct.pack(">I", 8) + b"\x00\x90\x3c\x40\x60\x3c\x00\x00"
    if rng.random() < 0.3:
        tiny = b"MTrk" + struct.pack(">I", 4) + b"\x00\xff\x2f\x00"
    if len(data) >= 12:
        declared = count + len(chunk_spans(bytes(data))) if rng.random() < 0.8 else 0xFFFF
        data[10:12] = struct.pack(">H", min(declared, 0xFFFF))
        data[8:10] = struct.pack(">H", 1)
    return data + tiny * count


def splice(data: bytearray, rng: random.Random) -> bytearray:
    if len(data) > 16:
        a, b = sorted(rng.randrange(len(data)) for _ in range(2))
        c = rng.randrange(len(data))
        data[c:c] = data[a : min(b, a + 4096)]
    return data


MUTATIONS = {
    f.__name__: f
    for f in (
        flip_bytes,
        flip_header,
        truncate,
        duplicate_chunk,
        delete_chunk,
        inflate_length,
        random_events,
        huge_delta,
        note_pileup,
        many_tracks,
        splice,
    )
}


def mutant(seeds: list[tuple[str, bytes]], seed: int, index: int) -> tuple[str, str, bytes]:
    """(seed file name, mutation kinds, bytes) of mutant `index`: deterministic per (seed,
    index), whatever the order or process it is made in."""
    rng = random.Random(f"{seed}:{index}")
    name, raw = seeds[rng.randrange(len(seeds))]
    data = bytearray(raw)
    kinds = [rng.choice(sorted(MUTATIONS)) for _ in range(rng.choice((1, 1, 2, 3)))]
    for kind in kinds:
        data = MUTATIONS[kind](data, rng)
    return name, "+".join(kinds), bytes(data)


# --- checking one mutant -----------------------------------------------------------------------


@dataclasses.dataclass
class Checker:
    """Reads and encodes one file's bytes as data.ingest does, for every tokenizer."""

    config: config_lib.Config
    tokenizers: dict

    @staticmethod
    def build(config: config_lib.Config | None = None) -> Checker:
        config = config or base_config()
        tokenizers = {
            label: get_tokenizer(config_lib.replace(config, tokenizer=fields).tokenizer)
            for label, fields in TOKENIZERS.items()
        }
        return Checker(config, tokenizers)

    def check(self, raw: bytes) -> dict:
        """{'outcome': read | skipped | crash, 'reason', 'encoded': {tokenizer: reason or ''}}.
        Never raises for the file's sake: a crash is an exception other than the reader's and
        tokenizers' own (MidiReadError, EncodingError), reported with where it happened."""
        stage = "read"
        try:
            piece, _ = midi_io.read_midi_bytes(raw, self.config.data, path="mutant", name="mutant")
            encoded = {}
            for label, tokenizer in self.tokenizers.items():
                stage = label
                encoded[label] = self._encode(piece, tokenizer)
        except MidiReadError as e:
            return {"outcome": "skipped", "reason": normalize(e.reason), "encoded": {}}
        except Exception as e:  # the bug the fuzzer looks for
            return {"outcome": "crash", "reason": crash_signature(e, stage), "encoded": {}}
        return {"outcome": "read", "reason": "", "encoded": encoded}

    def _encode(self, piece, tokenizer) -> str:
        import numpy as np

        from jaxcomposer.music.notes import Piece

        c = tokenizer.config
        inside = (piece.notes.pitch >= c.pitch_min) & (piece.notes.pitch <= c.pitch_max)
        if not inside.any():
            return "no notes within the pitch range"
        kept = Piece(
            piece.name, piece.notes[inside], piece.tempos, piece.time_signatures,
            piece.key_signatures,
        )  # fmt: skip
        try:
            tokens, losses = tokenizer.encode_counted(kept)
        except EncodingError as e:
            return normalize(str(e).removeprefix("mutant: "))
        if tokens.dtype != np.int32:
            raise AssertionError(f"{tokenizer.name}: tokens are {tokens.dtype}")
        if tokens.size > DECODE_MAX_TOKENS:
            return ""
        decoded = tokenizer.decode(tokens)
        lost = sum(v for k, v in losses.items() if k.startswith("merged"))
        if tokenizer.keeps_note_count and len(decoded.notes) != int(inside.sum()) - lost:
            raise AssertionError(
                f"{tokenizer.name}: decoded {len(decoded.notes)} notes, expected "
                f"{int(inside.sum())} - {lost} lost"
            )
        return ""


def normalize(reason: str) -> str:
    """A reason as a class: numbers, hex bytes and ticks replaced, so that like groups with like."""
    reason = re.sub(r"0x[0-9A-Fa-f]+", "0x..", reason)
    reason = re.sub(r"\d+(\.\d+)?(e[+-]?\d+)?", "#", reason)
    return re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", reason)


def crash_signature(e: BaseException, stage: str) -> str:
    """Exception type and the innermost frame inside jaxcomposer: one line per bug."""
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "jaxcomposer" in f.filename] or frames
    where = f"{os.path.basename(ours[-1].filename)}:{ours[-1].lineno}" if ours else "?"
    return f"{type(e).__name__} in {where} ({stage}): {normalize(str(e))[:120]}"


def mido_reads(raw: bytes) -> str:
    """'' when mido parses the bytes, else the class of its error (or 'timeout')."""
    import io

    import mido

    def give_up(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, PEER_SECONDS)
    try:
        mido.MidiFile(file=io.BytesIO(raw))
        return ""
    except TimeoutError:
        return "timeout"
    except MemoryError:
        return "MemoryError"
    except Exception as e:  # mido raises many kinds; any of them means it could not read
        return type(e).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- running many ------------------------------------------------------------------------------


def _worker(conn, seeds, seed: int, memory_mb: int, peer: bool) -> None:
    import resource

    limit = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    checker = Checker.build()
    while True:
        try:
            index = conn.recv()
        except EOFError:
            return
        if index is None:
            return
        _, _, raw = mutant(seeds, seed, index)
        result = checker.check(raw)
        if peer:
            result["mido"] = mido_reads(raw)
        conn.send((index, result))


class Pool:
    """Worker processes fed one mutant index at a time; one that runs past the time limit (or
    dies) is killed, counted as a hang, and replaced."""

    def __init__(self, workers: int, seeds, seed: int, memory_mb: int, peer: bool):
        self.args = (seeds, seed, memory_mb, peer)
        self.context = multiprocessing.get_context("fork")
        self.slots = [self._start() for _ in range(workers)]

    def _start(self) -> dict:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_worker, args=(child, *self.args), daemon=True)
        process.start()
        child.close()
        return {"process": process, "conn": parent, "index": None, "deadline": 0.0}

    def run(self, indices, time_limit: float):
        """Yields (index, result) for every index, in completion order."""
        todo = collections.deque(indices)
        while todo or any(s["index"] is not None for s in self.slots):
            for slot in self.slots:
                if slot["index"] is None and todo:
                    slot["index"] = todo.popleft()
                    slot["deadline"] = time.monotonic() + time_limit
                    slot["conn"].send(slot["index"])
            busy = [s for s in self.slots if s["index"] is not None]
            timeout = max(0.0, min(s["deadline"] for s in busy) - time.monotonic())
            ready = multiprocessing.connection.wait([s["conn"] for s in busy], timeout)
            for slot in busy:
                if slot["conn"] in ready:
                    try:
                        index, result = slot["conn"].recv()
                    except (EOFError, OSError):
                        yield self._replace(slot, "the worker died")
                        continue
                    slot["index"] = None
                    yield index, result
                elif time.monotonic() > slot["deadline"]:
                    yield self._replace(slot, f"past the {time_limit:g} s time limit")

    def _replace(self, slot: dict, why: str) -> tuple[int, dict]:
        index, process = slot["index"], slot["process"]
        if why == "the worker died":
            process.join(timeout=5)
        process.kill()
        process.join()
        if why == "the worker died":
            why = f"the worker died (exit code {process.exitcode})"
        slot.update(self._start())
        return index, {"outcome": "hang", "reason": why, "encoded": {}}

    def close(self) -> None:
        for slot in self.slots:
            try:
                slot["conn"].send(None)
            except OSError:
                pass
            slot["process"].join(timeout=5)
            if slot["process"].is_alive():
                slot["process"].kill()


def run_serial(checker: Checker, seeds, seed: int, count: int, time_limit: float):
    """In this process (for tests): yields (index, result); a mutant past the time limit is a
    hang (SIGALRM interrupts the Python code)."""

    def give_up(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, give_up)
    try:
        for index in range(count):
            _, _, raw = mutant(seeds, seed, index)
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            try:
                result = checker.check(raw)
            except TimeoutError:
                result = {"outcome": "hang", "reason": "past the time limit", "encoded": {}}
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            yield index, result
    finally:
        signal.signal(signal.SIGALRM, previous)


def load_seeds(data_dir: str) -> list[tuple[str, bytes]]:
    seeds = []
    for corpus in CORPORA:
        for path in sorted(glob.glob(os.path.join(data_dir, corpus, "*.mid"))):
            with open(path, "rb") as f:
                seeds.append((f"{corpus}/{os.path.basename(path)}", f.read()))
    return seeds


# --- shrinking a crashing mutant ---------------------------------------------------------------


def crashes_alike(raw: bytes, checker: Checker):
    """A `keep` predicate for `minimize`: the same crash signature as `raw`'s."""
    target = checker.check(raw)
    if target["outcome"] != "crash":
        raise ValueError(f"the file does not crash ({target['outcome']}: {target['reason']})")
    return lambda candidate: checker.check(candidate)["reason"] == target["reason"]


def rolls_large(raw: bytes, checker: Checker, steps: int = 10**7):
    """A `keep` predicate for `minimize` for the hang the frame tokenizer had (fixed): the file
    still reads, with notes covering at least `steps` grid steps in all."""
    spb = checker.config.tokenizer.steps_per_beat

    def keep(candidate: bytes) -> bool:
        try:
            piece, _ = midi_io.read_midi_bytes(candidate, checker.config.data, path="m", name="m")
        except MidiReadError:
            return False
        return float((piece.notes.end - piece.notes.start).sum()) * spb >= steps

    if not keep(raw):
        raise ValueError("the file's notes cover fewer grid steps than that")
    return keep


def minimize(raw: bytes, keep, budget: int = 4000) -> bytes:
    """A smaller file for which `keep(bytes)` still holds: whole chunks, then byte ranges of
    halving size, are cut while it does (a simple delta debugging, after Zeller 2002)."""
    tries = 0
    for start, end in reversed(chunk_spans(raw)):
        candidate = bytearray(raw[:start] + raw[end:])
        if len(candidate) >= 12:
            tracks = struct.unpack(">H", candidate[10:12])[0]
            candidate[10:12] = struct.pack(">H", max(tracks - 1, 1))
        tries += 1
        if keep(bytes(candidate)):
            raw = bytes(candidate)
    size = len(raw) // 2
    while size >= 1 and tries < budget:
        at, shrunk = 14, False
        while at < len(raw) and tries < budget:
            candidate = _cut(raw, at, size)
            tries += 1
            if candidate is not None and keep(candidate):
                raw, shrunk = candidate, True
            else:
                at += size
        if not shrunk:
            size //= 2
    return raw


def _cut(raw: bytes, at: int, size: int) -> bytes | None:
    """raw without raw[at:at+size], the enclosing chunk's length fixed; None across a chunk
    head."""
    for start, end in chunk_spans(raw):
        if start + 8 <= at and at + size <= end:
            data = bytearray(raw[:at] + raw[at + size :])
            _set_length(data, (start, end), end - start - 8 - size)
            return bytes(data)
    return None


# --- the report --------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        cpu += f", {os.cpu_count()} cores, {kib / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return f"{cpu}, Python {platform.python_version()}"


class Tally:
    def __init__(self):
        self.outcomes = collections.Counter()
        self.reasons = collections.defaultdict(collections.Counter)
        self.encoded = collections.defaultdict(collections.Counter)
        self.kinds = collections.Counter()
        self.peer = collections.Counter()
        self.peer_skips = collections.Counter()

    def add(self, kind: str, result: dict) -> None:
        outcome = result["outcome"]
        self.outcomes[outcome] += 1
        for k in kind.split("+"):
            self.kinds[k] += 1
        if result["reason"]:
            self.reasons[outcome][result["reason"]] += 1
        for label, reason in result["encoded"].items():
            self.encoded[label][reason or "encoded"] += 1
        if "mido" in result:
            ours = outcome == "read"
            mido_ok = result["mido"] == ""
            self.peer[f"{'both read' if ours else 'mido reads, we skip'}" if mido_ok else (
                "we read, mido fails" if ours else "both skip"
            )] += 1  # fmt: skip
            if mido_ok and not ours:
                self.peer_skips[result["reason"]] += 1

    def lines(self, seconds: float, mutants: int, workers: int) -> list[dict]:
        top = {o: dict(r.most_common(25)) for o, r in self.reasons.items()}
        out = [
            {
                "figure": "fuzz_outcomes",
                "mutants": mutants,
                **{o: self.outcomes.get(o, 0) for o in ("read", "skipped", "crash", "hang")},
                "seconds": round(seconds, 1),
                "mutants_per_second": round(mutants / seconds, 1),
                "workers": workers,
                "machine": machine(),
            },
            {"figure": "reasons", **top},
            {"figure": "tokenizers", **{k: dict(v) for k, v in self.encoded.items()}},
            {"figure": "mutations", **dict(sorted(self.kinds.items()))},
        ]
        if self.peer:
            out.append(
                {
                    "figure": "peer_mido",
                    **dict(self.peer),
                    "we_skip_what_mido_reads_because": dict(self.peer_skips.most_common(15)),
                }
            )
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data"))
    parser.add_argument("--mutants", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time_limit", type=float, default=60.0, help="seconds per mutant")
    parser.add_argument("--memory_mb", type=int, default=3072, help="address space per worker")
    parser.add_argument("--keep_dir", default="/tmp/fuzz_failures")
    parser.add_argument("--no_peer", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated mutant indices to rerun")
    parser.add_argument("--minimize", default="", help="shrink this failing file, then stop")
    parser.add_argument("--keep_if", choices=("crash", "large_roll"), default="crash")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.minimize:
        with open(args.minimize, "rb") as f:
            raw = f.read()
        checker = Checker.build()
        keep = (crashes_alike if args.keep_if == "crash" else rolls_large)(raw, checker)
        small = minimize(raw, keep)
        with open(args.out or args.minimize + ".min", "wb") as f:
            f.write(small)
        print(json.dumps({"minimized": args.minimize, "bytes": len(small)}))
        return
    seeds = load_seeds(args.data)
    if not seeds:
        sys.exit(f"fuzz_midi: no seed files under {args.data}/{{{','.join(CORPORA)}}}")
    os.makedirs(args.keep_dir, exist_ok=True)
    tally, kept = Tally(), []
    pool = Pool(args.workers, seeds, args.seed, args.memory_mb, not args.no_peer)
    started = time.perf_counter()
    try:
        indices = [int(i) for i in args.only.split(",")] if args.only else range(args.mutants)
        for done, (index, result) in enumerate(pool.run(indices, args.time_limit), 1):
            name, kind, raw = mutant(seeds, args.seed, index)
            tally.add(kind, result)
            if result["outcome"] in ("crash", "hang"):
                path = os.path.join(args.keep_dir, f"{args.seed}-{index}.mid")
                with open(path, "wb") as f:
                    f.write(raw)
                kept.append(path)
                print(json.dumps({"failure": path, "seed_file": name, "mutations": kind,
                                  **result}), flush=True)  # fmt: skip
            if done % 1000 == 0:
                print(json.dumps({"progress": done, "seconds": round(
                    time.perf_counter() - started, 1)}), file=sys.stderr, flush=True)  # fmt: skip
    finally:
        pool.close()
    seconds = time.perf_counter() - started
    for line in tally.lines(seconds, len(indices), args.workers):
        print(json.dumps(line), flush=True)
    print(json.dumps({"figure": "kept_failures", "files": kept}))


if __name__ == "__main__":
    main()
