"""The README's main job: a small model trained for five minutes on 2 CPU cores, then samples.

Same recipe as default.py (every-position loss, AdamW, warmup + cosine, transposition), smaller
and shorter so a first run finishes quickly on a laptop, with the representation that won the
harmony levers (docs/harmony.md): four-part voice tokens in the manner of DeepBach (one token per
voice per eighth-note step, soprano first, each voice its own NOTE/HOLD/REST tokens), which halve
the gap in chord share and remove the clusters of seconds that event tokens write. The number of
steps is chosen to fit the five minutes (train.budget_minutes: measured after compilation, so the
cosine schedule runs to its end on any machine). Conditioned on the key (the vector at the input
and as a bias on the logits), with its four samples in two major and two minor keys under the
soft scale rule.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.tokenizer.name = "voices"  # soprano, alto, tenor, bass: one token per voice per step
    c.tokenizer.steps_per_beat = 2  # eighth notes: twice the context per token of sixteenths
    c.tokenizer.per_voice_tokens = True  # each voice its own pitch range and NOTE/HOLD/REST
    c.model.embed_dim = 128  # units
    c.model.hidden_size = 256  # units per layer
    c.model.num_layers = 2
    c.model.dropout = 0.1  # rate
    c.model.condition = "key"  # the paper's [X; M]: the key vector at every step
    c.model.condition_logits = True  # ... and a learned per-key bias on the logits
    c.train.batch_size = 32  # windows
    c.train.seq_len = 128  # tokens
    c.train.num_steps = 1500  # steps (replaced by the budget's choice, recorded in config.json)
    c.train.learning_rate = 3e-3  # peak
    c.train.warmup_steps = 100  # steps
    c.train.eval_every = 250  # steps
    c.train.checkpoint_every = 250  # steps
    c.train.log_every = 50  # steps
    c.train.budget_minutes = 5.0  # minutes: num_steps chosen so warmup and decay fit them
    c.sample.num_samples = 4
    c.sample.num_bars = 16  # bars per sample
    c.sample.top_p = 0.95  # 0.9 cuts the moving tail and keeps HOLD: too few eighths (harmony.md)
    c.sample.key = "C major;A minor;Eb major;E minor"  # one key per sample, in turn
    c.sample.scale = "soft"  # out-of-scale pitches cost sample.scale_penalty nats
    return c
