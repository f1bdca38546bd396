"""`train.budget_minutes`: a time budget that sets the number of steps, and the early-stopping rule.

A budget run measures, after compilation, the seconds per training step, per validation pass and
per checkpoint on this machine, then chooses the largest `num_steps` whose training, evaluations
and checkpoints (at the config's eval_every / checkpoint_every, plus the loop's final ones) fit
the minutes left once the measurement and a second compile (estimated: as long as the first,
since the schedule's step count is compiled into the train step) are paid. Warmup is capped at a
tenth of the chosen steps so warmup and cosine decay both fit. The choice is written to
WORKDIR/budget.json and into config.json; a resumed run takes it from budget.json and never
measures again, so the run is reproducible by steps (the same steps without a budget give the
same bits: the measured steps train a copy of the initial state that is thrown away).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable

from jaxcomposer import config_lib
from jaxcomposer.config_lib import Config, TrainConfig
from jaxcomposer.core import atomic
from jaxcomposer.core.errors import UsageError

TIMED_STEPS = 5  # steps timed after the compile step (their mean is the step time)
WARMUP_SHARE = 0.1  # warmup is at most this share of the chosen steps


class BudgetError(UsageError):
    """The budget cannot hold one step, or budget.json does not read."""


@dataclasses.dataclass(frozen=True)
class Measured:
    """Seconds measured on this machine (wall clock, time.perf_counter)."""

    compile_seconds: float  # first train step, compile included
    step_seconds: float  # mean of TIMED_STEPS steps after it
    eval_seconds: float  # one validation pass (train.eval_batches batches), after its compile
    save_seconds: float  # one checkpoint of the state, until written (measured in a temp dir)
    spent_seconds: float  # the whole measurement, compiles included


def record_path(workdir: str) -> str:
    return os.path.join(workdir, "budget.json")


# --- the step count ---------------------------------------------------------------------------
def overhead_events(num_steps: int, eval_every: int, checkpoint_every: int) -> tuple[int, int]:
    """(validation passes, checkpoints) that loop._Run makes in a run of `num_steps` steps: an
    evaluation every eval_every steps and at the last step, a checkpoint at each evaluation and
    every checkpoint_every steps."""
    if num_steps <= 0:
        return 0, 0
    evals = num_steps // eval_every + (num_steps % eval_every != 0)
    lcm = math.lcm(eval_every, checkpoint_every)
    extra = num_steps // checkpoint_every - num_steps // lcm  # saves not at an evaluation
    if num_steps % eval_every != 0 and num_steps % checkpoint_every == 0:
        extra -= 1  # the last step is both an evaluation and a periodic save
    return evals, evals + extra


def run_seconds(num_steps: int, measured: Measured, tcfg: TrainConfig) -> float:
    """Predicted seconds of `num_steps` steps with their evaluations and checkpoints."""
    evals, saves = overhead_events(num_steps, tcfg.eval_every, tcfg.checkpoint_every)
    return (
        num_steps * measured.step_seconds
        + evals * measured.eval_seconds
        + saves * measured.save_seconds
    )


def steps_for_budget(tcfg: TrainConfig, measured: Measured) -> int:
    """The largest step count whose run_seconds fit budget_minutes less the measurement and the
    second compile (estimated as long as the measured first one). Raises BudgetError when not
    even one step fits."""
    left = 60.0 * tcfg.budget_minutes - measured.spent_seconds - measured.compile_seconds
    if run_seconds(1, measured, tcfg) > left:
        raise BudgetError(
            f"config train.budget_minutes={tcfg.budget_minutes}: no step fits (measured "
            f"{measured.spent_seconds:.1f} s of measurement and compile, "
            f"{measured.step_seconds:.3f} s per step, {measured.eval_seconds:.2f} s per "
            "validation pass): give a longer budget"
        )
    low, high = 1, max(2, int(left / measured.step_seconds) + 1)  # run_seconds(high) > left
    while high - low > 1:  # run_seconds grows with the step count: bisect
        mid = (low + high) // 2
        low, high = (mid, high) if run_seconds(mid, measured, tcfg) <= left else (low, mid)
    return low


def chosen_train(tcfg: TrainConfig, num_steps: int) -> dict:
    """The train fields a budget of `num_steps` steps sets: the steps and the capped warmup."""
    return {
        "num_steps": num_steps,
        "warmup_steps": min(tcfg.warmup_steps, int(WARMUP_SHARE * num_steps)),
    }


# --- measuring, recording, resuming ------------------------------------------------------------
def measure(
    train_step: Callable,
    eval_pass: Callable,
    save: Callable,
    make_state: Callable,
    batch: Callable[[int], dict],
    rng,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> Measured:
    """Times the jitted step on this machine: one step with its compile, then TIMED_STEPS steps
    (each waited for), one validation pass twice (the second is timed) and one checkpoint.

    train_step(state, batch, rng) -> (state, metrics); eval_pass(state) -> metrics dict;
    save(state) writes one checkpoint and waits for it; batch(step) -> the batch of that step;
    make_state() -> a new initial state (the train step donates its input, so the states timed
    here are fresh ones, thrown away: the caller trains from its own).
    """
    import jax

    started = clock()
    probe, metrics = train_step(make_state(), batch(0), rng)
    jax.block_until_ready(metrics)
    compiled = clock()
    for step in range(1, TIMED_STEPS + 1):
        probe, metrics = train_step(probe, batch(step), rng)
        jax.block_until_ready(metrics)
    timed = clock()
    state = make_state()
    eval_pass(state)  # compiles the eval step
    before_eval = clock()
    eval_pass(state)
    evaluated = clock()
    save(state)
    saved = clock()
    return Measured(
        compile_seconds=compiled - started,
        step_seconds=(timed - compiled) / TIMED_STEPS,
        eval_seconds=evaluated - before_eval,
        save_seconds=saved - evaluated,
        spent_seconds=saved - started,
    )


def recorded(workdir: str, config: Config) -> dict | None:
    """budget.json's record when it was made for this config's budget, else None. Raises
    BudgetError naming the file when it does not read."""
    path = record_path(workdir)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        same = float(record["budget_minutes"]) == config.train.budget_minutes
        int(record["train"]["num_steps"]), int(record["train"]["warmup_steps"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BudgetError(f"{path}: not a budget record ({type(e).__name__}: {e})") from e
    return record if same else None


def apply(config: Config, record: dict) -> Config:
    """The config with the recorded step count and warmup."""
    return config_lib.replace(config, train={k: int(v) for k, v in record["train"].items()})


def choose(config: Config, measured: Measured) -> tuple[Config, dict]:
    """(the config with the chosen steps, the record to write to budget.json)."""
    tcfg = config.train
    num_steps = steps_for_budget(tcfg, measured)
    train = chosen_train(tcfg, num_steps)
    chosen = config_lib.replace(config, train=train)
    predicted = run_seconds(num_steps, measured, chosen.train)
    evals, saves = overhead_events(num_steps, tcfg.eval_every, tcfg.checkpoint_every)
    record = {
        "budget_minutes": tcfg.budget_minutes,
        "train": train,
        "measured": dataclasses.asdict(measured),
        "predicted": {
            "train_seconds": num_steps * measured.step_seconds,
            "evaluations": evals,
            "eval_seconds": evals * measured.eval_seconds,
            "checkpoints": saves,
            "checkpoint_seconds": saves * measured.save_seconds,
            "second_compile_seconds_estimated": measured.compile_seconds,
            "total_seconds": predicted + measured.spent_seconds + measured.compile_seconds,
        },
    }
    return chosen, record


def write_record(workdir: str, record: dict) -> None:
    atomic.write_text(record_path(workdir), json.dumps(record, indent=2, sort_keys=True) + "\n")


def describe(record: dict, *, resumed: bool) -> str:
    """One log line: the chosen steps and where they come from."""
    train, m = record["train"], record["measured"]
    if resumed:
        return (
            f"budget {record['budget_minutes']} min: {train['num_steps']} steps (warmup "
            f"{train['warmup_steps']}) as chosen before, from budget.json; not measured again"
        )
    p = record["predicted"]
    return (
        f"budget {record['budget_minutes']} min: {train['num_steps']} steps (warmup "
        f"{train['warmup_steps']}) at {m['step_seconds']:.4f} s/step measured after a "
        f"{m['compile_seconds']:.1f} s compile; overhead {p['evaluations']} validation passes x "
        f"{m['eval_seconds']:.2f} s and {p['checkpoints']} checkpoints x {m['save_seconds']:.2f} "
        f"s (measured), second compile {p['second_compile_seconds_estimated']:.1f} s "
        "(estimated: as the first)"
    )


# --- early stopping -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Stopping:
    """The early-stopping state carried across validation passes (and checkpoints)."""

    best_val_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # validation passes since the best one

    def update(self, step: int, val_loss: float) -> Stopping:
        """After a validation pass at `step`: a strictly lower loss is the new best."""
        if self.best_val_loss is None or val_loss < self.best_val_loss:
            return Stopping(val_loss, step, 0)
        return dataclasses.replace(self, bad_evals=self.bad_evals + 1)

    def should_stop(self, patience: int) -> bool:
        """True once `patience` (> 0) validation passes in a row did not beat the best."""
        return patience > 0 and self.bad_evals >= patience

    def reason(self, patience: int) -> str:
        return (
            f"early stopping: {self.bad_evals} validation passes without improvement (patience "
            f"{patience}); best {self.best_val_loss:.4f} nats/token at step {self.best_step}"
        )
