r"""The one entry point: `python -m jaxcomposer.main --mode=M --config=configs/x.py --workdir=DIR`.

Modes:
  prepare   MIDI folder (or the embedded Bach chorales) -> token arrays, vocabulary, manifest
  train     train (or resume) the model on the prepared data
  generate  restore a checkpoint from the workdir alone and write samples (MIDI, score, audio)
  evaluate  likelihood on held-out music (and, with --samples, musical statistics vs real music)
  all       prepare, train, generate and evaluate in one go (the README's main job)

`--config.a.b=v` overrides any config value (type-checked). Generate/evaluate read the config
saved in the workdir; the sampling flags below override its `sample` section.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("prepare", "train", "generate", "evaluate", "all")

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "all", MODES, "What to do.")
flags.DEFINE_string("workdir", "runs/default", "Run folder: data, checkpoints, samples, reports.")
config_flags.DEFINE_config_file("config", "configs/default.py", "Config file (get_config()).")
# Generation (override the workdir config's `sample` section when given).
flags.DEFINE_string("out_dir", None, "Where samples go (default: WORKDIR/samples).")
flags.DEFINE_string("primer_midi", None, "Continue this MIDI file instead of starting from BOS.")
flags.DEFINE_enum("primer", None, ["none", "valid"], "Primer when no --primer_midi is given.")
flags.DEFINE_integer("num_steps", None, "Tokens to generate per sample.")
flags.DEFINE_integer("num_bars", None, "Bars to generate per sample (overrides --num_steps).")
flags.DEFINE_integer("num_samples", None, "Samples to generate.")
flags.DEFINE_integer("seed", None, "Sampling seed: the same seed gives the same music.")
flags.DEFINE_enum("decoder", None, ["argmax", "temperature"], "Decoding rule.")
flags.DEFINE_float("temperature", None, "Softmax temperature.")
flags.DEFINE_integer("top_k", None, "Keep the k most likely tokens (0 = off).")
flags.DEFINE_float("top_p", None, "Nucleus: smallest set with this much probability (1 = off).")
flags.DEFINE_float("repetition_penalty", None, "> 1 discourages tokens already generated.")
flags.DEFINE_string("checkpoint", None, "best | latest | a step number.")
# Evaluation.
flags.DEFINE_string("eval_dir", None, "Evaluate on this MIDI folder instead of the valid split.")
flags.DEFINE_string("samples", None, "Compare the MIDI files in this folder with real pieces.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_bool(
    "overwrite", False,
    "prepare: allow settings that re-map the token ids of the workdir's checkpoints, moving "
    "those checkpoints aside to checkpoints.replaced-<time>/.",
)  # fmt: skip

_SAMPLE_FLAGS = (
    "primer",
    "num_steps",
    "num_bars",
    "num_samples",
    "decoder",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "checkpoint",
)


def sample_overrides() -> dict:
    """The sample-section fields the user set on the command line."""
    out = {name: getattr(FLAGS, name) for name in _SAMPLE_FLAGS if getattr(FLAGS, name) is not None}
    if FLAGS.primer_midi:
        out["primer"] = FLAGS.primer_midi
    return out


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Each mode imports its stage here, not at the top: jax alone costs ~0.7 s of start-up
    # (measured), and --help and --mode=prepare never need it.
    from jaxcomposer import config_lib

    config = config_lib.freeze(FLAGS.config)
    workdir = os.path.abspath(FLAGS.workdir)
    mode = FLAGS.mode
    logging.info("mode=%s workdir=%s", mode, workdir)

    if mode in ("prepare", "all"):
        from jaxcomposer.data import dataset

        manifest = dataset.prepare(
            config, workdir, progress=FLAGS.progress, overwrite=FLAGS.overwrite
        )
        print(dataset.summarize(manifest), flush=True)
    if mode in ("train", "all"):
        from jaxcomposer.train import loop

        loop.train(config, workdir)
    if mode in ("generate", "all"):
        from jaxcomposer.sample import generate

        paths = generate.generate(
            workdir, out_dir=FLAGS.out_dir, seed=FLAGS.seed, overrides=sample_overrides()
        )
        print(f"samples: {paths['index']}", flush=True)
    if mode in ("evaluate", "all"):
        from jaxcomposer.evaluation import evaluate

        if FLAGS.samples:
            evaluate.compare_samples(workdir, FLAGS.samples, progress=FLAGS.progress)
        else:
            evaluate.evaluate(workdir, eval_dir=FLAGS.eval_dir, progress=FLAGS.progress)


def run() -> None:
    # Let `--config=configs/x.py` import sibling config modules (`from configs import default`).
    sys.path.insert(0, os.getcwd())
    app.run(main)


if __name__ == "__main__":
    run()
