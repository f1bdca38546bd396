"""The one owner of a workdir: its layout, config.json, vocab.json (one writer), the manifest's
reader, the checks that config, vocabulary, prepared data and checkpoints fit together, the
training lock, and "restore for inference" (everything rebuilt from the workdir alone; the
orbax checkpoints of a folder are model/checkpoints.py's).

    <workdir>/config.json           the frozen config of the run (config_lib.to_json)
    <workdir>/vocab.json            the tokenizer's declared vocabulary
    <workdir>/data/                 prepared token arrays and manifest (data/dataset.py)
    <workdir>/checkpoints/<step>/   orbax: `state` (step, params, opt_state, batch_stats) and
                                    `meta` (JSON: validation loss, wall time, early stopping)
    <workdir>/metrics.jsonl, learning_curve.png, train_summary.json, samples/, reports/

orbax, jax and the model are imported inside the functions that use them: they cost ~0.8 s of
start-up (measured: `python -c "import orbax.checkpoint"` 0.9 s vs 0.15 s for
`jaxcomposer.data.dataset`), and `--mode=prepare`, which only needs the config checks, stays
jax-free (launch/bench_prepare.py times it including interpreter start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from jaxcomposer import config_lib
from jaxcomposer.config_lib import Config
from jaxcomposer.core import atomic
from jaxcomposer.core.errors import WorkdirError
from jaxcomposer.tokenizers import Tokenizer, Vocab, get_tokenizer

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
DATA_DIR = "data"
MANIFEST_FILE = "manifest.json"  # in DATA_DIR
CHECKPOINT_DIR = "checkpoints"
FINETUNE_DIR = "finetune"  # --mode=finetune's own checkpoints/, metrics.jsonl, curves
FINETUNED = "finetuned"  # --checkpoint=finetuned[:STEP] names a fine-tuned checkpoint
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".train.lock"


class WorkdirBusyError(WorkdirError):
    """Another live process holds the workdir's training lock."""


# --- layout -----------------------------------------------------------------------------------
def config_path(workdir: str) -> str:
    return os.path.join(workdir, CONFIG_FILE)


def vocab_path(workdir: str) -> str:
    return os.path.join(workdir, VOCAB_FILE)


def data_dir(workdir: str) -> str:
    return os.path.join(workdir, DATA_DIR)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def metrics_path(workdir: str) -> str:
    return os.path.join(workdir, METRICS_FILE)


def finetune_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), FINETUNE_DIR)


def manifest_path(workdir: str) -> str:
    return os.path.join(data_dir(workdir), MANIFEST_FILE)


def is_prepared(workdir: str) -> bool:
    """True when `--mode=prepare` has written a dataset here."""
    return os.path.exists(manifest_path(workdir))


def read_manifest(workdir: str) -> dict:
    """The prepared dataset's manifest.json (data/dataset.py writes it). Raises WorkdirError
    naming the file when it is missing or not JSON."""
    path = manifest_path(workdir)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise WorkdirError(f"{path}: cannot read the prepared dataset's manifest ({e})") from e


def cond_spec(workdir: str, config: Config):
    """The conditioning.Spec of a run: config.model.condition with the style names the data
    was prepared with (manifest.json "styles"; none in older workdirs)."""
    from jaxcomposer.model.conditioning import Spec

    styles: tuple[str, ...] = ()
    if config.model.condition == "key+style":
        styles = tuple(read_manifest(workdir).get("styles") or ())
    return Spec(config.model.condition, styles)


def checkpoint_steps(workdir: str) -> list[int]:
    """Steps of the finished checkpoints on disk (orbax's unfinished `*.orbax-checkpoint-tmp*`
    folders are not checkpoints), without starting orbax."""
    folder = checkpoint_dir(workdir)
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


# --- the training lock -------------------------------------------------------------------------
@contextlib.contextmanager
def train_lock(workdir: str) -> Iterator[dict]:
    """Holds `<workdir>/.train.lock` for the block, so two runs never train (or prepare while
    another trains) one workdir at once.

    An exclusive `fcntl.flock` on the open file: the kernel drops it when the holder dies, even
    by SIGKILL, so a killed run never leaves the workdir stuck. The holder writes its pid, host
    and start time into the file for the refusal message. On a network filesystem without
    flock support the lock is skipped with a warning. Raises WorkdirBusyError when another live
    process holds it, WorkdirError when the lock file is a symbolic link (it is opened with
    O_NOFOLLOW). Yields the holder record written.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    try:  # O_NOFOLLOW: a symbolic link planted as the lock would have us truncate its target
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise WorkdirError(
                f"{path}: is a symbolic link; the training lock must be a plain file (remove it)"
            ) from None
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusyError(
                f"{workdir} is in use by another run ({_holder(fd)}); wait for it to "
                "finish, stop it, or use another --workdir"
            ) from None
        except OSError as e:  # e.g. ENOLCK on some network filesystems
            logging.warning("%s: cannot lock (%s); not guarding against a second run", path, e)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield record
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {record['pid']} on {record['host']}, started {record['started']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown: the lock file names none yet"


# --- config.json and vocab.json ---------------------------------------------------------------
def load_config(workdir: str) -> Config:
    path = config_path(workdir)
    try:
        with open(path, encoding="utf-8") as f:
            return config_lib.from_json(f.read())
    except FileNotFoundError:
        raise WorkdirError(f"{path}: missing (run --mode=prepare first)") from None
    except (KeyError, TypeError, ValueError) as e:
        raise WorkdirError(f"{path}: not a valid jaxcomposer config: {e}") from e


def load_vocab(workdir: str, tokenizer: Tokenizer) -> Vocab:
    """vocab.json, checked against the vocabulary `tokenizer` declares."""
    path = vocab_path(workdir)
    try:
        with open(path, encoding="utf-8") as f:
            vocab = Vocab.from_json(f.read())
    except FileNotFoundError:
        raise WorkdirError(f"{path}: missing (run --mode=prepare first)") from None
    except (KeyError, TypeError, ValueError) as e:
        raise WorkdirError(f"{path}: not a valid vocabulary: {e}") from e
    expected = tokenizer.vocab
    if vocab != expected:
        raise WorkdirError(
            f"{path}: vocabulary ({vocab.tokenizer}, {vocab.size} tokens) differs from the one "
            f"config.json's tokenizer declares ({expected.tokenizer}, {expected.size} tokens)"
        )
    return vocab


# Fields that may change when a run resumes; every other train/model field must stay the same.
RESUMABLE_TRAIN_FIELDS = frozenset(
    {"num_steps", "eval_every", "eval_batches", "early_stop_patience", "checkpoint_every",
     "keep_best", "log_every", "max_wall_seconds", "tensorboard"}
)  # fmt: skip
# Data fields that do not change the tokens (where the cache lives, how many processes).
NEUTRAL_DATA_FIELDS = frozenset({"cache_dir", "num_workers"})


def differences(old: Config, new: Config, section: str, ignore=frozenset()) -> list[str]:
    """'section.field: old -> new' for every field of `section` (nested ones as
    'section.sub.field', e.g. finetune.match.polyphony) that differs, but those in `ignore`."""
    if section == "seed":
        return [f"seed: {old.seed!r} -> {new.seed!r}"] if old.seed != new.seed else []
    a = _flat(config_lib.to_dict(old)[section])
    b = _flat(config_lib.to_dict(new)[section])
    return [
        f"{section}.{k}: {a[k]!r} -> {b.get(k)!r}"
        for k in sorted(a)
        if k not in ignore and a[k] != b.get(k)
    ]


def _flat(fields: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _write_config_and_vocab(workdir: str, config: Config, vocab: Vocab) -> None:
    """The one writer of config.json and vocab.json (atomically)."""
    atomic.write_text(vocab_path(workdir), vocab.to_json() + "\n")
    atomic.write_text(config_path(workdir), config_lib.to_json(config) + "\n")


def prepare_conflicts(workdir: str, config: Config) -> list[str]:
    """The tokenizer and data settings that differ from those the workdir's checkpoints were
    trained with ([] when there are no checkpoints or nothing changed). A tokenizer change alters
    what the token ids mean (pitch range, steps per beat, tokenizer...), so those weights no
    longer fit; a data change would let a resumed run mix two datasets and compare validation
    losses measured on different pieces."""
    if not (checkpoint_steps(workdir) and os.path.exists(config_path(workdir))):
        return []
    old = load_config(workdir)
    return differences(old, config, "tokenizer") + differences(
        old, config, "data", NEUTRAL_DATA_FIELDS
    )


def check_prepare(workdir: str, config: Config, *, overwrite: bool = False) -> None:
    """Raises WorkdirError, before any work, when preparing `config` here would silently
    re-map the token ids of the checkpoints in `workdir` (see prepare_conflicts)."""
    changed = prepare_conflicts(workdir, config)
    if changed and not overwrite:
        raise WorkdirError(
            f"{workdir} holds checkpoints trained with other settings ({'; '.join(changed)}); "
            "preparing with these would re-map their token ids or mix two datasets in one run: "
            "use another --workdir, or pass --overwrite to move the old checkpoints aside"
        )


def record_prepared(
    workdir: str, config: Config, vocab: Vocab, *, overwrite: bool = False
) -> str | None:
    """Called by prepare once its data is written: records config.json and vocab.json.

    Checkpoints whose token ids the new settings re-map make this raise WorkdirError (see
    check_prepare), unless `overwrite`, which moves them, with their metrics, aside to
    `checkpoints.replaced-<time>/` (returned).
    """
    check_prepare(workdir, config, overwrite=overwrite)
    moved = None
    if prepare_conflicts(workdir, config):
        moved = f"{checkpoint_dir(workdir)}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(checkpoint_dir(workdir), moved)
        for name in (METRICS_FILE, "train_summary.json", "learning_curve.png"):
            if os.path.exists(os.path.join(workdir, name)):
                os.replace(os.path.join(workdir, name), os.path.join(moved, name))
    _write_config_and_vocab(workdir, config, vocab)
    return moved


def write_run_files(
    workdir: str, config: Config, vocab: Vocab, *, resuming: bool, write: bool = True
) -> None:
    """Checks config.json / vocab.json against this training run, then records its config
    (unless `write` is False: the other processes of a multi-host run only check).

    The data and tokenizer must be the ones the workdir was prepared with; when resuming,
    the model, the seeds and the training recipe must match the checkpoints too. Only the
    RESUMABLE_TRAIN_FIELDS (and the sample section) may change between attempts.
    """
    path = config_path(workdir)
    if os.path.exists(path):
        old = load_config(workdir)
        changed = differences(old, config, "data", NEUTRAL_DATA_FIELDS)
        changed += differences(old, config, "tokenizer")
        if changed:
            raise WorkdirError(
                f"{path}: the data in {workdir} was prepared with a different config "
                f"({'; '.join(changed)}); pass the values it was prepared with, re-run "
                "--mode=prepare, or use another workdir"
            )
        if resuming:
            changed = differences(old, config, "seed") + differences(old, config, "model")
            changed += differences(old, config, "train", RESUMABLE_TRAIN_FIELDS)
            if changed:
                raise WorkdirError(
                    f"{path}: {workdir} holds checkpoints of a run with a different config "
                    f"({'; '.join(changed)}); resume with the same values or use another workdir"
                )
    if os.path.exists(vocab_path(workdir)):
        _check_vocab(workdir, vocab)
    if write:
        _write_config_and_vocab(workdir, config, vocab)


def _check_vocab(workdir: str, vocab: Vocab) -> None:
    path = vocab_path(workdir)
    try:
        with open(path, encoding="utf-8") as f:
            stored = Vocab.from_json(f.read())
    except (KeyError, TypeError, ValueError) as e:
        raise WorkdirError(f"{path}: not a valid vocabulary: {e}") from e
    if stored != vocab:
        raise WorkdirError(
            f"{path}: vocabulary ({stored.tokenizer}, {stored.size} tokens) differs from the "
            f"one this run's tokenizer declares ({vocab.tokenizer}, {vocab.size} tokens)"
        )


@dataclasses.dataclass(frozen=True)
class Restored:
    """What inference needs, rebuilt from a workdir alone."""

    config: Config
    tokenizer: Tokenizer
    model: Any  # flax.linen.Module: build_model(config.model, vocab size)
    variables: dict  # {'params': ..., maybe 'batch_stats': ...}, ready for `model.apply`
    step: int  # the restored checkpoint's step
    spec: Any = None  # conditioning.Spec: what the model's [X; M] vector holds
    source: str = "pretrained"  # "pretrained" | "finetuned": which run wrote the checkpoint

    @property
    def vocab(self) -> Vocab:
        return self.tokenizer.vocab


def split_finetuned(which: str | int) -> tuple[bool, str]:
    """'finetuned' -> (True, 'latest'); 'finetuned:STEP' -> (True, 'STEP'); else (False, which)."""
    text = str(which).strip()
    if text == FINETUNED:
        return True, "latest"
    if text.startswith(FINETUNED + ":"):
        return True, text[len(FINETUNED) + 1 :]
    return False, text


def restore_for_inference(workdir: str, which: str | int = "best") -> Restored:
    """The config, tokenizer, model and variables of checkpoint `which` ('best', 'latest' or a
    step of training; 'finetuned' or 'finetuned:STEP' of --mode=finetune, whose checkpoints hold
    the same model), from config.json, vocab.json and checkpoints/ alone. Each is built once
    here and passed on. Raises WorkdirError when the three do not fit together."""
    import jax

    from jaxcomposer.model import build_model, checkpoints

    workdir = os.path.abspath(workdir)
    config = load_config(workdir)
    tokenizer = get_tokenizer(config.tokenizer)
    load_vocab(workdir, tokenizer)
    spec = cond_spec(workdir, config)
    model = build_model(config.model, tokenizer.vocab.size, spec.dim)
    finetuned, which = split_finetuned(which)
    directory = os.path.join(finetune_dir(workdir), CHECKPOINT_DIR) if finetuned else None
    if finetuned and not os.path.isdir(directory):
        raise WorkdirError(f"{directory}: no fine-tuned checkpoints (run --mode=finetune)")
    directory = directory or checkpoint_dir(workdir)
    manager = checkpoints.make_manager(directory, config.train.keep_best, read_only=True)
    expected = checkpoints.abstract_variables(model, config.train.seq_len)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def restore_step(step: int) -> dict:
        stored = manager.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        where = os.path.join(str(manager.directory), str(step))
        checkpoints.check_shapes(
            expected.get("params", {}), stored["params"], f"checkpoint {where} params"
        )
        checkpoints.check_shapes(
            expected.get("batch_stats", {}),
            stored.get("batch_stats", {}),
            f"checkpoint {where} batch_stats",
        )
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored
        )
        return checkpoints.restore(manager, step, target)[0]

    try:
        # A damaged checkpoint (checkpoints.verify, or a restore that raises) falls back to the
        # newest readable one, with a warning naming both steps.
        step, state = checkpoints.restore_readable(manager, which, restore_step)
    finally:
        manager.close()
    variables = {"params": state["params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    source = "finetuned" if finetuned else "pretrained"
    return Restored(config, tokenizer, model, variables, step, spec, source)
