"""`--mode=generate`: checkpoint -> samples a person can read, hear and use.

Everything is rebuilt from the workdir alone (config.json, vocab.json, checkpoints/). For each
sample: .mid, .musicxml, engraved score (SVG pages + PNG), .wav, a piano-roll PNG; then
samples.json and an offline index.html gallery.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import jax
import numpy as np
from absl import logging

from jaxcomposer import atomic, config_lib, workdir_lib
from jaxcomposer.config_lib import Config, SampleConfig
from jaxcomposer.data import dataset, midi_io
from jaxcomposer.model import StepFunction
from jaxcomposer.notes import Notes
from jaxcomposer.render import gallery, outputs
from jaxcomposer.sample import sampler
from jaxcomposer.tokenizers import BOS, Tokenizer


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
    piece, _ = midi_io.read_midi(path, config.data)
    piece = dataset.fit_pitch_range(piece, config)
    tokens = tokenizer.encode(piece)[: config.sample.primer_tokens - 1]
    row = np.concatenate([[BOS], tokens]).astype(np.int32)
    return np.tile(row, (config.sample.num_samples, 1)), piece


def steps_for_bars(tokenizer: Tokenizer, primers: np.ndarray, sample: SampleConfig) -> int:
    """Tokens to generate for `num_bars` bars: measured tokens per beat of the primer, or a
    conservative default, with 50% headroom (extra music is cut at the bar line)."""
    if sample.num_bars <= 0:
        return sample.num_steps
    beats = tokenizer.decode(primers[0]).beats
    per_beat = primers.shape[1] / beats if beats >= 4 else 4.0 * tokenizer.config.steps_per_beat
    return max(sample.num_steps, math.ceil(sample.num_bars * 4 * per_beat * 1.5))


def cut_at_beat(notes: Notes, end_beat: float) -> Notes:
    kept = notes[notes.start < end_beat]
    return dataclasses.replace(kept, end=np.minimum(kept.end, end_beat))


def generate(
    workdir: str,
    *,
    out_dir: str | None = None,
    seed: int | None = None,
    overrides: dict | None = None,
) -> dict:
    """Writes samples into out_dir (default WORKDIR/samples); returns paths and per-sample info."""
    base = workdir_lib.load_config(workdir)
    config = config_lib.replace(base, sample=dict(overrides or {}))
    sample = config.sample
    # The tokenizer and model are built once, by the restore; sampling settings are `config`'s.
    restored = workdir_lib.restore_for_inference(workdir, sample.checkpoint)
    tokenizer, variables, step = restored.tokenizer, restored.variables, restored.step
    seed = config.seed if seed is None else seed
    out_dir = os.path.abspath(out_dir or os.path.join(workdir, "samples"))
    os.makedirs(out_dir, exist_ok=True)

    primer_piece = None
    if sample.primer == "none":
        primers = np.full((sample.num_samples, 1), BOS, np.int32)
    elif sample.primer == "valid":
        primers = primers_from_valid(workdir, tokenizer, sample, seed)
    else:
        primers, primer_piece = primer_from_midi(config, tokenizer, sample.primer)

    num_steps = steps_for_bars(tokenizer, primers, sample)
    settings = decoder_settings(sample)
    states = sampler.grammar_states_after(tokenizer.grammar, primers)
    started = time.perf_counter()
    kwargs = dict(step_fn=StepFunction(restored.model), num_steps=num_steps, settings=settings)
    if config.train.loss_on_last_only:  # trained on fixed windows: generate as the original did
        run, kwargs["window"] = sampler.sample_sliding, config.train.seq_len
    else:
        run = sampler.sample
    tokens = run(
        variables, primers, states, tokenizer.grammar.next_state, jax.random.key(seed), **kwargs
    )
    tokens = np.asarray(jax.device_get(tokens))
    sample_seconds = time.perf_counter() - started
    logging.info("sampled %d x %d tokens in %.2f s", *tokens.shape, sample_seconds)

    qpm = primer_piece.initial_qpm if primer_piece is not None else 100.0
    results = []
    for i, row in enumerate(np.concatenate([primers, tokens], axis=1)):
        decoded = tokenizer.decode(row)
        notes = decoded.notes
        primer_beats = tokenizer.decode(primers[i]).beats
        if sample.num_bars > 0:
            notes = cut_at_beat(notes, primer_beats + 4.0 * sample.num_bars)
        time_sig = decoded.time_signatures[0] if decoded.time_signatures else None
        stem = f"sample_{i:02d}"
        info = outputs.render_sample(
            out_dir,
            stem,
            notes,
            title=f"jaxcomposer sample {i + 1} (seed {seed})",
            qpm=qpm,
            time_signature=(time_sig.numerator, time_sig.denominator) if time_sig else (4, 4),
        )
        info.update(
            name=stem,
            notes=len(notes),
            tokens=int(row.size),
            primer_tokens=int(primers.shape[1]),
            skipped_tokens=int(decoded.skipped),
            beats=float(notes.end.max(initial=0.0)),
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
        primer=sample.primer,
        workdir=workdir,
        sample_seconds=round(sample_seconds, 3),
    )
    atomic.write_json(
        os.path.join(out_dir, "samples.json"), {"settings": settings_info, "samples": results}
    )
    index = gallery.write_gallery(
        out_dir, results, title="jaxcomposer samples", settings=settings_info
    )
    return {"out_dir": out_dir, "index": index, "samples": results, "settings": settings_info}
