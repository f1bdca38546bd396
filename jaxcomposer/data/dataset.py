"""`--mode=prepare`: a MIDI folder (or the embedded Bach chorales) -> token arrays in a workdir.

  <workdir>/data/{train,valid}.npz   tokens int32 (T,) = pieces as [BOS, ...tokens..., EOS]
                                     concatenated; offsets int64 (P+1,); names str (P,);
                                     keys int8 (T,): key in force at each token (BOS/EOS take
                                     the piece's first/last); styles int8 (T,): style index or -1
                                     (absent in workdirs prepared before labels: unconditional)
  <workdir>/data/manifest.json       every file: split, counts, or the reason it was skipped
  <workdir>/vocab.json, config.json

Files are read and encoded by `ingest.encode_sources` (parallel, cached per file). The split is
by piece, from a hash of the file name, so it never changes when files are added or removed.
The data folder is replaced as a whole (atomic.atomic_dir): an interrupted run leaves the
previous dataset, never a partial one that `load_split` would accept.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator

import numpy as np
from absl import logging

from jaxcomposer import workdir_lib
from jaxcomposer.config_lib import Config, DataConfig
from jaxcomposer.core import atomic
from jaxcomposer.core.errors import Failure
from jaxcomposer.data import corpus, ingest, labels
from jaxcomposer.data.ingest import Encoded, Source, find_midi_files, fit_pitch_range
from jaxcomposer.music.keys import key_name
from jaxcomposer.tokenizers import BOS, EOS, get_tokenizer

__all__ = [
    "DatasetError",
    "PrepareError",
    "TokenSplit",
    "encode_folder",
    "fit_pitch_range",
    "load_split",
    "prepare",
    "summarize",
    "valid_hash",
]

SPLITS = ("train", "valid")
MANIFEST_VERSION = 1


class PrepareError(Failure, RuntimeError):
    """Nothing usable to train on (the message says where and why)."""


class DatasetError(Failure, ValueError):
    """A workdir's dataset is missing, garbled or inconsistent."""


@dataclasses.dataclass(frozen=True)
class TokenSplit:
    tokens: np.ndarray  # int32 (T,): pieces as [BOS, ..., EOS], concatenated
    offsets: np.ndarray  # int64 (P+1,): piece i is tokens[offsets[i]:offsets[i+1]]
    names: np.ndarray  # str (P,)
    keys: np.ndarray | None = None  # int8 (T,): pretty_midi key number per token; -1 unknown
    styles: np.ndarray | None = None  # int8 (T,): index into the manifest's styles; -1 none

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """The label tracks this split has ({} for an unlabelled, older dataset)."""
        return {k: v for k, v in (("keys", self.keys), ("styles", self.styles)) if v is not None}

    def __len__(self) -> int:
        return int(self.offsets.shape[0]) - 1

    def piece(self, i: int) -> np.ndarray:
        """Piece i's tokens, including its BOS and EOS."""
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def pieces(self) -> Iterator[np.ndarray]:
        return (self.piece(i) for i in range(len(self)))

    @staticmethod
    def from_pieces(
        names: list[str],
        bodies: list[np.ndarray],
        keys: list[np.ndarray] | None = None,
        styles: list[int] | None = None,
    ) -> TokenSplit:
        """Pieces' tokens without BOS/EOS -> one split (each wrapped in BOS ... EOS), with the
        per-token key labels of each body and one style index per piece when given."""
        lengths = np.array([len(b) + 2 for b in bodies], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        tokens = np.empty(int(offsets[-1]), np.int32)
        key_track = None if keys is None else np.full(tokens.size, -1, np.int8)
        style_track = None if styles is None else np.full(tokens.size, -1, np.int8)
        for i, (body, start, end) in enumerate(zip(bodies, offsets[:-1], offsets[1:], strict=True)):
            tokens[start] = BOS
            tokens[start + 1 : end - 1] = body
            tokens[end - 1] = EOS
            if key_track is not None and len(body):
                key_track[start + 1 : end - 1] = keys[i]
                key_track[start], key_track[end - 1] = keys[i][0], keys[i][-1]
            if style_track is not None:
                style_track[start:end] = styles[i]
        names_array = np.array(names, dtype=str).reshape(-1)
        return TokenSplit(tokens, offsets, names_array, key_track, style_track)


def valid_hash(name: str) -> float:
    """A stable number in [0, 1) per file name; pieces below valid_fraction are held out."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") / 2.0**64


def assign_splits(names: list[str], valid_fraction: float) -> list[str]:
    """'train'/'valid' per name, by name hash; >= 1 of each when there are >= 2 pieces."""
    hashes = [valid_hash(n) for n in names]
    splits = ["valid" if h < valid_fraction else "train" for h in hashes]
    if len(names) >= 2 and "valid" not in splits:
        splits[int(np.argmin(hashes))] = "valid"
    if len(names) >= 2 and "train" not in splits:
        splits[int(np.argmax(hashes))] = "train"
    return splits


def prepare(
    config: Config, workdir: str, *, progress: bool = True, overwrite: bool = False
) -> dict:
    """Reads, encodes, splits and writes the dataset; returns the manifest (also written).

    Raises PrepareError when nothing is usable, and workdir_lib.WorkdirError (before any
    work) when the workdir's checkpoints were trained with other tokenizer settings, unless
    `overwrite`, which moves those checkpoints aside.
    """
    started = time.perf_counter()
    workdir_lib.check_prepare(workdir, config, overwrite=overwrite)
    data = config.data
    train_sources, root = _sources(data.midi_dir, data)
    valid_sources = []
    if data.valid_dir:
        valid_sources, _ = _sources(data.valid_dir, data)
    tokenizer = get_tokenizer(config.tokenizer)
    run = ingest.encode_sources(config, train_sources + valid_sources, tokenizer, progress=progress)
    results = run.results
    usable = [r for r in results[: len(train_sources)] if not r.reason]
    if data.valid_dir:
        splits = ["train"] * len(usable)
        held_out = [r for r in results[len(train_sources) :] if not r.reason]
        usable, splits = usable + held_out, splits + ["valid"] * len(held_out)
    else:
        splits = assign_splits([r.name for r in usable], data.valid_fraction)
    skipped = [r for r in results if r.reason]
    for r in skipped:
        logging.warning("skipped %s: %s", r.name, r.reason)
    if "train" in splits and "valid" not in splits:
        logging.warning(
            "only %d usable piece(s) in %s: none is held out for validation, so this dataset "
            "cannot be trained on; add files (or a data.valid_dir)", len(usable),
            data.valid_dir or root,
        )  # fmt: skip
    if "train" not in splits:
        raise PrepareError(
            f"no usable pieces in {root}: {len(skipped)} of {len(results)} file(s) skipped"
            f"{_top_reasons_text(skipped)}"
        )
    usable, styles, unmatched = _apply_labels(data, usable, tokenizer)
    manifest = _manifest(config, root, usable, splits, skipped, run, tokenizer.vocab.to_json())
    manifest["styles"] = list(styles)
    manifest["key_labels_unmatched"] = unmatched
    manifest["timing"]["seconds"] = round(time.perf_counter() - started, 4)
    with atomic.atomic_dir(workdir_lib.data_dir(workdir)) as tmp:
        for split in SPLITS:
            chosen = [r for r, s in zip(usable, splits, strict=True) if s == split]
            _save_split(os.path.join(tmp, f"{split}.npz"), chosen, styles)
        atomic.write_json(os.path.join(tmp, workdir_lib.MANIFEST_FILE), manifest)
    moved = workdir_lib.record_prepared(workdir, config, tokenizer.vocab, overwrite=overwrite)
    if moved:
        manifest["replaced_checkpoints"] = moved
        logging.warning("moved the checkpoints of the old settings aside to %s", moved)
    return manifest


def _apply_labels(data: DataConfig, usable: list[Encoded], tokenizer):
    """CSV overrides of the key (and style) labels, the style names (() when off) and the CSV
    rows that name no usable file (logged: a misspelt or skipped file is not lost silently)."""
    table = {}
    if data.key_labels_csv:
        try:
            table = labels.read_csv(data.key_labels_csv)
        except labels.LabelError as e:
            raise PrepareError(str(e)) from None
    out, styles = [], []
    for r in usable:
        key, style = labels.csv_entry(table, r.name) or (None, None)
        stats = dict(r.stats, style=style if style is not None else labels.style_of(r.name))
        keys = r.keys
        if key is not None:
            keys = np.full(r.tokens.size, key, np.int8)
            stats.update(key_source="csv", key_changes=0)
        stats["key"] = _key_text(labels.main_key(keys)) if keys is not None else None
        styles.append(stats["style"])
        out.append(dataclasses.replace(r, stats=stats, keys=keys))
    used = {r.name for r in usable} | {os.path.basename(r.name) for r in usable}
    unmatched = sorted(name for name in table if name not in used)
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5
                                            else "")  # fmt: skip
        logging.warning(
            "%s: %d row(s) name no usable file (missing, misspelt or skipped): %s",
            data.key_labels_csv, len(unmatched), shown,
        )  # fmt: skip
    return out, labels.style_names(styles) if data.midi_dir or table else (), unmatched


def _key_text(key_number: int) -> str | None:
    return key_name(key_number) if key_number >= 0 else None


def key_counts(manifest: dict, split: str = "train") -> dict[str, int]:
    """{key name: pieces} of a split's main keys (the distribution keys are drawn from)."""
    names = [f.get("key") for f in manifest["files"] if f["split"] == split]
    return dict(collections.Counter(n for n in names if n).most_common())


def encode_folder(
    config: Config, folder: str, *, progress: bool = True
) -> tuple[TokenSplit, list[dict]]:
    """Every MIDI file under `folder`, read and encoded exactly as `prepare` does (same cache).
    Returns the usable pieces and the skipped files ({'name', 'reason'})."""
    split, skipped, _ = encode_folder_with_stats(config, folder, progress=progress)
    return split, skipped


def file_stats(workdir: str) -> dict[str, dict]:
    """Per usable file of a prepared dataset, the reading counts from its manifest (notes,
    beats, seconds, ...); {} when the manifest is missing or unreadable."""
    try:
        return {item["name"]: item for item in workdir_lib.read_manifest(workdir)["files"]}
    except (workdir_lib.WorkdirError, KeyError, TypeError):
        return {}


def encode_folder_with_stats(
    config: Config, folder: str, *, progress: bool = True
) -> tuple[TokenSplit, list[dict], dict[str, dict]]:
    """`encode_folder` plus each usable file's reading counts (notes, beats, seconds, ...)."""
    if not os.path.isdir(folder):
        raise DatasetError(f"MIDI folder {folder!r} does not exist")
    sources = [Source(n, p, "midi") for n, p in find_midi_files(folder)]
    tokenizer = get_tokenizer(config.tokenizer)
    results = ingest.encode_sources(config, sources, tokenizer, progress=progress).results
    usable = [r for r in results if not r.reason]
    split = TokenSplit.from_pieces(
        [r.name for r in usable], [r.tokens for r in usable], [r.keys for r in usable]
    )
    skipped = [{"name": r.name, "reason": r.reason} for r in results if r.reason]
    return split, skipped, {r.name: r.stats for r in usable}


def _sources(folder: str, data: DataConfig) -> tuple[list[Source], str]:
    if folder:
        if not os.path.isdir(folder):
            raise PrepareError(f"MIDI folder {folder!r} does not exist")
        files = find_midi_files(folder)
        if not files:
            raise PrepareError(f"no .mid/.midi files under {folder!r}")
        sources = [Source(n, p, "midi") for n, p in files]
        root = os.path.abspath(folder)
    else:
        listed = corpus.bach_chorale_sources(ingest.cache_root(data))
        sources = [Source(n, p, "score") for n, p in listed]
        root = f"music21 {corpus.music21_version()} Bach chorales"
    if data.max_pieces > 0:
        sources = sources[: data.max_pieces]
    return sources, root


def _save_split(path: str, results: list[Encoded], styles: tuple[str, ...]) -> None:
    index = {name: i for i, name in enumerate(styles)}
    split = TokenSplit.from_pieces(
        [r.name for r in results],
        [r.tokens for r in results],
        [r.keys for r in results],
        [index.get(r.stats.get("style"), -1) for r in results],
    )
    try:
        with open(path, "wb") as f:
            np.savez(
                f, tokens=split.tokens, offsets=split.offsets, names=split.names,
                keys=split.keys, styles=split.styles,
            )  # fmt: skip
    except OSError as e:  # ENOSPC from the final flush names no file
        atomic.named(e, path)
        raise


def _manifest(config, root, usable, splits, skipped, run, vocab_json) -> dict:
    files = [
        {"name": r.name, "split": s, "tokens": int(r.tokens.size), "cached": r.cached, **r.stats}
        for r, s in zip(usable, splits, strict=True)
    ]
    per_split = {
        split: {
            "pieces": sum(1 for f in files if f["split"] == split),
            "tokens": sum(f["tokens"] + 2 for f in files if f["split"] == split),
        }
        for split in SPLITS
    }
    return {
        "version": MANIFEST_VERSION,
        "source": root,
        "midi_dir": config.data.midi_dir,
        "valid_dir": config.data.valid_dir,
        "tokenizer": config.tokenizer.name,
        "vocab": json.loads(vocab_json),
        "totals": {
            "found": len(usable) + len(skipped),
            "used": len(usable),
            "skipped": len(skipped),
            # notes the tokens hold; notes read but not in the tokens, by reason; notes in the
            # tokens but cut shorter; events the reader read past (none of them a note)
            "notes": sum(f.get("notes", 0) for f in files),
            "dropped": _totals(files, ingest.DROP_COUNTS),
            "shortened": _totals(files, ingest.SHORTENED_COUNTS),
            "ignored": _totals(files, ingest.IGNORED_COUNTS),
            "cache_hits": run.cache_hits,
            "cache_misses": run.cache_misses,
            **per_split,
            "key_sources": dict(collections.Counter(f.get("key_source", "none") for f in files)),
            "modulating_pieces": sum(1 for f in files if f.get("key_changes")),
        },
        "files": files,
        "skipped": [{"name": r.name, "reason": r.reason} for r in skipped],
        "timing": {"encode_seconds": round(run.seconds, 4), "workers": run.workers},
    }


def _totals(files: list[dict], keys) -> dict[str, int]:
    """Each key's sum over the files, for the keys some file counts (a report lists no zeros)."""
    return {k: sum(f.get(k, 0) for f in files) for k in keys if any(f.get(k) for f in files)}


def _top_reasons(skipped: list, k: int = 3) -> list[tuple[str, int]]:
    reasons = [(r.reason if hasattr(r, "reason") else r["reason"]) for r in skipped]
    # Group by the part before any detail in parentheses or after a colon.
    heads = [reason.split(" (")[0].split(":")[0] for reason in reasons]
    return collections.Counter(heads).most_common(k)


def _top_reasons_text(skipped: list) -> str:
    top = _top_reasons(skipped)
    return "; top reasons: " + "; ".join(f"{r} ({n})" for r, n in top) if top else ""


def summarize(manifest: dict) -> str:
    """A few lines for a person: files found/used/skipped, pieces and tokens per split."""
    t = manifest["totals"]
    lines = [
        f"prepared {manifest['source']} with the {manifest['tokenizer']} tokenizer "
        f"(vocabulary {manifest['vocab']['size']}) in {manifest['timing']['seconds']:.2f} s",
        f"files: {t['found']} found, {t['used']} used, {t['skipped']} skipped "
        f"({t['cache_hits']} from cache)",
    ]
    for split in SPLITS:
        lines.append(f"{split}: {t[split]['pieces']} pieces, {t[split]['tokens']} tokens")
    for key, label in (
        ("dropped", "notes dropped"),
        ("shortened", "notes shortened"),
        ("ignored", "ignored"),
    ):
        if t.get(key):
            lines.append(
                f"{label}: " + ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in t[key].items())
            )
    if t.get("key_sources"):
        sources = ", ".join(f"{n} {k}" for k, n in t["key_sources"].items())
        lines.append(f"key labels: {sources} ({t.get('modulating_pieces', 0)} modulate)")
    if manifest.get("key_labels_unmatched"):
        lines.append(
            f"key labels CSV rows naming no usable file: {len(manifest['key_labels_unmatched'])}"
        )
    if manifest.get("styles"):
        lines.append("styles: " + ", ".join(manifest["styles"]))
    if manifest["skipped"]:
        lines.append(
            "top skip reasons: "
            + "; ".join(f"{r} ({n})" for r, n in _top_reasons(manifest["skipped"]))
        )
    return "\n".join(lines)


def load_split(workdir: str, split: str) -> TokenSplit:
    """One split of a prepared dataset, checked for consistency (DatasetError otherwise)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_dir = workdir_lib.data_dir(workdir)
    path = os.path.join(data_dir, f"{split}.npz")
    manifest_path = workdir_lib.manifest_path(workdir)
    if not (os.path.exists(path) and os.path.exists(manifest_path)):
        raise DatasetError(
            f"no prepared dataset in {workdir} ({path} is missing): run --mode=prepare first"
        )
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        with np.load(path, allow_pickle=False) as z:
            tracks = [z[k] if k in z.files else None for k in ("keys", "styles")]
            result = TokenSplit(z["tokens"], z["offsets"], z["names"], *tracks)
        vocab_size = int(manifest["vocab"]["size"])
    except Exception as e:  # zip, json, key and dtype errors all mean the same thing here
        raise DatasetError(
            f"the dataset in {data_dir} is unreadable ({type(e).__name__}: {e}): "
            "run --mode=prepare again"
        ) from e
    problem = _inconsistency(result, vocab_size) or _vocab_mismatch(workdir, manifest)
    if problem:
        raise DatasetError(
            f"the {split} split in {data_dir} is inconsistent ({problem}): run --mode=prepare again"
        )
    return result


def _inconsistency(s: TokenSplit, vocab_size: int) -> str:
    if s.tokens.ndim != 1 or s.offsets.ndim != 1 or s.names.ndim != 1:
        return "arrays are not 1-D"
    if not np.issubdtype(s.tokens.dtype, np.integer) or not np.issubdtype(
        s.offsets.dtype, np.integer
    ):
        return "tokens/offsets are not integers"
    if s.offsets.size != s.names.size + 1 or s.offsets[0] != 0 or s.offsets[-1] != s.tokens.size:
        return "offsets do not match tokens and names"
    if np.any(np.diff(s.offsets) < 2):
        return "a piece has fewer than 2 tokens"
    if s.tokens.size and (s.tokens.min() < 0 or s.tokens.max() >= vocab_size):
        return f"token ids outside the vocabulary [0, {vocab_size})"
    if np.any(s.tokens[s.offsets[:-1]] != BOS) or np.any(s.tokens[s.offsets[1:] - 1] != EOS):
        return "a piece does not start with BOS and end with EOS"
    for name, track in s.labels.items():
        if track.shape != s.tokens.shape or track.min(initial=-1) < -1:
            return f"the {name} labels do not match the tokens"
    if s.keys is not None and s.keys.max(initial=-1) >= 24:
        return "key labels outside 0..23"
    return ""


def _vocab_mismatch(workdir: str, manifest: dict) -> str:
    path = workdir_lib.vocab_path(workdir)
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
    except (OSError, ValueError):
        return f"{path} is missing or unreadable"
    return "" if vocab == manifest["vocab"] else f"{path} does not match the dataset's vocabulary"
