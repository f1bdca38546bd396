"""The command line's checks and error reporting (main.py defines the flags and runs the modes).

Errors: bad input of any mode ends in one line on stderr, `error: <file or field>: <reason>`,
with exit code 2 for a usage error (errors.UsageError: a flag, a config value, a path that
cannot serve its purpose) and 1 for a failure (errors.Failure: a workdir whose files do not fit,
training that diverged, a dataset with nothing usable); see `describe_error`. Anything else is a
bug and keeps its traceback. A flag the mode does not use, or input of which only part is
usable, is a warning.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from absl import flags

FLAGS = flags.FLAGS


def _cause(e: BaseException) -> str:
    """One line from ml_collections' nested errors (an AttributeError wrapping a KeyError that
    holds the message, e.g. "'batch_sizee' Did you mean "batch_size"...")."""
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    return " ".join(str(e.args[0] if e.args else type(e).__name__).split())


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
    "melody",
    "melody_track",
    "infill",
    "particles",
    "parallels_penalty",
    "meter",
)


def sample_overrides() -> dict:
    """The sample-section fields the user set on the command line."""
    out = {name: getattr(FLAGS, name) for name in _SAMPLE_FLAGS if getattr(FLAGS, name) is not None}
    if FLAGS.primer_midi:
        out["primer"] = FLAGS.primer_midi
    # The workdir's saved keys (quick.py's four) are for unprimed samples: music of the user's
    # own, a primer or a melody, keeps its key (as read or estimated) unless --key says one.
    if (FLAGS.primer_midi or FLAGS.melody) and FLAGS.key is None:
        out["key"] = ""
    return out


# Which modes read each optional flag (a flag given to a mode that ignores it is a warning).
_FLAG_MODES = {
    **{name: ("generate",) for name in _SAMPLE_FLAGS + ("primer_midi", "seed")},
    "out_dir": ("generate", "serve"),  # serve: its results folder (kept)
    "score_qpm": ("generate",),
    "qpm": ("generate",),
    "soundfont": ("generate", "serve"),
    "host": ("serve",),
    "port": ("serve",),
    "checkpoint": ("generate", "evaluate", "serve"),
    "eval_dir": ("evaluate",),
    "samples": ("evaluate",),
    "ensemble": ("evaluate",),
    "transpositions": ("evaluate",),
    "overwrite": ("prepare",),
}


def check_flags(mode: str) -> list[str]:
    """Raises UsageError for flag values no mode can use (a missing --primer_midi, an --eval_dir
    that is not a folder...); returns warnings for flags this mode ignores."""
    from jaxcomposer.core.errors import UsageError

    for name in ("primer_midi", "melody"):
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
    if FLAGS.infill and not FLAGS.primer_midi:
        raise UsageError(f"--infill={FLAGS.infill}: needs --primer_midi (the piece to rewrite)")
    if FLAGS.melody and (FLAGS.primer_midi or FLAGS.primer or FLAGS.infill):
        raise UsageError("--melody is the whole piece: leave out --primer, --primer_midi, --infill")
    if FLAGS.primer_midi and FLAGS.primer:
        raise UsageError(f"--primer={FLAGS.primer} and --primer_midi: give one primer")
    for name, flag_value in (("num_steps", 1), ("num_bars", 0), ("num_samples", 1),
                             ("top_k", 0), ("seed", 0), ("particles", 1),
                             ("melody_track", 0)):  # fmt: skip
        value = getattr(FLAGS, name)
        if value is not None and value < flag_value:
            raise UsageError(f"--{name}={value}: must be >= {flag_value}")
    if FLAGS.score_qpm is not None and FLAGS.score_qpm <= 0:
        raise UsageError(f"--score_qpm={FLAGS.score_qpm}: must be > 0 (leave it out to estimate)")
    if FLAGS.qpm is not None and not 1 <= FLAGS.qpm <= 1000:
        raise UsageError(f"--qpm={FLAGS.qpm}: must be in [1, 1000] quarter notes per minute")
    if FLAGS.soundfont is not None:
        from jaxcomposer.render import audio

        problem = audio.soundfont_file_problem(FLAGS.soundfont)
        if problem is not None:
            raise UsageError(f"--soundfont {FLAGS.soundfont}: {problem}")
    if mode == "serve":
        for workdir in serve_workdirs():
            if not os.path.isdir(workdir):
                raise UsageError(f"--workdir {workdir}: no such folder (train a model there)")
    elif len(WORKDIRS) > 1:
        raise UsageError(f"--workdir given {len(WORKDIRS)} times: only --mode=serve takes several")
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
    if mode == "generate" and FLAGS.particles is not None and not (FLAGS.melody or FLAGS.infill):
        warnings.append("--particles is ignored without --melody or --infill (nothing to keep)")
    for name, modes in _FLAG_MODES.items():
        # On the command line (--host and --port have defaults: their values alone say nothing).
        given = FLAGS[name].present and getattr(FLAGS, name) not in (None, False)
        if given and mode != "all" and mode not in modes:
            warnings.append(f"--{name} is ignored by --mode={mode} (it is for {'/'.join(modes)})")
    return warnings


WORKDIRS: list[str] = []  # every --workdir value on the command line, in order (parse_flags)


def serve_workdirs() -> list[str]:
    """--mode=serve's workdirs: every --workdir given (each may be a comma-separated list), in
    order, without repeats; the flag's default when none was given."""
    given = WORKDIRS or [FLAGS.workdir]
    out: list[str] = []
    for value in given:
        for part in value.split(","):
            if part.strip() and part.strip() not in out:
                out.append(part.strip())
    return out


def _collect_workdirs(argv: list[str]) -> list[str]:
    """The values of every --workdir=V / --workdir V in argv (absl keeps only the last)."""
    values, i = [], 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        if arg.startswith("--workdir="):
            values.append(arg[len("--workdir=") :])
        elif arg == "--workdir" and i + 1 < len(argv):
            values.append(argv[i + 1])
            i += 1
        i += 1
    return values


def check_ensemble(workdir: str, members: list[str]) -> None:
    """Raises UsageError for an --ensemble member that is no folder or repeats a workdir."""
    from jaxcomposer.core.errors import UsageError

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
    from jaxcomposer.core.errors import UsageError

    try:
        values = FLAGS.config.to_dict()  # a failed load surfaces on first use
    except (OSError, SyntaxError, AttributeError, ImportError) as e:
        # ml_collections reports a failed load (missing file, syntax error, no get_config) as an
        # OSError listing the paths tried; its last line holds the reason.
        reason = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        name = _config_path()
        if not os.path.exists(name) and os.sep not in name and not name.endswith(".py"):
            reason = f"no such file, nor a built-in config ({', '.join(builtin_config_names())})"
        raise UsageError(f"--config {_config_path()}: cannot load it ({reason})") from None
    return config_lib.freeze(values)


def _config_path() -> str:
    from ml_collections.config_flags import config_flags as cf

    try:
        return cf.get_config_filename(FLAGS["config"])
    except Exception:  # noqa: BLE001 - only for the message
        return "(the config file)"


# --- errors -----------------------------------------------------------------------------------
def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def describe_error(exc: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for the project's error classes and the environment's
    (disk full, permission denied); None for anything else, a bug whose traceback is kept.

    2: UsageError (config_lib.ConfigError, bad flags and input paths) and absl's flag errors.
    1: a Failure (errors.py: a workdir whose files do not fit, a dataset with nothing usable, a
       MIDI file that cannot be read, training that diverged...) and OSError.
    """
    from absl.flags import Error as FlagsError

    from jaxcomposer.core.errors import Failure, UsageError

    def one_line(text: str) -> str:
        return " ".join(str(text).split()) or type(exc).__name__

    if isinstance(exc, UsageError | FlagsError):
        return 2, one_line(exc)
    if isinstance(exc, Failure):
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


def main_reporting_errors(main, argv: list[str]) -> None:
    """Runs `main(argv)`; a known error ends in one line and its exit code, Ctrl-C in a line
    saying how to resume (exit 130); anything else keeps its traceback. Once `main` has
    returned, Ctrl-C is ignored: the work is done and written, and an interrupt during the
    interpreter's teardown only printed a traceback (1 of 20 runs of launch/fault_campaign.py)."""
    try:
        main(argv)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
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


def builtin_config(name: str) -> str | None:
    """The file of built-in config `name` ("quick" -> .../configs/quick.py) from the `configs`
    package (the checkout's, or the one `pip install .` put in site-packages), or None."""
    import importlib.util

    if not name.isidentifier() or name.startswith("_"):
        return None
    try:
        spec = importlib.util.find_spec("configs")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, f"{name}.py")
        if os.path.isfile(path):
            return path
    return None


DEFAULT_CONFIG = "default"  # --config when none is given: the built-in configs/default.py


def builtin_config_names() -> list[str]:
    """The names `builtin_config` knows, sorted."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("configs")
    except (ImportError, ValueError):
        return []
    folders = (spec.submodule_search_locations or []) if spec else []
    return sorted({
        f[:-3] for folder in folders for f in os.listdir(folder)
        if f.endswith(".py") and f[:-3].isidentifier() and not f.startswith("_")
    })  # fmt: skip


def resolve_config_name(argv: list[str]) -> list[str]:
    """argv with `--config=NAME` (a built-in config's name, e.g. quick) replaced by its file;
    a path (`--config=configs/quick.py`, any existing file) is left as it is. (Without a
    --config flag the flag's default applies: main.py sets it to the file of `DEFAULT_CONFIG`,
    so it is found whatever the working directory.)"""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg.startswith("--config="):
            value, where = arg[len("--config=") :], "="
        elif arg == "--config" and i + 1 < len(out):
            value, where = out[i + 1], " "
        else:
            continue
        name, colon, rest = value.partition(":")  # ml_collections: FILE:ARGUMENT
        if os.path.exists(name) or os.sep in name or name.endswith(".py"):
            continue
        path = builtin_config(name)
        if path is not None:
            if where == "=":
                out[i] = f"--config={path}{colon}{rest}"
            else:
                out[i + 1] = f"{path}{colon}{rest}"
    return out


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a bad flag reported in one line and exit code 2 (absl prints two
    lines and exits 1)."""
    WORKDIRS[:] = _collect_workdirs(argv)
    argv = resolve_config_name(argv)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        report(e)
    except SyntaxError as e:  # the --config file itself
        print(f"error: --config {e.filename}:{e.lineno}: {e.msg}", file=sys.stderr)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: bad --config value: {_cause(e)}", file=sys.stderr)
    sys.exit(2)
