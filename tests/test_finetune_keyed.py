"""--mode=finetune of a key-conditioned model: every update's rows are asked for a key (drawn
per step, or finetune.key), the [X; M] vectors the sampler fed reach every forward pass, in_key
scores in the requested key, and a resumed run reproduces an uninterrupted one bit for bit."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest
from conftest import melody_corpus, small_run_config

from jaxcomposer import config_lib, workdir_lib
from jaxcomposer.core.errors import UsageError
from jaxcomposer.finetune import loop as finetune
from jaxcomposer.model import conditioning
from jaxcomposer.music import keys
from jaxcomposer.train import loop, reporting

FINETUNE = dict(batch_size=3, num_tokens=20, num_steps=4, eval_every=2, log_every=1,
                alpha=0.5, alpha_batch_size=3, learning_rate=1e-3, kl_beta=0.5)  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    corpus = melody_corpus(tmp_path_factory.mktemp("midi"))
    config = small_run_config(
        corpus, tmp_path_factory.mktemp("cache"), model={"condition": "key"},
        train={"num_steps": 2},
    )  # fmt: skip
    workdir = str(tmp_path_factory.mktemp("run"))
    loop.train(config, workdir, progress=False)
    return workdir, config


def run(pretrained, tmp_path, name, monkeypatch=None, **fields):
    workdir, config = pretrained
    target = str(tmp_path / name)
    if not os.path.isdir(target):
        shutil.copytree(workdir, target)
    config = config_lib.replace(config, finetune={**FINETUNE, **fields})
    return target, finetune.finetune(config, target, progress=False)


def record(monkeypatch):
    """Records what each update sampled (tokens, cond, keys) and the keys the rewards got."""
    seen = {"samples": [], "reward_keys": [], "update_cond": []}
    sample, score, make_update = finetune._Run.sample, finetune.rewards.score, finetune.make_update

    def sample_spy(self, params, step):
        out = sample(self, params, step)
        seen["samples"].append(out)
        return out

    def score_spy(notes, weights, context, *, key=None, user=None):
        seen["reward_keys"].append(key)
        return score(notes, weights, context, key=key, user=user)

    def make_update_spy(*args, **kwargs):
        update = make_update(*args, **kwargs)

        def wrapped(state, tokens, totals, real_batch, cond=None):
            seen["update_cond"].append((cond, real_batch.get("cond_BxLxC")))
            return update(state, tokens, totals, real_batch, cond)

        return wrapped

    monkeypatch.setattr(finetune._Run, "sample", sample_spy)
    monkeypatch.setattr(finetune.rewards, "score", score_spy)
    monkeypatch.setattr(finetune, "make_update", make_update_spy)
    return seen


def test_requested_keys_reach_the_vectors_and_the_in_key_reward(pretrained, tmp_path, monkeypatch):
    seen = record(monkeypatch)
    run(pretrained, tmp_path, "named", key="D minor;F major", num_steps=2)
    spec = conditioning.Spec("key")
    wanted = np.array([keys.parse_key("D minor"), keys.parse_key("F major")] * 2)[:3]
    assert len(seen["samples"]) == 2
    for tokens, cond, keys_B in seen["samples"]:
        np.testing.assert_array_equal(keys_B, wanted)  # used in turn, every update
        assert cond.shape == (*tokens.shape, spec.dim)
        # one key per row from bar 1: every input (BOS included) carries its one-hot
        by_hand = np.zeros((3, spec.dim), np.float32)
        by_hand[np.arange(3), wanted % 12] = 1.0
        by_hand[np.arange(3), 12 + wanted // 12] = 1.0
        np.testing.assert_array_equal(cond, np.broadcast_to(by_hand[:, None], cond.shape))
    assert seen["reward_keys"] == [int(k) for k in wanted] * 2
    for (cond, real_cond), (_, sampled, _) in zip(seen["update_cond"], seen["samples"],
                                                  strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(cond), sampled)
        assert real_cond is not None and real_cond.shape[-1] == spec.dim
        assert set(np.unique(np.asarray(real_cond))) <= {0.0, 1.0}


def test_drawn_keys_follow_the_bar_counter_and_resume_bitwise(pretrained, tmp_path, monkeypatch):
    seen = record(monkeypatch)
    straight, summary = run(pretrained, tmp_path, "straight")
    assert summary["step"] == 4
    resumed, first = run(pretrained, tmp_path, "resumed", num_steps=2)
    assert first["step"] == 2
    run(pretrained, tmp_path, "resumed")
    # the draws are a pure function of the step: steps 0-1 and 2-3 again in the resumed run
    draws = [s[2].tolist() for s in seen["samples"]]
    assert draws[4:] == draws[:4]
    spec = conditioning.Spec("key")
    counter = finetune.workdir_lib.restore_for_inference(straight, "best").tokenizer.bar_counter()
    training_keys = {keys.parse_key(name) for name in _manifest_keys(straight)}
    assert training_keys
    for tokens, cond, keys_B in seen["samples"][:4]:
        assert set(keys_B.tolist()) <= training_keys
        fed = np.concatenate([np.full((len(tokens), 1), finetune.BOS), tokens[:, :-1]], axis=1)
        for row, row_cond, key in zip(fed, cond, keys_B, strict=True):
            bars = counter.bars(row)
            assert bars.min() >= 1
            expected = conditioning.vector(spec, np.full(bars.shape, key))
            np.testing.assert_array_equal(row_cond, expected)

    def params(w):
        return jax.tree.leaves(workdir_lib.restore_for_inference(w, "finetuned").variables)

    for x, y in zip(params(straight), params(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    def train_records(w):
        path = os.path.join(workdir_lib.finetune_dir(w), "metrics.jsonl")
        return {r["step"]: (r["reward"], r["kl"], r["loss"], r["real_nll"])
                for r in reporting.read_metrics(path) if r["kind"] == "train"}  # fmt: skip

    assert train_records(straight) == train_records(resumed)


def _manifest_keys(workdir):
    from jaxcomposer.data import dataset

    return set(dataset.key_counts(workdir_lib.read_manifest(workdir)))


def test_a_key_schedule_is_refused_in_one_line(pretrained, tmp_path):
    with pytest.raises(UsageError, match="finetune.key") as info:
        run(pretrained, tmp_path, "schedule", key="1:C major,3:G major")
    assert "\n" not in str(info.value)
