"""Reading and encoding many files: a per-file token cache, a process pool and a progress bar.

Shared by `dataset.prepare` (training data) and `dataset.encode_folder` (evaluation folders), so
both see exactly the same notes and tokens. A cache entry is keyed by the file's bytes, the
reader- and tokenizer-relevant settings and a hash of the reading/encoding source code, so it can
never go stale; failures (unreadable or unencodable files) are cached too, with their reason,
since they are as deterministic as successes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time

import numpy as np
from absl import logging
from tqdm import tqdm

from jaxcomposer.config_lib import Config, DataConfig, TokenizerConfig
from jaxcomposer.core import atomic
from jaxcomposer.data import corpus, labels, midi_io
from jaxcomposer.data.midi_io import MidiReadError
from jaxcomposer.music.notes import Piece, piece_seconds
from jaxcomposer.tokenizers import EncodingError, Tokenizer
from jaxcomposer.tokenizers.base import LOST_NOTE_COUNTS, SHORTENED_NOTE_COUNTS

MIDI_EXTENSIONS = (".mid", ".midi")
CACHE_SUBDIR = "tokens"
# Per-file counts of notes that were read but not kept, in the order a report lists them: by the
# reader, by the pitch range, then by the tokenizer (notes its tokens cannot hold).
DROP_COUNTS = (
    "drum_notes",
    "zero_length_notes",
    "unterminated_notes",
    "program_filtered_notes",
    "out_of_range_notes",
    *LOST_NOTE_COUNTS,
)
# Per-file counts of notes the tokens hold, but changed.
SHORTENED_COUNTS = SHORTENED_NOTE_COUNTS
# Per-file counts of events the reader read past (see data/smf.py): none of them is a note.
IGNORED_COUNTS = (
    "ignored_meta_events",
    "ignored_realtime_messages",
    "ignored_system_common_messages",
    "ignored_bytes_after_end_of_track",
    "ignored_unknown_chunks",
    "ignored_bytes_after_last_track",
)
# DataConfig fields that change what a file reads as (the others choose files or places).
READER_FIELDS = (
    "programs",
    "drop_out_of_range_notes",
    "max_tracks",
    "max_notes",
    "max_beats",
    "min_qpm",
    "max_qpm",
)
# Auto worker count: below this many uncached MIDI bytes one process is faster than a pool.
# Measured on 2 cores (medians of 5 cold prepares, event tokens): 183 KB 0.085 s serial vs
# 0.102 s pool; 352 KB 0.189 vs 0.197; 441 KB 0.221 vs 0.248; the 92-file corpus (940 KB)
# 0.35-0.39 vs 0.18-0.31. (When other processes hold the cores the pool gains nothing.)
# music21 scores (~0.2 s each) always use the pool.
SERIAL_MAX_BYTES = 512 << 10


@dataclasses.dataclass(frozen=True)
class Source:
    name: str  # relative to its folder, '/'-separated: the key in manifests and reports
    path: str
    kind: str  # "midi" (read by midi_io) | "score" (read by music21, corpus.read_score)


@dataclasses.dataclass(frozen=True)
class Encoded:
    name: str
    tokens: np.ndarray | None  # int32, without BOS/EOS; None when skipped
    stats: dict  # counts from reading (notes, drops, beats, ...)
    reason: str  # why the file was skipped; "" when usable
    cached: bool
    keys: np.ndarray | None = None  # int8 per token: key in force (data/labels.py); None = none


@dataclasses.dataclass(frozen=True)
class EncodeRun:
    results: list[Encoded]  # one per source, in the sources' order
    cache_hits: int
    cache_misses: int
    workers: int  # processes that read files (1 = in this process)
    seconds: float


def find_midi_files(folder: str) -> list[tuple[str, str]]:
    """(name relative to folder, path) of every .mid/.midi file below it (any case), sorted."""
    found = []
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for file in files:
            if file.lower().endswith(MIDI_EXTENSIONS):
                path = os.path.join(directory, file)
                found.append((os.path.relpath(path, folder).replace(os.sep, "/"), path))
    return sorted(found)


def cache_root(data: DataConfig) -> str:
    if data.cache_dir:
        return os.path.expanduser(data.cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxcomposer")


def fit_pitch_range(piece: Piece, config: Config) -> Piece:
    """The piece with notes outside the tokenizer's pitch range dropped, when the config says so
    (data.drop_out_of_range_notes); otherwise unchanged (encoding then raises EncodingError)."""
    if not config.data.drop_out_of_range_notes:
        return piece
    return _replace_notes(piece, piece.notes[_in_range(piece, config.tokenizer)])


def _in_range(piece: Piece, tok: TokenizerConfig) -> np.ndarray:
    return (piece.notes.pitch >= tok.pitch_min) & (piece.notes.pitch <= tok.pitch_max)


def _replace_notes(piece: Piece, notes) -> Piece:
    return dataclasses.replace(piece, notes=notes)


def read_and_encode(
    source: Source, raw: bytes | None, config: Config, tokenizer: Tokenizer
) -> tuple[Encoded, bool]:
    """One file -> (Encoded, whether the outcome is deterministic and may be cached).

    `tokenizer` is the one `config.tokenizer` describes, built once by the caller."""
    try:
        if source.kind == "midi":
            raw = raw if raw is not None else midi_io.read_file(source.path, config.data)
            piece, stats = midi_io.read_midi_bytes(
                raw, config.data, path=source.path, name=source.name
            )
        else:
            piece, stats = corpus.read_score(source.path, config.data, source.name)
        inside = _in_range(piece, config.tokenizer)
        stats["out_of_range_notes"] = int((~inside).sum())
        if not inside.all() and not config.data.drop_out_of_range_notes:
            tokenizer.check_range(piece.notes.pitch, source.name)
        if not inside.any():
            tok = config.tokenizer
            raise MidiReadError(
                source.path,
                f"no notes within the pitch range "
                f"[{tok.pitch_min}, {tok.pitch_max}] ({len(inside)} outside)",
            )
        piece = _replace_notes(piece, piece.notes[inside])
        tokens, losses = tokenizer.encode_counted(piece)
        stats.update(losses)
        # The notes the tokens hold: read, in range, and not lost in encoding.
        stats["notes"] = int(inside.sum()) - sum(losses.get(k, 0) for k in LOST_NOTE_COUNTS)
        stats["seconds"] = piece_seconds(piece)  # for nats per second, whatever the tokenizer
        if tokens.size == 0:
            raise EncodingError(f"{source.name}: the piece encodes to no tokens")
        segments, stats["key_source"] = labels.key_segments(piece, source.kind)
        clock = tokenizer.token_time(piece, [beat for beat, _ in segments])  # e.g. seconds
        key_labels = labels.token_labels(
            tokenizer, tokens, [(float(t), k) for t, (_, k) in zip(clock, segments, strict=True)]
        )
        stats["key_changes"] = len(segments) - 1
    except MidiReadError as e:
        return Encoded(source.name, None, {}, e.reason, False), True
    except EncodingError as e:
        return Encoded(source.name, None, {}, str(e), False), True
    except Exception as e:  # a batch job reports the bad file and goes on; not cached
        return Encoded(source.name, None, {}, f"unexpected {type(e).__name__}: {e}", False), False
    return Encoded(source.name, tokens.astype(np.int32), stats, "", False, key_labels), True


def encode_sources(
    config: Config, sources: list[Source], tokenizer: Tokenizer, *, progress: bool = True
) -> EncodeRun:
    """Reads and encodes every source (cache first, then a pool or this process) with
    `tokenizer`, the one `config.tokenizer` describes."""
    started = time.perf_counter()
    cache_dir = _usable_cache_dir(cache_root(config.data))
    fingerprint = {kind: _fingerprint(config, kind) for kind in {s.kind for s in sources}}
    results: list[Encoded | None] = [None] * len(sources)
    tasks, uncached_bytes = [], 0
    bar = _progress_bar(len(sources), progress)
    for i, source in enumerate(sources):
        try:
            raw = midi_io.read_file(source.path, config.data)
        except MidiReadError as e:
            results[i] = Encoded(source.name, None, {}, e.reason, False)
            bar.update()
            continue
        key = hashlib.sha256(fingerprint[source.kind].encode() + raw).hexdigest()
        entry = os.path.join(cache_dir, f"{key}.npz") if cache_dir else ""
        hit = _load_entry(entry, source.name) if entry else None
        if hit is not None:
            results[i] = hit
            bar.update()
            continue
        tasks.append((i, source, raw if source.kind == "midi" else None, entry))
        uncached_bytes += len(raw)
    workers = _choose_workers(config.data.num_workers, tasks, uncached_bytes)
    work = functools.partial(_encode_task, config=config, tokenizer=tokenizer)
    entries = {task[0]: task[3] for task in tasks}
    # Cache entries are written by threads: fsync releases the GIL, so writing overlaps reading.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as writer:
        for i, (result, cacheable) in _run(work, tasks, workers):
            results[i] = result
            if entries[i] and cacheable:
                writer.submit(_store_entry, entries[i], result)
            bar.update()
    bar.close()
    hits = len(sources) - len(tasks)
    return EncodeRun(results, hits, len(tasks), workers, time.perf_counter() - started)


def _encode_task(task, config: Config, tokenizer: Tokenizer) -> tuple[int, tuple[Encoded, bool]]:
    i, source, raw, _ = task
    return i, read_and_encode(source, raw, config, tokenizer)


def _choose_workers(requested: int, tasks: list, uncached_bytes: int) -> int:
    if requested > 0:
        return max(1, min(requested, len(tasks)))
    if all(t[1].kind == "midi" for t in tasks) and (
        uncached_bytes < SERIAL_MAX_BYTES or not _can_fork()
    ):
        return 1  # a forkserver pool starts in ~1 s: more than fast MIDI reading gains
    return max(1, min(os.cpu_count() or 1, 8, len(tasks)))


def _run(work, tasks: list, workers: int):
    if workers <= 1:
        yield from map(work, tasks)
        return
    context = multiprocessing.get_context("fork" if _can_fork() else "forkserver")
    midi_only = all(t[1].kind == "midi" for t in tasks)
    chunksize = max(1, len(tasks) // (workers * 4)) if midi_only else 1
    with context.Pool(workers) as pool:
        yield from pool.imap_unordered(work, tasks, chunksize)


def _can_fork() -> bool:
    """fork shares the parent's imports for free, but once jax runs threads forking is unsafe;
    forkserver then needs the usual `if __name__ == "__main__":` guard in a calling script."""
    return "jax" not in sys.modules and "fork" in multiprocessing.get_all_start_methods()


def _progress_bar(total: int, progress: bool):
    enabled = progress and sys.stderr.isatty()
    return tqdm(total=total, disable=not enabled, desc="reading", unit="file", leave=False)


def _usable_cache_dir(root: str) -> str:
    path = os.path.join(root, CACHE_SUBDIR)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        logging.warning("token cache %s is unusable (%s); reading every file", path, e)
        return ""
    if not os.access(path, os.W_OK):
        logging.warning("token cache %s is not writable; reading every file", path)
        return ""
    return path


def _fingerprint(config: Config, kind: str) -> str:
    settings = {
        "kind": kind,
        "code": _code_hash(),
        "data": {f: getattr(config.data, f) for f in READER_FIELDS},
        "tokenizer": dataclasses.asdict(config.tokenizer),
    }
    if kind == "score":
        settings["music21"] = corpus.music21_version()
    return json.dumps(settings, sort_keys=True) + "\n"


@functools.lru_cache(maxsize=1)
def _code_hash() -> str:
    """Hash of the code that turns bytes into tokens: editing it invalidates the cache."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = ["music/notes.py", "music/keys.py"]
    names += [f"data/{f}" for f in ("smf.py", "midi_io.py", "corpus.py", "ingest.py", "labels.py")]
    tokenizers = os.path.join(package, "tokenizers")
    names += sorted(f"tokenizers/{f}" for f in os.listdir(tokenizers) if f.endswith(".py"))
    digest = hashlib.sha256()
    for name in names:
        with open(os.path.join(package, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()


def _store_entry(path: str, result: Encoded) -> None:
    meta = json.dumps({"stats": result.stats, "reason": result.reason})
    tokens = result.tokens if result.tokens is not None else np.zeros(0, np.int32)
    keys = result.keys if result.keys is not None else np.zeros(0, np.int8)
    buffer = io.BytesIO()
    np.savez(buffer, tokens=tokens, keys=keys, meta=np.array(meta))
    try:
        atomic.write_bytes(path, buffer.getvalue())
    except OSError as e:
        logging.warning("could not write token cache entry %s: %s", path, e)


def _load_entry(path: str, name: str) -> Encoded | None:
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            tokens = z["tokens"].astype(np.int32)
            keys = z["keys"].astype(np.int8)
            meta = json.loads(str(z["meta"]))
        reason = str(meta["reason"])
        stats = dict(meta["stats"])
    except Exception:  # a damaged entry is a miss; it is rewritten
        return None
    if not reason and keys.shape != tokens.shape:
        return None  # an entry from before key labels: a miss, rewritten
    return Encoded(name, None if reason else tokens, stats, reason, True, None if reason else keys)
