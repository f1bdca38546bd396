"""`--mode=generate`: checkpoint -> samples a person can read, hear and use.

Everything is rebuilt from the workdir alone (config.json, vocab.json, checkpoints/). For each
sample: .mid, .musicxml, engraved score (SVG pages + PNG), .wav, a piano-roll PNG; then
samples.json and an offline index.html gallery.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time

import jax
import numpy as np
from absl import logging

from jaxcomposer import atomic, conditioning, config_lib, keys, workdir_lib
from jaxcomposer.config_lib import Config, SampleConfig
from jaxcomposer.data import dataset, midi_io
from jaxcomposer.errors import UsageError
from jaxcomposer.model import StepFunction
from jaxcomposer.notes import KeySignature, Notes
from jaxcomposer.render import gallery, outputs
from jaxcomposer.sample import sampler
from jaxcomposer.tokenizers import BOS, EncodingError, Tokenizer, get_tokenizer


def decoder_settings(sample: SampleConfig) -> sampler.DecoderSettings:
    return sampler.DecoderSettings(
        decoder=sample.decoder,
        temperature=sample.temperature,
        top_k=sample.top_k,
        top_p=sample.top_p,
        repetition_penalty=sample.repetition_penalty,
        grammar_mask=sample.grammar_mask,
    )


def clean_starts(tokenizer: Tokenizer, piece_tokens: np.ndarray) -> np.ndarray:
    """Indices where a piece can be cut so that decoding from there loses nothing: the grammar is
    back in its start-of-piece state (a frame or group boundary) or the token is a BAR."""
    states, _ = tokenizer.grammar.walk(piece_tokens)
    clean = states == tokenizer.grammar.bos_state
    if "BAR" in dict(tokenizer.vocab.ranges):
        clean |= piece_tokens == tokenizer.vocab.token("BAR")
    return np.flatnonzero(clean)


def primers_from_valid(
    workdir: str, tokenizer: Tokenizer, sample: SampleConfig, seed: int
) -> np.ndarray:
    """The original's behaviour: a random window of validation music (one per sample)."""
    split = dataset.load_split(workdir, "valid")
    rng = np.random.default_rng(seed)
    length = sample.primer_tokens
    candidates = []
    for i in range(len(split.offsets) - 1):
        body = split.tokens[split.offsets[i] + 1 : split.offsets[i + 1] - 1]  # no BOS/EOS
        starts = clean_starts(tokenizer, body)
        starts = starts[starts + length - 1 <= body.size]
        if starts.size:
            candidates.append((body, starts))
    if not candidates:
        raise ValueError(f"no validation piece in {workdir} has {length} tokens for a primer")
    rows = []
    for _ in range(sample.num_samples):
        body, starts = candidates[rng.integers(len(candidates))]
        start = int(rng.choice(starts))
        rows.append(np.concatenate([[BOS], body[start : start + length - 1]]))
    return np.stack(rows).astype(np.int32)


def primer_from_midi(config: Config, tokenizer: Tokenizer, path: str) -> tuple[np.ndarray, object]:
    """The first `primer_tokens - 1` tokens of a MIDI file after BOS, tiled per sample, and the
    piece as read. Raises UsageError naming the file when it yields no primer (missing, not
    MIDI, empty, drum-only, every note out of range); warns when notes had to be dropped."""
    where = f"--primer_midi {path}"
    if not os.path.isfile(path):
        raise UsageError(f"{where}: no such file")
    try:
        piece, _ = midi_io.read_midi(path, config.data)
    except midi_io.MidiReadError as e:
        raise UsageError(f"{where}: {e.reason}") from None
    kept = dataset.fit_pitch_range(piece, config)
    lost, tok = len(piece.notes) - len(kept.notes), config.tokenizer
    pitch_range = f"the pitch range [{tok.pitch_min}, {tok.pitch_max}]"
    if not len(kept.notes):
        raise UsageError(f"{where}: all {lost} notes lie outside {pitch_range}")
    if lost:
        logging.warning("%s: %d of %d notes outside %s dropped", where, lost, len(piece.notes),
                        pitch_range)  # fmt: skip
    try:
        tokens = tokenizer.encode(kept)
    except EncodingError as e:
        raise UsageError(f"{where}: {e}") from None
    if tokens.size == 0:
        raise UsageError(f"{where}: the piece encodes to no tokens")
    tokens = tokens[: config.sample.primer_tokens - 1]
    row = np.concatenate([[BOS], tokens]).astype(np.int32)
    return np.tile(row, (config.sample.num_samples, 1)), kept


def meters_of(tokenizer: Tokenizer, row: np.ndarray, primer_piece=None) -> tuple:
    """The time signatures in force along a token row: the tokens' own (TIMESIG tokens of the
    event tokenizer), else the primer file's (the other tokenizers carry no meter), else ()
    which means 4/4. A tuple of notes.TimeSignature sorted by beat."""
    decoded = tokenizer.decode(row).time_signatures
    if decoded or tokenizer.name == "event" or tokenizer.decoded_qpm:
        return tuple(decoded)  # performances: beats are seconds, a primer's meter means nothing
    if primer_piece is not None:
        return tuple(sorted(primer_piece.time_signatures, key=lambda ts: ts.beat))
    return ()


def bar_lines(meters, until: float) -> np.ndarray:
    """float64 beats of every bar line from 0 up to the first at or after `until`, each bar as
    long as the time signature in force at its start (a change takes effect at the next bar
    line at or after its beat, as the event tokenizer reads meters)."""
    lines, beat = [0.0], 0.0
    changes = [(ts.beat, ts.bar_beats) for ts in meters]
    bar = changes[0][1] if changes and changes[0][0] <= 0 else DEFAULT_BAR_BEATS
    while beat < until - 1e-9 or len(lines) < 2:
        for at, length in changes:
            if at <= beat + 1e-9:
                bar = length
        beat += bar
        lines.append(beat)
    return np.asarray(lines)


def event_bar_lines(tokenizer: Tokenizer, row: np.ndarray) -> np.ndarray:
    """float64 beats of the bar lines the event tokens lay down: the start of each BAR and the
    end of the last bar (each bar as long as the TIMESIG in force in it)."""
    decoded = tokenizer.decode(row)
    bars = int(np.count_nonzero(np.asarray(row) == tokenizer.vocab.token("BAR")))
    return bar_lines(decoded.time_signatures, decoded.beats)[: bars + 1] if bars else np.zeros(1)


def end_beat(tokenizer: Tokenizer, primer: np.ndarray, row: np.ndarray, meters, bars: int):
    """(beat where `bars` bars after the primer end, bars actually available). Bars are counted
    from the bar line that closes the primer's last bar, in the meter in force."""
    primer_end = tokenizer.decode(primer).beats
    if tokenizer.name == "event":
        lines = event_bar_lines(tokenizer, row)
        first = int(np.searchsorted(lines, primer_end - 1e-9))
    else:
        lines = bar_lines(meters, primer_end + (bars + 1) * MAX_BAR_BEATS)
        first = int(np.searchsorted(lines, primer_end - 1e-9))
    available = min(bars, len(lines) - 1 - first)
    return float(lines[first + available]), available


SAMPLE_FILE = re.compile(r"^sample_\d+([-.].*)?$")  # the files render_sample writes


def remove_earlier_samples(out_dir: str) -> int:
    """Removes an earlier run's samples (sample_NN*, samples.json, index.html) from out_dir, so
    the folder never mixes two runs (a later `--samples` evaluation would score them all);
    other files stay. Returns how many files were removed, and says so."""
    names = [n for n in os.listdir(out_dir) if SAMPLE_FILE.match(n)]
    names += [n for n in ("samples.json", "index.html") if os.path.exists(os.path.join(out_dir, n))]
    for name in names:
        os.remove(os.path.join(out_dir, name))
    if names:
        logging.warning("replaced the earlier samples in %s (%d files)", out_dir, len(names))
    return len(names)


def key_changes(tokenizer: Tokenizer, row: np.ndarray, meters, schedule) -> tuple:
    """The key changes of a [(first bar, key number)] schedule after its first entry, as
    KeySignature events at the beats where those bars start (bars counted from the row's start,
    as the sampler counts them); changes past the music are dropped by the renderer."""
    if len(schedule) < 2:
        return ()
    if "BAR" in dict(tokenizer.vocab.ranges):
        lines = event_bar_lines(tokenizer, row)
    else:
        lines = bar_lines(meters, tokenizer.decode(row).beats)
    return tuple(
        KeySignature(float(lines[bar - 1]), int(key))
        for bar, key in schedule[1:]
        if 0 < bar <= len(lines)
    )


def cut_at_beat(notes: Notes, end_beat: float) -> Notes:
    """Notes starting before `end_beat`, each ended by it at the latest."""
    kept = notes[notes.start < end_beat]
    return dataclasses.replace(kept, end=np.minimum(kept.end, end_beat))


DEFAULT_BAR_BEATS = 4.0  # 4/4, the meter of a piece that names none
MAX_BAR_BEATS = 16.0  # longest bar a MIDI meter can declare that the sampler plans for


def steps_for_bars(
    tokenizer: Tokenizer, primers: np.ndarray, sample: SampleConfig, meters=()
) -> int:
    """Tokens to generate for `num_bars` bars: measured tokens per beat of the primer (or a
    conservative default) times the beats of num_bars + 1 bars in the meter in force at the
    primer's end (the + 1 completes the primer's last bar), with 50% headroom; extra music is
    cut at the bar line."""
    if sample.num_bars <= 0:
        return sample.num_steps
    beats = tokenizer.decode(primers[0]).beats
    per_beat = primers.shape[1] / beats if beats >= 4 else 4.0 * tokenizer.config.steps_per_beat
    in_force = [ts.bar_beats for ts in meters if ts.beat <= beats] or [DEFAULT_BAR_BEATS]
    bar = max(in_force[-1], DEFAULT_BAR_BEATS if tokenizer.name == "event" else 0.0)
    return max(sample.num_steps, math.ceil((sample.num_bars + 1) * bar * per_beat * 1.5))


@dataclasses.dataclass(frozen=True)
class KeyPlan:
    """The key schedule (and style) of each sample, and where each came from."""

    schedules: list[list[tuple[int, int]]]  # per sample: [(first bar, key number)]
    sources: list[str]  # per sample: "requested" | "primer" | "drawn"
    styles: list[int]  # per sample: style index, -1 = none
    style_names: tuple[str, ...]

    def describe(self, i: int) -> str:
        schedule = self.schedules[i]
        if len(schedule) == 1:
            return keys.key_name(schedule[0][1])
        return ",".join(f"{bar}:{keys.key_name(k)}" for bar, k in schedule)


def plan_keys(
    workdir: str, sample: SampleConfig, spec, primer_notes: list[Notes | None], seed
) -> KeyPlan:
    """Each sample's key schedule: `sample.key` (one schedule, or several separated by ';' used
    in turn, e.g. "C major;A minor"), else the primer's estimated key, else a key drawn from the
    training pieces' keys (manifest). Bars count from the start of the primer. Raises
    keys.KeyNameError for a bad name and UsageError for an unknown style. `seed`: an int or a
    sequence of ints (the draws are a pure function of it)."""
    rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 9])
    n = sample.num_samples
    if sample.key.strip():
        given = [keys.parse_key_schedule(part) for part in sample.key.split(";") if part.strip()]
        late = sorted({bar for schedule in given for bar, _ in schedule if bar > sample.num_bars})
        if sample.num_bars > 0 and late:
            logging.warning(
                "--key: the change(s) at bar %s come after the last bar (--num_bars=%d) and "
                "will not be heard", ", ".join(map(str, late)), sample.num_bars,
            )  # fmt: skip
        schedules = [given[i % len(given)] for i in range(n)]
        sources = ["requested"] * n
    else:
        counts = dataset.key_counts(_manifest(workdir))
        names, weights = list(counts), np.asarray(list(counts.values()), np.float64)
        schedules, sources = [], []
        for notes in primer_notes:
            if notes is not None and len(notes):
                schedules.append([(1, keys.estimate_key(notes)[0])])
                sources.append("primer")
            else:
                drawn = names[rng.choice(len(names), p=weights / weights.sum())] if names else "C"
                schedules.append([(1, keys.parse_key(drawn))])
                sources.append("drawn")
    styles = [-1] * n
    if spec.uses_style:
        if sample.style and sample.style not in spec.styles:
            raise UsageError(f"unknown style {sample.style!r}; the model knows {list(spec.styles)}")
        styles = [
            spec.styles.index(sample.style) if sample.style else int(rng.integers(len(spec.styles)))
            for _ in range(n)
        ]
    return KeyPlan(schedules, sources, styles, spec.styles)


def _manifest(workdir: str) -> dict:
    import json

    with open(os.path.join(workdir_lib.data_dir(workdir), "manifest.json"), encoding="utf-8") as f:
        return json.load(f)


def keyed_run(restored, sample: SampleConfig, primers, plan: KeyPlan):
    """(sampler function, its extra args, its static kwargs) for conditioned/scale sampling."""
    ks = sampler.key_settings(restored.tokenizer, restored.spec, sample.scale, sample.scale_penalty)
    inputs = sampler.key_inputs(restored.tokenizer, ks, primers, plan.schedules, plan.styles)
    return inputs, ks


def performance_score(notes: Notes, decoded_qpm: float, score_qpm: float | None) -> dict:
    """render_sample's score_notes/score_qpm for notes played in real time (beats of
    `decoded_qpm`): a beat grid estimated from the onsets (tempo given by `score_qpm` if set)."""
    from jaxcomposer.render import beat_grid

    seconds_per_beat = 60.0 / decoded_qpm
    grid = beat_grid.estimate(notes.start * seconds_per_beat, notes.velocity, qpm=score_qpm)
    return {
        "score_notes": beat_grid.to_score(notes, seconds_per_beat, grid),
        "score_qpm": grid.qpm,
    }


def generate(
    workdir: str,
    *,
    out_dir: str | None = None,
    seed: int | None = None,
    overrides: dict | None = None,
    score_qpm: float | None = None,
) -> dict:
    """Writes samples into out_dir (default WORKDIR/samples); returns paths and per-sample info.
    For tokens in real time (performance), the score is engraved on an estimated beat grid
    (render/beat_grid.py) whose tempo `score_qpm` overrides."""
    base = workdir_lib.load_config(workdir)
    config = config_lib.replace(base, sample=dict(overrides or {}))
    config_lib.validate(config)  # the command line's sampling flags
    sample = config.sample
    seed = config.seed if seed is None else seed
    primer_piece = None
    if sample.primer not in ("none", "valid"):  # read first: a bad file fails before jax work
        primers, primer_piece = primer_from_midi(
            config, get_tokenizer(config.tokenizer), sample.primer
        )
    # The tokenizer and model are built once, by the restore; sampling settings are `config`'s.
    restored = workdir_lib.restore_for_inference(workdir, sample.checkpoint)
    tokenizer, variables, step = restored.tokenizer, restored.variables, restored.step
    # Which run wrote the weights, shown per sample in samples.json and the gallery.
    model_label = f"{restored.source} (step {step})"
    default_out = os.path.join(workdir, "samples")
    if restored.source == "finetuned":  # never overwrite the pretrained model's samples
        default_out = os.path.join(workdir_lib.finetune_dir(workdir), "samples")
    out_dir = os.path.abspath(out_dir or default_out)
    os.makedirs(out_dir, exist_ok=True)
    remove_earlier_samples(out_dir)
    primer_notes = [None] * sample.num_samples
    if sample.primer == "none":
        primers = np.full((sample.num_samples, 1), BOS, np.int32)
    elif sample.primer == "valid":
        primers = primers_from_valid(workdir, tokenizer, sample, seed)
    if sample.primer != "none":
        primer_notes = [tokenizer.decode(row).notes for row in primers]
    keyed = restored.spec.dim > 0 or bool(sample.key.strip()) or sample.scale != "off"
    plan = plan_keys(workdir, sample, restored.spec, primer_notes, seed) if keyed else None

    num_steps = steps_for_bars(
        tokenizer, primers, sample, meters_of(tokenizer, primers[0], primer_piece)
    )
    settings = decoder_settings(sample)
    states = sampler.grammar_states_after(tokenizer.grammar, primers)
    started = time.perf_counter()
    kwargs = dict(step_fn=StepFunction(restored.model), num_steps=num_steps, settings=settings)
    args = (variables, primers, states, tokenizer.grammar.next_state, jax.random.key(seed))
    removed = pitch_steps = None
    kwargs["held"] = sampler.held_keys(tokenizer.grammar, primers)
    if keyed:
        inputs, kwargs["ks"] = keyed_run(restored, sample, primers, plan)
        tokens, removed, pitch_steps = jax.device_get(sampler.sample_keyed(*args, inputs, **kwargs))
        removed, pitch_steps = np.asarray(removed), np.asarray(pitch_steps)
    elif config.train.loss_on_last_only:  # trained on fixed windows: generate as the original did
        tokens = sampler.sample_sliding(*args, window=config.train.seq_len, **kwargs)
    else:
        tokens = sampler.sample(*args, **kwargs)
    tokens = np.asarray(jax.device_get(tokens))
    sample_seconds = time.perf_counter() - started
    logging.info("sampled %d x %d tokens in %.2f s", *tokens.shape, sample_seconds)

    qpm = primer_piece.initial_qpm if primer_piece is not None else 100.0
    qpm = tokenizer.decoded_qpm or qpm  # performance tokens decode to seconds at a fixed tempo
    results = []
    for i, row in enumerate(np.concatenate([primers, tokens], axis=1)):
        decoded = tokenizer.decode(row)
        notes = decoded.notes
        meters = meters_of(tokenizer, row, primer_piece)
        end, bars = None, None
        if sample.num_bars > 0:
            end, bars = end_beat(tokenizer, primers[i], row, meters, sample.num_bars)
            notes = cut_at_beat(notes, end)
            if bars < sample.num_bars:
                logging.warning(
                    "sample %d has %d of the %d bars asked (%d tokens were not enough): "
                    "raise --num_steps", i, bars, sample.num_bars, num_steps,
                )  # fmt: skip
        time_sig = meters[0] if meters else None
        stem = f"sample_{i:02d}"
        grid = {}
        if tokenizer.decoded_qpm:
            grid = performance_score(notes, tokenizer.decoded_qpm, score_qpm)
        info = outputs.render_sample(
            out_dir,
            stem,
            notes,
            title=f"jaxcomposer sample {i + 1} (seed {seed})",
            qpm=qpm,
            time_signature=(time_sig.numerator, time_sig.denominator) if time_sig else (4, 4),
            time_signatures=meters,
            key_number=plan.schedules[i][0][1] if plan else None,
            key_signatures=key_changes(tokenizer, row, meters, plan.schedules[i]) if plan else (),
            **grid,
        )
        info.update(
            name=stem,
            model=model_label,
            notes=len(notes),
            tokens=int(row.size),
            primer_tokens=int(primers.shape[1]),
            skipped_tokens=int(decoded.skipped),
            beats=float(notes.end.max(initial=0.0)),
            end_beat=end,  # the bar line the sample ends on (with --num_bars)
            bars=bars,  # bars generated after the primer (with --num_bars)
        )
        if plan:
            info.update(requested_key=plan.describe(i), key_source=plan.sources[i])
            if plan.styles[i] >= 0:
                info["style"] = plan.style_names[plan.styles[i]]
            steps = max(int(pitch_steps[i].sum()), 1)
            info["scale_mass_removed"] = round(float(removed[i][pitch_steps[i]].sum()) / steps, 5)
            rule = sample.scale
            if rule == "soft":
                rule = f"soft ({sample.scale_penalty:g} nats)"
            print(
                f"{stem}: key {info['requested_key']} ({info['key_source']}), scale "
                f"{rule}: {info['scale_mass_removed']:.3f} probability removed per pitch step",
                flush=True,
            )
        results.append(info)
        print(
            f"{stem}: {len(notes)} notes, {info['beats']:.1f} beats, "
            f"{decoded.skipped} skipped tokens, audio by {info.get('synthesizer')}",
            flush=True,
        )
    settings_info = dict(
        dataclasses.asdict(settings),
        seed=seed,
        num_steps=num_steps,
        checkpoint_step=step,
        model=model_label,
        primer=sample.primer,
        workdir=workdir,
        condition=restored.spec.condition,
        key=sample.key,
        scale=sample.scale,
        scale_penalty=sample.scale_penalty,
        bar_counting=conditioning.bar_counter(tokenizer).note,
        sample_seconds=round(sample_seconds, 3),
    )
    atomic.write_json(
        os.path.join(out_dir, "samples.json"), {"settings": settings_info, "samples": results}
    )
    index = gallery.write_gallery(
        out_dir, results, title="jaxcomposer samples", settings=settings_info
    )
    return {"out_dir": out_dir, "index": index, "samples": results, "settings": settings_info}
