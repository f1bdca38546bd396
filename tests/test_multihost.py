"""Multi-host training and portable checkpoints, on one machine.

Two processes on localhost (each with 2 forced CPU devices, jax.distributed over gloo) train the
tiny model exactly like one process with 4 devices: the same losses and final parameters within
1e-5, one metrics.jsonl, and a 2-process resume that continues the run. The checkpoints they
write are portable: a 4-device checkpoint resumes on 2 devices and restores on 1 for sampling.

Runs (each a subprocess, since XLA_FLAGS and jax.distributed must be set before jax starts):
  A  1 process x 4 devices, steps 0-6                 the reference
  B  2 processes x 2 devices, steps 0-3, then 3-6     multi-host + resume
  C  1 process x 2 devices, resumes B's step 3 to 6   a 4-device checkpoint on 2 devices
then A's, B's and C's checkpoints are restored on this process's 1 device and A's samples a piece.
"""

from __future__ import annotations

import functools
import json
import shutil
import textwrap
import time

import numpy as np
import pytest
from conftest import free_port, result_of, start_python

from jaxcomposer import workdir_lib
from jaxcomposer.train import reporting

SCRIPT = textwrap.dedent(
    """
    import json, sys
    devices, workdir, num_steps, port, nproc, pid = sys.argv[1:]
    from jaxcomposer.train import distributed
    if int(nproc) > 1:  # before anything starts a jax backend
        distributed.initialize("on", f"127.0.0.1:{port}", int(nproc), int(pid),
                               initialization_timeout=60)
    import jax
    import numpy as np
    from configs import tiny
    from jaxcomposer import config_lib
    from jaxcomposer.data.dataset import TokenSplit
    from jaxcomposer.tokenizers import get_tokenizer
    from jaxcomposer.train import loop

    assert jax.local_device_count() == int(devices), jax.local_devices()
    config = config_lib.replace(
        config_lib.freeze(tiny.get_config()),
        model={"dropout": 0.1, "num_layers": 1},  # dropout: the key streams must agree too
        train=dict(num_steps=int(num_steps), eval_every=3, checkpoint_every=3, log_every=1,
                   eval_batches=2),
    )
    vocab_size = get_tokenizer(config.tokenizer).vocab.size
    def split(seed, lengths):
        rng = np.random.default_rng(seed)
        bodies = [rng.integers(3, vocab_size, size=n) for n in lengths]
        return TokenSplit.from_pieces([str(i) for i in range(len(lengths))], bodies)
    summary = loop.fit(config, workdir, split(0, [200, 90, 25]), split(1, [120, 30]),
                       progress=False)
    print("RESULT " + json.dumps({"process": jax.process_index(), "of": jax.process_count(),
                                  "devices": summary["devices"], "step": summary["step"]}))
    """
)
TIMEOUT_S = 180  # outer limit per process: a peer that never arrives aborts jax only later


def run(workdir, num_steps: int, *, devices: int, processes: int = 1, cache=None) -> list:
    """Starts one run (`processes` processes of `devices` CPU devices each); returns handles.
    `cache`: a jax compilation cache folder shared by the runs (the resumed run reuses the
    first's compiled step: a third of this test's time is compiling)."""
    port = free_port() if processes > 1 else 0
    env = {"JAX_COMPILATION_CACHE_DIR": str(cache)} if cache else None
    return [
        start_python(
            SCRIPT, devices, workdir, num_steps, port, processes, pid, devices=devices, env=env
        )
        for pid in range(processes)
    ]


def finish(procs: list) -> list[dict]:
    try:
        return [result_of(p, TIMEOUT_S) for p in procs]
    finally:
        for p in procs:  # a failed peer must not leave the other waiting
            if p.poll() is None:
                p.kill()


def losses(workdir) -> tuple[list, list, list]:
    records = reporting.read_metrics(workdir_lib.metrics_path(str(workdir)))
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] == "valid"]
    return [r["step"] for r in train], [r["loss"] for r in train], [r["loss"] for r in valid]


@functools.cache
def params(workdir) -> list[np.ndarray]:
    """The final parameters, restored on this process's one device (as generate does)."""
    import jax

    restored = workdir_lib.restore_for_inference(str(workdir), "latest")
    assert restored.step == 6
    return [np.asarray(x) for x in jax.tree.leaves(restored.variables["params"])]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    a, b, c, cache = root / "a", root / "b", root / "c", root / "jax_cache"
    started = time.perf_counter()
    ref = run(a, 6, devices=4)
    first = finish(run(b, 3, devices=2, processes=2, cache=cache))
    shutil.copytree(b, c)  # B's 2-host checkpoint at step 3, resumed below on 2 devices
    again = finish(run(b, 6, devices=2, processes=2, cache=cache) + run(c, 6, devices=2))
    results = {"a": finish(ref), "b1": first, "b2": again[:2], "c": again[2:]}
    print(f"multihost runs took {time.perf_counter() - started:.1f} s")
    return {"dirs": {"a": a, "b": b, "c": c}, **results}


def test_two_processes_train_like_one_process_with_four_devices(runs):
    assert runs["a"] == [{"process": 0, "of": 1, "devices": 4, "step": 6}]
    assert [r["process"] for r in runs["b1"]] == [0, 1]
    assert all(r["of"] == 2 and r["devices"] == 4 for r in runs["b1"] + runs["b2"])
    steps_a, train_a, valid_a = losses(runs["dirs"]["a"])
    steps_b, train_b, valid_b = losses(runs["dirs"]["b"])
    assert steps_a == steps_b == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(train_b, train_a, rtol=0, atol=1e-5)
    np.testing.assert_allclose(valid_b, valid_a, rtol=0, atol=1e-5)
    for x, y in zip(params(runs["dirs"]["b"]), params(runs["dirs"]["a"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_only_process_zero_writes_metrics_and_the_resume_continues(runs):
    lines = workdir_lib.metrics_path(str(runs["dirs"]["b"]))
    with open(lines, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    # One "start" per attempt (not per process), each step's line once: one writer.
    assert [r["step"] for r in records if r["kind"] == "start"] == [0, 3]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(r["devices"] == 4 for r in records if r["kind"] == "start")
    assert sorted(workdir_lib.checkpoint_steps(str(runs["dirs"]["b"]))) == [3, 6]
    assert (runs["dirs"]["b"] / "train_summary.json").exists()


def test_a_four_device_checkpoint_resumes_on_two_devices(runs):
    assert runs["c"] == [{"process": 0, "of": 1, "devices": 2, "step": 6}]
    steps_c, train_c, valid_c = losses(runs["dirs"]["c"])
    _, train_a, valid_a = losses(runs["dirs"]["a"])
    assert steps_c == [1, 2, 3, 4, 5, 6]  # 1-3 copied from B, 4-6 computed on 2 devices
    np.testing.assert_allclose(train_c[3:], train_a[3:], rtol=0, atol=1e-5)
    np.testing.assert_allclose(valid_c, valid_a, rtol=0, atol=1e-5)
    for x, y in zip(params(runs["dirs"]["c"]), params(runs["dirs"]["a"]), strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


def test_a_four_device_checkpoint_samples_on_one_device(runs, tmp_path):
    import jax

    from jaxcomposer.sample import generate

    assert jax.device_count() == 1
    out = generate.generate(
        str(runs["dirs"]["a"]), out_dir=str(tmp_path), seed=0,
        overrides={"num_samples": 1, "num_steps": 24, "checkpoint": "latest"},
    )  # fmt: skip
    assert out["index"].endswith("index.html")
