"""A vocabulary is a declared table of named ranges, built from the config, never from data.

Token ids are laid out range after range: PAD, BOS, EOS first, then the tokenizer's ranges, e.g.
`[("PAD", 1), ("BOS", 1), ("EOS", 1), ("FRAME_END", 1), ("NOTE", 88)]`. A token is addressed as
`(range name, index within the range)`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

SPECIAL_RANGES: tuple[tuple[str, int], ...] = (("PAD", 1), ("BOS", 1), ("EOS", 1))
PAD, BOS, EOS = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Vocab:
    tokenizer: str  # tokenizer name, stored so a vocab file says what it belongs to
    ranges: tuple[tuple[str, int], ...]  # (range name, size), in id order
    settings: tuple[tuple[str, Any], ...] = ()  # tokenizer settings that shape the table

    def __post_init__(self):
        if self.ranges[: len(SPECIAL_RANGES)] != SPECIAL_RANGES:
            raise ValueError(f"vocabulary must start with {SPECIAL_RANGES}, got {self.ranges[:3]}")
        names = [n for n, _ in self.ranges]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate range names in {names}")

    @property
    def size(self) -> int:
        return sum(n for _, n in self.ranges)

    def __len__(self) -> int:
        return self.size

    def offset(self, name: str) -> int:
        start = 0
        for range_name, n in self.ranges:
            if range_name == name:
                return start
            start += n
        raise KeyError(f"no range {name!r} in the {self.tokenizer} vocabulary")

    def range_size(self, name: str) -> int:
        return dict(self.ranges)[name]

    def token(self, name: str, index: int = 0) -> int:
        size = self.range_size(name)
        if not 0 <= index < size:
            raise ValueError(f"{name}({index}) is outside the vocabulary range [0, {size})")
        return self.offset(name) + int(index)

    def range_ids(self, name: str) -> np.ndarray:
        return np.arange(self.offset(name), self.offset(name) + self.range_size(name))

    def range_of(self) -> np.ndarray:
        """int array (V,): the position in `ranges` of each token id's range."""
        return np.repeat(np.arange(len(self.ranges)), [n for _, n in self.ranges])

    def index_of(self) -> np.ndarray:
        """int array (V,): each token id's index within its range."""
        return np.concatenate([np.arange(n) for _, n in self.ranges])

    def lookup(self, token: int) -> tuple[str, int]:
        """Token id -> (range name, index); raises ValueError for ids outside the table."""
        token = int(token)
        start = 0
        for name, n in self.ranges:
            if start <= token < start + n:
                return name, token - start
            start += n
        raise ValueError(f"token {token} is outside the vocabulary [0, {self.size})")

    def describe(self, token: int) -> str:
        name, index = self.lookup(token)
        return name if self.range_size(name) == 1 else f"{name}({index})"

    def to_json(self) -> str:
        return json.dumps(
            {
                "tokenizer": self.tokenizer,
                "size": self.size,
                "ranges": [[n, s] for n, s in self.ranges],
                "settings": dict(self.settings),
            },
            indent=2,
        )

    @staticmethod
    def from_json(text: str) -> Vocab:
        d = json.loads(text)
        ranges = tuple((str(n), int(s)) for n, s in d["ranges"])
        settings = tuple(sorted((k, _freeze(v)) for k, v in d.get("settings", {}).items()))
        return Vocab(tokenizer=d["tokenizer"], ranges=ranges, settings=settings)


def _freeze(value: Any) -> Any:
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def make_vocab(tokenizer: str, ranges: list[tuple[str, int]], **settings: Any) -> Vocab:
    return Vocab(
        tokenizer=tokenizer,
        ranges=SPECIAL_RANGES + tuple(ranges),
        settings=tuple(sorted((k, _freeze(v)) for k, v in settings.items())),
    )
