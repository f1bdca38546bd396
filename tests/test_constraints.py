"""--melody and --infill end to end on a tiny trained voices workdir (sample/constraints.py), the
one-line errors for bad input, and the SMC weight of a fully forced row against the model's own
teacher-forced likelihood (two different computations: the step scan and the whole-row apply)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, melody_corpus, small_run_config

from jaxcomposer import config_lib, workdir_lib
from jaxcomposer.core.errors import UsageError
from jaxcomposer.data import midi_io
from jaxcomposer.model import StepFunction
from jaxcomposer.music.notes import TimeSignature, concat, make_notes
from jaxcomposer.render import score
from jaxcomposer.sample import constraints, generate, sampler, smc
from jaxcomposer.tokenizers import BOS
from jaxcomposer.train import loop

VOICES = ("Soprano", "Alto", "Tenor", "Bass")


def chorale_like(bars: int, numerator: int = 4):
    """A deterministic four-part piece: one chord per beat (soprano in eighths on beat 2),
    `bars` bars of numerator/4."""
    rng = np.random.default_rng(3)
    parts = []
    for beat in range(bars * numerator):
        root = int(rng.choice([0, 5, 7, 9]))
        pitches = [72 + root % 5, 67 + root % 3, 60 + root % 4, 48 + root]
        for voice, p in enumerate(pitches):
            if voice == 0 and beat % numerator == 1:  # two eighths
                parts.append(make_notes([p, p + 2], [beat, beat + 0.5], [beat + 0.5, beat + 1],
                                        voice=[0, 0]))  # fmt: skip
            else:
                parts.append(make_notes([p], [beat], [beat + 1], voice=[voice]))
    return concat(parts).sorted()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("given")
    meter = (TimeSignature(0.0, 3, 4),)
    notes = chorale_like(6, 3)
    out = {"chorale": str(folder / "chorale.mid"), "melody": str(folder / "melody.mid")}
    midi_io.write_midi(out["chorale"], notes, qpm=90, time_signatures=meter, voice_names=VOICES)
    midi_io.write_midi(out["melody"], notes[notes.voice == 0], qpm=90, time_signatures=meter)
    out["empty"] = str(folder / "empty.mid")
    midi_io.write_midi(out["empty"], notes[:0], qpm=90)
    out["drums"] = str(folder / "drums.mid")
    drums = make_notes([36, 38], [0, 1], [0.5, 1.5], is_drum=[True, True])
    midi_io.write_midi(out["drums"], drums, qpm=90)
    out["high"] = str(folder / "high.mid")
    midi_io.write_midi(out["high"], make_notes([72, 115], [0, 1], [1, 2]), qpm=90)
    out["notes"] = notes
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A voices model, 4 training steps on four short melodies (what it learned does not
    matter: the constraints hold whatever the model)."""
    corpus = melody_corpus(tmp_path_factory.mktemp("midi"))
    config = small_run_config(
        corpus, tmp_path_factory.mktemp("cache"),
        tokenizer={"name": "voices", "steps_per_beat": 2},
        sample={"num_samples": 2, "particles": 8},
    )  # fmt: skip
    workdir = str(tmp_path_factory.mktemp("run"))
    loop.train(config, workdir, progress=False)
    return workdir


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_melody_is_kept_with_its_meter_and_the_requested_key(trained, files, tmp_path):
    out = str(tmp_path / "melody")
    result = generate.generate(trained, out_dir=out, seed=1,
                               overrides={"melody": files["melody"], "key": "D major"})  # fmt: skip
    data = workdir_lib.load_config(trained).data
    written = read_json(os.path.join(out, "samples.json"))
    assert written["settings"]["constraint"].startswith("melody melody.mid (top voice")
    melody = files["notes"][files["notes"].voice == 0]
    for info in result["samples"]:
        assert info["given_kept"] == 1.0 and info["constraints_met"]
        assert info["skipped_tokens"] == 0
        assert info["time_signature"] == "3/4" and info["key"] == "D major"
        assert len(info["given_notes"]) == len(melody)
        assert np.isfinite(info["log_evidence"]) and 0 < info["final_ess"] <= 8
        piece = midi_io.read_midi(os.path.join(out, info["midi"]), data)[0]
        got = {(int(p), round(float(s), 3)) for p, s in zip(piece.notes.pitch, piece.notes.start,
                                                             strict=True)}  # fmt: skip
        assert {(int(p), float(s)) for p, s in zip(melody.pitch, melody.start, strict=True)} <= got
        with open(os.path.join(out, info["musicxml"]), encoding="utf-8") as f:
            # the given notes are marked in the score (music21 writes the colour in capitals)
            assert f'COLOR="{score.GIVEN_COLOUR.upper()}"' in f.read().upper()
    # without --key the melody's own key is used, and samples.json says it came from the melody
    own = generate.generate(trained, out_dir=str(tmp_path / "own"), seed=1,
                            overrides={"melody": files["melody"], "key": "", "scale": "soft",
                                       "num_samples": 1})  # fmt: skip
    assert [info["key_source"] for info in own["samples"]] == ["melody"]


def test_melody_track_picks_a_part(trained, files):
    config = workdir_lib.load_config(trained)
    tokenizer = workdir_lib.restore_for_inference(trained, "best").tokenizer
    alto = files["notes"][files["notes"].voice == 1]
    request = constraints.melody_request(config, tokenizer, files["chorale"], track=1)
    assert sorted(request.given.pitch.tolist()) == sorted(alto.pitch.tolist())
    top = constraints.melody_request(config, tokenizer, files["chorale"])  # the top voice
    soprano = files["notes"][files["notes"].voice == 0]
    assert top.given.pitch.tolist() == soprano.sorted().pitch.tolist()


def test_infill_keeps_the_other_bars(trained, files, tmp_path):
    out = str(tmp_path / "infill")
    overrides = {"primer": files["chorale"], "infill": "2-3,5"}
    result = generate.generate(trained, out_dir=out, seed=2, overrides=overrides)
    data = workdir_lib.load_config(trained).data
    notes = files["notes"]
    kept = notes[(notes.start < 3) | ((notes.start >= 9) & (notes.start < 12))
                 | (notes.start >= 15)]  # fmt: skip  (bars 1, 4, 6 of 3/4)
    for info in result["samples"]:
        assert info["given_kept"] == 1.0 and info["constraints_met"]
        assert info["skipped_tokens"] == 0 and info["time_signatures"] == ["3/4@0"]
        piece = midi_io.read_midi(os.path.join(out, info["midi"]), data)[0]
        got = set(zip(piece.notes.pitch.tolist(), np.round(piece.notes.start, 3).tolist(),
                      strict=True))  # fmt: skip
        assert set(zip(kept.pitch.tolist(), kept.start.tolist(), strict=True)) <= got
        assert piece.notes.end.max() == pytest.approx(notes.end.max())


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(infill="5-6"), "bars 5-6 lie outside the piece or reach its end"),
        (dict(infill="9-12"), "lie outside the piece"),
        (dict(melody="EMPTY"), "EMPTY"),
        (dict(melody="DRUMS"), "drum"),
        (dict(melody="HIGH"), "outside the model's pitch range [21, 108], e.g. pitch 115"),
        (dict(melody="CHORALE", melody_track=7), "--melody_track=7, but the file has 4 parts"),
    ],
)
def test_bad_requests_fail_in_one_line_naming_the_file(trained, files, overrides, message):
    config = workdir_lib.load_config(trained)
    tokenizer = workdir_lib.restore_for_inference(trained, "best").tokenizer
    names = {"EMPTY": files["empty"], "CHORALE": files["chorale"], "DRUMS": files["drums"],
             "HIGH": files["high"]}
    fields = {k: names.get(v, v) for k, v in overrides.items()}
    if "infill" in fields:
        fields["primer"] = files["chorale"]
    sample = config_lib.replace(config, sample=fields).sample
    with pytest.raises(UsageError) as err:
        constraints.prepare(config, tokenizer, sample)
    text = str(err.value)
    assert "\n" not in text and names.get(message, message) in text
    assert os.path.basename(files["chorale"] if "infill" in fields or "melody_track" in fields
                            else fields["melody"]) in text  # fmt: skip


def test_the_command_line_reports_a_bad_range_in_one_line(trained, files):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxcomposer.main", "--mode=generate", f"--workdir={trained}",
         f"--primer_midi={files['chorale']}", "--infill=6-8"],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "chorale.mid" in errors[0] and "6 bars" in errors[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("penalty", [0.0, 3.0])
def test_forced_row_weight_is_the_models_likelihood(trained, files, penalty):
    """A program that forces a whole token row: SMC's log-evidence is sum_t log p(x_t | x_<t)
    from the step-by-step scan; the model's teacher-forced apply over the whole row, penalised
    step by step in a Python loop where the soft parallels rule says so (penalty > 0: the target
    is the model under that rule), gives the same sum (float32 round-off)."""
    restored = workdir_lib.restore_for_inference(trained, "best")
    tokenizer = restored.tokenizer
    config = restored.config
    row = tokenizer.encode(midi_io.read_midi(files["chorale"], config.data)[0]).astype(np.int32)
    row = row[:80]
    program = smc.Program.from_forced(row, tokenizer.vocab.size)
    primer = np.array([[BOS]], np.int32)
    state = sampler.grammar_states_after(tokenizer.grammar, primer)
    voices = sampler.parallels_rule(tokenizer, primer, penalty)
    result = smc.run_smc(
        restored.variables, jnp.asarray(primer), jnp.asarray(state),
        jnp.asarray(tokenizer.grammar.next_state), jnp.zeros(tokenizer.vocab.size, jnp.float32),
        jnp.zeros(1, jnp.float32), program.arrays(), jax.random.key(0), None, None, voices,
        step_fn=StepFunction(restored.model), num_steps=row.size,
        settings=smc.SMCSettings(num_particles=4),
    )  # fmt: skip
    logits, _ = StepFunction(restored.model)(restored.variables, jnp.asarray([np.r_[BOS, row]]),
                                            None)  # fmt: skip
    logits = np.asarray(logits[0, :-1], np.float64)
    expected = unpenalised = 0.0
    state_B = jnp.asarray(state)
    for t, token in enumerate(row.tolist()):
        unpenalised += float(jax.nn.log_softmax(logits[t])[token])
        step = logits[t]
        if voices is not None:
            step = np.where(np.asarray(sampler.parallel_motion(state_B, voices))[0],
                            step - penalty, step)  # fmt: skip
            voices = sampler.update_voices(voices, state_B, jnp.asarray([token]))
        expected += float(jax.nn.log_softmax(step)[token])
        state_B = jnp.asarray([tokenizer.grammar.next_state[int(state_B[0]), token]])
    got = np.asarray(result.log_evidence_G)[0]
    assert np.asarray(result.finished_GxN).all()
    assert (np.asarray(result.tokens_GxNxT)[0] == row).all()
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-2)
    if penalty:  # the rule changed the target somewhere on this row
        assert abs(expected - unpenalised) > 1e-2
