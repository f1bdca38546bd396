"""A folder of your own piano MIDI files: the recipe measured on the 92-file corpus (docs/piano.md).

    python -m jaxcomposer.main --config=configs/piano.py --config.data.midi_dir=my_midi/ \
        --workdir=runs/mine [--config.train.budget_minutes=60]

default.py's recipe (event tokens, every-position loss, AdamW, warmup + cosine, transposition)
with the model size and conditioning that the learning curves in docs/piano.md favour at one
core-hour, a time budget that sets the number of steps (measured after compilation; the chosen
steps are written to config.json, so a resumed run keeps them), and early stopping on the
validation loss with the best checkpoints kept. A separate file rather than a change to
default.py: seed_replica, quick and jsb are built on default.py and must not move with it.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model.embed_dim = 128  # units (docs/piano.md: the smaller model is ahead at one core-hour)
    c.model.hidden_size = 256  # units per layer
    c.model.num_layers = 2
    c.model.dropout = 0.1  # rate
    c.model.condition = "key"  # key vector at every step (labels from the files or estimated)
    c.model.condition_logits = True  # ... and a learned per-key bias on the logits
    c.train.learning_rate = 3e-3  # peak
    c.train.warmup_steps = 100  # steps (budget.py caps it at a tenth of the chosen steps)
    c.train.budget_minutes = 60.0  # minutes of training: num_steps is chosen to fit them
    c.train.eval_every = 100  # steps
    c.train.checkpoint_every = 100  # steps
    c.train.early_stop_patience = 5  # validation passes without improvement (500 steps)
    c.train.keep_best = 2  # best checkpoints kept besides the latest
    c.sample.num_bars = 16  # bars per sample
    c.sample.top_p = 0.9
    c.sample.scale = "soft"  # out-of-scale pitches cost sample.scale_penalty nats
    return c
