"""Every mode's bad input ends in one line on stderr naming the file or field and the reason,
exit code 2 for usage errors and 1 for failures, never a traceback.

A few cases run `python -m jaxcomposer.main` as a subprocess (each costs seconds of imports);
the rest check the same functions in-process: the error mapping, the config checks and the
primer reader."""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys
from unittest import mock

import midi_factory as mf
import pytest
from conftest import tiny_config

from configs import tiny
from jaxcomposer import cli, config_lib, main, workdir_lib
from jaxcomposer.core.errors import UsageError
from jaxcomposer.data import dataset
from jaxcomposer.data.smf import MidiReadError
from jaxcomposer.sample import primers as primer_lib
from jaxcomposer.tokenizers import get_tokenizer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(*args: str) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, "-m", "jaxcomposer.main", "--noprogress", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    return done.returncode, errors


def test_usage_errors_exit_2_in_one_line(tmp_path):
    code, errors = run_main("--mode=bogus")
    assert code == 2 and len(errors) == 1 and "--mode=bogus" in errors[0]
    code, errors = run_main("--mode=prepare", "--config.train.batch_size=-3")
    assert code == 2 and errors == ["error: config train.batch_size=-3: must be >= 1"]
    missing = tmp_path / "nowhere"
    code, errors = run_main("--mode=generate", f"--workdir={missing}")
    assert code == 2 and len(errors) == 1 and str(missing) in errors[0]


def test_flags_a_mode_ignores_warn_only_when_given(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "jaxcomposer.main", "--mode=prepare", "--config=nosuch",
         f"--workdir={tmp_path}", "--port=9000", "--temperature=0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: --temperature is ignored by --mode=prepare (it is for generate)",
        "warning: --port is ignored by --mode=prepare (it is for serve)",
    ]  # not --host, which has a default and was not given
    # The studio reads --checkpoint (which model to restore) and --out_dir (its results).
    assert "serve" in cli._FLAG_MODES["checkpoint"] and "serve" in cli._FLAG_MODES["out_dir"]


def test_workdir_and_folder_problems_name_the_file(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"seed": 0, "data": ')  # torn
    code, errors = run_main("--mode=generate", f"--workdir={workdir}")
    assert code == 1 and len(errors) == 1
    assert f"{workdir}/config.json: not a valid jaxcomposer config" in errors[0]
    # A folder of files none of which is usable: --eval_dir is an error naming each reason.
    (workdir / "config.json").write_text(config_lib.to_json(tiny_config()))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.mid").write_text("not midi")
    mf.write_midi_file(bad / "drums.mid", [mf.notes([(36, 0, 1)], channel=9)])
    code, errors = run_main("--mode=evaluate", f"--workdir={workdir}", f"--eval_dir={bad}")
    assert code == 2 and len(errors) == 1
    assert f"--eval_dir {bad}" in errors[0] and "drums.mid: drum-only" in errors[0]
    assert "text.mid: not a MIDI file" in errors[0]


@pytest.mark.parametrize(
    "exc, code",
    [
        (UsageError("--x: y"), 2),
        (config_lib.ConfigError("config a.b=1: must be > 1"), 2),
        (workdir_lib.WorkdirError("w/checkpoints: no checkpoints"), 1),
        (workdir_lib.WorkdirBusyError("w is being trained by pid 1"), 1),
        (dataset.PrepareError("no usable pieces\nin x"), 1),
        (dataset.DatasetError("no prepared dataset"), 1),
        (MidiReadError("a.mid", "truncated"), 1),
        (PermissionError(13, "Permission denied", "/w/config.json"), 1),
    ],
)
def test_error_classes_map_to_one_line_and_an_exit_code(exc, code):
    got_code, line = cli.describe_error(exc)
    assert got_code == code and "\n" not in line and line
    assert cli.describe_error(RuntimeError("a bug")) is None  # keeps its traceback


def test_config_values_are_checked_naming_the_field():
    def frozen(edit):
        values = tiny.get_config()
        edit(values)
        return config_lib.freeze(values)

    bad = {
        "tokenizer.name": lambda c: setattr(c.tokenizer, "name", "remi"),
        "model.dropout": lambda c: setattr(c.model, "dropout", 1.5),
        "train.seq_len": lambda c: setattr(c.train, "seq_len", 0),
        "tokenizer.pitch_max": lambda c: setattr(c.tokenizer, "pitch_max", 10),
        "sample.checkpoint": lambda c: setattr(c.sample, "checkpoint", "newest"),
        "data.programs": lambda c: setattr(c.data, "programs", (0, 200)),
        "model.condition_logits": lambda c: setattr(c.model, "condition_logits", True),
        "sample.scale_penalty": lambda c: setattr(c.sample, "scale_penalty", float("inf")),
    }
    for field, edit in bad.items():
        with pytest.raises(config_lib.ConfigError, match=field.replace(".", r"\.")):
            frozen(edit)
    with pytest.raises(config_lib.ConfigError, match="unknown keys"):
        config_lib.freeze({**config_lib.to_dict(tiny_config()), "extra": 1})


def test_primer_files_that_yield_nothing_are_errors_and_partial_ones_warn(tmp_path, caplog):
    config = tiny_config()
    tokenizer = get_tokenizer(config.tokenizer)
    (tmp_path / "empty.mid").write_bytes(b"")
    (tmp_path / "text.mid").write_text("hello")
    mf.write_midi_file(tmp_path / "drums.mid", [mf.notes([(36, 0, 1)], channel=9)])
    mf.simple_file(tmp_path / "high.mid", [(120, 0, 1), (125, 1, 2)])
    cases = {
        "missing.mid": "no such file",
        "empty.mid": "empty",
        "text.mid": "not a MIDI file",
        "drums.mid": "drum-only",
        "high.mid": "all 2 notes lie outside the pitch range",
    }
    for name, reason in cases.items():
        path = os.path.join(tmp_path, name)
        with pytest.raises(UsageError, match=f"--primer_midi {path}: .*{reason}"):
            primer_lib.primer_from_midi(config, tokenizer, path)
    mf.simple_file(tmp_path / "part.mid", [(120, 0, 1), (60, 1, 2), (64, 2, 3)])
    with caplog.at_level(logging.WARNING):
        primers, piece = primer_lib.primer_from_midi(config, tokenizer, str(tmp_path / "part.mid"))
    assert len(piece.notes) == 2 and primers.shape[0] == config.sample.num_samples
    assert "1 of 3 notes outside the pitch range [21, 108] dropped" in caplog.text


def test_ctrl_c_tells_how_to_resume_training_and_fine_tuning(capsys, tmp_path):
    (tmp_path / "checkpoints" / "20").mkdir(parents=True)
    expected = {
        "train": "; run the same command again to resume from the checkpoint at step 20",
        "finetune": "; no checkpoint was written yet: the same command starts over",
        "generate": "",
    }
    try:
        for mode, hint in expected.items():
            main.FLAGS.unparse_flags()
            main.FLAGS(["jaxcomposer", f"--mode={mode}", f"--workdir={tmp_path}"])
            interrupted = mock.Mock(side_effect=KeyboardInterrupt)  # main, stopped by Ctrl-C
            with mock.patch.object(cli.os, "_exit", side_effect=SystemExit) as leave:
                with pytest.raises(SystemExit):
                    cli.main_reporting_errors(interrupted, ["jaxcomposer"])
            leave.assert_called_once_with(130)
            assert capsys.readouterr().err.strip() == "error: interrupted" + hint
    finally:
        main.FLAGS.unparse_flags()


# The console command's flag parsing, from a folder that is not the checkout (as after
# `pip install .`): the package and its configs are found on the path, not in the cwd.
_PARSE_AND_PRINT = (
    "import sys\n"
    "from jaxcomposer import cli, config_lib, main\n"
    "cli.parse_flags(['jaxcomposer', *sys.argv[1:]])\n"
    "try:\n"
    "    print(config_lib.to_json(cli.load_config()))\n"
    "except Exception as e:\n"
    "    sys.exit(cli.report(e))\n"
)


def _config_from_elsewhere(cwd: pathlib.Path, *args: str) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # the checkout, not the cwd, holds the code
    done = subprocess.run(
        [sys.executable, "-c", _PARSE_AND_PRINT, *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def test_config_names_resolve_from_another_folder(tmp_path):
    # Overrides without --config load the default at flag definition: no second definition.
    from configs import default

    (tmp_path / "configs").mkdir()  # a folder of the same name that is no package of ours
    expected_tiny = config_lib.to_json(config_lib.freeze(tiny.get_config()))
    expected_default = config_lib.to_json(config_lib.freeze(default.get_config()))
    code, out, err = _config_from_elsewhere(tmp_path, "--config=tiny")
    assert code == 0 and out.strip() == expected_tiny, err
    code, out, err = _config_from_elsewhere(tmp_path)  # no --config: the built-in default
    assert code == 0 and out.strip() == expected_default, err
    # A name with overrides, and the path form (a file outside the package) still work.
    code, out, err = _config_from_elsewhere(tmp_path, "--config=tiny", "--config.seed=7")
    assert code == 0 and config_lib.from_json(out).seed == 7, err
    code, out, err = _config_from_elsewhere(tmp_path, "--config.data.max_pieces=3")
    assert code == 0 and config_lib.from_json(out).data.max_pieces == 3, err
    assert config_lib.from_json(out).model.hidden_size == default.get_config().model.hidden_size
    own = tmp_path / "mine.py"
    own.write_text(
        "from configs import tiny\n\ndef get_config():\n"
        "    c = tiny.get_config()\n    c.train.num_steps = 3\n    return c\n"
    )
    code, out, err = _config_from_elsewhere(tmp_path, f"--config={own.name}")
    assert code == 0 and config_lib.from_json(out).train.num_steps == 3, err
    code, out, err = _config_from_elsewhere(tmp_path, "--config=nosuch")
    assert code == 2 and err.strip().startswith("error: --config nosuch: cannot load it"), err
    assert "built-in config (default, jsb, piano, quick, seed_replica, tiny)" in err


def test_resolve_config_name_rewrites_names_only():
    path = cli.builtin_config("quick")
    assert path is not None and os.path.samefile(path, ROOT / "configs" / "quick.py")
    assert cli.resolve_config_name(["p", "--config=quick"]) == ["p", f"--config={path}"]
    assert cli.resolve_config_name(["p", "--config", "quick"]) == ["p", "--config", path]
    assert cli.resolve_config_name(["p", "--config=x/y.py"]) == ["p", "--config=x/y.py"]
    assert cli.resolve_config_name(["p", "--mode=all"]) == ["p", "--mode=all"]
    assert os.path.samefile(cli.builtin_config(cli.DEFAULT_CONFIG), ROOT / "configs" / "default.py")
    assert cli.builtin_config("../etc") is None and cli.builtin_config("_private") is None


def test_a_flag_is_ignored_only_by_the_modes_that_do_not_read_it(tmp_path):
    """--mode=serve reads --out_dir (its results folder) and --checkpoint (main.py passes both
    to the studio); --mode=prepare reads neither, and --host/--port, which have defaults, are
    not reported when they were not given."""
    try:
        for mode, expected in (("serve", []), ("prepare", ["checkpoint", "out_dir"])):
            main.FLAGS.unparse_flags()
            main.FLAGS(["jaxcomposer", f"--mode={mode}", f"--workdir={tmp_path}",
                        f"--out_dir={tmp_path / 'out'}", "--checkpoint=latest"])  # fmt: skip
            cli.WORKDIRS[:] = []
            ignored = sorted(
                w.split()[0].removeprefix("--") for w in cli.check_flags(mode) if "ignored" in w
            )
            assert ignored == expected, mode
        # --particles without a melody or an infill has nothing to keep: said, not silent
        primer = tmp_path / "a.mid"
        mf.write_midi_file(primer, [mf.notes([(60, 0, 1)])])
        for extra, warned in (([], True), (["--melody", str(primer)], False),
                              (["--primer_midi", str(primer), "--infill=1-2"], False)):  # fmt: skip
            main.FLAGS.unparse_flags()
            main.FLAGS(["jaxcomposer", "--mode=generate", f"--workdir={tmp_path}",
                        "--particles=8", *extra])  # fmt: skip
            cli.WORKDIRS[:] = []
            said = [w for w in cli.check_flags("generate") if w.startswith("--particles")]
            assert bool(said) == warned, extra
    finally:
        main.FLAGS.unparse_flags()


def test_music_of_your_own_keeps_its_key_over_the_workdirs_saved_keys(tmp_path):
    """quick.py saves four keys for unprimed samples; a --primer_midi or --melody without --key
    sets sample.key to "" (the primer's key, as read or estimated); an explicit --key wins."""
    cases = (([], None), (["--primer_midi=a.mid"], ""), (["--melody=m.mid"], ""),
             (["--primer_midi=a.mid", "--key=D minor"], "D minor"))  # fmt: skip
    try:
        for extra, expected in cases:
            main.FLAGS.unparse_flags()
            main.FLAGS(["jaxcomposer", "--mode=generate", f"--workdir={tmp_path}", *extra])
            assert cli.sample_overrides().get("key") == expected, extra
    finally:
        main.FLAGS.unparse_flags()
