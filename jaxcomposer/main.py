r"""The one entry point: `python -m jaxcomposer.main --mode=M --config=configs/x.py --workdir=DIR`.

Modes:
  prepare   MIDI folder (or the embedded Bach chorales) -> token arrays, vocabulary, manifest
  train     train (or resume) the model on the prepared data
  generate  restore a checkpoint from the workdir alone and write samples (MIDI, score, audio)
  evaluate  likelihood on held-out music (and, with --samples, musical statistics vs real music)
  finetune  reward fine-tuning of the trained model with a KL penalty (config `finetune` section);
            then --mode=generate --checkpoint=finetuned samples from it
  all       prepare, train, generate and evaluate in one go (the README's main job)

`--config.a.b=v` overrides any config value (type-checked). Generate/evaluate read the config
saved in the workdir; the sampling flags below override its `sample` section.

Errors: bad input of any mode ends in one line on stderr, `error: <file or field>: <reason>`,
with exit code 2 for a usage error (a flag, a config value, a path that cannot serve its
purpose) and 1 for a failure (a workdir whose files do not fit, training that diverged, a
dataset with nothing usable); see `describe_error`. Anything else is a bug and keeps its
traceback. A flag the mode does not use, or input of which only part is usable, is a warning.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = ("prepare", "train", "generate", "evaluate", "all", "finetune")


def _cause(e: BaseException) -> str:
    """One line from ml_collections' nested errors (an AttributeError wrapping a KeyError that
    holds the message, e.g. "'batch_sizee' Did you mean "batch_size"...")."""
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    return " ".join(str(e.args[0] if e.args else type(e).__name__).split())


FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "all", MODES, "What to do.")
flags.DEFINE_string("workdir", "runs/default", "Run folder: data, checkpoints, samples, reports.")
try:
    config_flags.DEFINE_config_file("config", "configs/default.py", "Config file (get_config()).")
except (AttributeError, KeyError) as _error:  # ml_collections reads `--config.a.b=v` here
    print(f"error: bad --config override: {_cause(_error)}", file=sys.stderr)
    sys.exit(2)
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
flags.DEFINE_float("score_qpm", None, "Performances: engrave at this tempo, not the estimate.")
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
flags.DEFINE_enum("scale", None, ["strict", "soft", "off"], "Out-of-scale pitches: mask/penalize.")
flags.DEFINE_float("scale_penalty", None, "--scale=soft: nats taken off out-of-scale logits.")
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
# Multi-host (jaxcomposer/distributed.py): one process per host, started with the same flags.
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
    "key",
    "style",
    "scale",
    "scale_penalty",
)


def sample_overrides() -> dict:
    """The sample-section fields the user set on the command line."""
    out = {name: getattr(FLAGS, name) for name in _SAMPLE_FLAGS if getattr(FLAGS, name) is not None}
    if FLAGS.primer_midi:
        out["primer"] = FLAGS.primer_midi
    return out


# Which modes read each optional flag (a flag given to a mode that ignores it is a warning).
_FLAG_MODES = {
    **{name: ("generate",) for name in _SAMPLE_FLAGS + ("out_dir", "primer_midi", "seed")},
    "score_qpm": ("generate",),
    "checkpoint": ("generate", "evaluate"),
    "eval_dir": ("evaluate",),
    "samples": ("evaluate",),
    "ensemble": ("evaluate",),
    "transpositions": ("evaluate",),
    "overwrite": ("prepare",),
}


def check_flags(mode: str) -> list[str]:
    """Raises UsageError for flag values no mode can use (a missing --primer_midi, an --eval_dir
    that is not a folder...); returns warnings for flags this mode ignores."""
    from jaxcomposer.errors import UsageError

    for name in ("primer_midi",):
        path = getattr(FLAGS, name)
        if path is not None and not os.path.isfile(path):
            reason = "is a folder, not a MIDI file" if os.path.isdir(path) else "no such file"
            raise UsageError(f"--{name} {path}: {reason}")
    for name in ("eval_dir", "samples"):
        path = getattr(FLAGS, name)
        if path is not None and not os.path.isdir(path):
            reason = "is a file, not a folder" if os.path.exists(path) else "no such folder"
            raise UsageError(f"--{name} {path}: {reason}")
    if FLAGS.eval_dir and FLAGS.samples:
        raise UsageError("--eval_dir and --samples ask for two different evaluations: give one")
    check_ensemble(FLAGS.workdir, FLAGS.ensemble or [])
    if (FLAGS.ensemble or FLAGS.transpositions) and FLAGS.samples:
        raise UsageError(
            "--ensemble/--transpositions score likelihood; --samples compares MIDI files: give one"
        )
    if FLAGS.out_dir and os.path.exists(FLAGS.out_dir) and not os.path.isdir(FLAGS.out_dir):
        raise UsageError(f"--out_dir {FLAGS.out_dir}: is a file, not a folder")
    if FLAGS.primer_midi and FLAGS.primer:
        raise UsageError(f"--primer={FLAGS.primer} and --primer_midi: give one primer")
    for name, flag_value in (("num_steps", 1), ("num_bars", 0), ("num_samples", 1),
                             ("top_k", 0), ("seed", 0)):  # fmt: skip
        value = getattr(FLAGS, name)
        if value is not None and value < flag_value:
            raise UsageError(f"--{name}={value}: must be >= {flag_value}")
    if FLAGS.score_qpm is not None and FLAGS.score_qpm <= 0:
        raise UsageError(f"--score_qpm={FLAGS.score_qpm}: must be > 0 (leave it out to estimate)")
    if mode in ("generate", "evaluate", "finetune") and not os.path.isdir(FLAGS.workdir):
        raise UsageError(f"--workdir {FLAGS.workdir}: no such folder (train a model there first)")
    warnings = []
    if mode in ("generate", "evaluate") and any(a.startswith("--config") for a in sys.argv[1:]):
        warnings.append(
            f"--config and --config.* are ignored by --mode={mode}: it rebuilds the run from "
            f"{FLAGS.workdir}/config.json; use the generation flags (--temperature, ...) instead"
        )
    if FLAGS.num_bars and FLAGS.num_steps:
        warnings.append("--num_steps is only a minimum when --num_bars is given (bars decide)")
    for name, modes in _FLAG_MODES.items():
        given = getattr(FLAGS, name) not in (None, False)
        if given and mode != "all" and mode not in modes:
            warnings.append(f"--{name} is ignored by --mode={mode} (it is for {'/'.join(modes)})")
    return warnings


def check_ensemble(workdir: str, members: list[str]) -> None:
    """Raises UsageError for an --ensemble member that is no folder or repeats a workdir."""
    from jaxcomposer.errors import UsageError

    seen = {os.path.realpath(workdir)}
    for member in members:
        if not os.path.isdir(member):
            raise UsageError(f"--ensemble {member}: no such folder (a trained workdir)")
        if os.path.realpath(member) in seen:
            raise UsageError(f"--ensemble {member}: given twice (or it is --workdir itself)")
        seen.add(os.path.realpath(member))


def load_config():
    """The --config file's values, frozen; a file that cannot be loaded is a UsageError."""
    from jaxcomposer import config_lib
    from jaxcomposer.errors import UsageError

    try:
        values = FLAGS.config.to_dict()  # a failed load surfaces on first use
    except (OSError, SyntaxError, AttributeError, ImportError) as e:
        # ml_collections reports a failed load (missing file, syntax error, no get_config) as an
        # OSError listing the paths tried; its last line holds the reason.
        reason = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise UsageError(f"--config {_config_path()}: cannot load it ({reason})") from None
    return config_lib.freeze(values)


def _config_path() -> str:
    from ml_collections.config_flags import config_flags as cf

    try:
        return cf.get_config_filename(FLAGS["config"])
    except Exception:  # noqa: BLE001 - only for the message
        return "(the config file)"


def main(argv: list[str]) -> None:
    from jaxcomposer.errors import UsageError

    if len(argv) > 1:
        extra = " ".join(argv[1:])
        raise UsageError(f"unexpected arguments: {extra} (flags look like --name=value)")
    mode = FLAGS.mode
    for line in check_flags(mode):
        warn(line)
    # Each mode imports its stage here, not at the top: jax alone costs ~0.7 s of start-up
    # (measured), and --help and --mode=prepare never need it.
    config = load_config()
    if mode in ("prepare", "train", "all"):
        for field in ("midi_dir", "valid_dir"):
            folder = getattr(config.data, field)
            if folder and not os.path.isdir(folder):
                raise UsageError(f"config data.{field}={folder!r}: no such folder")
    workdir = os.path.abspath(FLAGS.workdir)
    logging.info("mode=%s workdir=%s", mode, workdir)
    from jaxcomposer import distributed

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
            overrides=sample_overrides(),
            score_qpm=FLAGS.score_qpm,
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


# --- errors -----------------------------------------------------------------------------------
def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _loaded(module: str, *names: str) -> tuple[type, ...]:
    """Error classes of `module` if it was imported (an error it defines can only come from it
    then); importing it here would cost start-up for nothing."""
    found = sys.modules.get(module)
    return tuple(getattr(found, n) for n in names) if found else ()


def describe_error(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for the project's error classes and the environment's
    (disk full, permission denied); None for anything else, a bug whose traceback is kept.

    2: UsageError (config_lib.ConfigError, bad flags and input paths) and absl's flag errors.
    1: workdir_lib.CheckpointError (incl. WorkdirBusyError), data.dataset PrepareError and
       DatasetError, MidiReadError, tokenizer EncodingError/TranspositionError, training or
       fine-tuning divergence, OSError.
    """
    from absl.flags import Error as FlagsError

    from jaxcomposer.errors import UsageError

    def one_line(text: str) -> str:
        return " ".join(str(text).split()) or type(exc).__name__

    if isinstance(exc, UsageError | FlagsError):
        return 2, one_line(exc)
    failures = (
        _loaded("jaxcomposer.workdir_lib", "CheckpointError")
        + _loaded("jaxcomposer.data.dataset", "PrepareError", "DatasetError")
        + _loaded("jaxcomposer.data.smf", "MidiReadError")
        + _loaded("jaxcomposer.tokenizers.base", "EncodingError", "TranspositionError")
        + _loaded("jaxcomposer.train.loop", "TrainingDivergedError")
        + _loaded("jaxcomposer.finetune.loop", "FinetuneDivergedError")
    )
    if failures and isinstance(exc, failures):
        return 1, one_line(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return 1, one_line(f"{where}{exc.strerror}")
    return None


def report(exc: BaseException) -> int | None:
    """Prints `error: ...` for a known error and returns its exit code (None: not known)."""
    described = describe_error(exc)
    if described is None:
        return None
    code, line = described
    print(f"error: {line}", file=sys.stderr, flush=True)
    return code


def _resume_hint() -> str:
    """What a person can do after Ctrl-C: training and fine-tuning resume from their last
    checkpoint when the same command runs again (or start over when none was written yet)."""
    try:
        mode, workdir = FLAGS.mode, FLAGS.workdir
    except Exception:  # noqa: BLE001 - flags not parsed yet: nothing to add
        return ""
    if mode not in ("train", "finetune", "all"):
        return ""
    from jaxcomposer import workdir_lib

    folder = workdir_lib.finetune_dir(workdir) if mode == "finetune" else workdir
    steps = workdir_lib.checkpoint_steps(folder)
    if not steps:
        return "; no checkpoint was written yet: the same command starts over"
    return f"; run the same command again to resume from the checkpoint at step {steps[-1]}"


def _main_reporting_errors(argv: list[str]) -> None:
    try:
        main(argv)
    except KeyboardInterrupt:
        print(f"error: interrupted{_resume_hint()}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # Not sys.exit: tearing the interpreter down under XLA's running threads segfaulted
        # (exit 139) in 3 of 7 interrupts. Leaving at once is what kill -9 does, which every
        # file this program writes survives (tests/test_kill_train.py).
        os._exit(130)
    except Exception as exc:
        code = report(exc)
        if code is None:
            raise
        sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a bad flag reported in one line and exit code 2 (absl prints two
    lines and exits 1)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        report(e)
    except SyntaxError as e:  # the --config file itself
        print(f"error: --config {e.filename}:{e.lineno}: {e.msg}", file=sys.stderr)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: bad --config value: {_cause(e)}", file=sys.stderr)
    sys.exit(2)


def run() -> None:
    # Let `--config=configs/x.py` import sibling config modules (`from configs import default`).
    sys.path.insert(0, os.getcwd())
    app.run(_main_reporting_errors, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
