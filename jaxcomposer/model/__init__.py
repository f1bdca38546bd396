"""Token language models: the LSTM, the models built on it, their loss and step function."""

from jaxcomposer.model.baseline import KerasBaseline
from jaxcomposer.model.build import StepFunction, build_model
from jaxcomposer.model.lm import ComposerLM
from jaxcomposer.model.stack import Carry, initial_carry

__all__ = [
    "Carry",
    "ComposerLM",
    "KerasBaseline",
    "StepFunction",
    "build_model",
    "initial_carry",
]
