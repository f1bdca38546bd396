"""Orbax checkpoints in <workdir>/checkpoints: the latest plus the best K by validation loss.

Each checkpoint holds two items: `state` (step, params, opt_state, batch_stats as a dict of
arrays) and `meta` (JSON: step, validation loss, wall time, early-stopping counters). Checkpoints
saved at a validation pass carry the metric {'val_loss': ...}; the preservation policy keeps the
newest checkpoint and the K with the lowest val_loss; periodic checkpoints without a validation
loss are dropped once a newer one exists.

`restore_for_inference(workdir)` needs the workdir alone: it rebuilds the config from
config.json, the vocabulary from vocab.json, checks both against each other and the checkpoint
shapes against the model the config describes.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from orbax.checkpoint import checkpoint_managers

from jaxcomposer import atomic, config_lib
from jaxcomposer.config_lib import Config
from jaxcomposer.tokenizers import Vocab, get_tokenizer

CHECKPOINT_DIR = "checkpoints"
METRIC = "val_loss"


class CheckpointError(ValueError):
    """A workdir's checkpoints, config.json or vocab.json do not fit together."""


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
    logger = absl_logging.get_absl_logger()
    if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
        logger.addFilter(_QuietOrbax())


def make_manager(workdir: str, keep_best: int, *, read_only: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the latest checkpoint plus the `keep_best` lowest validation losses."""
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
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=_val_loss,  # makes the manager write metrics and answer best_step()
        best_mode="min",
        create=not read_only,
        read_only=read_only,
        save_interval_steps=0 if read_only else 1,
        cleanup_tmp_directories=not read_only,
    )
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(
    manager: ocp.CheckpointManager,
    step: int,
    state_tree: dict,
    meta: dict,
    val_loss: float | None = None,
) -> None:
    """Starts an asynchronous save (`manager.wait_until_finished()` / `close()` completes it)."""
    metrics = None if val_loss is None else {METRIC: float(val_loss)}
    manager.save(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(_plain(meta))
        ),
        metrics=metrics,
        force=True,
    )


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Restores (state, meta) of `step` into the structure/shardings of `abstract_state`."""
    restored = manager.restore(
        int(step),
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], dict(restored["meta"])


def choose_step(manager: ocp.CheckpointManager, which: str | int) -> int:
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


def load_config(workdir: str) -> Config:
    path = os.path.join(workdir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return config_lib.from_json(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (run --mode=prepare first)") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid jaxcomposer config: {e}") from e


def load_vocab(workdir: str, config: Config) -> Vocab:
    """vocab.json, checked against the vocabulary the config's tokenizer declares."""
    path = os.path.join(workdir, "vocab.json")
    try:
        with open(path, encoding="utf-8") as f:
            vocab = Vocab.from_json(f.read())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (run --mode=prepare first)") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a valid vocabulary: {e}") from e
    expected = get_tokenizer(config.tokenizer).vocab
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


def _differences(old: Config, new: Config, section: str, ignore=frozenset()) -> list[str]:
    a = config_lib.to_dict(old)[section] if section != "seed" else {"seed": old.seed}
    b = config_lib.to_dict(new)[section] if section != "seed" else {"seed": new.seed}
    return [
        f"{section}.{k}: {a[k]!r} -> {b[k]!r}"
        if section != "seed"
        else f"seed: {a[k]!r} -> {b[k]!r}"
        for k in sorted(a)
        if k not in ignore and a[k] != b.get(k)
    ]


def write_run_files(workdir: str, config: Config, vocab: Vocab, *, resuming: bool) -> None:
    """Checks config.json / vocab.json against this run, then records the run's config.

    The data and tokenizer must be the ones the workdir was prepared with; when resuming,
    the model, the seeds and the training recipe must match the checkpoints too. Only the
    RESUMABLE_TRAIN_FIELDS (and the sample section) may change between attempts.
    """
    config_path = os.path.join(workdir, "config.json")
    if os.path.exists(config_path):
        old = load_config(workdir)
        changed = _differences(old, config, "data", NEUTRAL_DATA_FIELDS)
        changed += _differences(old, config, "tokenizer")
        if changed:
            raise CheckpointError(
                f"{config_path}: the data in {workdir} was prepared with a different config "
                f"({'; '.join(changed)}); pass the values it was prepared with, re-run "
                "--mode=prepare, or use another workdir"
            )
        if resuming:
            changed = _differences(old, config, "seed") + _differences(old, config, "model")
            changed += _differences(old, config, "train", RESUMABLE_TRAIN_FIELDS)
            if changed:
                raise CheckpointError(
                    f"{config_path}: {workdir} holds checkpoints of a run with a different config "
                    f"({'; '.join(changed)}); resume with the same values or use another workdir"
                )
    vocab_path = os.path.join(workdir, "vocab.json")
    if os.path.exists(vocab_path):
        load_vocab(workdir, config)
    else:
        atomic.write_text(vocab_path, vocab.to_json() + "\n")
    atomic.write_text(config_path, config_lib.to_json(config) + "\n")


def abstract_variables(config: Config, vocab_size: int) -> dict:
    """Shapes of the model's variables ({'params': ..., maybe 'batch_stats': ...}), no compute."""
    from jaxcomposer.model.lm import build_model

    model = build_model(config.model, vocab_size)
    tokens = jnp.zeros((1, config.train.seq_len), jnp.int32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return dict(jax.eval_shape(lambda: model.init(rngs, tokens, train=False)))


def _shapes(tree: Any) -> dict[str, tuple]:
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


def restore_for_inference(
    workdir: str, which: str | int = "best"
) -> tuple[Config, Vocab, dict, int]:
    """(config, vocab, variables, step) from the workdir alone; variables = {'params': ...,
    'batch_stats': ...} (batch_stats only for models that have it), ready for `model.apply`."""
    workdir = os.path.abspath(workdir)
    config = load_config(workdir)
    vocab = load_vocab(workdir, config)
    manager = make_manager(workdir, config.train.keep_best, read_only=True)
    try:
        step = choose_step(manager, which)
        stored = manager.item_metadata(step)["state"]
        stored = getattr(stored, "tree", stored)
        expected = abstract_variables(config, vocab.size)
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
    return config, vocab, variables, step


def _plain(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python numbers, non-finite floats -> None."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic | np.ndarray | jax.Array):
        obj = np.asarray(obj).item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    json.dumps(obj)
    return obj
