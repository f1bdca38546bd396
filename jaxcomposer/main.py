r"""The one entry point: `python -m jaxcomposer.main --mode=M --config=NAME --workdir=DIR`.

Modes:
  prepare   MIDI folder (or the embedded Bach chorales) -> token arrays, vocabulary, manifest
  train     train (or resume) the model on the prepared data
  generate  restore a checkpoint from the workdir alone and write samples (MIDI, score, audio)
  evaluate  likelihood on held-out music (and, with --samples, musical statistics vs real music)
  finetune  reward fine-tuning of the trained model with a KL penalty (config `finetune` section);
            then --mode=generate --checkpoint=finetuned samples from it
  all       prepare, train, generate and evaluate in one go (the README's main job)
  serve     the studio: a local web page to generate, see, hear and download samples from the
            trained workdirs (--workdir repeated or comma-separated); docs/studio.md

`--config.a.b=v` overrides any config value (type-checked). Generate/evaluate read the config
saved in the workdir; the sampling flags below override its `sample` section.

Errors end in one line on stderr with exit code 2 (usage) or 1 (failure): cli.py checks the
flags and reports errors.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxcomposer import cli
from jaxcomposer.config_lib import CHOICES, PRIMER_SOURCES

MODES = ("prepare", "train", "generate", "evaluate", "all", "finetune", "serve")


FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "all", MODES, "What to do.")
flags.DEFINE_string("workdir", "runs/default", "Run folder: data, checkpoints, samples, reports.")
try:
    # The default is the built-in config's file (the checkout's or the installed package's):
    # ml_collections loads it here when `--config.a.b=v` overrides are given without --config.
    config_flags.DEFINE_config_file(
        "config", cli.builtin_config(cli.DEFAULT_CONFIG) or cli.DEFAULT_CONFIG,
        "Config: a built-in config's name (default, quick, tiny, jsb, piano, seed_replica) or a "
        "file with get_config().",
    )  # fmt: skip
except (AttributeError, KeyError) as _error:  # ml_collections reads `--config.a.b=v` here
    print(f"error: bad --config override: {cli._cause(_error)}", file=sys.stderr)
    sys.exit(2)
# Generation (override the workdir config's `sample` section when given).
flags.DEFINE_string(
    "out_dir", None, "Where samples go (default: WORKDIR/samples); serve: the results folder, "
    "kept (default: a temporary one, removed at the end).",
)  # fmt: skip
flags.DEFINE_string("primer_midi", None, "Continue this MIDI file instead of starting from BOS.")
flags.DEFINE_enum("primer", None, list(PRIMER_SOURCES), "Primer when no --primer_midi is given.")
flags.DEFINE_string("melody", None, "Harmonize this MIDI melody (top voice), note for note.")
flags.DEFINE_integer("melody_track", None, "--melody: voice part N (0 = highest).")
flags.DEFINE_string("infill", None, "Rewrite these bars of --primer_midi, e.g. 5-8 or 3-4,9-12.")
flags.DEFINE_integer("particles", None, "SMC particles per sample under --melody/--infill.")
flags.DEFINE_integer("num_steps", None, "Tokens to generate per sample.")
flags.DEFINE_integer("num_bars", None, "Bars to generate per sample (overrides --num_steps).")
flags.DEFINE_integer("num_samples", None, "Samples to generate.")
flags.DEFINE_integer("seed", None, "Sampling seed: the same seed gives the same music.")
flags.DEFINE_enum("decoder", None, list(CHOICES["sample.decoder"]), "Decoding rule.")
flags.DEFINE_float("temperature", None, "Softmax temperature.")
flags.DEFINE_float("score_qpm", None, "Performances: engrave at this tempo, not the estimate.")
flags.DEFINE_float(
    "qpm", None, "Written tempo (quarter notes per minute) of the samples' MIDI, score and audio "
    "(default: the primer's, else 100; performance tokens keep their decoded tempo).",
)  # fmt: skip
flags.DEFINE_string(
    "soundfont", None, "A SoundFont (.sf2) to play the audio with instead of pretty_midi's "
    "General-MIDI one (its piano preset, bank 0 program 0).",
)  # fmt: skip
# The studio (--mode=serve).
flags.DEFINE_string(
    "host", "127.0.0.1", "serve: the address to listen on (anything but loopback is reachable "
    "from other machines: a warning is printed).",
)  # fmt: skip
flags.DEFINE_integer("port", 8765, "serve: the port (0 = any free one).", lower_bound=0)
flags.DEFINE_integer("top_k", None, "Keep the k most likely tokens (0 = off).")
flags.DEFINE_float("top_p", None, "Nucleus: smallest set with this much probability (1 = off).")
flags.DEFINE_float("repetition_penalty", None, "> 1 discourages tokens already generated.")
flags.DEFINE_string(
    "checkpoint", None, "best | latest | a step number | finetuned | finetuned:STEP."
)
flags.DEFINE_string(
    "key", None,
    'Key, e.g. "D minor", "F# major", "Bb minor", "Dm"; a schedule "1:D minor,9:F major" (bars); '
    "';' between keys gives each sample the next one.",
)  # fmt: skip
flags.DEFINE_string("style", None, "Style (a training sub-folder) for key+style models.")
flags.DEFINE_enum(
    "scale", None, list(CHOICES["sample.scale"]), "Out-of-scale pitches: mask/penalize."
)
flags.DEFINE_float("scale_penalty", None, "--scale=soft: nats taken off out-of-scale logits.")
flags.DEFINE_float(
    "parallels_penalty", None,
    "Voice tokens: nats off onsets that move a voice in parallel fifths or octaves with a voice "
    "above it (0 = off).",
)  # fmt: skip
flags.DEFINE_string(
    "meter", None,
    "hold (the primer's meter, else the first one sampled, for the whole piece), free, or a "
    "time signature such as 3/4.",
)  # fmt: skip
# Evaluation.
flags.DEFINE_string("eval_dir", None, "Evaluate on this MIDI folder instead of the valid split.")
flags.DEFINE_string("samples", None, "Compare the MIDI files in this folder with real pieces.")
flags.DEFINE_list(
    "ensemble", None,
    "More workdirs (comma-separated) whose models are mixed with --workdir's, token by token; "
    "every member must use the same tokenizer.",
)  # fmt: skip
flags.DEFINE_integer(
    "transpositions", 0,
    "Also mix in each model's predictions on every piece transposed by -N..N semitones, mapped "
    "back (test-time transposition averaging; 0 = off).",
    lower_bound=0,
)  # fmt: skip
flags.DEFINE_bool("progress", True, "Show progress bars.")
# Multi-host (jaxcomposer/train/distributed.py): one process per host, started with the same flags.
flags.DEFINE_enum(
    "distributed", "off", ["off", "auto", "on"],
    "Start jax.distributed: off (one process, unless the three flags below are given), auto "
    "(when JAX detects SLURM, Open MPI or a Cloud TPU pod), on (always; fail if it cannot).",
)  # fmt: skip
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run (0 = primary).")
flags.DEFINE_bool(
    "overwrite", False,
    "prepare: allow tokenizer or data settings other than those of the workdir's checkpoints, "
    "moving those checkpoints aside to checkpoints.replaced-<time>/.",
)  # fmt: skip


def main(argv: list[str]) -> None:
    from jaxcomposer.core.errors import UsageError

    if len(argv) > 1:
        extra = " ".join(argv[1:])
        raise UsageError(f"unexpected arguments: {extra} (flags look like --name=value)")
    mode = FLAGS.mode
    # jax's backend probe reports each platform it cannot open (libtpu.so on every CPU
    # machine) at INFO: noise to a musician, and the devices in use are logged by training.
    import logging as std_logging

    std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
    for line in cli.check_flags(mode):
        cli.warn(line)
    # Each mode imports its stage here, not at the top: jax alone costs ~0.7 s of start-up
    # (measured), and --help and --mode=prepare never need it.
    config = cli.load_config()
    if mode == "serve":
        from jaxcomposer.studio import server

        server.serve(
            cli.serve_workdirs(), host=FLAGS.host, port=FLAGS.port, results_dir=FLAGS.out_dir,
            checkpoint=FLAGS.checkpoint or "best", soundfont=FLAGS.soundfont,
        )  # fmt: skip
        return
    if mode in ("prepare", "train", "all"):
        for field in ("midi_dir", "valid_dir"):
            folder = getattr(config.data, field)
            if folder and not os.path.isdir(folder):
                raise UsageError(f"config data.{field}={folder!r}: no such folder")
    workdir = os.path.abspath(FLAGS.workdir)
    logging.info("mode=%s workdir=%s", mode, workdir)
    from jaxcomposer.train import distributed

    try:  # before anything starts a jax backend
        distributed.initialize(
            FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    except distributed.DistributedSetupError as e:
        raise UsageError(str(e)) from None
    primary = distributed.is_primary()

    if mode in ("prepare", "all"):
        from jaxcomposer.data import dataset

        if primary:  # the others wait for the files at the barrier
            from jaxcomposer import workdir_lib

            with workdir_lib.train_lock(workdir):  # never re-prepare under a running train
                manifest = dataset.prepare(
                    config, workdir, progress=FLAGS.progress, overwrite=FLAGS.overwrite
                )
            print(dataset.summarize(manifest), flush=True)
        distributed.barrier("prepare")
    if mode in ("train", "all"):
        from jaxcomposer.train import loop

        loop.train(config, workdir)
    if not primary:  # fine-tuning, sampling and evaluation are single-host: process 0 runs them
        distributed.barrier("done")
        return
    if mode == "finetune":
        from jaxcomposer.finetune import loop as finetune

        finetune.finetune(config, workdir, progress=FLAGS.progress)
    if mode in ("generate", "all"):
        from jaxcomposer.sample import generate

        paths = generate.generate(
            workdir,
            out_dir=FLAGS.out_dir,
            seed=FLAGS.seed,
            overrides=cli.sample_overrides(),
            score_qpm=FLAGS.score_qpm,
            qpm=FLAGS.qpm,
            soundfont=FLAGS.soundfont,
        )
        print(f"samples: {paths['index']}", flush=True)
    if mode in ("evaluate", "all"):
        from jaxcomposer.evaluation import evaluate

        if FLAGS.samples:
            evaluate.compare_samples(workdir, FLAGS.samples, progress=FLAGS.progress)
        else:
            evaluate.evaluate(
                workdir, eval_dir=FLAGS.eval_dir, progress=FLAGS.progress,
                checkpoint=FLAGS.checkpoint or "best", ensemble=FLAGS.ensemble or (),
                transpositions=FLAGS.transpositions,
            )  # fmt: skip
    distributed.barrier("done")


def run() -> None:
    # Let `--config=configs/x.py` import sibling config modules (`from configs import default`).
    sys.path.insert(0, os.getcwd())
    app.run(lambda argv: cli.main_reporting_errors(main, argv), flags_parser=cli.parse_flags)


if __name__ == "__main__":
    run()
