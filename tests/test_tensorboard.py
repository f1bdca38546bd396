"""train.tensorboard: TensorBoard event files beside metrics.jsonl (tensorboardX, an extra).

The event files are read back with their own format (TFRecord framing, tensorboardX's Event
protobuf) and compared with metrics.jsonl, which the loop writes by another path."""

from __future__ import annotations

import glob
import os
import struct
import sys

import numpy as np
import pytest
from conftest import random_split, tiny_config

from jaxcomposer import workdir_lib
from jaxcomposer.tokenizers import get_tokenizer
from jaxcomposer.train import loop, reporting

TRAIN = dict(
    lr_schedule="constant", eval_every=5, checkpoint_every=5, log_every=5, eval_batches=1,
    tensorboard=True,
)  # fmt: skip


def read_events(folder: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in folder's event files, in file order, each file's
    purge (a SessionLog START at step P) dropping earlier values at steps >= P, as TensorBoard
    does. TFRecord framing: uint64 length, uint32 crc, payload, uint32 crc."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                for values in scalars.values():
                    for step in [s for s in values if s >= event.step]:
                        del values[step]
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_event_files_hold_the_metrics_of_a_run_and_its_resumption(tmp_path):
    pytest.importorskip("tensorboardX")
    vocab_size = get_tokenizer(tiny_config().tokenizer).vocab.size
    splits = random_split(0, [200, 90, 140], vocab_size), random_split(1, [120, 30], vocab_size)
    workdir = str(tmp_path)
    loop.fit(tiny_config(train={**TRAIN, "num_steps": 10}), workdir, *splits)
    loop.fit(tiny_config(train={**TRAIN, "num_steps": 15}), workdir, *splits)  # resumes at 10
    assert len(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))) == 2
    scalars = read_events(workdir)
    records = reporting.read_metrics(workdir_lib.metrics_path(workdir))
    for kind, field in (("train", "loss"), ("train", "accuracy"), ("valid", "loss")):
        expected = {r["step"]: r[field] for r in records if r["kind"] == kind}
        assert sorted(expected) == [5, 10, 15]
        got = scalars[f"{kind}/{field}"]
        assert sorted(got) == sorted(expected)
        np.testing.assert_allclose([got[s] for s in expected], list(expected.values()), rtol=1e-6)
    assert "train/learning_rate" in scalars and "valid/best_val_loss" in scalars


def test_a_resumed_run_purges_the_later_steps_of_the_earlier_attempt(tmp_path):
    pytest.importorskip("tensorboardX")
    # An attempt logged steps 5, 10 and 15 and died; its last checkpoint was at 5: the next
    # attempt starts after 5 and its values replace those after 5 (as read_metrics keeps them).
    log = reporting.TensorBoardLog.open(str(tmp_path))
    log.write({"kind": "start", "step": 0})
    for step, loss in ((5, 3.0), (10, 2.0), (15, 1.0)):
        log.write({"kind": "train", "step": step, "loss": loss, "note": "text", "ok": True})
    log.close()
    log.write({"kind": "start", "step": 5})
    log.write({"kind": "train", "step": 10, "loss": 2.5, "grad_norm": None})
    log.close()
    assert read_events(str(tmp_path)) == {"train/loss": {5: 3.0, 10: 2.5}}


def test_without_tensorboardx_one_warning_and_metrics_only(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails
    assert reporting.TensorBoardLog.open("unused") is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: train.tensorboard: tensorboardX")


def test_fine_tuning_writes_its_own_event_files(tmp_path):
    pytest.importorskip("tensorboardX")
    from conftest import melody_corpus, small_run_config

    from jaxcomposer import config_lib
    from jaxcomposer.finetune import loop as finetune

    config = small_run_config(melody_corpus(tmp_path / "midi"), tmp_path / "cache")
    workdir = str(tmp_path / "run")
    loop.train(config, workdir, progress=False)  # without train.tensorboard: no event file
    assert not glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    tuned = config_lib.replace(
        config, train={"tensorboard": True},
        finetune=dict(batch_size=2, num_tokens=16, num_steps=2, eval_every=1, log_every=1,
                      alpha_batch_size=2),
    )  # fmt: skip
    finetune.finetune(tuned, workdir, progress=False)
    folder = workdir_lib.finetune_dir(workdir)
    scalars = read_events(folder)
    records = reporting.read_metrics(os.path.join(folder, workdir_lib.METRICS_FILE))
    for kind in ("train", "valid"):
        expected = {r["step"]: r["loss"] for r in records if r["kind"] == kind and "loss" in r}
        assert expected and scalars[f"{kind}/loss"].keys() == expected.keys()
        np.testing.assert_allclose(
            [scalars[f"{kind}/loss"][s] for s in expected], list(expected.values()), rtol=1e-6
        )
    assert any(tag.startswith("train/reward_") for tag in scalars)
