"""Helpers shared by the tests: tiny configs, random token splits, the shared corpora's path, and
a compile counter that observes jax from outside (jax_log_compiles), not from inside the core."""

from __future__ import annotations

import contextlib
import logging
import pathlib
from collections.abc import Iterator

import jax
import numpy as np

from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.data.dataset import TokenSplit

# ../shared beside the repository: real corpora; tests that need them skip when it is absent.
SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def tiny_config(**sections) -> config_lib.Config:
    """configs/tiny.py, frozen, with `section={field: value}` replacements."""
    return config_lib.replace(config_lib.freeze(tiny.get_config()), **sections)


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
