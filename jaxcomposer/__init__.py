"""jaxcomposer: learn music from MIDI files with a scan LSTM in JAX/Flax."""

__version__ = "0.1.0"
