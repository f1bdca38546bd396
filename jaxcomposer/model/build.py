"""Models from the config, and the step function that sampling and evaluation run."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax

from jaxcomposer.config_lib import ModelConfig
from jaxcomposer.model import stack
from jaxcomposer.model.anticipation import AnticipationLM
from jaxcomposer.model.baseline import KerasBaseline
from jaxcomposer.model.lm import ComposerLM


def build_model(config: ModelConfig, vocab_size: int, cond_dim: int = 0) -> nn.Module:
    """The model named by config.kind ("lstm" | "seed_replica"); `cond_dim` > 0 (the lstm only)
    makes it read a conditioning vector of that width at every step; config.constraint_encoder_size
    > 0 adds the Anticipation-RNN constraint encoder (model/anticipation.py)."""
    stack.compute_dtype(config)  # validates config.dtype early, with a clear message
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if config.kind == "lstm" and config.constraint_encoder_size > 0:
        return AnticipationLM(config, vocab_size, cond_dim)
    if config.kind == "lstm":
        return ComposerLM(config, vocab_size, cond_dim)
    if cond_dim:
        raise ValueError(f"model.condition needs model.kind 'lstm', got {config.kind!r}")
    if config.kind == "seed_replica":
        return KerasBaseline(config, vocab_size)
    raise ValueError(f"model.kind must be 'lstm' or 'seed_replica', got {config.kind!r}")


@dataclasses.dataclass(frozen=True)
class StepFunction:
    """`step(variables, tokens_BxL, carry[, cond_BxLxC[, ahead_BxLxE]]) -> (logits_BxLxV float32,
    carry)`: the model's apply in inference mode, the one step function that sampling and
    evaluation run. `ahead_BxLxE` (models with a constraint encoder, `reads_constraints`) is the
    encoder's output for these positions (`encode`); without it the model reads "no constraint".

    It compares and hashes by the model's value (its config and vocabulary size), so jitted
    samplers that take it as a static argument compile once per model shape: a second
    `generate()` in the same process reuses the compiled code instead of retracing.
    """

    model: nn.Module

    def __call__(
        self,
        variables,
        tokens_BxL: jax.Array,
        carry: stack.Carry | None = None,
        cond_BxLxC: jax.Array | None = None,
        ahead_BxLxE: jax.Array | None = None,
    ) -> tuple[jax.Array, stack.Carry]:
        if ahead_BxLxE is not None:
            return self.model.apply(
                variables, tokens_BxL, carry, train=False, cond_BxLxC=cond_BxLxC,
                ahead_BxLxE=ahead_BxLxE,
            )  # fmt: skip
        if cond_BxLxC is None:
            return self.model.apply(variables, tokens_BxL, carry, train=False)
        return self.model.apply(variables, tokens_BxL, carry, train=False, cond_BxLxC=cond_BxLxC)

    @property
    def reads_constraints(self) -> bool:
        """Whether the model has a constraint encoder (it then reads `ahead_BxLxE`)."""
        return isinstance(self.model, AnticipationLM)

    def encode(self, variables, constraints_BxL) -> jax.Array:
        """float32 (B, L, E): the constraint encoder's output for rows int (B, L) (FREE = -1
        where not given), aligned with the targets (model/anticipation.py)."""
        return self.model.apply(variables, constraints_BxL, method="encode")
