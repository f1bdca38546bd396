"""--mode=finetune end to end on a tiny trained workdir: it resumes bit for bit like training,
writes its metrics and curve, leaves the pretrained checkpoints alone, refuses a changed config
on resume, and --checkpoint=finetuned samples from it, saying which model wrote each sample."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import melody_corpus, small_run_config, tiny_config

from jaxcomposer import config_lib, workdir_lib
from jaxcomposer.evaluation import evaluate
from jaxcomposer.finetune import loop as finetune
from jaxcomposer.sample import generate
from jaxcomposer.train import loop, reporting

FINETUNE = dict(batch_size=4, num_tokens=24, num_steps=4, eval_every=2, log_every=1,
                alpha=0.5, alpha_batch_size=4, learning_rate=1e-3, kl_beta=0.5)  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    corpus = melody_corpus(tmp_path_factory.mktemp("midi"))
    config = small_run_config(
        corpus, tmp_path_factory.mktemp("cache"), sample={"num_steps": 13, "num_samples": 1}
    )
    workdir = str(tmp_path_factory.mktemp("run"))
    loop.train(config, workdir, progress=False)
    return workdir, config


def with_finetune(config, **fields):
    return config_lib.replace(config, finetune={**FINETUNE, **fields})


def copy_run(workdir, tmp_path, name):
    target = str(tmp_path / name)
    shutil.copytree(workdir, target, ignore=shutil.ignore_patterns(workdir_lib.FINETUNE_DIR))
    return target


@pytest.fixture(scope="module")
def straight(pretrained, tmp_path_factory):
    workdir, config = pretrained
    target = copy_run(workdir, tmp_path_factory.mktemp("straight"), "w")
    summary = finetune.finetune(with_finetune(config), target, progress=False)
    return target, summary


def finetuned_params(workdir):
    restored = workdir_lib.restore_for_inference(workdir, "finetuned")
    return restored.variables["params"], restored.step


def test_resume_is_bitwise_identical(pretrained, straight, tmp_path):
    workdir, config = pretrained
    resumed = copy_run(workdir, tmp_path, "r")
    first = finetune.finetune(with_finetune(config, num_steps=2), resumed, progress=False)
    assert first["step"] == 2
    second = finetune.finetune(with_finetune(config), resumed, progress=False)
    assert second["step"] == 4
    (a, step_a), (b, step_b) = finetuned_params(straight[0]), finetuned_params(resumed)
    assert step_a == step_b == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    def train_records(w):
        path = os.path.join(workdir_lib.finetune_dir(w), "metrics.jsonl")
        return {r["step"]: (r["reward"], r["kl"], r["loss"])
                for r in reporting.read_metrics(path) if r["kind"] == "train"}  # fmt: skip

    assert train_records(straight[0]) == train_records(resumed)


def test_run_writes_curves_moves_the_policy_and_keeps_the_pretrained_model(pretrained, straight):
    workdir, summary = straight
    folder = workdir_lib.finetune_dir(workdir)
    for name in ("metrics.jsonl", "learning_curve.png", "finetune_summary.json", "config.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    records = reporting.read_metrics(os.path.join(folder, "metrics.jsonl"))
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [r["step"] for r in valid] == [0, 2, 4]
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # step 0: the policy is the model
    assert train[-1]["kl"] > 0.0  # ...and the updates moved it
    assert {"reward_in_key", "reward_no_stuck_runs", "real_nll"} <= set(train[0])
    assert summary["base_step"] == 4 and summary["step"] == 4
    # the pretrained checkpoints are untouched; "best" still restores them
    assert workdir_lib.checkpoint_steps(workdir) == workdir_lib.checkpoint_steps(pretrained[0])
    base = workdir_lib.restore_for_inference(workdir, "best")
    assert base.source == "pretrained"
    tuned, step = finetuned_params(workdir)
    assert any(
        not np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(base.variables["params"]), jax.tree.leaves(tuned),
                        strict=True)
    )  # fmt: skip


def test_resume_refuses_a_changed_recipe(pretrained, straight):
    workdir, config = straight[0], pretrained[1]
    with pytest.raises(workdir_lib.WorkdirError, match="finetune.kl_beta"):
        finetune.finetune(with_finetune(config, kl_beta=2.0, num_steps=6), workdir)
    match = config_lib.MatchWeights(polyphony=0.5)  # a nested field: named on its own
    with pytest.raises(workdir_lib.WorkdirError, match=r"finetune.match.polyphony: 0.75 -> 0.5\)"):
        finetune.finetune(with_finetune(config, match=match, num_steps=6), workdir)
    with pytest.raises(config_lib.ConfigError, match=r"finetune.match.mean_ioi=-1.0: must be >= 0"):
        config_lib.validate(with_finetune(config, match=config_lib.MatchWeights(mean_ioi=-1.0)))


def test_generate_from_the_finetuned_checkpoint_says_which_model(straight):
    workdir = straight[0]
    # num_steps differs from test_workdir.py's generate, whose compile count must not depend on
    # whether this test ran first in the same process.
    overrides = {"checkpoint": "finetuned:2", "num_steps": 11}
    result = generate.generate(workdir, seed=3, overrides=overrides)
    assert result["out_dir"] == os.path.join(workdir_lib.finetune_dir(workdir), "samples")
    with open(os.path.join(result["out_dir"], "samples.json")) as f:
        saved = json.load(f)
    assert saved["settings"]["model"] == "finetuned (step 2)"
    assert all(s["model"] == "finetuned (step 2)" for s in saved["samples"])
    with open(result["index"]) as f:
        assert "finetuned (step 2)" in f.read()
    with pytest.raises(workdir_lib.WorkdirError, match="no checkpoint at step 3"):
        workdir_lib.restore_for_inference(workdir, "finetuned:3")


def test_evaluate_scores_the_checkpoint_asked_for(straight):
    workdir = straight[0]
    tuned = evaluate.evaluate(workdir, progress=False, checkpoint="finetuned:4")
    base = evaluate.evaluate(workdir, progress=False)
    assert tuned["checkpoint_step"] == 4 and base["overall"]["tokens"] == tuned["overall"]["tokens"]
    assert tuned["overall"]["nll_nats"] != base["overall"]["nll_nats"]  # another model scored


def test_finetune_without_checkpoints_is_a_clear_error(tmp_path):
    with pytest.raises(workdir_lib.WorkdirError, match="config.json: missing"):
        finetune.finetune(with_finetune(tiny_config()), str(tmp_path))
