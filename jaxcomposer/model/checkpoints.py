"""Orbax checkpoints of a folder: the manager (latest + best by validation loss), save, restore,
choosing a step and checking that stored shapes fit the model.

    <folder>/<step>/   `state` (step, params, opt_state, batch_stats) and `meta` (JSON:
                       validation loss, wall time, early stopping)

Checkpoints saved at a validation pass carry the metric {'val_loss': ...}; the preservation
policy keeps the newest checkpoint and the K with the lowest val_loss. Orbax and jax are
imported inside the functions (start-up cost; see workdir_lib.py).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from jaxcomposer.core import atomic
from jaxcomposer.core.errors import WorkdirError

METRIC = "val_loss"
# Checkpoints the preservation policy drops are first renamed in here (one atomic rename), then
# deleted: orbax's plain deletion is an rmtree of `<step>/`, and a process killed during it left
# a half-deleted folder still named `<step>` that a later run listed as a checkpoint.
TRASH_DIR = "deleted"
# Checkpoints that fail verification when training or fine-tuning resumes from an earlier step
# are moved in here (never deleted: a person may still want to look at them).
DAMAGED_DIR = "damaged"
# Written into `<step>/` once orbax has finished the step: size and sha256 of every file, so a
# truncated, emptied, missing or bit-flipped file is found before it is restored (orbax 0.12.8
# notices truncated and missing array files and an empty _METADATA only as a traceback from
# tensorstore or json, and restores a bit-flipped array chunk silently: zarr keeps no checksums).
SUMS_FILE = "jaxcomposer_sums.json"


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


def make_manager(directory: str, keep_best: int, *, read_only: bool = False):
    """A manager of the checkpoint folder `directory` (a workdir's checkpoints/, or
    fine-tuning's) keeping the latest checkpoint plus the `keep_best` lowest validation
    losses."""
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
    if not read_only:
        empty_trash(directory)
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


def empty_trash(directory: str) -> None:
    """Deletes the checkpoints orbax moved to `directory/deleted/` (see TRASH_DIR)."""
    shutil.rmtree(os.path.join(directory, TRASH_DIR), ignore_errors=True)


def close_manager(manager) -> None:
    """Waits for the manager's asynchronous saves, closes it and deletes the checkpoints its
    preservation policy moved to `deleted/` meanwhile. `save` empties that folder only before
    each save, so without this the checkpoint dropped by the last save stayed there (a third
    of the folder after a run with one best and one latest checkpoint)."""
    with _write_errors(str(manager.directory)):
        manager.close()
    empty_trash(str(manager.directory))
    seal(str(manager.directory))


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
    directory = str(manager.directory)
    with _write_errors(directory):
        manager.wait_until_finished()  # orbax waits for the previous save anyway; then seal it
    seal(directory)
    empty_trash(directory)
    check_space(directory, step, state_tree)
    with _write_errors(directory):
        manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state_tree),
                meta=ocp.args.JsonSave(atomic.to_jsonable(meta)),
            ),
            metrics=metrics,
            force=True,
        )


# tensorstore's words for ENOSPC / EDQUOT and EACCES / EROFS inside orbax's exceptions
_NO_SPACE = ("RESOURCE_EXHAUSTED", "No space left", "Disk quota exceeded")
_NO_PERMISSION = ("PERMISSION_DENIED", "Permission denied", "Read-only file system")


@contextlib.contextmanager
def _write_errors(directory: str):
    """Turns orbax's exceptions for a full disk or a folder it may not write into one
    WorkdirError naming the folder (orbax raises them from its threads, wrapped)."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - classified by their text; anything else re-raised
        text = f"{e} {e.__cause__ or ''}"
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            why = "no space left on the device"
        elif isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            why = "permission denied"
        elif any(word in text for word in _NO_SPACE):
            why = "no space left on the device"
        elif any(word in text for word in _NO_PERMISSION):
            why = "permission denied"
        else:
            raise
        raise CheckpointWriteError(
            f"{directory}: cannot write a checkpoint ({why}); {_kept(_finished_steps(directory))}"
        ) from None


def _kept(steps: list[int]) -> str:
    if not steps:
        return "no checkpoint was written yet"
    if len(steps) == 1:
        return f"the earlier checkpoint (step {steps[0]}) is kept"
    return f"the earlier checkpoints (steps {', '.join(map(str, steps))}) are kept"


class CheckpointWriteError(WorkdirError):
    """A checkpoint cannot be written (no space, no permission)."""


def _tree_bytes(tree: Any) -> int:
    import jax

    return sum(int(getattr(leaf, "nbytes", 0)) for leaf in jax.tree.leaves(tree))


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, rel)) for rel in _files(folder))


def check_space(directory: str, step: int, state_tree: Any) -> None:
    """Raises CheckpointWriteError before a save that the free space of `directory`'s
    filesystem cannot hold: orbax writes in background threads, and a disk filling up mid-way
    ended in hundreds of lines of tracebacks from them. Needed: the larger of the state's
    bytes and the newest checkpoint's size, plus a quarter and 256 kB (orbax's metadata)."""
    steps = _finished_steps(directory)
    last = _folder_bytes(os.path.join(directory, str(steps[-1]))) if steps else 0
    need = int(max(_tree_bytes(state_tree), last) * 1.25) + (256 << 10)
    try:
        stat = os.statvfs(directory)
    except OSError:
        return
    free = stat.f_bavail * stat.f_frsize
    if free < need:
        raise CheckpointWriteError(
            f"{directory}: no space for the checkpoint of step {int(step)} (about "
            f"{need / 1e6:.2f} MB needed, {free / 1e6:.2f} MB free); {_kept(steps)}"
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
        raise WorkdirError(f"{where}: no checkpoints (has the model been trained?)")
    which = str(which).strip()
    if which == "best":
        best = manager.best_step()
        return int(best if best is not None else manager.latest_step())
    if which == "latest":
        return int(manager.latest_step())
    if which.lstrip("-").isdigit():
        if int(which) not in steps:
            raise WorkdirError(f"{where}: no checkpoint at step {which}; have {sorted(steps)}")
        return int(which)
    raise WorkdirError(f"checkpoint must be 'best', 'latest' or a step number, got {which!r}")


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
    raise WorkdirError(
        f"{what} does not fit the model config.json describes: "
        f"missing {missing[:5]}, unexpected {extra[:5]}, shape mismatches {differ[:5]}"
    )


def abstract_variables(model, seq_len: int) -> dict:
    """Shapes of the model's variables ({'params': ..., maybe 'batch_stats': ...}), no compute."""
    import jax
    import jax.numpy as jnp

    tokens = jnp.zeros((1, seq_len), jnp.int32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return dict(jax.eval_shape(lambda: model.init(rngs, tokens, train=False)))


# --- verification ------------------------------------------------------------------------------
def _finished_steps(directory: str) -> list[int]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(
        int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(directory, n))
    )


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: str) -> list[str]:
    """Paths relative to `folder` of every regular file below it (the sums file and atomic
    writes' temporaries, `.NAME.XXXX.tmp`, excluded)."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder)
            if rel != SUMS_FILE and not (name.startswith(".") and name.endswith(".tmp")):
                out.append(rel)
    return sorted(out)


def seal(directory: str) -> list[int]:
    """Writes `<step>/jaxcomposer_sums.json` (size and sha256 of each file) into every finished
    checkpoint of `directory` that has none; returns the steps sealed. Only for checkpoints
    orbax has finished (`save` and `close_manager` call it after waiting for the saves). Only
    the primary process writes (every process of a multi-host run calls it: a second writer
    would race the first and could list its temporary file)."""
    import jax

    if jax.process_index() != 0:
        return []
    sealed = []
    for step in _finished_steps(directory):
        folder = os.path.join(directory, str(step))
        if os.path.exists(os.path.join(folder, SUMS_FILE)):
            continue
        paths = {rel: os.path.join(folder, rel) for rel in _files(folder)}
        sums = {rel: [os.path.getsize(path), _digest(path)] for rel, path in paths.items()}
        atomic.write_json(os.path.join(folder, SUMS_FILE), {"format": 1, "files": sums})
        sealed.append(step)
    return sealed


def verify(folder: str) -> str | None:
    """Why the checkpoint folder `<dir>/<step>` cannot be trusted (a one-line reason), or None.

    With a sums file (see SUMS_FILE): each file listed must be there with its size and sha256.
    Without one (a checkpoint of an older version, or a run killed right after the save):
    `state/_METADATA` must be a non-empty JSON file; the restore itself catches the rest.
    """
    sums_path = os.path.join(folder, SUMS_FILE)
    if os.path.exists(sums_path):
        try:
            with open(sums_path, encoding="utf-8") as f:
                listed = json.load(f)["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{SUMS_FILE} is unreadable ({type(e).__name__})"
        for rel, (size, digest) in sorted(listed.items()):
            path = os.path.join(folder, rel)
            try:
                have = os.path.getsize(path)
            except FileNotFoundError:
                return f"{rel} is missing"
            if have != size:
                state = "empty" if have == 0 else "truncated" if have < size else "grown"
                return f"{rel} is {state} ({have} of its {size} bytes)"
            if _digest(path) != digest:
                return f"{rel} differs from the checksum written at save time (bit flip?)"
        return None
    meta = os.path.join(folder, "state", "_METADATA")
    try:
        with open(meta, encoding="utf-8") as f:
            json.load(f)
    except FileNotFoundError:
        return "state/_METADATA is missing"
    except (OSError, ValueError) as e:
        size = os.path.getsize(meta) if os.path.exists(meta) else 0
        return "state/_METADATA is empty" if size == 0 else f"state/_METADATA is not JSON ({e})"
    return None


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).split(" See full TensorStore details")[0]
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


def restore_readable(
    manager,
    which: str | int,
    restore_step: Callable[[int], Any],
    *,
    quarantine: bool = False,
) -> tuple[int, Any]:
    """(step, restore_step(step)) for checkpoint `which` (see choose_step), or, when that one
    fails verification (`verify`) or its restore raises, for the newest readable earlier step
    (then later ones), with one warning line naming both steps and the reason.

    `quarantine` (a run that will write new checkpoints: train, finetune) moves every damaged
    step newer than the one restored into `<dir>/damaged/` so orbax can save those steps again,
    and reloads the manager. Raises WorkdirError naming each step and its reason when no
    checkpoint is readable.
    """
    directory = str(manager.directory)
    wanted = choose_step(manager, which)
    steps = sorted((int(s) for s in manager.all_steps()), reverse=True)
    order = [wanted] + [s for s in steps if s < wanted] + [s for s in steps if s > wanted]
    failed: list[tuple[int, str]] = []
    for step in order:
        reason = verify(os.path.join(directory, str(step)))
        result = None
        if reason is None:
            try:
                result = restore_step(step)
            except WorkdirError:
                raise  # the checkpoint is fine but does not fit the model: no fallback
            except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds
                reason = _reason(e)
        if reason is not None:
            failed.append((step, reason))
            continue
        for bad, why in failed:
            logging.warning(
                "checkpoint %s/%d is damaged (%s); using step %d instead", directory, bad, why, step
            )
        if quarantine:
            _quarantine(manager, [bad for bad, _ in failed if bad > step])
        return step, result
    listing = "; ".join(f"step {s}: {why}" for s, why in failed)
    raise WorkdirError(f"{directory}: no readable checkpoint ({listing})")


def _quarantine(manager, steps: list[int]) -> None:
    if not steps:
        return
    directory = str(manager.directory)
    folder = os.path.join(directory, DAMAGED_DIR)
    os.makedirs(folder, exist_ok=True)
    for step in steps:
        target = os.path.join(folder, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(os.path.join(directory, str(step)), target)
        logging.warning("moved the damaged checkpoint %s/%d to %s", directory, step, target)
    manager.reload()
