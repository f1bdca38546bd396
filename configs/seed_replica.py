"""The original Classical-Piano-Composer model, for comparison (see README).

chord tokens; input = token / vocab_size, one scalar per step; LSTM(512, recurrent dropout 0.3)
x3 returning only the last step; BatchNorm; Dropout 0.3; Dense 256; ReLU; BatchNorm; Dropout 0.3;
Dense(vocab); softmax; RMSprop; windows of 100, batch 128, one target per window; early stopping
after 5 epochs without improvement.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.tokenizer.name = "chord"
    c.tokenizer.chord_durations = False
    c.model.kind = "seed_replica"
    c.model.hidden_size = 512  # units
    c.model.num_layers = 3
    c.model.dropout = 0.3  # rate
    c.model.recurrent_dropout = 0.3  # rate
    c.model.dense_size = 256  # units
    c.model.hoist_input_projection = False  # input is one scalar per step
    c.train.optimizer = "rmsprop"
    c.train.learning_rate = 1e-3  # Keras RMSprop default
    c.train.warmup_steps = 0
    c.train.lr_schedule = "constant"
    c.train.weight_decay = 0.0
    c.train.grad_clip_norm = 0.0
    c.train.batch_size = 128  # windows
    c.train.seq_len = 100  # notes per window
    c.train.loss_on_last_only = True
    c.train.transpose_semitones = 0
    c.train.num_steps = 200 * 650  # ~200 epochs of the 92-file corpus (~83k windows / 128)
    c.train.eval_every = 650  # ~one epoch of windows
    c.train.early_stop_patience = 5  # epochs
    c.train.checkpoint_every = 650
    c.sample.decoder = "argmax"
    c.sample.primer = "valid"
    c.sample.primer_tokens = 100
    c.sample.grammar_mask = False
    return c
