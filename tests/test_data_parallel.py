"""Data parallelism: 4 forced CPU devices train exactly like one device (same losses to 1e-5).

XLA_FLAGS must be set before jax starts, so each device count runs in its own subprocess; both
run the whole `loop.fit` path (sharded batches, replicated state, checkpoints)."""

from __future__ import annotations

import textwrap

import numpy as np
from conftest import result_of, start_python

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    devices, workdir = int(sys.argv[1]), sys.argv[2]
    import jax
    import numpy as np
    from configs import tiny
    from jaxcomposer import config_lib, workdir_lib
    from jaxcomposer.train import reporting
    from jaxcomposer.train import loop
    from jaxcomposer.train import train_step
    from jaxcomposer.data.dataset import TokenSplit
    from jaxcomposer.tokenizers import get_tokenizer

    assert len(jax.devices()) == devices, jax.devices()
    config = config_lib.replace(
        config_lib.freeze(tiny.get_config()),
        model={"dropout": 0.1, "num_layers": 1},  # one layer: a quicker compile
        # grammar_mask_loss: the grammar states travel sharded with the batch too.
        train=dict(num_steps=6, eval_every=3, checkpoint_every=3, log_every=1, eval_batches=2,
                   grammar_mask_loss=True),
    )
    vocab_size = get_tokenizer(config.tokenizer).vocab.size
    def split(seed, lengths):
        rng = np.random.default_rng(seed)
        bodies = [rng.integers(3, vocab_size, size=n) for n in lengths]
        return TokenSplit.from_pieces([str(i) for i in range(len(lengths))], bodies)
    train_split, valid_split = split(0, [200, 90, 25]), split(1, [120, 30])
    summary = loop.fit(config, workdir, train_split, valid_split, progress=False)
    records = reporting.read_metrics(workdir_lib.metrics_path(workdir))
    try:
        train_step.make_mesh(6)
        divisible_error = ""
    except ValueError as e:
        divisible_error = str(e)
    print("RESULT " + json.dumps({
        "devices": summary["devices"],
        "train": [r["loss"] for r in records if r["kind"] == "train"],
        "grad_norm": [r["grad_norm"] for r in records if r["kind"] == "train"],
        "valid": [r["loss"] for r in records if r["kind"] == "valid"],
        "divisible_error": divisible_error,
    }))
    """
)


def run_with(devices: int, workdir: str):
    return start_python(SCRIPT, devices, workdir, devices=devices)


def test_four_devices_match_one_device(tmp_path):
    one, four = run_with(1, str(tmp_path / "one")), run_with(4, str(tmp_path / "four"))
    single, sharded = result_of(one), result_of(four)
    assert (single["devices"], sharded["devices"]) == (1, 4)
    assert len(single["train"]) == 6 and len(single["valid"]) == 2
    for key in ("train", "grad_norm", "valid"):
        np.testing.assert_allclose(sharded[key], single[key], rtol=0, atol=1e-5)
    assert single["divisible_error"] == ""  # 6 windows fit one device
    assert (
        "batch_size=6 must be divisible by the number of devices (4" in sharded["divisible_error"]
    )
