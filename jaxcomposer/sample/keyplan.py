"""Key planning shared by generation and fine-tuning: each sample's key schedule and style.

A schedule is [(first bar, key number)]; bars are the tokenizer's (`Tokenizer.bar_counter`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import logging

from jaxcomposer import workdir_lib
from jaxcomposer.config_lib import SampleConfig
from jaxcomposer.core.errors import UsageError
from jaxcomposer.data import dataset
from jaxcomposer.music import keys
from jaxcomposer.music.notes import Notes
from jaxcomposer.sample import sampler


@dataclasses.dataclass(frozen=True)
class KeyPlan:
    """The key schedule (and style) of each sample, and where each came from."""

    schedules: list[list[tuple[int, int]]]  # per sample: [(first bar, key number)]
    sources: list[str]  # per sample: "requested" | "primer" | "melody" | "drawn"
    styles: list[int]  # per sample: style index, -1 = none
    style_names: tuple[str, ...]

    def describe(self, i: int) -> str:
        schedule = self.schedules[i]
        if len(schedule) == 1:
            return keys.key_name(schedule[0][1])
        return ",".join(f"{bar}:{keys.key_name(k)}" for bar, k in schedule)


def plan_keys(
    workdir: str,
    sample: SampleConfig,
    spec,
    primer_notes: list[Notes | None],
    seed,
    estimated_from: str = "primer",
) -> KeyPlan:
    """Each sample's key schedule: `sample.key` (one schedule, or several separated by ';' used
    in turn, e.g. "C major;A minor"), else the primer's estimated key, else a key drawn from the
    training pieces' keys (manifest). Bars count from the start of the primer. `estimated_from`
    names the music the key was estimated from in `sources` ("primer", or "melody" when
    primer_notes hold a melody to harmonize). Raises
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
        counts = dataset.key_counts(workdir_lib.read_manifest(workdir))
        names, weights = list(counts), np.asarray(list(counts.values()), np.float64)
        schedules, sources = [], []
        for notes in primer_notes:
            if notes is not None and len(notes):
                schedules.append([(1, keys.estimate_key(notes)[0])])
                sources.append(estimated_from)
            else:
                drawn = names[rng.choice(len(names), p=weights / weights.sum())] if names else "C"
                schedules.append([(1, keys.parse_key(drawn))])
                sources.append("drawn")
    styles = [-1] * n
    if sample.style and not spec.uses_style:
        logging.warning("--style=%s is ignored: this model is not conditioned on a style "
                        "(model.condition=%s)", sample.style, spec.condition)  # fmt: skip
    if spec.uses_style:
        if sample.style and sample.style not in spec.styles:
            raise UsageError(f"unknown style {sample.style!r}; the model knows {list(spec.styles)}")
        styles = [
            spec.styles.index(sample.style) if sample.style else int(rng.integers(len(spec.styles)))
            for _ in range(n)
        ]
    return KeyPlan(schedules, sources, styles, spec.styles)


def keyed_run(restored, sample: SampleConfig, primers, plan: KeyPlan):
    """(sampler function, its extra args, its static kwargs) for conditioned/scale sampling."""
    ks = sampler.key_settings(restored.tokenizer, restored.spec, sample.scale, sample.scale_penalty)
    inputs = sampler.key_inputs(restored.tokenizer, ks, primers, plan.schedules, plan.styles)
    return inputs, ks
