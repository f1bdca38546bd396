"""Tokenizers: `get_tokenizer(config.tokenizer)` returns one by name."""

from __future__ import annotations

from jaxcomposer.config_lib import CHOICES, TokenizerConfig
from jaxcomposer.tokenizers.base import (
    Decoded,
    EncodingError,
    Tokenizer,
    TranspositionError,
)
from jaxcomposer.tokenizers.vocab import BOS, EOS, PAD, Vocab

NAMES = CHOICES["tokenizer.name"]


def get_tokenizer(config: TokenizerConfig) -> Tokenizer:
    if config.name == "chord":
        from jaxcomposer.tokenizers.chord import ChordTokenizer as cls
    elif config.name == "frame":
        from jaxcomposer.tokenizers.frame import FrameTokenizer as cls
    elif config.name == "event":
        from jaxcomposer.tokenizers.event import EventTokenizer as cls
    elif config.name == "performance":
        from jaxcomposer.tokenizers.performance import PerformanceTokenizer as cls
    elif config.name == "voices":
        from jaxcomposer.tokenizers.voices import VoicesTokenizer as cls
    else:
        raise ValueError(f"unknown tokenizer {config.name!r}; choose one of {NAMES}")
    return cls(config)


__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "NAMES",
    "Decoded",
    "EncodingError",
    "Tokenizer",
    "TranspositionError",
    "Vocab",
    "get_tokenizer",
]
