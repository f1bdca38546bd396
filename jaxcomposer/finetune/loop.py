"""`--mode=finetune`: feedback fine-tuning of a trained workdir's model (the paper's section 8.2).

The paper's update W_new = W_old + alpha * DeltaW + beta * F(y) in its established form:
KL-regularised policy-gradient fine-tuning (Jaques et al. 2017, Sequence Tutor / RL Tuner). Each
update samples `finetune.batch_size` sequences from the current model with the jitted sampler
(grammar mask on, temperature 1: the policy itself), decodes them, scores them with the reward
table (finetune/rewards.py) and takes an Adam step on policy_gradient.surrogate (reward with a
leave-one-out baseline, minus beta * exact KL to the pretrained model) plus alpha * the ordinary
next-token NLL on real training windows (the paper's alpha DeltaW).

Starts from the workdir's best checkpoint; writes WORKDIR/finetune/: checkpoints/ (orbax; each
holds the policy, its optimizer state and the frozen pretrained parameters), config.json,
metrics.jsonl, learning_curve.png (reward, KL, validation NLL) and finetune_summary.json.
Samples and real windows are pure functions of (seed, finetune.seed, step), so a stopped run
resumed from its latest checkpoint reproduces an uninterrupted one bit for bit.
`--mode=generate --checkpoint=finetuned[:STEP]` samples from the result.

Key-conditioned models (conditioning.Spec.dim > 0): each update asks every sampled sequence for
a key (`finetune.key`, else drawn from the training pieces' keys as keyplan.plan_keys draws,
a pure function of the step), samples with sampler.sample_keyed (no scale rule: the policy
itself), feeds every forward pass (policy, frozen reference, real windows, validation) the
[X; M] vectors training fed, and scores in_key in the requested key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxcomposer import config_lib, workdir_lib
from jaxcomposer.config_lib import Config, FinetuneConfig
from jaxcomposer.core import atomic
from jaxcomposer.core.errors import Failure, UsageError
from jaxcomposer.data import dataset
from jaxcomposer.finetune import policy_gradient, rewards
from jaxcomposer.finetune.reports import mean, plot_curves, progress_line, summary_text
from jaxcomposer.model import StepFunction, checkpoints
from jaxcomposer.model.loss import token_loss_sums
from jaxcomposer.music import keys
from jaxcomposer.sample import keyplan, sampler
from jaxcomposer.tokenizers import BOS, Tokenizer
from jaxcomposer.tokenizers.grammar import walk_batch
from jaxcomposer.train import batching, reporting
from jaxcomposer.train.train_step import make_eval_step, make_mesh, shard_batch, validation_metrics

CONFIG_FILE = "config.json"
SUMMARY_FILE = "finetune_summary.json"
CURVE_FILE = "learning_curve.png"
# Fields that may change when a fine-tuning run resumes; any other finetune field must not.
RESUMABLE_FIELDS = frozenset({"num_steps", "eval_every", "log_every", "max_wall_seconds"})
# Streams folded into the fine-tuning key, so sampling, real windows and key draws never share
# draws.
_SAMPLE_STREAM, _WINDOW_STREAM, _KEY_STREAM = 0, 1, 2


class FinetuneDivergedError(Failure, RuntimeError):
    """The fine-tuning loss or gradient norm became NaN or infinite."""


# --- pieces of one update ---------------------------------------------------------------------
def make_optimizer(fcfg: FinetuneConfig) -> optax.GradientTransformation:
    """Adam at a constant rate (the pretrained model is already near a good point), clipped."""
    opt = optax.adam(fcfg.learning_rate)
    if fcfg.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(fcfg.grad_clip_norm), opt)
    return opt


def make_update(model, optimizer, grammar, fcfg: FinetuneConfig, real_loss_table=None):
    """The jitted `update(state, tokens_BxT, rewards_B, real_batch, cond_BxTxC=None)
    -> (state, metrics)`.

    `state` = {'step', 'params', 'opt_state', 'reference'} (the pretrained params, frozen);
    `tokens_BxT` were sampled from `state['params']` after BOS; `real_batch` is a
    batching.sample_windows batch (None when alpha = 0; with 'cond_BxLxC' for a conditioned
    model); `cond_BxTxC` (float32, conditioned models) the [X; M] vector the sampler fed with
    each input (BOS, tokens[:-1]); `real_loss_table` the grammar table when the model was
    trained with train.grammar_mask_loss."""
    next_state = jnp.asarray(grammar.next_state)
    press_V = None if grammar.press is None else jnp.asarray(grammar.press)
    release_V = None if grammar.release is None else jnp.asarray(grammar.release)
    beta, alpha = float(fcfg.kl_beta), float(fcfg.alpha)

    def update(state, tokens_BxT, rewards_B, real_batch, cond_BxTxC=None):
        batch = tokens_BxT.shape[0]
        inputs_BxT = jnp.concatenate(
            [jnp.full((batch, 1), BOS, jnp.int32), tokens_BxT[:, :-1]], axis=1
        )
        start_B = jnp.full((batch,), grammar.bos_state, jnp.int32)
        held = None  # the held-key rule, from BOS (nothing held), as the sampler applied it
        if grammar.press is not None:
            held = (press_V, release_V, jnp.zeros((batch, grammar.num_keys), bool))
        states_BxT, held_ok_BxTxV = walk_batch(next_state, tokens_BxT, start_B, held)
        allowed = policy_gradient.sampler_mask(next_state, states_BxT, held_ok_BxTxV)
        ref_logits, _ = model.apply(
            {"params": state["reference"]}, inputs_BxT, train=False, cond_BxLxC=cond_BxTxC
        )

        def loss_fn(params):
            logits, _ = model.apply(
                {"params": params}, inputs_BxT, train=False, cond_BxLxC=cond_BxTxC
            )
            gain, metrics = policy_gradient.surrogate(
                logits, ref_logits, tokens_BxT, allowed, rewards_B, beta
            )
            loss = -gain
            if real_batch is not None:
                real_logits, _ = model.apply(
                    {"params": params}, real_batch["inputs_BxL"], train=False,
                    cond_BxLxC=real_batch.get("cond_BxLxC"),
                )  # fmt: skip
                sums = token_loss_sums(
                    real_logits, real_batch["targets_BxL"], real_batch["weights_BxL"],
                    real_batch.get("states_BxL"), real_loss_table,
                )  # fmt: skip
                metrics["real_nll"] = sums[0] / jnp.maximum(sums[2], 1.0)
                loss = loss + alpha * metrics["real_nll"]
            return loss, metrics

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        step_updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], step_updates)
        new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
        metrics.update(loss=loss, grad_norm=optax.global_norm(grads))
        return new_state, metrics

    return jax.jit(update)


def finetune_key(config: Config, stream: int) -> jax.Array:
    return jax.random.fold_in(
        jax.random.fold_in(jax.random.key(config.seed), config.finetune.seed), stream
    )


def reward_context(config: Config, tokenizer: Tokenizer, train_split) -> rewards.RewardContext:
    """The rewards' parameters; the pitch-range band comes from the openings of the training
    pieces cut to the sampled length (`finetune.num_tokens`), so it fits the samples."""
    fcfg = config.finetune
    openings = [tokenizer.decode(p[: fcfg.num_tokens + 1]).notes for p in train_split.pieces()]
    texture_quantiles = (fcfg.texture_low_quantile, fcfg.texture_high_quantile)
    spb = config.tokenizer.steps_per_beat
    matched = [name for name, w in dataclasses.asdict(fcfg.match).items() if w]
    reference, left_out = rewards.match_reference(openings, matched, spb)
    if left_out:
        logging.warning(
            "finetune.match: %s not matched (fewer than 2 real openings give a value)",
            ", ".join(left_out),
        )
    return rewards.RewardContext(
        steps_per_beat=spb,
        max_run=fcfg.max_run,
        motif_length=fcfg.motif_length,
        motif_gap=fcfg.motif_gap,
        phrase_beats=fcfg.phrase_beats,
        range_band=rewards.range_band(
            openings, fcfg.range_low_quantile, fcfg.range_high_quantile, fcfg.phrase_beats
        ),
        length_band=rewards.texture_band(openings, "note_length", *texture_quantiles, spb),
        polyphony_band=rewards.texture_band(openings, "polyphony", *texture_quantiles, spb),
        match_reference=reference,
        match_clip=fcfg.match_clip,
    )


def score_tokens(
    tokenizer: Tokenizer,
    tokens_BxT: np.ndarray,
    weights: dict,
    context: rewards.RewardContext,
    user=None,
    key=None,
    match: dict | None = None,
) -> list[dict]:
    """Rewards of each sampled row (decoded after a BOS). `key`: None = estimated per piece, a
    key number for every row, or a sequence of B key numbers (each row's requested key).
    `match` (statistic -> weight, finetune.match): the batch rewards, added to each row as
    'match_<statistic>' (nats) and to its 'total' with their weights."""
    rows = np.asarray(tokens_BxT)
    per_row = [key] * len(rows) if key is None or np.ndim(key) == 0 else list(key)
    if len(per_row) != len(rows):
        raise ValueError(f"{len(per_row)} keys for {len(rows)} sampled rows")
    out, pieces = [], []
    for row, row_key in zip(rows, per_row, strict=True):
        notes = tokenizer.decode(np.concatenate([[BOS], row])).notes
        pieces.append(notes)
        out.append(rewards.score(notes, weights, context, key=row_key, user=user))
    for name, values in rewards.match_rewards(pieces, match or {}, context).items():
        for scores, value in zip(out, values, strict=True):
            scores[f"match_{name}"] = float(value)
            scores["total"] += float(match[name]) * float(value)
    return out


def check_key(fcfg: FinetuneConfig) -> None:
    """Raises UsageError (one line) unless finetune.key is '' or ';'-separated key names: the
    rewards score one key per sequence, so bar schedules are not taken here."""
    for part in fcfg.key.split(";"):
        if part.strip() and len(keys.parse_key_schedule(part)) != 1:
            raise UsageError(
                f"config finetune.key {fcfg.key!r}: give key names (';' between several), "
                "not a schedule of key changes"
            )


# --- the run ----------------------------------------------------------------------------------
def _check_resume(folder: str, config: Config, base_step: int, resuming: bool) -> None:
    path = os.path.join(folder, CONFIG_FILE)
    if resuming and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = config_lib.from_json(f.read())
        changed = workdir_lib.differences(old, config, "finetune", RESUMABLE_FIELDS)
        if changed:
            raise workdir_lib.WorkdirError(
                f"{folder} holds a fine-tuning run with a different config "
                f"({'; '.join(changed)}); resume with the same values or remove that folder"
            )
    atomic.write_text(path, config_lib.to_json(config) + "\n")


def finetune(flags_config: Config, workdir: str, *, progress: bool | None = None) -> dict:
    """Fine-tunes (or resumes fine-tuning) the best checkpoint of `workdir`; returns the summary.

    The model, tokenizer and data settings come from the workdir's config.json; the finetune
    section from `flags_config` (the --config given on the command line), and its
    train.tensorboard too when set (TensorBoard event files beside finetune/metrics.jsonl). Raises
    workdir_lib.WorkdirError for a workdir without checkpoints or with a model the
    sampler cannot fine-tune (the Keras replica reads fixed windows), errors.UsageError for a
    user reward that cannot be loaded."""
    workdir = os.path.abspath(workdir)
    show = sys.stderr.isatty() if progress is None else progress
    base = workdir_lib.restore_for_inference(workdir, "best")
    config = dataclasses.replace(base.config, finetune=flags_config.finetune)
    if flags_config.train.tensorboard:  # event files: asked for now, or when it was trained
        config = config_lib.replace(config, train={"tensorboard": True})
    fcfg = config.finetune
    if config.model.kind != "lstm" or config.train.loss_on_last_only:
        raise workdir_lib.WorkdirError(
            f"{workdir}: fine-tuning needs a model that reads whole sequences (model.kind "
            f"'lstm'), not {config.model.kind!r} trained on the last target of fixed windows"
        )
    check_key(fcfg)
    user = None
    if fcfg.user_reward:
        user = (rewards.load_user_reward(fcfg.user_reward), fcfg.user_reward_weight)
    folder = workdir_lib.finetune_dir(workdir)
    os.makedirs(folder, exist_ok=True)
    tokenizer, model = base.tokenizer, base.model
    train_split = dataset.load_split(workdir, "train")
    context = reward_context(config, tokenizer, train_split)
    optimizer = make_optimizer(fcfg)
    real_table = tokenizer.grammar.next_state if config.train.grammar_mask_loss else None
    manager = checkpoints.make_manager(
        os.path.join(folder, workdir_lib.CHECKPOINT_DIR), config.train.keep_best
    )
    run = None
    try:
        latest = manager.latest_step()
        _check_resume(folder, config, base.step, latest is not None)
        params = base.variables["params"]
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": optimizer.init(params),
            "reference": params,
        }
        meta = {"base_step": base.step}
        if latest is not None:
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_device()), state
            )
            latest, (state, meta) = checkpoints.restore_readable(
                manager, latest, lambda step: checkpoints.restore(manager, step, abstract),
                quarantine=True,
            )  # fmt: skip
            logging.info("resumed fine-tuning from %s at step %d", manager.directory, latest)
        run = _Run(config, workdir, folder, manager, base, train_split, context, user)
        run.update = make_update(model, optimizer, tokenizer.grammar, fcfg, real_table)
        summary = run.loop(state, meta, progress=show)
    finally:
        checkpoints.close_manager(manager)
        if run is not None and run.tensorboard is not None:
            run.tensorboard.close()
    plot_curves(os.path.join(folder, workdir_lib.METRICS_FILE), os.path.join(folder, CURVE_FILE))
    atomic.write_json(os.path.join(folder, SUMMARY_FILE), summary)
    print(summary_text(summary), flush=True)
    return summary


def _device():
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


class _Run:
    """Loop bookkeeping: samples, rewards, real windows, validation, checkpoints, log lines."""

    def __init__(self, config, workdir, folder, manager, base, train_split, context, user):
        self.config, self.fcfg, self.folder, self.manager = config, config.finetune, folder, manager
        tokenizer, model = base.tokenizer, base.model
        self.tokenizer, self.context, self.user = tokenizer, context, user
        self.workdir, self.base = workdir, base
        # Conditioned models only: the spec, and the training split's labels for real windows.
        self.spec = base.spec if base.spec is not None and base.spec.dim else None
        self.train_labels = getattr(train_split, "labels", None) if self.spec else None
        self.weights = dataclasses.asdict(self.fcfg.weights)
        self.match = dataclasses.asdict(self.fcfg.match)
        self.metrics_path = os.path.join(folder, workdir_lib.METRICS_FILE)
        # train.tensorboard: event files beside this metrics.jsonl too (finetune/ of the workdir)
        self.tensorboard = (
            reporting.TensorBoardLog.open(folder) if config.train.tensorboard else None
        )
        self.step_fn = StepFunction(model)
        self.settings = sampler.DecoderSettings(decoder="temperature", temperature=1.0)
        self.sample_key = finetune_key(config, _SAMPLE_STREAM)
        tcfg = config.train
        self.train_tokens = np.asarray(train_split.tokens)
        self.train_offsets = np.asarray(train_split.offsets, np.int64)
        k = tcfg.transpose_semitones
        self.tables = tokenizer.transposition_tables(k) if k > 0 else None
        self.real_states = None
        self.real_table = tokenizer.grammar.next_state if tcfg.grammar_mask_loss else None
        if self.real_table is not None:
            self.real_states = batching.grammar_states(
                self.train_tokens, self.train_offsets, tokenizer.grammar, self.tables
            )
        self.window_seed = (config.seed, self.fcfg.seed, _WINDOW_STREAM)
        # Validation: the training run's fixed windows, so the NLL compares with its curve.
        self.mesh = make_mesh(tcfg.batch_size)
        self.eval_step = make_eval_step(model, self.mesh, self.real_table)
        valid = dataset.load_split(workdir, "valid")
        valid_states = None
        if self.real_table is not None:
            valid_states = batching.grammar_states(
                np.asarray(valid.tokens), np.asarray(valid.offsets), tokenizer.grammar
            )
        self.valid_batches = [
            shard_batch(b, self.mesh)
            for b in batching.validation_batches(
                np.asarray(valid.tokens), np.asarray(valid.offsets), batch_size=tcfg.batch_size,
                seq_len=tcfg.seq_len, num_batches=tcfg.eval_batches, states=valid_states,
                labels=getattr(valid, "labels", None) if self.spec else None, spec=self.spec,
            )
        ]  # fmt: skip

    # one update's inputs, each a pure function of the step
    def sample(self, params, step: int):
        """(tokens int32 (B, T), cond float32 (B, T, C) of the inputs BOS + tokens[:-1], each
        row's requested key int (B,)); cond and keys are None for an unconditioned model."""
        fcfg = self.fcfg
        primer = np.full((fcfg.batch_size, 1), BOS, np.int32)
        states = np.full((fcfg.batch_size,), self.tokenizer.grammar.bos_state, np.int32)
        args = ({"params": params}, primer, states, self.tokenizer.grammar.next_state,
                jax.random.fold_in(self.sample_key, step))  # fmt: skip
        kwargs = dict(
            step_fn=self.step_fn, num_steps=fcfg.num_tokens, settings=self.settings,
            held=sampler.held_keys(self.tokenizer.grammar, primer),
        )  # fmt: skip
        if self.spec is None:
            tokens = sampler.sample(*args, **kwargs)
            return np.asarray(jax.device_get(tokens)), None, None
        plan = self.key_plan(step)
        inputs, ks = keyplan.keyed_run(self.base, self._key_sample(), primer, plan)
        tokens = np.asarray(jax.device_get(sampler.sample_keyed(*args, inputs, ks=ks, **kwargs)[0]))
        # The vectors the scan fed: the same host code computes a primer's, over BOS + tokens.
        fed = np.concatenate([primer, tokens[:, :-1]], axis=1)
        cond = sampler.key_inputs(self.tokenizer, ks, fed, plan.schedules, plan.styles)
        keys_B = np.array([s[0][1] for s in plan.schedules], np.int64)
        return tokens, cond.primer_cond_BxPxC, keys_B

    def _key_sample(self):
        return dataclasses.replace(
            self.config.sample, key=self.fcfg.key, style="", scale="off",
            num_samples=self.fcfg.batch_size,
        )  # fmt: skip

    def key_plan(self, step: int) -> keyplan.KeyPlan:
        """The requested key (and style) of each sampled row at `step`: a pure function of
        (seed, finetune.seed, step)."""
        seed = (self.config.seed, self.fcfg.seed, _KEY_STREAM, step)
        sample = self._key_sample()
        return keyplan.plan_keys(self.workdir, sample, self.spec, [None] * sample.num_samples, seed)

    def real_batch(self, step: int):
        if self.fcfg.alpha <= 0:
            return None
        tcfg = self.config.train
        batch = batching.sample_windows(
            self.train_tokens, self.train_offsets, seed=self.window_seed, step=step,
            batch_size=self.fcfg.alpha_batch_size, seq_len=tcfg.seq_len,
            transpose_tables=self.tables, states=self.real_states, labels=self.train_labels,
            spec=self.spec,
        )  # fmt: skip
        return {k: jnp.asarray(v) for k, v in batch.items()}

    def validate(self, params, step: int, wall: float) -> float:
        val = validation_metrics(
            self.eval_step, types.SimpleNamespace(params=params, batch_stats={}),
            self.valid_batches,
        )  # fmt: skip
        if not np.isfinite(val["loss"]):
            raise FinetuneDivergedError(f"validation loss is {val['loss']} at step {step}")
        self.log({"kind": "valid", "step": step, **val, "wall_seconds": wall})
        return val["loss"]

    def log(self, record: dict) -> None:
        reporting.append_metrics(self.metrics_path, record)
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def loop(self, state: dict, meta: dict, *, progress: bool) -> dict:
        fcfg = self.fcfg
        step = start = int(jax.device_get(state["step"]))
        wall_before = float(meta.get("wall_seconds") or 0.0)
        started = time.perf_counter()

        def wall() -> float:
            return wall_before + time.perf_counter() - started

        self.log({"kind": "start", "step": step})
        val = meta.get("val_loss")
        if step == 0:
            val = self.validate(state["params"], 0, 0.0)  # the pretrained model's NLL
        stop = "num_steps"
        bar = reporting.progress_bar(start, fcfg.num_steps, enabled=progress)
        saved_at, recent = None, []
        while step < fcfg.num_steps:
            tokens, cond, keys_B = self.sample(state["params"], step)
            scores = score_tokens(
                self.tokenizer,
                tokens,
                self.weights,
                self.context,
                self.user,
                key=keys_B,
                match=self.match,
            )
            totals = np.array([s["total"] for s in scores], np.float32)
            args = (state, tokens, totals, self.real_batch(step))
            state, metrics = self.update(*args) if cond is None else self.update(*args, cond)
            values = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not all(np.isfinite(v) for v in values.values()):
                raise FinetuneDivergedError(
                    f"fine-tuning diverged at step {step + 1}: {values}; the last good "
                    "checkpoint is kept (try a lower finetune.learning_rate)"
                )
            step += 1
            parts = {
                f"reward_{name}": float(np.mean([s[name] for s in scores]))
                for name in scores[0]
                if name not in ("total", "key")
            }
            record = {"kind": "train", "step": step, **values, **parts, "wall_seconds": wall()}
            self.log(record)
            recent.append(record)
            bar.update(1)
            out_of_time = 0 < fcfg.max_wall_seconds <= time.perf_counter() - started
            is_eval = step % fcfg.eval_every == 0 or step == fcfg.num_steps or out_of_time
            if is_eval:
                val = self.validate(state["params"], step, wall())
                self.save(state, step, val, wall(), meta)
                saved_at = step
            if step % fcfg.log_every == 0 or is_eval:
                bar.write(progress_line(step, fcfg.num_steps, recent, val))
                recent = []
            if out_of_time:
                stop = "max_wall_seconds"
                break
        bar.close()
        if step > start and saved_at != step:
            val = self.validate(state["params"], step, wall())
            self.save(state, step, val, wall(), meta)
        return self.summary(step, stop, wall(), meta)

    def save(self, state: dict, step: int, val: float, wall: float, meta: dict) -> None:
        meta = {"step": step, "val_loss": val, "wall_seconds": wall,
                "base_step": meta.get("base_step")}  # fmt: skip
        checkpoints.save(self.manager, step, state, meta, val)

    def summary(self, step: int, stop: str, wall: float, meta: dict) -> dict:
        records = reporting.read_metrics(self.metrics_path)
        train = [r for r in records if r.get("kind") == "train"]
        valid = [r for r in records if r.get("kind") == "valid"]
        # The first and last windows never overlap (a short run compares its halves).
        window = max(1, min(self.fcfg.log_every, len(train) // 2))
        return {
            "step": step,
            "stop_reason": stop,
            "base_step": meta.get("base_step"),
            "reward_first": mean(train[:window], "reward"),
            "reward_last": mean(train[-window:], "reward"),
            "kl_last": mean(train[-window:], "kl"),
            "val_loss_first": valid[0]["loss"] if valid else None,
            "val_loss_last": valid[-1]["loss"] if valid else None,
            "seconds": wall,
        }
