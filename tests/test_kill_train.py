"""Kill -9 at any moment (launch/kill_train.py, three kills here): every resume succeeds, no
finished checkpoint folder is ever broken, and the final parameters equal an uninterrupted run's
bit for bit. Also the training lock: a second trainer of one workdir is refused, naming the
first, and a killed holder leaves nothing stuck."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import signal
import subprocess
import sys
import time

import midi_factory as mf
import pytest

from jaxcomposer import workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("kill_train", ROOT / "launch" / "kill_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_three_kills_resume_to_the_same_bits(tmp_path):
    corpus = tmp_path / "midi"
    corpus.mkdir()
    for i in range(4):
        mf.simple_file(corpus / f"m{i}.mid", mf.melody(i, length=80), qpm=90)
    script = load_script()
    # Kills inside a save (a finished checkpoint already on disk) and right after one finishes.
    summary = script.run(
        script.build_parser().parse_args(
            [f"--midi_dir={corpus}", f"--tmp_root={tmp_path}", "--kills=3", "--steps=12",
             "--checkpoint_every=2", "--eval_every=4", "--modes=in_save,finalize"]
        )
    )  # fmt: skip
    assert summary["failures"] == [] and summary["ok"]
    assert summary["kills"] == 3 and summary["failed_resumes"] == 0
    assert summary["resumes"] >= 3  # every kill came after a checkpoint, so each run resumed
    assert summary["bad_checkpoints"] == 0
    assert summary["bitwise_equal_episodes"] == summary["episodes"] >= 1


def test_a_second_trainer_is_refused_naming_the_first(tmp_path):
    workdir = str(tmp_path / "run")
    with workdir_lib.train_lock(workdir) as holder:
        with pytest.raises(workdir_lib.WorkdirBusyError) as err:
            with workdir_lib.train_lock(workdir):
                pass
        message = str(err.value)
        assert f"pid {holder['pid']}" in message and holder["host"] in message
        assert holder["started"] in message
    with workdir_lib.train_lock(workdir):  # released on exit
        pass


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    workdir = str(tmp_path / "run")
    code = (
        "import sys, time; from jaxcomposer import workdir_lib\n"
        f"with workdir_lib.train_lock({workdir!r}):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(workdir_lib.WorkdirBusyError, match=f"pid {proc.pid} "):
            with workdir_lib.train_lock(workdir):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 5
    while True:  # the kernel drops the dead holder's lock
        try:
            with workdir_lib.train_lock(workdir) as holder:
                assert holder["pid"] == os.getpid()
            break
        except workdir_lib.WorkdirBusyError:
            assert time.time() < deadline
            time.sleep(0.05)
