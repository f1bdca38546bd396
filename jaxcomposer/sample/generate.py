"""`--mode=generate`: checkpoint -> samples a person can read, hear and use (the orchestrator).

Everything is rebuilt from the workdir alone (config.json, vocab.json, checkpoints/). For each
sample: .mid, .musicxml, engraved score (SVG pages + PNG), .wav, a piano-roll PNG; then
samples.json and an offline index.html gallery. Primers come from sample/primers.py, key
schedules from sample/keyplan.py, bar arithmetic from sample/bars.py, tokens from sampler.py.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from jaxcomposer import config_lib, workdir_lib
from jaxcomposer.config_lib import SampleConfig
from jaxcomposer.data import dataset
from jaxcomposer.model import StepFunction
from jaxcomposer.music.notes import Notes
from jaxcomposer.render import gallery, outputs
from jaxcomposer.sample import bars as bar_lib
from jaxcomposer.sample import constraints, keyplan, sampler
from jaxcomposer.sample import primers as primer_lib
from jaxcomposer.tokenizers import BOS, get_tokenizer


def decoder_settings(sample: SampleConfig) -> sampler.DecoderSettings:
    return sampler.DecoderSettings(
        decoder=sample.decoder,
        temperature=sample.temperature,
        top_k=sample.top_k,
        top_p=sample.top_p,
        repetition_penalty=sample.repetition_penalty,
        grammar_mask=sample.grammar_mask,
    )


def _stop(futures: list[concurrent.futures.Future]) -> None:
    """Cancels the renders not started and waits for the running ones to end."""
    for future in futures:
        future.cancel()
    concurrent.futures.wait(futures)


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


def _training_meter(workdir: str, tokenizer) -> tuple[int, int] | None:
    """The meter the validation music states most often (bar_lib.corpus_meter), or None when
    the workdir holds no data split (a model copied without its data) or its tokens state none."""
    if not tokenizer.meter_tokens():
        return None
    try:
        split = dataset.load_split(workdir, "valid")
    except (OSError, ValueError) as e:
        logging.info("no validation split to take a meter from (%s)", e)
        return None
    return bar_lib.corpus_meter(tokenizer, split.tokens)


@outputs.closes_sample_sets  # an unfinished set's staging folder and lock go on any error
def generate(
    workdir: str,
    *,
    out_dir: str | None = None,
    seed: int | None = None,
    overrides: dict | None = None,
    score_qpm: float | None = None,
    restored: workdir_lib.Restored | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    qpm: float | None = None,
    soundfont: str | None = None,
    executor: concurrent.futures.Executor | None = None,
    skip_stages: tuple[str, ...] = (),
) -> dict:
    """Writes samples into out_dir (default WORKDIR/samples); returns paths and per-sample info.
    For tokens in real time (performance), the score is engraved on an estimated beat grid
    (render/beat_grid.py) whose tempo `score_qpm` overrides.

    `restored`: the workdir's model already restored (`workdir_lib.restore_for_inference`,
    e.g. by the studio, which restores once and so reuses the compiled sampler); its checkpoint
    is used whatever `overrides` say. `progress(stage, done, total)` is called as the work
    goes on: ("sampling", 0, 1), ("sampled", 1, 1), then ("rendering", i, num_samples) before
    each sample and ("rendered", num_samples, num_samples) at the end. `qpm`: the written
    tempo (quarter notes per minute) of the MIDI, score and audio, instead of the primer's (or
    100); tokens in real time keep their decoded tempo. `soundfont`: an .sf2 file for the audio
    instead of pretty_midi's General-MIDI one. `executor`: renders the samples in parallel
    (`render_sample` must be picklable for a process pool; it is); `skip_stages`:
    render_sample stages not wanted (e.g. ("png", "roll") where a page draws its own)."""
    report = progress or (lambda stage, done, total: None)
    base = restored.config if restored is not None else workdir_lib.load_config(workdir)
    config = config_lib.replace(base, sample=dict(overrides or {}))
    config_lib.validate(config)  # the command line's sampling flags
    sample = config.sample
    seed = config.seed if seed is None else seed
    primer_piece = request = None
    if constraints.wanted(sample):  # --melody / --infill (sample/constraints.py)
        request = constraints.prepare(config, get_tokenizer(config.tokenizer), sample)
        primer_piece = request.piece
    elif sample.primer not in config_lib.PRIMER_SOURCES:  # a MIDI file: a bad one fails before jax
        primers, primer_piece = primer_lib.primer_from_midi(
            config, get_tokenizer(config.tokenizer), sample.primer
        )
    # The tokenizer and model are built once, by the restore; sampling settings are `config`'s.
    if restored is None:
        restored = workdir_lib.restore_for_inference(workdir, sample.checkpoint)
    tokenizer, variables, step = restored.tokenizer, restored.variables, restored.step
    # Which run wrote the weights, shown per sample in samples.json and the gallery.
    model_label = f"{restored.source} (step {step})"
    default_out = os.path.join(workdir, "samples")
    if restored.source == "finetuned":  # never overwrite the pretrained model's samples
        default_out = os.path.join(workdir_lib.finetune_dir(workdir), "samples")
    # The new set is rendered into a staging folder and swapped in whole at the end; only the
    # files the previous samples.json lists are replaced (render/outputs.py).
    sample_set = outputs.SampleSet(out_dir or default_out)
    out_dir, staging = sample_set.out_dir, sample_set.staging
    primer_notes = [None] * sample.num_samples
    if request is not None:
        primers = request.primers(sample.num_samples)
    elif sample.primer == "none":
        primers = np.full((sample.num_samples, 1), BOS, np.int32)
    elif sample.primer == "valid":
        primers = primer_lib.primers_from_valid(workdir, tokenizer, sample, seed)
    if sample.primer != "none":
        primer_notes = [tokenizer.decode(row).notes for row in primers]
    if request is not None:  # the key of the given notes
        primer_notes = [request.key_notes] * sample.num_samples
    keyed = restored.spec.dim > 0 or bool(sample.key.strip()) or sample.scale != "off"
    source = request.kind if request is not None and request.kind == "melody" else "primer"
    plan = (keyplan.plan_keys(workdir, sample, restored.spec, primer_notes, seed, source)
            if keyed else None)  # fmt: skip

    num_steps = bar_lib.steps_for_bars(
        tokenizer, primers, sample, bar_lib.meters_of(tokenizer, primers[0], primer_piece)
    )
    settings = decoder_settings(sample)
    states = sampler.grammar_states_after(tokenizer.grammar, primers)
    report("sampling", 0, 1)
    started = time.perf_counter()
    kwargs = dict(step_fn=StepFunction(restored.model), num_steps=num_steps, settings=settings)
    args = (variables, primers, states, tokenizer.grammar.next_state, jax.random.key(seed))
    removed = pitch_steps = None
    kwargs["held"] = sampler.held_keys(tokenizer.grammar, primers)
    if request is None:  # the SMC under constraints holds the given notes' own meter
        rows_meter = bar_lib.held_meters(
            tokenizer, sample.meter, primers, primer_piece,
            default=_training_meter(workdir, tokenizer),
        )  # fmt: skip
        kwargs["meter"] = (None if rows_meter is None
                           else sampler.meter_hold(tokenizer, rows_meter, primers))
        kwargs["voices"] = sampler.parallels_rule(tokenizer, primers, sample.parallels_penalty)
    if request is not None:
        primers, tokens, constrained, constraint_settings = constraints.sample_for_generate(
            restored, request, sample, plan, seed
        )
        num_steps = tokens.shape[1]
    elif keyed:
        inputs, kwargs["ks"] = keyplan.keyed_run(restored, sample, primers, plan)
        tokens, removed, pitch_steps = jax.device_get(sampler.sample_keyed(*args, inputs, **kwargs))
        removed, pitch_steps = np.asarray(removed), np.asarray(pitch_steps)
    elif config.train.loss_on_last_only:  # trained on fixed windows: generate as the original did
        tokens = sampler.sample_sliding(*args, window=config.train.seq_len, **kwargs)
    else:
        tokens = sampler.sample(*args, **kwargs)
    tokens = np.asarray(jax.device_get(tokens))
    sample_seconds = time.perf_counter() - started
    logging.info("sampled %d x %d tokens in %.2f s", *tokens.shape, sample_seconds)
    report("sampled", 1, 1)

    if qpm is None:
        qpm = primer_piece.initial_qpm if primer_piece is not None else 100.0
    qpm = tokenizer.decoded_qpm or qpm  # performance tokens decode to seconds at a fixed tempo
    rows = np.concatenate([primers, tokens], axis=1)
    jobs = []  # per sample: (row, decoded, notes, end, bars, render_sample's arguments)
    for i, row in enumerate(rows):
        decoded = tokenizer.decode(row)
        notes = decoded.notes
        meters = bar_lib.meters_of(tokenizer, row, primer_piece)
        end, bars = None, None
        if sample.num_bars > 0 and request is None:
            end, bars = bar_lib.end_beat(tokenizer, primers[i], row, meters, sample.num_bars)
            notes = bar_lib.cut_at_beat(notes, end)
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
        render_kwargs = dict(
            title=f"jaxcomposer sample {i + 1} (seed {seed})",
            qpm=qpm,
            time_signature=(time_sig.numerator, time_sig.denominator) if time_sig else (4, 4),
            time_signatures=meters,
            key_number=plan.schedules[i][0][1] if plan else None,
            key_signatures=(
                bar_lib.key_changes(tokenizer, row, meters, plan.schedules[i]) if plan else ()
            ),
            soundfont=soundfont,
            skip=skip_stages,
            given=request.given if request is not None else None,
            **grid,
        )
        jobs.append((row, decoded, notes, end, bars, (staging, stem, notes), render_kwargs))
    # With an executor (e.g. a process pool) the samples render in parallel, in any order.
    futures = [
        executor.submit(outputs.render_sample, *args, **kwargs) if executor else None
        for *_, args, kwargs in jobs
    ]
    results = []
    for i, (row, decoded, notes, end, bars, args, kwargs) in enumerate(jobs):
        report("rendering", i, len(jobs))
        stem = args[1]
        try:
            info = futures[i].result() if executor else outputs.render_sample(*args, **kwargs)
        except BaseException:
            # No render may still write into the staging folder once it is removed.
            _stop([f for f in futures if f is not None])
            raise
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
        if request is not None:
            info.update(constrained[i], given_kept=round(constraints.given_kept(
                request, notes, tokenizer.config.steps_per_beat), 4))  # fmt: skip
        if plan:
            info.update(requested_key=plan.describe(i), key_source=plan.sources[i])
            if plan.styles[i] >= 0:
                info["style"] = plan.style_names[plan.styles[i]]
        if plan and removed is not None:
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
        meter=sample.meter,
        parallels_penalty=sample.parallels_penalty if tokenizer.voice_tables() else None,
        bar_counting=tokenizer.bar_counter().note,
        sample_seconds=round(sample_seconds, 3),
        **(constraint_settings if request is not None else {}),
        qpm=round(float(qpm), 2),
    )
    report("rendered", len(results), len(results))
    index = gallery.write_gallery(
        staging, results, title="jaxcomposer samples", settings=settings_info, home=out_dir
    )
    sample_set.commit({"settings": settings_info, "samples": results})
    index = os.path.join(out_dir, os.path.basename(index))
    return {"out_dir": out_dir, "index": index, "samples": results, "settings": settings_info}
