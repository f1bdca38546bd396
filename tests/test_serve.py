"""The studio (--mode=serve): HTTP answers for bad uploads and fields, nothing written outside
its results folder, text from MIDI files escaped, queued jobs from two clients, the model
restored once and its sampler compiled once, the MusicXML a score program opens."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import pathlib
import re
import threading
import urllib.error
import urllib.request

import midi_factory as mf
import mido
import pytest
from conftest import REPO, count_compiles, melody_corpus, small_run_config

from jaxcomposer.studio import app, server
from jaxcomposer.train import loop

EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)>&amp;'


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    corpus = melody_corpus(tmp_path_factory.mktemp("midi"))
    config = small_run_config(corpus, tmp_path_factory.mktemp("cache"))
    folder = tmp_path_factory.mktemp("runs") / "tiny <b onclick=x>run"  # a folder name with HTML
    loop.train(config, str(folder), progress=False)
    return str(folder)


@contextlib.contextmanager
def serving(workdir: str, results: str):
    """(studio, url) of a studio on `workdir` served on a free loopback port in a thread."""
    studio = app.Studio([workdir], results, render_processes=0)
    httpd = server.make_server(studio, "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield studio, httpd.url
    finally:
        httpd.shutdown()
        httpd.server_close()
        studio.close()


@pytest.fixture(scope="module")
def studio(workdir, tmp_path_factory):
    with serving(workdir, str(tmp_path_factory.mktemp("results"))) as served:
        yield served


def call(url: str, body=None, *, raw: bytes | None = None):
    """(status, parsed JSON or bytes) of a GET (body None) or a POST of JSON."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            status, payload, kind = answer.status, answer.read(), answer.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        status, payload, kind = e.code, e.read(), e.headers["Content-Type"]
    return status, json.loads(payload) if kind.startswith("application/json") else payload


def files_under(folder: str) -> set[str]:
    return {
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
    }


def midi_bytes(tmp_path: pathlib.Path, track_name: str = "piano") -> bytes:
    events = [(0, mido.MetaMessage("track_name", name=track_name)), mf.tempo(0, 90)]
    events += mf.notes(mf.melody(3, length=12))
    return pathlib.Path(mf.write_midi_file(tmp_path / "p.mid", [events])).read_bytes()


def primer(raw: bytes, name: str = "p.mid") -> dict:
    return {"name": name, "data": base64.b64encode(raw).decode()}


SMALL = {"bars": 2, "num_samples": 1, "seed": 3}


def generate(url: str, body: dict) -> dict:
    status, reply = call(url + "api/generate", {"model": "0", **SMALL, **body})
    assert status == 202, reply
    return reply


def test_upload_over_the_cap_is_refused_with_a_message(studio, workdir):
    studio_, url = studio
    before = files_under(studio_.results_dir), files_under(workdir)
    big = {"model": "0", "primer": primer(b"MThd" + bytes(app.MAX_BODY_BYTES))}
    status, reply = call(url + "api/generate", big)
    assert status == 413 and "too large" in reply["error"]
    # Within the body's limit but over the primer's (base64 of more bytes than allowed).
    with pytest.raises(app.RequestError, match="larger than the limit"):
        studio_.submit({"primer": primer(bytes(app.MAX_PRIMER_BYTES + 1))})
    assert (files_under(studio_.results_dir), files_under(workdir)) == before


def test_non_midi_upload_gets_the_readers_message(studio):
    _, url = studio
    status, reply = call(url + "api/generate", {"model": "0", "primer": primer(b"hello world")})
    assert status == 400 and "not a MIDI file" in reply["error"] and "p.mid" in reply["error"]
    status, reply = call(url + "api/generate", raw=b"{not json")
    assert status == 400 and reply["error"] == "the request is not JSON"
    status, reply = call(url + "api/generate", {"model": "0", "primer": {"data": "!!"}})
    assert status == 400 and "base64" in reply["error"]


def test_paths_in_request_fields_never_reach_the_file_system(studio, workdir, tmp_path):
    studio_, url = studio
    before = files_under(workdir)
    outside = tmp_path / "outside"
    outside.mkdir()
    for body, expected in (
        ({"key": "../../../etc/passwd"}, "key"),
        ({"model": "../" + os.path.basename(workdir)}, "no such model"),
        ({"seed": "/etc/passwd"}, "seed"),
        ({"out_dir": str(outside)}, "unknown field"),
        ({"primer": {"name": "x.mid", "data": "QUJD", "path": "/etc/passwd"}}, "primer"),
    ):
        status, reply = call(url + "api/generate", {"model": "0", **body})
        assert status == 400 and expected in reply["error"], (body, reply)
    # A primer named like a path is only a name: the job writes its own primer.mid.
    job = generate(url, {"primer": primer(midi_bytes(tmp_path), name=f"../../{outside}/x.mid")})
    status = studio_.wait(job["job"], 300)
    assert status["state"] == "done", status["message"]
    assert files_under(str(outside)) == set() and files_under(workdir) == before
    job_dir = os.path.join(studio_.results_dir, job["job"])
    assert "primer.mid" in os.listdir(job_dir)
    assert all(not p.startswith("..") for p in files_under(studio_.results_dir))
    # Files are served by the names the job gave them, nothing else.
    name = os.path.basename(status["samples"][0]["files"]["midi"])
    assert call(f"{url}results/{job['job']}/{name}")[0] == 200
    for bad in ("../config.json", "%2e%2e/config.json", "..%2fconfig.json", "primer.mid",
                "samples.json/../../config.json"):  # fmt: skip
        assert call(f"{url}results/{job['job']}/{bad}")[0] == 404, bad
    assert call(f"{url}results/{'0' * 16}/{name}")[0] == 404
    assert call(f"{url}static/../app.py")[0] == 404


def test_html_in_a_midi_track_name_stays_text(studio, tmp_path):
    studio_, url = studio
    job = generate(url, {"primer": primer(midi_bytes(tmp_path, EVIL), name=EVIL + ".mid")})
    status = studio_.wait(job["job"], 300)
    assert status["state"] == "done", status["message"]
    assert status["primer"]["tracks"] == [EVIL]  # data in JSON; the page sets it as text
    assert status["primer"]["name"].startswith("<script>")
    # The page never turns data into markup: no innerHTML, no document.write, no inline script.
    script = (REPO / "jaxcomposer/studio/static/studio.js").read_text()
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)
    page = call(url)[1].decode()
    assert "<script>" not in page.replace('<script src="/static/studio.js" defer></script>', "")
    # The run's gallery (render/gallery.py) escapes the folder name and every text.
    gallery = pathlib.Path(studio_.file(job["job"], "index.html")).read_text()
    assert "<b onclick" not in gallery and "<script>" not in gallery
    # Its paths are relative to the gallery's folder: no absolute path of this machine.
    assert (
        studio_.results_dir not in gallery and os.path.dirname(studio_.results_dir) not in gallery
    )


def test_gallery_escapes_text_and_shows_music_before_facts(tmp_path):
    from jaxcomposer.render import gallery

    (tmp_path / "s.wav").write_bytes(b"RIFF")
    (tmp_path / "s-1.svg").write_text("<svg/>")
    sample = {"name": "s", "title": EVIL, "wav": "s.wav", "svg": ["s-1.svg"], "key": EVIL}
    page = pathlib.Path(
        gallery.write_gallery(
            str(tmp_path),
            [sample],
            title=EVIL,
            settings={"workdir": str(tmp_path / "<i>x</i>"), "key": EVIL},
        )  # fmt: skip
    ).read_text()
    assert "<script>" not in page and "<img src=x" not in page and "<i>x</i>" not in page
    assert html_escaped(EVIL) in page
    assert 'preload="metadata"' in page
    section = page[page.index("<section") :]
    assert section.index("<audio") < section.index("<table")  # music before the facts
    assert section.index('class="score"') < section.index("<table")
    assert section.count("<h2>") == 1 and "<h2>" + html_escaped(EVIL) + "</h2>" in section
    assert str(tmp_path) not in page  # the workdir shown relative to the gallery


def html_escaped(text: str) -> str:
    import html

    return html.escape(text, quote=True)


def test_two_clients_at_once_are_both_answered_and_compile_once(studio):
    studio_, url = studio
    warm = generate(url, {"seed": 1})
    assert studio_.wait(warm["job"], 300)["state"] == "done"
    replies = [None, None]

    def client(i: int) -> None:
        job = generate(url, {"seed": 10 + i})
        replies[i] = studio_.wait(job["job"], 300)

    with count_compiles() as compiles:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r["state"] for r in replies] == ["done", "done"], replies
    assert replies[0]["id"] != replies[1]["id"]
    # Same settings, new seeds: the restored model's compiled sampler is reused.
    assert not [c for c in compiles if "sample" in c], compiles
    # Different seeds: different music (the jobs did not share an output).
    mids = [
        pathlib.Path(studio_.file(r["id"], os.path.basename(r["samples"][0]["files"]["midi"])))
        for r in replies
    ]
    assert mids[0].parent != mids[1].parent


def test_progress_is_reported_in_order(studio):
    studio_, _ = studio
    seen = []
    original = studio_._progress

    def spy(job, stage, done, total):
        seen.append((stage, done, total))
        original(job, stage, done, total)

    studio_._progress = spy
    try:
        job = studio_.submit({"num_samples": 2, "bars": 2})
        assert studio_.wait(job.id, 300)["state"] == "done"
    finally:
        studio_._progress = original
    assert seen == [("sampling", 0, 1), ("sampled", 1, 1), ("rendering", 0, 2),
                    ("rendering", 1, 2), ("rendered", 2, 2)]  # fmt: skip


def test_the_meter_asked_for_is_held(studio):
    # Without a primer the held meter is the first one sampled, which a young model may draw
    # as 1/16 (8 bars in 2 beats); the page's meter field fixes it.
    studio_, _ = studio
    job = studio_.submit({"num_samples": 2, "bars": 2, "meter": "3/4", "seed": 5})
    status = studio_.wait(job.id, 300)
    assert status["state"] == "done" and status["settings"]["meter"] == "3/4"
    assert [s["time_signature"] for s in status["samples"]] == ["3/4", "3/4"]
    assert studio_.describe()["models"][0]["defaults"]["meter"] == "hold"


def test_musicxml_is_one_piano_part_on_two_staves_with_the_tempo(studio):
    import xml.etree.ElementTree as ET

    from music21 import converter, layout, stream, tempo

    studio_, url = studio
    job = generate(url, {"qpm": 72, "bars": 4})
    status = studio_.wait(job["job"], 300)
    assert status["state"] == "done", status["message"]
    name = os.path.basename(status["samples"][0]["files"]["musicxml"])
    path = studio_.file(job["job"], name)
    root = ET.parse(path).getroot()
    parts = root.findall("part-list/score-part")
    assert len(parts) == 1 and parts[0].findtext("part-name") == "Piano"
    assert parts[0].find("score-instrument/instrument-name").text == "Piano"
    assert parts[0].findtext("midi-instrument/midi-program") == "1"
    assert len(root.findall("part")) == 1 and root.findtext("part/measure/attributes/staves") == "2"
    assert float(root.find("part/measure/direction/sound").get("tempo")) == 72
    score = converter.parse(path)
    staves = list(score.getElementsByClass(stream.PartStaff))
    groups = list(score.getElementsByClass(layout.StaffGroup))
    assert (
        len(staves) == 2 and len(groups) == 1 and set(groups[0].getSpannedElements()) == set(staves)
    )
    marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
    assert marks and marks[0].number == 72
    # The MIDI file and the audio carry the same tempo.
    midi = mido.MidiFile(studio_.file(job["job"], name.replace(".musicxml", ".mid")))
    tempos = [m.tempo for t in midi.tracks for m in t if m.type == "set_tempo"]
    assert tempos and round(mido.tempo2bpm(tempos[0])) == 72


def test_renders_in_a_process_pool_give_the_same_files(workdir, tmp_path):
    with_pool = app.Studio([workdir], str(tmp_path / "pool"), render_processes=1)
    try:
        job = with_pool.submit({"num_samples": 2, "bars": 2, "seed": 5})
        pooled = with_pool.wait(job.id, 300)
    finally:
        with_pool.close()
    in_thread = app.Studio([workdir], str(tmp_path / "thread"), render_processes=0)
    try:
        job2 = in_thread.submit({"num_samples": 2, "bars": 2, "seed": 5})
        plain = in_thread.wait(job2.id, 300)
    finally:
        in_thread.close()
    assert pooled["state"] == plain["state"] == "done"
    for a, b in zip(pooled["samples"], plain["samples"], strict=True):
        assert a["roll"] == b["roll"] and a["notes"] == b["notes"]
        for kind in ("midi", "wav"):
            pa = tmp_path / "pool" / job.id / os.path.basename(a["files"][kind])
            pb = tmp_path / "thread" / job2.id / os.path.basename(b["files"][kind])
            assert pa.read_bytes() == pb.read_bytes(), kind


def test_bad_requests_and_routes(studio):
    _, url = studio
    status, models = call(url + "api/models")
    assert status == 200 and models["models"][0]["name"] == "tiny <b onclick=x>run"
    facts = models["models"][0]["facts"]
    assert facts["steps trained"] == 4 and "validation NLL (nats/token)" in facts
    assert models["models"][0]["styles"] == [] and models["models"][0]["defaults"]["style"] == ""
    for body, expected in (
        ({"bars": 0}, "bars"), ({"temperature": "hot"}, "temperature"),
        ({"top_p": 2}, "top_p"), ({"num_samples": 99}, "num_samples"),
        ({"scale": "loud"}, "scale"), ({"key": "H major"}, "key"), ({"seed": 1.5}, "seed"),
        ({"style": "chorale"}, "not conditioned on style"), ({"style": ["x"]}, "style"),
        ({"meter": "4/5"}, "meter"), ({"meter": "../x"}, "meter"),
    ):  # fmt: skip
        status, reply = call(url + "api/generate", {"model": "0", **body})
        assert status == 400 and expected in reply["error"].lower(), (body, reply)
    assert call(url + "api/jobs/" + "f" * 16)[0] == 404
    assert call(url + "nothing")[0] == 404
    for name in ("studio.js", "studio.css"):
        assert call(url + "static/" + name)[0] == 200


def test_serve_mode_prints_its_address_warns_off_loopback_and_cleans_up_on_sigterm(workdir):
    """Without --out_dir the results go to a temporary folder, removed when the studio stops:
    on SIGTERM too (a service manager's stop)."""
    import re
    import subprocess
    import sys
    import time

    from conftest import free_port

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    process = subprocess.Popen(
        [sys.executable, "-m", "jaxcomposer.main", "--mode=serve", f"--workdir={workdir}",
         f"--workdir={workdir}", f"--port={port}", "--host=0.0.0.0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("studio: http://"):
                break
        assert any("warning: --host=0.0.0.0" in x for x in lines), lines
        assert any(x.startswith(f"studio: http://0.0.0.0:{port}/") for x in lines), lines
        status, models = call(f"http://127.0.0.1:{port}/api/models")
        assert status == 200 and len(models["models"]) == 1  # the same workdir twice: once
        results = re.search(r"results in (\S+);", lines[-1]).group(1)
        assert os.path.isdir(results)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert not os.path.exists(results)


# --- the constraint modes: a melody to harmonize, bars of a primer to regenerate -------------
MELODY = [(72, 0, 1), (74, 1, 2), (76, 2, 3), (77, 3, 4), (79, 4, 6), (77, 6, 7), (76, 7, 8)]
FOUR_BARS = [(60 + (i * 5) % 12, i, i + 1) for i in range(16)]  # 4 bars of 4/4 in quarters


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """A studio on a tiny voices model (as tests/test_constraints.py's): its SMC meets the
    constraints with a few particles even untrained; the event model of `workdir`, four steps
    from uniform, rarely closes an open stretch."""
    corpus = melody_corpus(tmp_path_factory.mktemp("midi"))
    config = small_run_config(corpus, tmp_path_factory.mktemp("cache"),
                              tokenizer={"name": "voices", "steps_per_beat": 2})  # fmt: skip
    folder = str(tmp_path_factory.mktemp("voices"))
    loop.train(config, folder, progress=False)
    with serving(folder, str(tmp_path_factory.mktemp("results"))) as served:
        yield served


def spec_bytes(tmp_path: pathlib.Path, spec, name: str = "m.mid") -> bytes:
    return pathlib.Path(mf.simple_file(tmp_path / name, spec, qpm=90)).read_bytes()


def test_a_melody_upload_is_harmonized_note_for_note(voices, tmp_path):
    studio_, url = voices
    job = generate(url, {"melody": primer(spec_bytes(tmp_path, MELODY), name=EVIL + ".mid"),
                         "particles": 8, "bars": 8})  # fmt: skip
    status = studio_.wait(job["job"], 300)
    assert status["state"] == "done", status["message"]
    assert status["melody"]["name"].startswith("<script>") and status["primer"] is None
    (sample,) = status["samples"]
    assert sample["constraint"] == "melody" and sample["constraints_met"] is True
    assert sample["given_kept"] == 1.0
    assert math.isfinite(sample["log_evidence"]) and 0 < sample["final_ess"] <= 8
    written = json.loads(pathlib.Path(studio_.file(job["job"], "samples.json")).read_text())
    assert written["samples"][0]["constraints_met"] is True
    assert written["settings"]["particles"] == 8
    # The melody is the top voice: at each of its onsets the highest note is the melody's.
    notes = sample["roll"]["notes"]
    for pitch, start, _ in MELODY:
        assert max(n[0] for n in notes if abs(n[1] - start) < 1e-3) == pitch, (start, notes)
    # The roll marks exactly the melody's notes as given (the score colours them).
    given = sorted((n[0], n[1]) for n in notes if n[4])
    assert given == sorted((p, float(a)) for p, a, _ in MELODY)
    assert "melody.mid" in os.listdir(os.path.join(studio_.results_dir, job["job"]))


def test_infill_regenerates_bars_of_an_uploaded_primer(voices, tmp_path):
    studio_, url = voices
    job = generate(url, {"primer": primer(spec_bytes(tmp_path, FOUR_BARS)), "infill": "2-3",
                         "particles": 8})  # fmt: skip
    status = studio_.wait(job["job"], 300)
    assert status["state"] == "done", status["message"]
    assert status["settings"]["infill"] == "2-3"
    (sample,) = status["samples"]
    assert sample["constraint"] == "infill" and sample["constraints_met"] is True
    assert sample["given_kept"] == 1.0 and "log_evidence" in sample and "min_ess" in sample
    notes = sample["roll"]["notes"]
    kept = {(p, float(a)) for p, a, _ in FOUR_BARS if a < 4 or a >= 12}  # bars 1 and 4
    assert kept <= {(n[0], n[1]) for n in notes if n[4]}
    assert not [n for n in notes if n[4] and 4 <= n[1] < 12]  # nothing given inside the gap


def test_bad_ranges_and_melodies_get_a_message_and_write_nothing(studio, workdir, tmp_path):
    studio_, url = studio
    before = files_under(studio_.results_dir), files_under(workdir)
    four = primer(spec_bytes(tmp_path, FOUR_BARS))
    melody = primer(spec_bytes(tmp_path, MELODY, "tune.mid"), name="tune.mid")
    for body, expected in (
        ({"primer": four, "infill": "9-2"}, "bars 9-2 are not a range of bars"),
        ({"primer": four, "infill": "x"}, "'x' is not a bar range like 5-8"),
        ({"primer": four, "infill": "3-4"}, "lie outside the piece or reach its end"),
        ({"primer": four, "infill": ["5-8"]}, "infill: expected a text"),
        ({"infill": "2-3"}, "needs a primer MIDI"),
        ({"melody": primer(b"hello world", name="tune.mid")}, "not a MIDI file"),
        ({"melody": melody, "primer": four}, "the melody is the whole piece"),
        ({"melody": melody, "melody_track": 2}, "melody_track=2, but the file's tracks are not"),
        ({"melody_track": 0}, "melody_track: needs a melody"),
        ({"melody": {"name": "x.mid", "path": "/etc/passwd"}}, "melody: expected"),
    ):
        status, reply = call(url + "api/generate", {"model": "0", **body})
        assert status == 400 and expected in reply["error"], (body, reply)
        assert "\n" not in reply["error"] and "Traceback" not in reply["error"]
        if "melody" in body and "primer" not in body and "data" in body["melody"]:
            assert "tune.mid" in reply["error"], reply
    assert (files_under(studio_.results_dir), files_under(workdir)) == before
