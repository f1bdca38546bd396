"""The one owner of a workdir: its layout, config.json, vocab.json, the checks that config,
vocabulary, prepared data and checkpoints fit together, the orbax checkpoints, and "restore for
inference" (everything rebuilt from the workdir alone).

    <workdir>/config.json           the frozen config of the run (config_lib.to_json)
    <workdir>/vocab.json            the tokenizer's declared vocabulary
    <workdir>/data/                 prepared token arrays and manifest (data/dataset.py)
    <workdir>/checkpoints/<step>/   orbax: `state` (step, params, opt_state, batch_stats) and
                                    `meta` (JSON: validation loss, wall time, early stopping)
    <workdir>/metrics.jsonl, learning_curve.png, train_summary.json, samples/, reports/

Checkpoints saved at a validation pass carry the metric {'val_loss': ...}; the preservation
policy keeps the newest checkpoint and the K with the lowest val_loss.

orbax, jax and the model are imported inside the functions that use them: they cost ~0.8 s of
start-up (measured: `python -c "import orbax.checkpoint"` 0.9 s vs 0.15 s for
`jaxcomposer.data.dataset`), and `--mode=prepare`, which only needs the config checks, stays
jax-free (launch/bench_prepare.py times it including interpreter start).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from typing import Any

from jaxcomposer import atomic, config_lib
from jaxcomposer.config_lib import Config
from jaxcomposer.tokenizers import Tokenizer, Vocab, get_tokenizer

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
DATA_DIR = "data"
CHECKPOINT_DIR = "checkpoints"
FINETUNE_DIR = "finetune"  # --mode=finetune's own checkpoints/, metrics.jsonl, curves
FINETUNED = "finetuned"  # --checkpoint=finetuned[:STEP] names a fine-tuned checkpoint
METRICS_FILE = "metrics.jsonl"
METRIC = "val_loss"
LOCK_FILE = ".train.lock"
# Checkpoints the preservation policy drops are first renamed in here (one atomic rename), then
# deleted: orbax's plain deletion is an rmtree of `<step>/`, and a process killed during it left
# a half-deleted folder still named `<step>` that a later run listed as a checkpoint.
TRASH_DIR = "deleted"


class CheckpointError(ValueError):
    """A workdir's checkpoints, config.json, vocab.json or data do not fit together."""


class WorkdirBusyError(CheckpointError):
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


def is_prepared(workdir: str) -> bool:
    """True when `--mode=prepare` has written a dataset here."""
    return os.path.exists(os.path.join(data_dir(workdir), "manifest.json"))


def cond_spec(workdir: str, config: Config):
    """The conditioning.Spec of a run: config.model.condition with the style names the data
    was prepared with (manifest.json "styles"; none in older workdirs)."""
    import json

    from jaxcomposer.conditioning import Spec

    styles: tuple[str, ...] = ()
    if config.model.condition == "key+style":
        try:
            with open(os.path.join(data_dir(workdir), "manifest.json"), encoding="utf-8") as f:
                styles = tuple(json.load(f).get("styles") or ())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{workdir}: cannot read the prepared style names ({e})") from e
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
    process holds it. Yields the holder record written.
    """
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
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
        raise CheckpointError(f"{path}: missing (run --mode=prepare first)") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid jaxcomposer config: {e}") from e


def load_vocab(workdir: str, tokenizer: Tokenizer) -> Vocab:
    """vocab.json, checked against the vocabulary `tokenizer` declares."""
    path = vocab_path(workdir)
    try:
        with open(path, encoding="utf-8") as f:
            vocab = Vocab.from_json(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (run --mode=prepare first)") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid vocabulary: {e}") from e
    expected = tokenizer.vocab
    if vocab != expected:
        raise CheckpointError(
            f"{path}: vocabulary ({vocab.tokenizer}, {vocab.size} tokens) differs from the one "
            f"config.json's tokenizer declares ({expected.tokenizer}, {expected.size} tokens)"
        )
    return vocab


# Fields that may change when a run resumes; every other train/model field must stay the same.
RESUMABLE_TRAIN_FIELDS = frozenset(
    {"num_steps", "eval_every", "eval_batches", "early_stop_patience", "checkpoint_every",
     "keep_best", "log_every", "max_wall_seconds"}
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
    """Raises CheckpointError, before any work, when preparing `config` here would silently
    re-map the token ids of the checkpoints in `workdir` (see prepare_conflicts)."""
    changed = prepare_conflicts(workdir, config)
    if changed and not overwrite:
        raise CheckpointError(
            f"{workdir} holds checkpoints trained with other settings ({'; '.join(changed)}); "
            "preparing with these would re-map their token ids or mix two datasets in one run: "
            "use another --workdir, or pass --overwrite to move the old checkpoints aside"
        )


def record_prepared(
    workdir: str, config: Config, vocab: Vocab, *, overwrite: bool = False
) -> str | None:
    """Called by prepare once its data is written: records config.json and vocab.json.

    Checkpoints whose token ids the new settings re-map make this raise CheckpointError (see
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
            raise CheckpointError(
                f"{path}: the data in {workdir} was prepared with a different config "
                f"({'; '.join(changed)}); pass the values it was prepared with, re-run "
                "--mode=prepare, or use another workdir"
            )
        if resuming:
            changed = differences(old, config, "seed") + differences(old, config, "model")
            changed += differences(old, config, "train", RESUMABLE_TRAIN_FIELDS)
            if changed:
                raise CheckpointError(
                    f"{path}: {workdir} holds checkpoints of a run with a different config "
                    f"({'; '.join(changed)}); resume with the same values or use another workdir"
                )
    if os.path.exists(vocab_path(workdir)):
        _check_vocab(workdir, vocab)
    if write:
        atomic.write_text(vocab_path(workdir), vocab.to_json() + "\n")
        atomic.write_text(path, config_lib.to_json(config) + "\n")


def _check_vocab(workdir: str, vocab: Vocab) -> None:
    path = vocab_path(workdir)
    try:
        with open(path, encoding="utf-8") as f:
            stored = Vocab.from_json(f.read())
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid vocabulary: {e}") from e
    if stored != vocab:
        raise CheckpointError(
            f"{path}: vocabulary ({stored.tokenizer}, {stored.size} tokens) differs from the "
            f"one this run's tokenizer declares ({vocab.tokenizer}, {vocab.size} tokens)"
        )


# --- orbax checkpoints ------------------------------------------------------------------------
def _val_loss(metrics: dict) -> float:
    return float(metrics[METRIC])


_EXPECTED_WARNINGS = (
    "Requested `tracked_metric`",  # a periodic checkpoint, saved without a validation loss
    "Given directory is read only",  # restore_for_inference opens the manager read-only
)


class _QuietOrbax(logging.Filter):
    """Orbax logs every save step at INFO, which would bury the training progress lines; keep
    its warnings, except those about how this module uses it on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "/orbax/" not in record.pathname.replace("\\", "/"):
            return True
        if record.getMessage().startswith(_EXPECTED_WARNINGS):
            return False
        return record.levelno >= logging.WARNING


def _quiet_orbax() -> None:
    from absl import logging as absl_logging

    logger = absl_logging.get_absl_logger()
    if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
        logger.addFilter(_QuietOrbax())


def _multiprocessing_options(read_only: bool):
    """Multi-host (distributed.py): training calls the manager on every process, as orbax's
    multi-process API requires, with process 0 as primary host (it writes the metadata and
    finalizes each step). Reading for inference runs on one process alone (process 0 samples
    and evaluates), so that manager's barriers include only the calling process."""
    import jax
    from orbax.checkpoint.options import MultiprocessingOptions

    if not read_only or jax.process_count() == 1:
        return MultiprocessingOptions(primary_host=0)
    me = jax.process_index()
    return MultiprocessingOptions(
        primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"inference{me}"
    )


def make_manager(
    workdir: str, keep_best: int, *, read_only: bool = False, directory: str | None = None
):
    """A manager keeping the latest checkpoint plus the `keep_best` lowest validation losses,
    in `directory` (default: the workdir's checkpoints/)."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers

    _quiet_orbax()
    policy = checkpoint_managers.AnyPreservationPolicy(
        [
            checkpoint_managers.LatestN(n=1),
            # reverse=True sorts high-to-low, so the kept "last n" are the lowest losses.
            checkpoint_managers.BestN(
                get_metric_fn=_val_loss,
                reverse=True,
                n=max(int(keep_best), 0),
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    directory = directory or checkpoint_dir(workdir)
    if not read_only:
        empty_trash(workdir, directory)
    options = ocp.CheckpointManagerOptions(
        multiprocessing_options=_multiprocessing_options(read_only),
        preservation_policy=policy,
        best_fn=_val_loss,  # makes the manager write metrics and answer best_step()
        best_mode="min",
        create=not read_only,
        read_only=read_only,
        save_interval_steps=0 if read_only else 1,
        cleanup_tmp_directories=not read_only,
        todelete_subdir=None if read_only else TRASH_DIR,
    )
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def empty_trash(workdir: str, directory: str | None = None) -> None:
    """Deletes the checkpoints orbax moved to `checkpoints/deleted/` (see TRASH_DIR), or to
    `directory/deleted/` for a manager of another checkpoint folder (fine-tuning's)."""
    folder = directory or checkpoint_dir(workdir)
    shutil.rmtree(os.path.join(folder, TRASH_DIR), ignore_errors=True)


def close_manager(manager) -> None:
    """Waits for the manager's asynchronous saves, closes it and deletes the checkpoints its
    preservation policy moved to `deleted/` meanwhile. `save` empties that folder only before
    each save, so without this the checkpoint dropped by the last save stayed there (a third
    of the folder after a run with one best and one latest checkpoint)."""
    manager.close()
    empty_trash(os.path.dirname(str(manager.directory)))


def save(
    manager,
    step: int,
    state_tree: dict,
    meta: dict,
    val_loss: float | None = None,
) -> None:
    """Starts an asynchronous save (`manager.wait_until_finished()` / `close()` completes it)."""
    import orbax.checkpoint as ocp

    metrics = None if val_loss is None else {METRIC: float(val_loss)}
    empty_trash(os.path.dirname(str(manager.directory)))
    manager.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state_tree),
            meta=ocp.args.JsonSave(atomic.to_jsonable(meta)),
        ),
        metrics=metrics,
        force=True,
    )


def restore(manager, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores (state, meta) of `step` into the structure/shardings of `abstract_state`."""
    import orbax.checkpoint as ocp

    restored = manager.restore(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], dict(restored["meta"])


def choose_step(manager, which: str | int) -> int:
    """'best' (lowest validation loss; the latest if none has one), 'latest' or a step number."""
    steps = list(manager.all_steps())
    where = manager.directory
    if not steps:
        raise CheckpointError(f"{where}: no checkpoints (has the model been trained?)")
    which = str(which).strip()
    if which == "best":
        best = manager.best_step()
        return int(best if best is not None else manager.latest_step())
    if which == "latest":
        return int(manager.latest_step())
    if which.lstrip("-").isdigit():
        if int(which) not in steps:
            raise CheckpointError(f"{where}: no checkpoint at step {which}; have {sorted(steps)}")
        return int(which)
    raise CheckpointError(f"checkpoint must be 'best', 'latest' or a step number, got {which!r}")


def _shapes(tree: Any) -> dict[str, tuple]:
    import jax

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def check_shapes(expected: Any, stored: Any, what: str) -> None:
    want, have = _shapes(expected), _shapes(stored)
    if want == have:
        return
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    differ = [
        f"{k}: model {want[k]} vs checkpoint {have[k]}"
        for k in want
        if k in have and want[k] != have[k]
    ]
    raise CheckpointError(
        f"{what} does not fit the model config.json describes: "
        f"missing {missing[:5]}, unexpected {extra[:5]}, shape mismatches {differ[:5]}"
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


def abstract_variables(model, seq_len: int) -> dict:
    """Shapes of the model's variables ({'params': ..., maybe 'batch_stats': ...}), no compute."""
    import jax
    import jax.numpy as jnp

    tokens = jnp.zeros((1, seq_len), jnp.int32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return dict(jax.eval_shape(lambda: model.init(rngs, tokens, train=False)))


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
    here and passed on. Raises CheckpointError when the three do not fit together."""
    import jax

    from jaxcomposer.model import build_model

    workdir = os.path.abspath(workdir)
    config = load_config(workdir)
    tokenizer = get_tokenizer(config.tokenizer)
    load_vocab(workdir, tokenizer)
    spec = cond_spec(workdir, config)
    model = build_model(config.model, tokenizer.vocab.size, spec.dim)
    finetuned, which = split_finetuned(which)
    directory = os.path.join(finetune_dir(workdir), CHECKPOINT_DIR) if finetuned else None
    if finetuned and not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no fine-tuned checkpoints (run --mode=finetune)")
    manager = make_manager(workdir, config.train.keep_best, read_only=True, directory=directory)
    try:
        step = choose_step(manager, which)
        stored = manager.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        expected = abstract_variables(model, config.train.seq_len)
        where = os.path.join(str(manager.directory), str(step))
        check_shapes(expected.get("params", {}), stored["params"], f"checkpoint {where} params")
        check_shapes(
            expected.get("batch_stats", {}),
            stored.get("batch_stats", {}),
            f"checkpoint {where} batch_stats",
        )
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored
        )
        state, _ = restore(manager, step, target)
    finally:
        manager.close()
    variables = {"params": state["params"]}
    if state.get("batch_stats"):
        variables["batch_stats"] = state["batch_stats"]
    source = "finetuned" if finetuned else "pretrained"
    return Restored(config, tokenizer, model, variables, step, spec, source)
