"""A tiny model and short run for tests and smoke runs (seconds on 2 CPU cores)."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.data.max_pieces = 24  # files
    c.model.embed_dim = 16
    c.model.hidden_size = 32
    c.model.num_layers = 2
    c.model.dropout = 0.0
    c.train.batch_size = 8
    c.train.seq_len = 32
    c.train.num_steps = 40
    c.train.warmup_steps = 5
    c.train.eval_every = 20
    c.train.eval_batches = 2
    c.train.checkpoint_every = 20
    c.train.log_every = 10
    c.sample.num_steps = 64
    c.sample.num_samples = 2
    return c
