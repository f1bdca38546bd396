"""train.budget_minutes and early stopping (train/budget.py): the budget's step count for a
measured (here: scripted) step time against a step-by-step count of the loop's evaluations and
checkpoints; early stopping on a scripted validation-loss curve, in the rule and in the loop;
and both after kill -9 (launch/kill_train.py's machinery)."""

from __future__ import annotations

import json
import os
import random

import jax.numpy as jnp
import pytest
from conftest import random_split, tiny_config
from test_kill_train import load_script

from jaxcomposer import workdir_lib
from jaxcomposer.tokenizers import get_tokenizer
from jaxcomposer.train import budget, loop, reporting

MEASURED = budget.Measured(
    compile_seconds=20.0, step_seconds=0.5, eval_seconds=10.0, save_seconds=2.0, spent_seconds=30.0
)


def simulated_seconds(num_steps, m, eval_every, checkpoint_every):
    """What loop._Run does, step by step: an evaluation every eval_every steps and at the last
    one, a checkpoint at each evaluation and every checkpoint_every steps."""
    total = 0.0
    for step in range(1, num_steps + 1):
        total += m.step_seconds
        is_eval = step % eval_every == 0 or step == num_steps
        is_save = is_eval or step % checkpoint_every == 0
        total += m.eval_seconds * is_eval + m.save_seconds * is_save
    return total


def test_the_budget_gives_the_largest_step_count_that_fits():
    tcfg = tiny_config(train={"budget_minutes": 10.0, "eval_every": 100, "checkpoint_every": 50,
                              "warmup_steps": 100}).train  # fmt: skip
    chosen = budget.steps_for_budget(tcfg, MEASURED)
    # By hand: 550 s are left after measuring and the second compile; 100 steps cost 64 s with
    # their evaluation and 2 checkpoints; 850 steps cost 425 + 9 x 10 + 17 x 2 = 549 s, and one
    # more step adds a final evaluation's checkpoint: 551.5 s.
    assert chosen == 850
    left = 600.0 - 30.0 - 20.0
    assert (
        simulated_seconds(850, MEASURED, 100, 50)
        <= left
        < simulated_seconds(851, MEASURED, 100, 50)
    )
    for eval_every, every in ((7, 3), (5, 5), (40, 13), (1, 1)):  # against the loop's count
        t = tiny_config(train={"budget_minutes": 3.0, "eval_every": eval_every,
                               "checkpoint_every": every}).train  # fmt: skip
        n = budget.steps_for_budget(t, MEASURED)
        left = 180.0 - 50.0
        assert simulated_seconds(n, MEASURED, eval_every, every) <= left
        assert simulated_seconds(n + 1, MEASURED, eval_every, every) > left
    assert budget.chosen_train(tcfg, 850) == {"num_steps": 850, "warmup_steps": 85}


def test_a_budget_that_holds_no_step_is_refused():
    tcfg = tiny_config(train={"budget_minutes": 0.5}).train
    with pytest.raises(budget.BudgetError, match="budget_minutes=0.5: no step fits"):
        budget.steps_for_budget(tcfg, MEASURED)


def test_measure_times_the_steps_after_the_compile():
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    calls = []

    def train_step(state, batch, rng):
        calls.append(batch)
        now[0] += 7.0 if len(calls) == 1 else 0.25  # the first call compiles
        return state, {"loss": jnp.zeros(())}

    evals = []

    def eval_pass(state):
        evals.append(state)
        now[0] += 3.0 if len(evals) == 1 else 1.5

    def save(state):
        now[0] += 0.5

    m = budget.measure(train_step, eval_pass, save, lambda: "state", lambda step: step, None,
                       clock=clock)  # fmt: skip
    assert calls == list(range(budget.TIMED_STEPS + 1))  # the run's own batches 0, 1, ...
    assert m == budget.Measured(7.0, 0.25, 1.5, 0.5, 7.0 + 0.25 * budget.TIMED_STEPS + 5.0)
    config, record = budget.choose(tiny_config(train={"budget_minutes": 1.0, "eval_every": 20,
                                                      "checkpoint_every": 20}), m)  # fmt: skip
    n = config.train.num_steps
    left = 60.0 - m.spent_seconds - m.compile_seconds
    assert simulated_seconds(n, m, 20, 20) <= left < simulated_seconds(n + 1, m, 20, 20)
    assert record["train"]["num_steps"] == n and record["measured"]["step_seconds"] == 0.25


LOSSES = [3.0, 2.5, 2.6, 2.4, 2.45, 2.41, 2.42, 2.3, 2.2]  # one per validation pass


def test_the_stopping_rule_on_a_scripted_curve():
    state = budget.Stopping()
    stopped_at = None
    for i, loss in enumerate(LOSSES):
        state = state.update(10 * (i + 1), loss)
        if state.should_stop(3):
            stopped_at = 10 * (i + 1)
            break
    # best 2.4 at the 4th pass (step 40), then three passes without a lower loss
    assert stopped_at == 70 and state.best_step == 40 and state.best_val_loss == 2.4
    assert "best 2.4000 nats/token at step 40" in state.reason(3)
    assert not budget.Stopping(2.0, 10, 5).should_stop(0)  # patience 0 = off


def test_the_loop_stops_at_the_right_evaluation_and_keeps_the_best(tmp_path, monkeypatch, capsys):
    scripted = iter(LOSSES)
    real = loop.validation_metrics

    def scripted_metrics(eval_step, state, batches):
        return {**real(eval_step, state, batches), "loss": next(scripted)}

    monkeypatch.setattr(loop, "validation_metrics", scripted_metrics)
    vocab_size = get_tokenizer(tiny_config().tokenizer).vocab.size
    splits = random_split(0, [200, 90], vocab_size), random_split(1, [120], vocab_size)
    config = tiny_config(train={"num_steps": 200, "eval_every": 10, "checkpoint_every": 10,
                                "log_every": 10, "eval_batches": 1, "early_stop_patience": 3,
                                "keep_best": 2})  # fmt: skip
    summary = loop.fit(config, str(tmp_path), *splits, progress=False)
    assert summary["step"] == 70 and summary["stop_reason"] == "early_stopping"
    assert summary["best_step"] == 40 and summary["best_val_loss"] == 2.4
    assert "step 40" in capsys.readouterr().out
    # keep_best=2 keeps steps 40 (2.40) and 60 (2.41) besides the latest (70)
    assert workdir_lib.checkpoint_steps(str(tmp_path)) == [40, 60, 70]


def _kill_args(tmp_path, *extra):
    script = load_script()
    corpus = tmp_path / "midi"
    corpus.mkdir()
    import midi_factory as mf

    for i in range(4):
        mf.simple_file(corpus / f"m{i}.mid", mf.melody(i, length=80), qpm=90)
    args = script.build_parser().parse_args(
        [f"--midi_dir={corpus}", f"--tmp_root={tmp_path}", f"--cache_dir={tmp_path / 'cache'}",
         *extra]
    )  # fmt: skip
    return script, args


def test_early_stopping_resumes_after_kills_to_the_same_stop(tmp_path):
    # A learning rate of 0 keeps the validation loss constant: the first pass (step 4) stays the
    # best and patience 2 stops at step 12, uninterrupted or killed and resumed.
    script, args = _kill_args(
        tmp_path, "--kills=2", "--steps=40", "--checkpoint_every=2", "--eval_every=4",
        "--modes=finalize", "--override=--config.train.learning_rate=0",
        "--override=--config.train.early_stop_patience=2",
    )  # fmt: skip
    summary = script.run(args)
    assert summary["failures"] == [] and summary["ok"]
    assert summary["reference_step"] == 12 and summary["kills"] == 2
    assert summary["bitwise_equal_episodes"] == summary["episodes"] >= 1


def test_a_budget_run_killed_and_resumed_keeps_its_step_count(tmp_path):
    script, args = _kill_args(
        tmp_path, "--steps=100000", "--checkpoint_every=20", "--eval_every=40",
        "--override=--config.train.budget_minutes=0.4",
    )  # fmt: skip
    workdir = str(tmp_path / "run")
    script.prepare(workdir, args)
    outcome, info = script.run_attempt(workdir, args, "finalize", random.Random(0), 120.0)
    assert outcome == "killed", info
    with open(budget.record_path(workdir)) as f:
        record = json.load(f)
    chosen = record["train"]["num_steps"]
    assert 0 < chosen < 100000
    outcome, info = script.run_attempt(workdir, args, None, random.Random(0), 0.0)
    assert outcome == "finished", info
    with open(budget.record_path(workdir)) as f:
        assert json.load(f) == record  # not measured again
    with open(os.path.join(workdir, "train_summary.json")) as f:
        assert json.load(f)["step"] == chosen
    assert workdir_lib.load_config(workdir).train.num_steps == chosen
    records = reporting.read_metrics(workdir_lib.metrics_path(workdir))
    assert [r["train"]["num_steps"] for r in records if r["kind"] == "budget"] == [chosen]
