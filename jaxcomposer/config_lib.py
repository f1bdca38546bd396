"""Typed, frozen configuration: the one place an ml_collections ConfigDict becomes dataclasses.

`configs/*.py` hold the values (with units); `freeze(config_dict)` turns them into the
dataclasses below, checking that no key is unknown and none is missing. Library code only ever
sees a frozen `Config`; it never mutates it. The workdir stores `config.json`, from which
`load_json` rebuilds the same `Config` so that sampling and evaluation need the workdir alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Mapping
from typing import Any

from jaxcomposer.core.errors import UsageError


@dataclasses.dataclass(frozen=True)
class DataConfig:
    midi_dir: str  # folder searched recursively for .mid/.midi; "" = embedded Bach chorales
    valid_dir: str  # explicit validation folder; "" = split midi_dir by valid_fraction
    valid_fraction: float  # share of pieces (by file name hash) held out for validation
    cache_dir: str  # per-file token cache; "" = ~/.cache/jaxcomposer
    programs: tuple[int, ...]  # GM programs to keep (0-127); () = all non-drum instruments
    drop_out_of_range_notes: bool  # True: drop notes outside the pitch range (counted)
    num_workers: int  # parse processes; 0 = min(cpu count, 8)
    max_tracks: int  # a file with more tracks is rejected as absurd
    max_notes: int  # a file with more notes is rejected as absurd
    max_beats: float  # a file longer than this (quarter-note beats) is rejected as absurd
    min_qpm: float  # tempo events outside [min_qpm, max_qpm] mark a file absurd
    max_qpm: float
    max_pieces: int  # 0 = all; otherwise the first N files by sorted name (smoke runs)
    key_labels_csv: str = ""  # CSV of `file name, key[, style]` overriding the key labels
    max_file_mb: float = 32.0  # a larger file is refused unread (MB = 10^6 bytes)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    name: str  # "chord" | "frame" | "event" | "performance" | "voices"
    steps_per_beat: int  # grid steps per quarter-note beat (frame, event, chord durations)
    pitch_min: int  # lowest MIDI pitch in the vocabulary (21 = A0)
    pitch_max: int  # highest MIDI pitch in the vocabulary (108 = C8)
    mark_onsets: bool  # frame: ONSET/HOLD tokens (True) or plain NOTE tokens (False)
    max_duration_steps: int  # event/chord: durations are capped at this many grid steps
    num_velocity_bins: int  # event: 0 = no velocity tokens
    max_bar_beats: int  # event: longest bar (quarter beats) a time signature may have
    chord_step_beats: float  # chord: fixed spacing between onset groups when decoding
    chord_durations: bool  # chord: add a DURATION token after each onset group
    # performance (Oore et al. 2018); defaults so that older config.json files still load
    perf_steps_per_second: int = 100  # TIME_SHIFT resolution (100 = 10 ms steps)
    perf_max_shift_steps: int = 100  # longest TIME_SHIFT (steps); longer gaps use several
    perf_velocity_bins: int = 32  # VELOCITY tokens (MIDI velocity * bins // 128)
    perf_sustain: bool = True  # sustain pedal (CC64) lengthens notes, as note-seq does
    num_voices: int = 4  # voices: parts, one token each per grid step (4 = SATB), at most 8
    per_voice_tokens: bool = False  # voices: NOTE/HOLD/REST ranges of each voice's own


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    kind: str  # "lstm" (token embedding LM) | "seed_replica" (the original Keras model)
    embed_dim: int  # token embedding width
    hidden_size: int  # LSTM units per layer
    num_layers: int
    dropout: float  # between layers and before the output projection (rate)
    recurrent_dropout: float  # per-sequence mask on h inside the recurrence (rate); 0 = off
    layer_norm: bool  # layer norm on each layer's output
    tie_embeddings: bool  # output projection = embedding transposed (needs embed_dim == hidden)
    hoist_input_projection: bool  # one matmul for all steps' x @ W_x outside the scan
    dense_size: int  # seed_replica: width of the Dense(256) head layer
    dtype: str  # compute dtype: "float32" | "bfloat16" (params stay float32)
    condition: str = "none"  # [X; M] vector: "none" | "key" | "key+style" (conditioning.py)
    # Conditioned models: the vector also adds a learned bias to the logits (M @ W, W zero at
    # init), so each key's pitch profile need not pass through the LSTM.
    condition_logits: bool = False
    # > 0: an Anticipation-RNN constraint encoder (model/anticipation.py) of this many units
    # reads the given tokens from the end; its output joins M. 0 = none.
    constraint_encoder_size: int = 0


@dataclasses.dataclass(frozen=True)
class ConstraintMix:
    """How often each kind of random constraint row is drawn per training window for a model
    with a constraint encoder (train/constraint_masks.py); shares, normalised to sum 1."""

    none: float = 0.25  # nothing given: the plain language model
    voices: float = 0.4  # whole voices given (the top voice alone in half of them)
    bars: float = 0.25  # everything given but a span of 1-4 bars (infilling)
    tokens: float = 0.1  # each voice token given with a probability drawn per window


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    seed: int
    batch_size: int  # windows per step (global, over all devices)
    seq_len: int  # tokens per window (inputs); targets are shifted by one
    num_steps: int  # optimizer steps in total
    optimizer: str  # "adamw" | "rmsprop"
    learning_rate: float  # peak learning rate
    warmup_steps: int
    lr_schedule: str  # "cosine" | "constant"
    weight_decay: float
    grad_clip_norm: float  # 0 = off
    loss_on_last_only: bool  # seed_replica: one target per window (the last)
    transpose_semitones: int  # augmentation: uniform shift in [-k, k]; 0 = off
    grammar_mask_loss: bool  # mask logits of tokens the grammar forbids before the softmax
    eval_every: int  # steps between validation passes
    eval_batches: int  # validation batches per pass (fixed windows)
    early_stop_patience: int  # validation passes without improvement before stopping; 0 = off
    checkpoint_every: int  # steps between checkpoints (also at each eval and at the end)
    keep_best: int  # best-by-validation checkpoints kept besides the latest
    log_every: int  # steps between log lines
    max_wall_seconds: float  # stop (with a checkpoint) after this much training time; 0 = off
    # > 0: num_steps is chosen from the step time measured after compilation so that warmup and
    # decay fit this many minutes (train/budget.py); the chosen steps go into config.json.
    budget_minutes: float = 0.0
    # True: TensorBoard event files beside metrics.jsonl (needs the tensorboard extra,
    # tensorboardX; without it a one-line warning and metrics.jsonl alone).
    tensorboard: bool = False
    constraint_mix: ConstraintMix = dataclasses.field(default_factory=ConstraintMix)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    decoder: str  # "argmax" | "temperature"
    temperature: float
    top_k: int  # 0 = off
    top_p: float  # 1.0 = off
    repetition_penalty: float  # 1.0 = off
    num_steps: int  # tokens to generate per sample
    num_bars: int  # if > 0, generate until this many bars (event) / beats*4 (others)
    num_samples: int
    primer: str  # "none" | "valid" (a random validation window) | path to a MIDI file
    primer_tokens: int  # primer length taken from a MIDI file or the validation data
    grammar_mask: bool  # forbid tokens that cannot come next
    checkpoint: str  # "best" | "latest" | a step number
    key: str = ""  # "D minor" or a schedule "1:D minor,9:F major"; "" = primer's or drawn
    style: str = ""  # a style name of the training set (key+style models); "" = drawn
    scale: str = "off"  # "strict" | "soft" | "off": out-of-scale pitch tokens masked/penalized
    scale_penalty: float = 1.5  # soft: nats subtracted from out-of-scale logits
    # Constraints (sample/constraints.py, docs/constraints.md): a melody MIDI file kept note for
    # note with the other voices written under it; its part (-1 = the top voice of all notes);
    # bars of the primer file rewritten ("5-8" or "3-4,9-12"; "" = none); SMC particles.
    melody: str = ""
    melody_track: int = -1
    infill: str = ""
    particles: int = 64
    meter: str = "hold"  # "hold" (the primer's, else the first sampled) | "free" | "3/4"...
    # nats off the logits of onsets that move a voice in parallel fifths or octaves with a voice
    # above it (tokens written voice by voice: voices); 0 = off
    parallels_penalty: float = 0.0


@dataclasses.dataclass(frozen=True)
class RewardWeights:
    """Weight of each reward in finetune/rewards.py's REWARDS table (reward units per unit of
    that reward; each reward is in [0, 1]); 0 = off. Field names are the table's names."""

    in_key: float = 1.0
    no_stuck_runs: float = 1.0
    motif_return: float = 0.5
    tonic_ending: float = 0.5
    leap_recovery: float = 0.5
    pitch_range: float = 0.5
    note_length: float = 0.5
    polyphony: float = 1.0


@dataclasses.dataclass(frozen=True)
class MatchWeights:
    """Weight of each batch reward `match_<name>` (finetune/rewards.py `match_rewards`): the
    log density ratio of one statistic of evaluation/musicstats.py between the real excerpts
    and the sampled batch, in reward units per nat; 0 = off. Field names are piece_stats'.
    Defaults: every statistic 0.25, the two that trade against each other (note length,
    polyphony) 0.75 (README, "Feedback fine-tuning", measured)."""

    pitch_class_entropy: float = 0.25
    scale_consistency: float = 0.25
    pitch_range: float = 0.25
    distinct_pitches: float = 0.25
    polyphony: float = 0.75
    empty_beat_rate: float = 0.25
    mean_ioi: float = 0.25
    mean_note_length: float = 0.75
    longest_repeat_run: float = 0.25
    distinct_4gram_share: float = 0.25
    distinct_8gram_share: float = 0.25


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """`--mode=finetune`: policy-gradient fine-tuning with a KL penalty to the pretrained model
    (the paper's section 8.2 feedback update, in the form of Jaques et al. 2017). Every field has
    a default, so config.json files written before this section existed still load.

    Objective maximised per update: mean reward - kl_beta * KL(pi || pi_pretrained) per token
    - alpha * next-token NLL on real windows (nats/token); all three terms in reward units."""

    seed: int = 0  # folded into the root seed: sampling keys and real-window batches
    # Key-conditioned models: the key each sampled sequence is asked for (and scored in): key
    # names, ';' between several used in turn ("D minor;F major"); "" = drawn per update from
    # the training pieces' keys (as sample.key = "" without a primer).
    key: str = ""
    num_steps: int = 300  # policy updates in total
    batch_size: int = 16  # sequences sampled from the current policy per update
    num_tokens: int = 256  # tokens per sampled sequence (after BOS)
    learning_rate: float = 1e-4  # Adam, constant
    grad_clip_norm: float = 1.0  # global norm; 0 = off
    kl_beta: float = 3.0  # reward units per nat/token of KL(pi || pi_pretrained)
    alpha: float = 0.5  # reward units per nat/token of next-token NLL on real windows; 0 = off
    alpha_batch_size: int = 16  # real training windows per update (train.seq_len tokens each)
    weights: RewardWeights = dataclasses.field(default_factory=RewardWeights)
    match: MatchWeights = dataclasses.field(default_factory=MatchWeights)
    match_clip: float = 3.0  # nats: bound of each sample's log density ratio
    user_reward: str = ""  # "module:function" or "path/file.py:function"; "" = none
    user_reward_weight: float = 1.0  # reward units per unit of the user reward
    max_run: int = 4  # no_stuck_runs: onset groups one group may repeat before it costs
    motif_length: int = 3  # motif_return: melodic intervals (with their rhythm) per motif
    motif_gap: int = 4  # motif_return: notes between a motif and its return, at least
    phrase_beats: float = 8.0  # tonic_ending, pitch_range: phrase length (quarter-note beats)
    range_low_quantile: float = 0.1  # pitch_range: the band of real excerpts' ranges, from
    range_high_quantile: float = 0.9  # ... this quantile to this one
    # note_length and polyphony: the bands of real excerpts' mean note length and polyphony,
    # from this quantile to the next (narrower than the range's: measured, README)
    texture_low_quantile: float = 0.25
    texture_high_quantile: float = 0.75
    eval_every: int = 50  # updates between validation passes (and checkpoints)
    log_every: int = 10  # updates between log lines
    max_wall_seconds: float = 0.0  # stop (with a checkpoint) after this long; 0 = no limit


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int
    data: DataConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainConfig
    sample: SampleConfig
    # A whole section missing from an older config.json takes these defaults.
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)


class ConfigError(UsageError, KeyError):
    """A config key is unknown or missing, or a value has the wrong type or is out of range
    (the message names the field). A KeyError too, for callers of freeze that catch that."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _convert(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config {where}: expected a section, got {value!r}")
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if origin is tuple:
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            raise ConfigError(f"config {where}: expected a list, got {value!r}")
        return tuple(int(v) if isinstance(v, bool | int) else v for v in value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"config {where}: expected {tp.__name__}, got {value!r}")
    return value


def _has_default(f: dataclasses.Field) -> bool:
    return f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """A `cls` from `values`; a field missing from `values` takes its dataclass default when it
    has one (fields added after a workdir's config.json was written), else it is an error."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = {f.name for f in fields}
    unknown = set(values) - names
    missing = {f.name for f in fields if f.name not in values and not _has_default(f)}
    names &= set(values)
    if unknown or missing:
        raise ConfigError(
            f"config {where or '<root>'}: unknown keys {sorted(unknown)}, "
            f"missing keys {sorted(missing)}"
        )
    kwargs = {n: _convert(hints[n], values[n], f"{where}.{n}".lstrip(".")) for n in names}
    return cls(**kwargs)


def freeze(config_dict: Any) -> Config:
    """ConfigDict (or nested dict) -> frozen, typed `Config`; raises ConfigError for unknown
    keys, missing keys that have no default, wrong types and values `validate` rejects.

    Fields added to a section after the first release get a dataclass default (declared after
    the fields without one), so config.json files of older workdirs still load."""
    values = config_dict.to_dict() if hasattr(config_dict, "to_dict") else dict(config_dict)
    config = _build(Config, values, "")
    validate(config)
    return config


# --- value checks -----------------------------------------------------------------------------
# The one list of each choice: tokenizers.NAMES, conditioning.CONDITIONS, the sampler's
# SCALE_MODES and decoders, and main.py's flag enums all reference these tuples.
CHOICES = {
    "tokenizer.name": ("chord", "frame", "event", "performance", "voices"),
    "model.kind": ("lstm", "seed_replica"),
    "model.dtype": ("float32", "bfloat16"),
    "train.optimizer": ("adamw", "rmsprop"),
    "train.lr_schedule": ("cosine", "constant"),
    "sample.decoder": ("argmax", "temperature"),
    "model.condition": ("none", "key", "key+style"),
    "sample.scale": ("off", "soft", "strict"),
}
PRIMER_SOURCES = ("none", "valid")  # sample.primer: these, or else the path of a MIDI file
_AT_LEAST = {  # field: smallest allowed value
    "data.num_workers": 0, "data.max_tracks": 1, "data.max_notes": 1, "data.max_pieces": 0,
    "tokenizer.steps_per_beat": 1, "tokenizer.pitch_min": 0, "tokenizer.max_duration_steps": 1,
    "tokenizer.num_velocity_bins": 0, "tokenizer.max_bar_beats": 1,
    "tokenizer.perf_steps_per_second": 1, "tokenizer.perf_max_shift_steps": 1,
    "tokenizer.perf_velocity_bins": 1, "tokenizer.num_voices": 1,
    "model.embed_dim": 1, "model.hidden_size": 1, "model.num_layers": 1, "model.dense_size": 1,
    "train.batch_size": 1, "train.seq_len": 1, "train.num_steps": 0, "train.warmup_steps": 0,
    "train.weight_decay": 0, "train.grad_clip_norm": 0, "train.transpose_semitones": 0,
    "train.eval_every": 1, "train.eval_batches": 1, "train.early_stop_patience": 0,
    "train.checkpoint_every": 1, "train.keep_best": 0, "train.log_every": 1,
    "train.max_wall_seconds": 0, "train.learning_rate": 0, "sample.top_k": 0,
    "train.budget_minutes": 0, "model.constraint_encoder_size": 0,
    "sample.num_steps": 0,
    "sample.num_bars": 0, "sample.num_samples": 1, "sample.primer_tokens": 1,
    "sample.scale_penalty": 0, "sample.particles": 1, "sample.melody_track": -1,
    "sample.parallels_penalty": 0,
    "finetune.num_steps": 0, "finetune.batch_size": 1, "finetune.num_tokens": 1,
    "finetune.grad_clip_norm": 0, "finetune.kl_beta": 0, "finetune.alpha": 0,
    "finetune.alpha_batch_size": 1, "finetune.user_reward_weight": 0, "finetune.max_run": 1,
    "finetune.motif_length": 1, "finetune.motif_gap": 0, "finetune.eval_every": 1,
    "finetune.log_every": 1, "finetune.max_wall_seconds": 0,
}  # fmt: skip
_ABOVE = (  # fields that must be > 0
    "data.max_beats", "data.max_file_mb", "data.min_qpm", "tokenizer.chord_step_beats",
    "sample.temperature", "sample.repetition_penalty", "finetune.learning_rate",
    "finetune.phrase_beats", "finetune.match_clip",
)  # fmt: skip
_FRACTIONS = ("data.valid_fraction", "model.dropout", "model.recurrent_dropout")  # in [0, 1)


def _checkpoint_name_ok(which: str) -> bool:
    """best | latest | STEP | finetuned | finetuned:STEP (workdir_lib.split_finetuned)."""
    name = which.removeprefix("finetuned:") if which.startswith("finetuned:") else which
    return which == "finetuned" or name in ("best", "latest") or name.isdigit()


METER_RULES = ("hold", "free")  # sample.meter, besides a time signature "N/D"


def parse_meter(text: str) -> tuple[int, int] | None:
    """(numerator, denominator) of a time signature written "3/4" (denominator a power of two
    up to 64), else None."""
    parts = text.strip().split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return None
    n, d = int(parts[0]), int(parts[1])
    return (n, d) if n >= 1 and d in (1, 2, 4, 8, 16, 32, 64) else None


def validate(config: Config) -> None:
    """Raises ConfigError naming the first field whose value cannot work (an unknown choice, a
    negative size, an empty range...). Called by freeze; checks what needs no devices or data
    (train.batch_size against the device count is checked when the mesh is built)."""
    flat = {
        f"{section}.{name}": value
        for section, fields in to_dict(config).items()
        if isinstance(fields, dict)
        for name, value in fields.items()
    }

    def bad(field: str, why: str) -> ConfigError:
        return ConfigError(f"config {field}={flat[field]!r}: {why}")

    for field, choices in CHOICES.items():
        if flat[field] not in choices:
            raise bad(field, f"must be one of {', '.join(choices)}")
    for field, low in _AT_LEAST.items():
        if not flat[field] >= low:
            raise bad(field, f"must be >= {low}")
    for field in _ABOVE:
        if not flat[field] > 0:
            raise bad(field, "must be > 0")
    for field in _FRACTIONS:
        if not 0 <= flat[field] < 1:
            raise bad(field, "must be in [0, 1)")
    checks = [
        ("tokenizer.pitch_max", config.tokenizer.pitch_min <= config.tokenizer.pitch_max <= 127,
         "must lie in [tokenizer.pitch_min, 127]"),
        ("tokenizer.num_velocity_bins", config.tokenizer.num_velocity_bins <= 128,
         "must be <= 128"),
        ("tokenizer.num_voices", config.tokenizer.num_voices <= 8, "must be <= 8"),
        ("data.max_qpm", config.data.max_qpm >= config.data.min_qpm, "must be >= data.min_qpm"),
        ("data.programs", all(0 <= p <= 127 for p in config.data.programs),
         "GM programs are 0-127"),
        ("sample.top_p", 0 < config.sample.top_p <= 1, "must be in (0, 1]"),
        ("sample.checkpoint", _checkpoint_name_ok(config.sample.checkpoint),
         "must be best, latest, a step number, finetuned or finetuned:STEP"),
        ("finetune.range_high_quantile", 0 <= config.finetune.range_low_quantile
         <= config.finetune.range_high_quantile <= 1,
         "must be in [finetune.range_low_quantile, 1], and that in [0, 1]"),
        ("finetune.texture_high_quantile", 0 <= config.finetune.texture_low_quantile
         <= config.finetune.texture_high_quantile <= 1,
         "must be in [finetune.texture_low_quantile, 1], and that in [0, 1]"),
        ("model.tie_embeddings", not config.model.tie_embeddings
         or config.model.embed_dim == config.model.hidden_size,
         "needs model.embed_dim == model.hidden_size"),
        ("finetune.batch_size", config.finetune.batch_size >= 2
         or not any(dataclasses.astuple(config.finetune.match)),
         "must be >= 2 when a finetune.match weight is set (the batch is the distribution)"),
        ("model.condition_logits", not config.model.condition_logits
         or config.model.condition != "none", "needs model.condition key or key+style"),
        ("sample.scale_penalty", math.isfinite(config.sample.scale_penalty),
         "must be a finite number of nats (use --scale=strict to forbid)"),
        ("sample.parallels_penalty", math.isfinite(config.sample.parallels_penalty),
         "must be a finite number of nats"),
        ("train.transpose_semitones", config.train.transpose_semitones <= 127,
         "must be <= 127"),
        ("sample.meter", config.sample.meter in METER_RULES
         or parse_meter(config.sample.meter) is not None,
         f"must be {' or '.join(METER_RULES)} or a time signature such as 3/4"),
    ]  # fmt: skip
    for field, ok, why in checks:
        if not ok:
            raise bad(field, why)
    mix = dataclasses.asdict(config.train.constraint_mix)
    if not all(w >= 0 for w in mix.values()) or not sum(mix.values()) > 0:
        raise ConfigError(f"config train.constraint_mix={mix}: shares must be >= 0, not all 0")
    if config.model.constraint_encoder_size and config.model.kind != "lstm":
        raise ConfigError(
            f"config model.constraint_encoder_size={config.model.constraint_encoder_size}: "
            f"needs model.kind 'lstm', got {config.model.kind!r}"
        )
    for name, weight in dataclasses.asdict(config.finetune.match).items():
        if not weight >= 0:  # a negative weight would push the music away from the data
            raise ConfigError(f"config finetune.match.{name}={weight!r}: must be >= 0")


def to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_json(config: Config) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_json(text: str) -> Config:
    return freeze(json.loads(text))


def replace(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A Config with some fields of some sections changed: replace(c, train={'seed': 1})."""
    changed = {
        name: dataclasses.replace(getattr(config, name), **dict(fields))
        for name, fields in sections.items()
    }
    return dataclasses.replace(config, **changed)
