"""The improved model on `event` tokens: every-position loss, AdamW, warmup + cosine, augmentation.

Units are in the comments. Override anything from the command line, e.g.
  python -m jaxcomposer.main --mode=train --config=configs/default.py --config.train.num_steps=500
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # root seed: batches, init, dropout and sampling keys all fold in from it

    c.data = ml_collections.ConfigDict()
    c.data.midi_dir = ""  # "" = the embedded Bach chorales (music21's corpus, offline)
    c.data.valid_dir = ""  # "" = hold out valid_fraction of midi_dir by file name
    c.data.valid_fraction = 0.1  # share of pieces
    c.data.cache_dir = ""  # "" = ~/.cache/jaxcomposer
    c.data.programs = ()  # GM program numbers to keep; () = every non-drum instrument
    c.data.drop_out_of_range_notes = True  # notes outside the pitch range are dropped and counted
    c.data.num_workers = 0  # processes; 0 = one per core (at most 8)
    c.data.max_tracks = 256  # tracks; more marks a file as absurd
    c.data.max_notes = 200_000  # notes
    c.data.max_file_mb = 32.0  # MB (10^6 bytes): a larger file is refused unread
    c.data.max_beats = 50_000.0  # quarter-note beats
    c.data.min_qpm = 1.0  # quarter notes per minute
    c.data.max_qpm = 2_000.0
    c.data.max_pieces = 0  # 0 = all files
    c.data.key_labels_csv = ""  # CSV rows `file, key[, style]` override the key labels

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.name = "event"  # chord | frame | event | performance | voices
    c.tokenizer.steps_per_beat = 4  # grid steps per quarter note (4 = sixteenth notes)
    c.tokenizer.pitch_min = 21  # MIDI pitch (A0)
    c.tokenizer.pitch_max = 108  # MIDI pitch (C8)
    c.tokenizer.mark_onsets = True  # frame: ONSET/HOLD instead of NOTE
    c.tokenizer.max_duration_steps = 32  # grid steps (8 beats at 4 steps per beat)
    c.tokenizer.num_velocity_bins = 0  # event: 0 = no dynamics tokens
    c.tokenizer.max_bar_beats = 8  # event: quarter beats in the longest allowed bar
    c.tokenizer.chord_step_beats = 0.5  # chord: beats between decoded groups (the original's)
    c.tokenizer.chord_durations = False  # chord: DURATION token after each group
    c.tokenizer.perf_steps_per_second = 100  # performance: TIME_SHIFT steps per second (10 ms)
    c.tokenizer.perf_max_shift_steps = 100  # performance: longest TIME_SHIFT (1 s)
    c.tokenizer.perf_velocity_bins = 32  # performance: VELOCITY bins
    c.tokenizer.perf_sustain = True  # performance: sustain pedal lengthens notes (note-seq)
    c.tokenizer.num_voices = 4  # voices: parts per grid step, top first (4 = SATB)
    c.tokenizer.per_voice_tokens = False  # voices: each voice its own NOTE/HOLD/REST tokens

    c.model = ml_collections.ConfigDict()
    c.model.kind = "lstm"
    c.model.embed_dim = 256  # units
    c.model.hidden_size = 512  # units per layer
    c.model.num_layers = 2
    c.model.dropout = 0.2  # rate
    c.model.recurrent_dropout = 0.0  # rate; > 0 costs speed (see README)
    c.model.layer_norm = False
    c.model.tie_embeddings = False
    c.model.hoist_input_projection = True  # see model/lstm.py: measured faster on CPU
    c.model.dense_size = 256  # seed_replica only
    c.model.dtype = "float32"
    c.model.condition = "none"  # none | key | key+style: [X; M] vector at every step
    c.model.condition_logits = False  # conditioned: M also biases the logits (learned M @ W)
    c.model.constraint_encoder_size = 0  # > 0: Anticipation-RNN encoder units (docs/constraints.md)

    c.train = ml_collections.ConfigDict()
    c.train.seed = 0
    c.train.batch_size = 32  # windows per step (all devices together)
    c.train.seq_len = 128  # tokens per window
    c.train.num_steps = 20_000  # optimizer steps
    c.train.optimizer = "adamw"
    c.train.learning_rate = 2e-3  # peak
    c.train.warmup_steps = 200  # steps
    c.train.lr_schedule = "cosine"
    c.train.weight_decay = 1e-4
    c.train.grad_clip_norm = 1.0  # global norm; 0 = off
    c.train.loss_on_last_only = False
    c.train.transpose_semitones = 5  # augmentation: shift in [-5, 5] semitones
    c.train.grammar_mask_loss = False
    c.train.eval_every = 250  # steps
    c.train.eval_batches = 8  # batches per validation pass
    c.train.early_stop_patience = 8  # validation passes without improvement; 0 = never stop
    c.train.checkpoint_every = 250  # steps
    c.train.keep_best = 2  # best checkpoints kept (plus the latest)
    c.train.log_every = 50  # steps
    c.train.max_wall_seconds = 0.0  # seconds; 0 = no limit
    c.train.budget_minutes = 0.0  # > 0: num_steps chosen to fit this many minutes (measured)
    c.train.tensorboard = False  # True: TensorBoard event files too (pip install .[tensorboard])
    # constraint-encoder models: shares of the random constraint rows drawn per training window
    c.train.constraint_mix = ml_collections.ConfigDict(
        {"none": 0.25, "voices": 0.4, "bars": 0.25, "tokens": 0.1}
    )

    c.sample = ml_collections.ConfigDict()
    c.sample.decoder = "temperature"  # argmax | temperature
    c.sample.temperature = 1.0
    c.sample.top_k = 0  # 0 = off
    c.sample.top_p = 0.95  # 1.0 = off
    c.sample.repetition_penalty = 1.0  # 1.0 = off
    c.sample.num_steps = 500  # tokens per sample
    c.sample.num_bars = 0  # > 0: length in bars instead of tokens
    c.sample.num_samples = 4
    c.sample.primer = "none"  # none | valid | path/to/primer.mid
    c.sample.primer_tokens = 64  # tokens of primer
    c.sample.grammar_mask = True
    c.sample.checkpoint = "best"  # best | latest | step number | finetuned[:step]
    c.sample.key = ""  # "D minor" or "1:D minor,9:F major"; "" = primer's key or drawn
    c.sample.style = ""  # key+style models: a training style; "" = drawn
    c.sample.scale = "off"  # strict | soft | off
    c.sample.scale_penalty = 1.5  # soft: nats off out-of-scale pitch logits (README: why 1.5)
    c.sample.melody = ""  # a melody MIDI file to harmonize (docs/constraints.md); "" = none
    c.sample.melody_track = -1  # its voice part (0 = highest); -1 = the top voice of all notes
    c.sample.infill = ""  # bars of the primer file to rewrite, e.g. "5-8" or "3-4,9-12"
    c.sample.particles = 64  # SMC particles per sample under constraints
    # voice tokens: nats off onsets moving two voices in parallel fifths/octaves (harmony.md)
    c.sample.parallels_penalty = 3.0
    c.sample.meter = "hold"  # hold | free | 3/4...: hold the primer's (else the first) meter

    # --mode=finetune: reward fine-tuning with a KL penalty (paper section 8.2; Jaques et al. 2017)
    c.finetune = ml_collections.ConfigDict()
    c.finetune.seed = 0
    c.finetune.key = ""  # conditioned models: "D minor" or "C major;A minor"; "" = drawn
    c.finetune.num_steps = 300  # policy updates
    c.finetune.batch_size = 16  # sequences sampled per update
    c.finetune.num_tokens = 256  # tokens per sampled sequence
    c.finetune.learning_rate = 1e-4  # Adam, constant
    c.finetune.grad_clip_norm = 1.0  # global norm; 0 = off
    c.finetune.kl_beta = 3.0  # reward units per nat/token of KL(policy || pretrained)
    c.finetune.alpha = 0.5  # reward units per nat/token of NLL on real windows; 0 = off
    c.finetune.alpha_batch_size = 16  # real windows per update
    c.finetune.weights = ml_collections.ConfigDict()  # reward units per unit of each reward
    c.finetune.weights.in_key = 1.0  # share of notes in the key's scale
    c.finetune.weights.no_stuck_runs = 1.0  # 1 - share of groups beyond max_run repeats
    c.finetune.weights.motif_return = 0.5  # share of melodic n-grams that come back later
    c.finetune.weights.tonic_ending = 0.5  # share of phrase endings on the tonic
    c.finetune.weights.leap_recovery = 0.5  # 1 - share of octave+ leaps not stepped back
    c.finetune.weights.pitch_range = 0.5  # pitch range inside the data's band
    c.finetune.weights.note_length = 0.5  # mean note length inside the data's band
    c.finetune.weights.polyphony = 1.0  # sounding pitches per step inside the data's band
    # Batch rewards: reward units per nat of log p_data(s) / p_batch(s) for a statistic s of
    # evaluation/musicstats.py (rewards.log_density_ratio); keeps the data's spread of s.
    c.finetune.match = ml_collections.ConfigDict()
    for name in (
        "pitch_class_entropy", "scale_consistency", "pitch_range", "distinct_pitches",
        "polyphony", "empty_beat_rate", "mean_ioi", "mean_note_length", "longest_repeat_run",
        "distinct_4gram_share", "distinct_8gram_share",
    ):  # fmt: skip
        c.finetune.match[name] = 0.25  # every statistic the overlap table compares
    c.finetune.match.mean_note_length = 0.75  # these two trade against each other when
    c.finetune.match.polyphony = 0.75  # weighted alone (README: measured)
    c.finetune.match_clip = 3.0  # nats: bound of each sample's log density ratio
    c.finetune.user_reward = ""  # "module:function" or "file.py:function"; "" = none
    c.finetune.user_reward_weight = 1.0  # reward units per unit of the user reward
    c.finetune.max_run = 4  # onset groups
    c.finetune.motif_length = 3  # melodic intervals per motif
    c.finetune.motif_gap = 4  # notes between a motif and its return, at least
    c.finetune.phrase_beats = 8.0  # quarter-note beats per phrase
    c.finetune.range_low_quantile = 0.1  # band of real excerpts' pitch ranges
    c.finetune.range_high_quantile = 0.9
    c.finetune.texture_low_quantile = 0.25  # bands of real excerpts' note length and polyphony
    c.finetune.texture_high_quantile = 0.75
    c.finetune.eval_every = 50  # updates between validation passes and checkpoints
    c.finetune.log_every = 10  # updates
    c.finetune.max_wall_seconds = 0.0  # seconds; 0 = no limit
    return c
