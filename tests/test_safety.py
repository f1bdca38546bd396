"""What a user owns survives faults, one small reproduction each:

- generate renders into a staging folder and swaps the set in; it replaces only files the
  previous samples.json lists, and an interrupt (or a kill in the middle of the swap) leaves
  the old set or the new one;
- a damaged checkpoint (truncated, emptied, bit-flipped, missing file) is named in one warning
  and the newest readable one is used, for inference and for a resumed training run;
- a full disk is one line naming the path (atomic writes, the checkpoint space check, orbax's
  errors, a render stage), and generate keeps the old set;
- music21 never reads or writes its pickle cache for our parses (a planted pickle does not
  run, a render leaves none);
- a symbolic link planted as a lock or as the samples folder is refused;
- a MIDI bomb is refused while it is parsed, in well under a second of CPU and a few MB, a file
  over data.max_file_mb unread; format-2 files warn;
- MusicXML octaves stay >= 0, the audio of a 3.58-qpm primer is bounded (audio.MAX_SECONDS),
  and evaluate on a workdir it cannot write prints its result and names the file.
The meter hold is tested in test_sampler.py; launch/fault_campaign.py makes the same faults
with real signals, a real 3 MB tmpfs and a read-only mount (docs/safety.md).
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import pathlib
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from unittest import mock

import midi_factory as mf
import numpy as np
import pytest
from conftest import REPO, melody_corpus, small_run_config, tiny_config

from jaxcomposer import cli, config_lib, workdir_lib
from jaxcomposer.core import atomic
from jaxcomposer.data import corpus as corpus_lib
from jaxcomposer.data import midi_io
from jaxcomposer.data.smf import MidiReadError
from jaxcomposer.evaluation import evaluate
from jaxcomposer.model import checkpoints
from jaxcomposer.music.notes import make_notes
from jaxcomposer.render import audio, outputs, score
from jaxcomposer.sample import generate
from jaxcomposer.train import loop


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained 4 steps (checkpoints at 2 and 4), two 13-token samples per run."""
    midi = melody_corpus(tmp_path_factory.mktemp("midi"))
    workdir = str(tmp_path_factory.mktemp("run"))
    config = small_run_config(
        midi, tmp_path_factory.mktemp("cache"), sample={"num_steps": 13, "num_samples": 2}
    )
    loop.train(config, workdir, progress=False)
    assert workdir_lib.checkpoint_steps(workdir) == [2, 4]
    return workdir, config


def listing(folder) -> dict:
    """name -> bytes of every file in `folder` (not below it)."""
    return {
        name: open(os.path.join(folder, name), "rb").read()
        for name in sorted(os.listdir(folder))
        if os.path.isfile(os.path.join(folder, name))
    }


FOREIGN = {"sample_1.jpg": b"a photo", "sample_2023-report.pdf": b"a report", "notes.txt": b"x"}


def plant(folder, files=FOREIGN) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


# --- generate stages the set and replaces only its own files ---------------------------------
def test_generate_replaces_only_the_files_of_the_previous_set(trained, tmp_path):
    workdir, _ = trained
    out = tmp_path / "out"
    plant(out)
    first = generate.generate(workdir, out_dir=str(out), seed=1)
    index = json.loads((out / "samples.json").read_text())
    assert sorted(index["files"]) == sorted(set(os.listdir(out)) - set(FOREIGN) - {
        "samples.json", outputs.LOCK})  # fmt: skip
    assert "index.html" in index["files"] and first["index"] == str(out / "index.html")
    # A second run replaces the first set and nothing else; no staging folder or journal stays.
    (out / "sample_01.mid").write_bytes(b"stale")
    generate.generate(workdir, out_dir=str(out), seed=2)
    after = listing(out)
    assert all(after[name] == data for name, data in FOREIGN.items())
    assert after["sample_01.mid"] != b"stale"
    assert not os.path.exists(outputs.staging_dir(str(out)))
    assert outputs.JOURNAL not in after
    # A foreign file where the set would write is refused before anything changes.
    other = tmp_path / "other"
    plant(other, {"index.html": b"<p>my own page</p>"})
    with pytest.raises(outputs.OutputError, match=r"index.html is not from an earlier generate"):
        generate.generate(workdir, out_dir=str(other), seed=1)
    assert listing(other) == {"index.html": b"<p>my own page</p>", outputs.LOCK: b""}
    assert not os.path.exists(outputs.staging_dir(str(other)))


class Killed(BaseException):
    """Stands for the process dying at that moment (nothing after it runs)."""


@pytest.mark.parametrize("fault", ["interrupt", "no_space"])
def test_an_interrupt_or_a_full_disk_while_rendering_leaves_the_old_set(trained, tmp_path, fault):
    workdir, _ = trained
    out = tmp_path / "out"
    plant(out)
    generate.generate(workdir, out_dir=str(out), seed=1)
    before = listing(out)
    real = outputs.render_sample
    calls = []

    def render_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and fault == "interrupt":
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    def full_disk(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    with (
        mock.patch.object(outputs, "render_sample", render_then_fail),
        mock.patch.object(
            audio, "write_wav", full_disk if fault == "no_space" else audio.write_wav
        ),
    ):
        expected = KeyboardInterrupt if fault == "interrupt" else outputs.OutputError
        with pytest.raises(expected) as err:
            generate.generate(workdir, out_dir=str(out), seed=2)
    assert listing(out) == before
    assert not os.path.exists(outputs.staging_dir(str(out)))
    if fault == "no_space":  # one line, naming the file
        code, line = cli.describe_error(err.value)
        assert code == 1 and line == (
            f"{out}: cannot write the new samples (No space left on device: sample_00.wav); "
            "the files there are unchanged"
        )


def fake_set(folder, names, tag: bytes) -> None:
    for name in names:
        (folder / name).write_bytes(tag + name.encode())


# After the journal: 2 removals of the old set's files, 3 moves, the journal's removal.
@pytest.mark.parametrize("ops_before_kill", range(6))
def test_a_kill_during_the_swap_is_completed_by_the_next_run(tmp_path, ops_before_kill):
    out = tmp_path / "out"
    plant(out)
    old = outputs.SampleSet(str(out))
    fake_set(pathlib.Path(old.staging), ["sample_01.mid", "sample_02.mid", "index.html"], b"old")
    old.commit({"samples": []})
    new = outputs.SampleSet(str(out))
    fake_set(pathlib.Path(new.staging), ["sample_01.mid", "sample_01.wav"], b"new")
    real = {"replace": os.replace, "remove": os.remove}
    done = []

    def then_die(name):
        def op(*args):
            if os.path.exists(out / outputs.JOURNAL):
                if len(done) == ops_before_kill:
                    raise Killed
                done.append(args)
            real[name](*args)

        return op

    with (
        mock.patch.object(os, "replace", then_die("replace")),
        mock.patch.object(os, "remove", then_die("remove")),
        pytest.raises(Killed),
    ):
        new.commit({"samples": []})
    assert os.path.exists(out / outputs.JOURNAL)
    # The next run (here: a SampleSet opened on the folder) rolls the journal forward.
    outputs.SampleSet(str(out)).close()
    files = listing(out)
    assert files["sample_01.mid"] == b"newsample_01.mid" and "sample_01.wav" in files
    assert "sample_02.mid" not in files and "index.html" not in files  # the old set's own
    assert all(files[name] == data for name, data in FOREIGN.items())
    assert json.loads(files["samples.json"])["files"] == ["sample_01.mid", "sample_01.wav"]
    assert outputs.JOURNAL not in files and not os.path.exists(new.staging)


def test_a_kill_before_the_journal_leaves_the_old_set(tmp_path):
    out = tmp_path / "out"
    old = outputs.SampleSet(str(out))
    fake_set(pathlib.Path(old.staging), ["sample_01.mid"], b"old")
    old.commit({"samples": []})
    before = listing(out)
    new = outputs.SampleSet(str(out))
    fake_set(pathlib.Path(new.staging), ["sample_01.mid"], b"new")  # killed while rendering
    new._lock.close()  # the process is gone: its lock with it, its staging folder stays
    assert os.path.exists(new.staging)
    outputs.SampleSet(str(out)).close()
    assert listing(out) == before and not os.path.exists(new.staging)


# --- damaged checkpoints fall back to the newest readable one --------------------------------
def _largest_file(folder: str) -> str:
    files = [p for p in glob.glob(f"{folder}/**/*", recursive=True) if os.path.isfile(p)]
    return max((p for p in files if checkpoints.SUMS_FILE not in p), key=os.path.getsize)


def _flip(path: str, offset: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


DAMAGE = {  # name: (what it does to a checkpoint folder, words of the reason)
    "truncated": (lambda d: os.truncate(_largest_file(d), 1000), "truncated (1000 of"),
    "emptied": (lambda d: open(f"{d}/state/_METADATA", "w").close(), "_METADATA is empty"),
    "bit-flipped": (lambda d: _flip(_largest_file(d)), "differs from the checksum"),
    "missing file": (lambda d: os.remove(_largest_file(d)), "is missing"),
    "unsealed, emptied": (
        lambda d: (
            os.remove(f"{d}/{checkpoints.SUMS_FILE}"),
            open(f"{d}/state/_METADATA", "w").close(),
        ),
        "state/_METADATA is empty",
    ),  # fmt: skip
}


@pytest.fixture
def damaged_copy(trained, tmp_path):
    def make(kind: str, steps=(4,)) -> str:
        workdir = str(tmp_path / "w")
        shutil.copytree(trained[0], workdir)
        for step in steps:
            DAMAGE[kind][0](os.path.join(workdir_lib.checkpoint_dir(workdir), str(step)))
        return workdir

    return make


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_and_the_previous_one_used(damaged_copy, kind, caplog):
    workdir = damaged_copy(kind)
    with caplog.at_level(logging.WARNING):
        restored = workdir_lib.restore_for_inference(workdir, "latest")
    assert restored.step == 2
    warned = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warned) == 1 and "checkpoints/4 is damaged" in warned[0]
    assert DAMAGE[kind][1] in warned[0] and warned[0].endswith("using step 2 instead")


def test_no_readable_checkpoint_is_one_line_naming_each_step(damaged_copy):
    workdir = damaged_copy("truncated", steps=(2, 4))
    with pytest.raises(workdir_lib.WorkdirError) as err:
        workdir_lib.restore_for_inference(workdir, "latest")
    code, line = cli.describe_error(err.value)
    assert code == 1 and "no readable checkpoint (step 4: " in line and "; step 2: " in line


def test_train_resumes_from_the_newest_readable_step_and_moves_the_damaged_one_aside(
    trained, damaged_copy, caplog
):
    workdir = damaged_copy("bit-flipped")
    config = config_lib.replace(workdir_lib.load_config(workdir), train={"num_steps": 6})
    with caplog.at_level(logging.WARNING):
        summary = loop.train(config, workdir, progress=False)
    assert summary["step"] == 6
    assert any("checkpoints/4 is damaged" in r.getMessage() for r in caplog.records)
    damaged = os.listdir(os.path.join(workdir_lib.checkpoint_dir(workdir), checkpoints.DAMAGED_DIR))
    assert len(damaged) == 1 and damaged[0].startswith("4-")
    assert workdir_lib.checkpoint_steps(workdir)[-1] == 6


# --- a full disk is one line naming the path -----------------------------------------------
def test_a_write_failing_for_space_names_the_file_not_its_temporary(tmp_path):
    path = str(tmp_path / "report.json")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")  # as fsync raises it: no name

    with mock.patch.object(os, "fsync", no_space), pytest.raises(OSError) as err:
        atomic.write_json(path, {"a": 1})
    assert cli.describe_error(err.value) == (1, f"{path}: No space left on device")
    assert os.listdir(tmp_path) == []  # the temporary file is gone, nothing is half-written
    with mock.patch.object(os, "fsync", no_space), pytest.raises(OSError) as err:
        atomic.append_line(str(tmp_path / "metrics.jsonl"), "{}")
    assert err.value.filename == str(tmp_path / "metrics.jsonl")


def test_a_checkpoint_the_disk_cannot_hold_is_refused_before_orbax_writes(trained):
    directory = workdir_lib.checkpoint_dir(trained[0])
    state = {"w": np.zeros((1000, 1000), np.float32)}  # 4 MB
    full = os.statvfs_result((4096, 4096, 1000, 10, 10, 100, 10, 10, 0, 255))
    with mock.patch.object(os, "statvfs", return_value=full):
        with pytest.raises(checkpoints.CheckpointWriteError) as err:
            checkpoints.check_space(directory, 6, state)
    code, line = cli.describe_error(err.value)
    assert code == 1 and line.startswith(f"{directory}: no space for the checkpoint of step 6")
    assert line.endswith("the earlier checkpoints (steps 2, 4) are kept")
    checkpoints.check_space(directory, 6, state)  # the real disk has room


@pytest.mark.parametrize(
    "raised, why",
    [
        (Exception("RESOURCE_EXHAUSTED: write failed"), "no space left on the device"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on the device"),
        (ValueError("Permission denied: open ocdbt"), "permission denied"),
    ],
)
def test_orbax_write_errors_become_one_workdir_error(trained, raised, why):
    directory = workdir_lib.checkpoint_dir(trained[0])
    with pytest.raises(
        checkpoints.CheckpointWriteError, match=f"cannot write a checkpoint \\({why}"
    ):
        with checkpoints._write_errors(directory):
            raise raised
    with pytest.raises(KeyError), checkpoints._write_errors(directory):
        raise KeyError("a bug keeps its traceback")


# --- no pickle from music21's shared scratch folder ------------------------------------------
class Planted:
    def __reduce__(self):
        return exec, (f"open({str(MARKER)!r}, 'w').write('ran')",)


MARKER = None


def test_a_planted_music21_pickle_is_never_loaded_and_renders_leave_none(tmp_path, monkeypatch):
    from music21 import converter, environment

    global MARKER
    MARKER = tmp_path / "the planted pickle ran"
    scratch = tmp_path / "music21"
    scratch.mkdir()
    monkeypatch.setattr(environment.Environment, "getRootTempDir", lambda self: scratch)
    xml = str(tmp_path / "piece.musicxml")
    score.write_musicxml(xml, make_notes([60, 64, 67], [0, 1, 2], [1, 2, 4]), title="t")
    assert os.listdir(scratch) == []  # rendering (a MIDI parse by music21) stored no pickle
    planted = converter.PickleFilter(xml).getPickleFp(scratch, zipType="gz")
    planted.write_bytes(zlib.compress(pickle.dumps(Planted())))
    os.utime(planted, (os.path.getmtime(xml) + 60,) * 2)  # newer than the source: "up to date"
    piece, _ = corpus_lib.read_score(xml, tiny_config().data, "piece.musicxml")
    assert not MARKER.exists() and len(piece.notes) == 3
    # The same file parsed as music21 does by default would have run it (the test's control).
    with pytest.raises(Exception):  # noqa: B017 - thawing our dict, not a Score, then fails
        converter.parse(xml)
    assert MARKER.exists()


# --- symbolic links are not followed --------------------------------------------------------
def test_a_symlinked_training_lock_is_refused_and_its_target_kept(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    workdir = tmp_path / "w"
    workdir.mkdir()
    os.symlink(target, workdir / workdir_lib.LOCK_FILE)
    with pytest.raises(workdir_lib.WorkdirError, match=r"\.train\.lock: is a symbolic link"):
        with workdir_lib.train_lock(str(workdir)):
            pass
    assert target.read_text() == "keep me"


def test_a_symlinked_samples_folder_or_lock_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    plant(elsewhere)
    os.symlink(elsewhere, tmp_path / "samples")
    with pytest.raises(outputs.OutputError, match="is a symbolic link"):
        outputs.SampleSet(str(tmp_path / "samples"))
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(elsewhere / "notes.txt", out / outputs.LOCK)
    with pytest.raises(outputs.OutputError, match="is a symbolic link; refusing"):
        outputs.SampleSet(str(out))
    assert listing(elsewhere) == FOREIGN


# --- MIDI bombs, large files and format 2 ---------------------------------------------------
BOMB = """
import resource, struct, sys, time
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB of address space in all
from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.data import midi_io
# max_file_mb far above the file: reading it must not reserve the cap's 1 GB at once
data = config_lib.replace(config_lib.freeze(tiny.get_config()), data={"max_file_mb": 1000}).data
body = b"\\x00\\x90\\x3c\\x40" + b"\\x00\\x3c\\x40" * (20_000_000 // 3)  # running-status note-ons
with open(sys.argv[1], "wb") as f:
    f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(body)))
    f.write(body)
del body
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cpu = time.process_time()
try:
    midi_io.read_midi(sys.argv[1], data)
except midi_io.MidiReadError as e:
    print("REFUSED", e)
print("CPU", time.process_time() - cpu)
print("MB", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024)
"""


def test_a_running_status_bomb_is_refused_while_parsing_under_a_memory_limit(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", BOMB, str(tmp_path / "bomb.mid")], cwd=REPO,
        capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert "absurd: more than 200000 notes (max_notes" in lines["REFUSED"]
    assert float(lines["CPU"]) < 1.0  # 6.7 million note-ons: refused after 200,000 of them
    assert float(lines["MB"]) < 64  # the 20 MB file read, and a little more


def test_running_out_of_memory_while_parsing_is_a_reason_not_a_crash(tmp_path):
    path = mf.simple_file(tmp_path / "a.mid")
    with mock.patch.object(midi_io, "parse_smf", side_effect=MemoryError):
        with pytest.raises(MidiReadError, match=r"out of memory reading its 0.0 MB \(lower data"):
            midi_io.read_midi(path, tiny_config().data)


def test_a_file_over_max_file_mb_is_refused_unread(tmp_path):
    path = tmp_path / "bomb200.mid"
    with open(path, "wb") as f:  # a 200 MB file (sparse: no disk used)
        f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk")
        f.truncate(200_000_022)
    data = tiny_config().data
    with pytest.raises(MidiReadError, match=r"absurd: 200.0 MB \(max_file_mb=32\)"):
        midi_io.read_midi(str(path), data)
    small = tiny_config(data={"max_file_mb": 0.0001})  # 100 bytes
    mf.simple_file(tmp_path / "ok.mid", mf.melody(0))  # about 250 bytes
    with pytest.raises(MidiReadError, match=r"max_file_mb=0.0001"):
        midi_io.read_midi(str(tmp_path / "ok.mid"), small.data)
    midi_io.read_midi(str(tmp_path / "ok.mid"), data)


def test_a_format_2_file_warns_that_its_patterns_are_overlaid(tmp_path, caplog):
    one = mf.write_midi_file(tmp_path / "one.mid", [mf.notes([(60, 0, 1)]), mf.notes([(64, 0, 1)])])
    raw = bytearray(open(one, "rb").read())
    raw[8:10] = struct.pack(">H", 2)  # the header's format field
    with caplog.at_level(logging.WARNING):
        piece, stats = midi_io.read_midi_bytes(bytes(raw), tiny_config().data, path="two.mid",
                                               name="two.mid")  # fmt: skip
    assert stats["midi_format"] == 2 and len(piece.notes) == 2
    assert any("two.mid: a format-2 MIDI file (2 independent patterns)" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    caplog.clear()
    midi_io.read_midi(one, tiny_config().data)
    assert not any("format-2" in r.getMessage() for r in caplog.records)


# --- octaves, slow tempos, read-only workdirs -----------------------------------------------
def test_pitches_below_c0_are_engraved_in_octave_0_or_above(tmp_path, caplog):
    notes = make_notes([0, 5, 11, 12, 60], [0, 1, 2, 3, 4], [1, 2, 3, 4, 5])
    path = str(tmp_path / "low.musicxml")
    with caplog.at_level(logging.WARNING):
        score.write_musicxml(path, notes, title="low")
    import xml.etree.ElementTree as ET

    pitches = ET.parse(path).getroot().iter("pitch")
    octaves = sorted(int(p.find("octave").text) for p in pitches)
    assert octaves == [0, 0, 0, 0, 4]  # C0 sounding MIDI 0, 5, 11 are written an octave up
    assert any("3 notes below C0" in r.getMessage() for r in caplog.records)
    raised = score.notatable(notes)
    assert raised.pitch.tolist() == [12, 17, 23, 12, 60] and raised.pitch.dtype == notes.pitch.dtype


def test_the_audio_of_the_slowest_midi_tempo_is_bounded(tmp_path, caplog):
    beats = 47  # at 3.58 qpm (the slowest tempo MIDI can state): 788 s of music
    notes = make_notes([60] * beats, np.arange(beats), np.arange(beats) + 1.0)
    path = str(tmp_path / "slow.wav")
    with caplog.at_level(logging.WARNING):
        audio.write_audio(path, notes, qpm=3.58, sample_rate=8000, use_fluidsynth=False)
    frames = audio.MAX_SECONDS * 8000
    assert os.path.getsize(path) == 44 + 2 * frames  # 16-bit mono plus the header
    assert any("the audio is cut at 300 s: the music lasts 788 s" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    # Music that fits keeps its exact length (last note's end + the tail).
    waveform, _ = audio.synthesize(notes[:3], qpm=3.58, sample_rate=8000, use_fluidsynth=False)
    assert waveform.size == round((3 * 60 / 3.58 + audio.TAIL_SECONDS) * 8000)


def test_evaluate_on_a_workdir_it_cannot_write_prints_the_result_and_names_the_file(
    trained, capsys
):
    workdir, _ = trained
    real = atomic.tempfile.mkstemp

    def read_only(prefix="", suffix="", dir=None):  # as a read-only mount answers (EROFS)
        if prefix == ".evaluation_valid.json.":
            raise OSError(errno.EROFS, "Read-only file system", f"{dir}/{prefix}x1{suffix}")
        return real(prefix=prefix, suffix=suffix, dir=dir)

    with mock.patch.object(atomic.tempfile, "mkstemp", read_only):
        with pytest.raises(evaluate.NotSavedError) as err:
            evaluate.evaluate(workdir, progress=False)
    printed = capsys.readouterr().out
    assert "nats_per_token" in printed and "OVERALL" in printed  # the table was printed
    code, line = cli.describe_error(err.value)
    assert code == 1 and line == (
        f"{workdir}/evaluation_valid.json: Read-only file system; the evaluation above was "
        "printed but not saved"
    )


def test_a_ctrl_c_after_the_work_is_done_is_ignored():
    previous = signal.getsignal(signal.SIGINT)
    try:
        cli.main_reporting_errors(lambda argv: None, ["jaxcomposer"])
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
