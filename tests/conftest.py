"""Helpers shared by the tests: tiny configs, random token splits, the shared corpora's path, and
a compile counter that observes jax from outside (jax_log_compiles), not from inside the core."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
from collections.abc import Iterator

import jax
import midi_factory as mf
import numpy as np

from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.data.dataset import TokenSplit

REPO = pathlib.Path(__file__).resolve().parents[1]
# ../shared beside the repository: real corpora; tests that need them skip when it is absent.
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_config(**sections) -> config_lib.Config:
    """configs/tiny.py, frozen, with `section={field: value}` replacements."""
    return config_lib.replace(config_lib.freeze(tiny.get_config()), **sections)


def melody_corpus(folder: pathlib.Path, count: int = 4) -> pathlib.Path:
    """`count` short melodies (midi_factory) written as MIDI files into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        mf.simple_file(folder / f"m{i}.mid", mf.melody(i), qpm=90)
    return folder


def small_run_config(corpus, cache, **sections) -> config_lib.Config:
    """The tiny config on `corpus`: 4 steps, validation and checkpoints every 2 (`sections`
    replace fields, e.g. model={"condition": "key"})."""
    base = {
        "data": {"midi_dir": str(corpus), "cache_dir": str(cache), "num_workers": 1},
        "train": {"num_steps": 4, "eval_every": 2, "checkpoint_every": 2, "log_every": 2},
    }
    for name, fields in sections.items():
        base[name] = {**base.get(name, {}), **fields}
    return tiny_config(**base)


def random_split(seed: int, lengths: list[int], vocab_size: int) -> TokenSplit:
    """Pieces of uniformly random non-special tokens, one per length."""
    rng = np.random.default_rng(seed)
    bodies = [rng.integers(3, vocab_size, size=n).astype(np.int32) for n in lengths]
    return TokenSplit.from_pieces([f"piece{i}" for i in range(len(lengths))], bodies)


class _CompileLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.names.append(message.split()[1])  # e.g. 'jit(train_step)'


@contextlib.contextmanager
def count_compiles() -> Iterator[list[str]]:
    """Yields the list of jit compiles (as 'jit(name)') made inside the block."""
    handler = _CompileLog()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            yield handler.names
    finally:
        logger.removeHandler(handler)


# --- subprocesses with forced CPU devices (XLA_FLAGS must be set before jax starts) -----------
def start_python(
    script: str, *args: str, devices: int = 1, env: dict | None = None
) -> subprocess.Popen:
    """`python -c script args...` from the repository root on `devices` forced CPU devices (with
    `env` added); the script prints its result as one line `RESULT <json>` (see `result_of`)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", **(env or {}))
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def result_of(process: subprocess.Popen, timeout: float = 300) -> dict:
    """The RESULT json of a `start_python` process; kills it after `timeout` seconds (a
    distributed peer that never arrives makes jax abort only after minutes)."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"timed out after {timeout} s: {err[-3000:]}") from None
    assert process.returncode == 0, err[-3000:]
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def free_port() -> int:
    """A TCP port nobody listens on now (bound once by the OS, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
