"""The studio's state without HTTP: the models (each restored once), the job queue and its one
worker thread, request checking, and the results folder (server.py puts HTTP around it).

Why one worker: jax compiles a sampler per shape and setting, and two generations at once on
two cores would only slow each other down; a queue answers every browser in turn, and the
compiled sampler (`model.StepFunction` hashes by the model's value) is reused by every job.

Nothing a request sends becomes a path: jobs are addressed by random ids (`secrets`), a job's
files by the names render_sample gave them (a whitelist kept per job), models by their index
in the list the server was started with. An uploaded primer is capped in size, read by the
project's lenient MIDI reader (data/midi_io.py) and written as `primer.mid` in the job's own
folder; a melody to harmonize likewise as `melody.mid`. The constraint modes (a melody, bars
of the primer to regenerate) are checked when the request arrives by the same functions the
command line uses (sample/constraints.py), so a bad file or range is a message, not a job.
Text from a MIDI file (track names) or a folder name is returned as JSON data; the page only
ever sets it as text (studio.js never assigns innerHTML).
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import json
import logging
import math
import os
import queue
import secrets
import shutil
import threading
import time
from typing import Any

from jaxcomposer import config_lib, workdir_lib
from jaxcomposer.config_lib import CHOICES
from jaxcomposer.core.errors import Failure, UsageError

MAX_PRIMER_BYTES = 256 * 1024  # an uploaded primer MIDI (a 10-minute piano MIDI is ~60 KiB)
# The JSON body: the primer in base64 (4/3 of its size) plus the settings.
MAX_BODY_BYTES = MAX_PRIMER_BYTES * 4 // 3 + 16 * 1024
KEEP_JOBS = 32  # finished jobs whose files are kept; older ones are removed (oldest first)
MAX_QUEUE = 16  # jobs waiting at most; a request beyond that is refused with a message
MAX_TEXT = 200  # characters of a key text (a schedule of a dozen keys fits)
MAX_SHOWN_NAMES = 16  # track names of a primer shown (each cut to MAX_NAME characters)
MAX_NAME = 80
SCALES = CHOICES["sample.scale"]  # the config's list, referenced
# (low, high) accepted for each numeric field; the page shows the same bounds.
LIMITS: dict[str, tuple[float, float]] = {
    "bars": (1, 64),
    "num_samples": (1, 8),
    "temperature": (0.05, 5.0),
    "top_p": (0.01, 1.0),
    "seed": (0, 2**31 - 1),
    "qpm": (20, 300),
    "scale_penalty": (0.0, 20.0),
    "particles": (1, 256),  # SMC particles per sample (melody / infill)
    "melody_track": (0, 63),  # the melody's voice part (0 = highest); empty = the top voice
}
_INTEGER = {"bars", "num_samples", "seed", "particles", "melody_track"}
FIELDS = {"model", "key", "scale", "style", "meter", "primer", "melody", "infill", *LIMITS}
# Facts of a sample shown on the page (from generate's per-sample info = samples.json's).
SHOWN = ("name", "title", "key", "requested_key", "key_source", "style", "notes", "bars", "beats",
         "qpm", "time_signature", "synthesizer", "scale_mass_removed", "constraint",
         "constraints_met", "given_kept", "log_evidence", "final_ess", "min_ess", "resamples",
         "finished_particles")  # fmt: skip
# Files of a job the server serves: render_sample's, plus the run's index and JSON.
_RUN_FILES = ("index.html", "samples.json")
_SAMPLE_FILE_KEYS = ("midi", "musicxml", "wav", "roll", "png")
# The page shows the SVG pages and draws the piano roll from the notes itself (a canvas), so
# the two PNG stages (together ~1 s a sample on this machine) are not run.
SKIP_STAGES = ("png", "roll")
MAX_ROLL_NOTES = 20000  # notes sent to the page for its piano roll


def _warm_renderer(out_dir: str) -> str:
    """Runs once in each render process: imports music21/verovio/matplotlib and renders a
    two-note sample, so the first real job does not pay for it (~3 s)."""
    import numpy as np

    from jaxcomposer.music.notes import Notes
    from jaxcomposer.render import outputs

    notes = Notes(
        pitch=np.array([60, 64], np.int16), start=np.array([0.0, 1.0]),
        end=np.array([1.0, 2.0]), velocity=np.array([80, 80], np.int16),
        program=np.zeros(2, np.int16), is_drum=np.zeros(2, bool), voice=np.full(2, -1, np.int8),
    )  # fmt: skip
    os.makedirs(out_dir, exist_ok=True)
    outputs.render_sample(out_dir, f"warm_{os.getpid()}", notes, title="warm-up", skip=SKIP_STAGES)
    return out_dir


class RequestError(UsageError):
    """A request the studio cannot do as sent (the message says which field and why)."""


@dataclasses.dataclass(frozen=True)
class Upload:
    """A MIDI file sent with a request, read and checked (never written before the job runs)."""

    raw: bytes
    name: str  # the name the browser sent (text only: never a path; escaped where shown)
    tracks: list[str]  # its track names (cut to MAX_NAME, at most MAX_SHOWN_NAMES)
    piece: Any  # music.notes.Piece, as the lenient reader read it


@dataclasses.dataclass
class Model:
    """One workdir's model, restored once when the studio starts."""

    id: str  # "0", "1", ...: the index in the studio's list (requests name models by it)
    name: str  # the folder's name (text: escaped wherever it is shown)
    workdir: str  # absolute; never sent to a browser
    restored: Any  # workdir_lib.Restored
    facts: dict  # corpus, steps, validation NLL, tokenizer, ... (model_facts)


@dataclasses.dataclass
class Job:
    id: str
    model: Model
    settings: dict  # the checked request (no file bytes)
    primer: Upload | None
    melody: Upload | None = None
    state: str = "queued"  # queued | running | done | error
    stage: str = "queued"
    done: int = 0
    total: int = 0
    message: str = ""
    created: float = dataclasses.field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    samples: list = dataclasses.field(default_factory=list)
    files: dict = dataclasses.field(default_factory=dict)  # served name -> absolute path


def model_facts(workdir: str, restored) -> dict:
    """What the page shows about a model: corpus, pieces, tokenizer and vocabulary, model size,
    conditioning, checkpoint step, training steps and validation NLL (nats/token, from
    train_summary.json when training wrote one). Values are numbers or short texts."""
    config = restored.config
    facts: dict = {}
    try:
        manifest = workdir_lib.read_manifest(workdir)
    except Failure:
        manifest = {}
    source = manifest.get("source") or os.path.basename(str(manifest.get("midi_dir") or ""))
    facts["corpus"] = source or "?"
    totals = manifest.get("totals") or {}
    for split in ("train", "valid"):
        if isinstance(totals.get(split), dict):
            facts[f"{split} pieces"] = totals[split].get("pieces")
    facts["tokenizer"] = f"{config.tokenizer.name} ({restored.tokenizer.vocab.size} tokens)"
    m = config.model
    facts["model"] = f"{m.num_layers} x {m.hidden_size} LSTM"
    facts["conditioning"] = restored.spec.condition if restored.spec is not None else "none"
    facts["checkpoint"] = f"{restored.source}, step {restored.step}"
    try:
        with open(os.path.join(workdir, "train_summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
    except (OSError, ValueError):
        summary = {}
    if summary.get("step") is not None:
        facts["steps trained"] = summary["step"]
    if summary.get("best_val_loss") is not None:
        facts["validation NLL (nats/token)"] = round(float(summary["best_val_loss"]), 4)
    if summary.get("train_seconds") is not None:
        facts["training time (s)"] = round(float(summary["train_seconds"]), 1)
    return facts


def _styles(model: Model) -> list[str]:
    """The style names a key+style model was trained with ([] for other models)."""
    spec = model.restored.spec
    return list(spec.styles) if spec is not None and spec.uses_style else []


def _number(name: str, value: Any) -> float | int:
    low, high = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError(f"{name}: expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"{name}: {str(value)[:40]!r} is not a number") from None
    if not math.isfinite(number) or not low <= number <= high:
        raise RequestError(f"{name}: {number:g} is outside [{low:g}, {high:g}]")
    if name in _INTEGER:
        if number != int(number):
            raise RequestError(f"{name}: {number:g} is not a whole number")
        return int(number)
    return number


class Studio:
    """Models, jobs and the worker. `workdirs`: trained run folders (each restored now, at
    `checkpoint`); `results_dir`: the folder every job writes into (one sub-folder per job id;
    created if missing). `render_processes`: processes that render the samples of a job in
    parallel (default: 2, or 1 on a one-core machine; 0 = in the worker thread). Raises
    UsageError for a folder that is not a trained workdir."""

    def __init__(
        self,
        workdirs: list[str],
        results_dir: str,
        *,
        checkpoint: str = "best",
        soundfont: str | None = None,
        keep_jobs: int = KEEP_JOBS,
        render_processes: int | None = None,
    ):
        if not workdirs:
            raise UsageError("--mode=serve needs at least one --workdir")
        self.results_dir = os.path.abspath(results_dir)
        os.makedirs(self.results_dir, exist_ok=True)
        self.soundfont = soundfont
        self.keep_jobs = keep_jobs
        self.models: dict[str, Model] = {}
        for i, workdir in enumerate(workdirs):
            workdir = os.path.abspath(workdir)
            if not os.path.isdir(workdir):
                raise UsageError(f"--workdir {workdir}: no such folder")
            if not workdir_lib.checkpoint_steps(workdir):
                raise UsageError(f"--workdir {workdir}: no checkpoints (train a model there)")
            restored = workdir_lib.restore_for_inference(workdir, checkpoint)
            name = os.path.basename(workdir.rstrip(os.sep)) or workdir
            self.models[str(i)] = Model(
                str(i), name, workdir, restored, model_facts(workdir, restored)
            )
        if render_processes is None:
            render_processes = min(2, os.cpu_count() or 1)
        self.executor = None
        if render_processes > 0:
            import concurrent.futures
            import multiprocessing

            # spawn, not fork: the parent runs jax's threads, which a fork would copy mid-work.
            self.executor = concurrent.futures.ProcessPoolExecutor(
                render_processes, mp_context=multiprocessing.get_context("spawn")
            )
            warm = os.path.join(self.results_dir, ".warm")
            for done in [
                self.executor.submit(_warm_renderer, warm) for _ in range(render_processes)
            ]:
                done.result()
            shutil.rmtree(warm, ignore_errors=True)
        self.jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="studio-worker", daemon=True)
        self._worker.start()

    # --- what the page asks ------------------------------------------------------------------
    def describe(self) -> dict:
        """The models (id, name, facts, defaults) and the limits, for the page's form."""
        models = []
        for model in self.models.values():
            sample = model.restored.config.sample
            models.append(
                dict(
                    id=model.id,
                    name=model.name,
                    facts=model.facts,
                    keyed=bool(model.restored.spec is not None and model.restored.spec.dim > 0),
                    styles=_styles(model),  # key+style models: the training set's style names
                    defaults=dict(
                        key=sample.key,  # one key per sample in turn, as the command line
                        style=sample.style if sample.style in _styles(model) else "",
                        meter=sample.meter,
                        scale=sample.scale,
                        temperature=sample.temperature,
                        top_p=sample.top_p,
                        bars=sample.num_bars if sample.num_bars > 0 else 8,
                        seed=0,
                        num_samples=min(sample.num_samples, int(LIMITS["num_samples"][1])),
                        scale_penalty=sample.scale_penalty,
                        particles=min(sample.particles, int(LIMITS["particles"][1])),
                    ),
                )  # fmt: skip
            )
        limits = {k: list(v) for k, v in LIMITS.items()}
        return dict(
            models=models, limits=limits, scales=list(SCALES), max_primer_bytes=MAX_PRIMER_BYTES
        )

    def submit(self, request: Any) -> Job:
        """Checks a request (a dict from JSON) and queues it; returns the job. Raises
        RequestError naming the field for anything it cannot do, before any file is written."""
        if not isinstance(request, dict):
            raise RequestError("the request must be a JSON object")
        unknown = sorted(str(k)[:40] for k in request if k not in FIELDS)
        if unknown:
            raise RequestError(f"unknown field(s): {', '.join(unknown)}")
        model = self.models.get(str(request.get("model", "0")))
        if model is None:
            raise RequestError("model: no such model (pick one from the list)")
        settings: dict = {"model": model.id}
        for name in LIMITS:
            if request.get(name) is not None and request.get(name) != "":
                settings[name] = _number(name, request[name])
        key = request.get("key", "")
        if not isinstance(key, str) or len(key) > MAX_TEXT:
            raise RequestError(f"key: expected a text of at most {MAX_TEXT} characters")
        settings["key"] = key.strip()
        if settings["key"]:
            from jaxcomposer.music import keys

            for part in settings["key"].split(";"):
                if part.strip():
                    keys.parse_key_schedule(part)  # KeyNameError (a UsageError) says why
        scale = request.get("scale", "off")
        if scale not in SCALES:
            raise RequestError(f"scale: expected one of {', '.join(SCALES)}")
        settings["scale"] = scale
        style = request.get("style") or ""
        if not isinstance(style, str) or (style and style not in _styles(model)):
            known = ", ".join(_styles(model)) or "none: this model is not conditioned on style"
            raise RequestError(f"style: {str(style)[:MAX_NAME]!r} is not a style of the model "
                               f"({known})")  # fmt: skip
        settings["style"] = style
        meter = request.get("meter") or model.restored.config.sample.meter
        if not isinstance(meter, str) or not (
            meter.strip() in config_lib.METER_RULES or config_lib.parse_meter(meter)
        ):
            raise RequestError(f"meter: {str(meter)[:40]!r}: expected hold, free or a time "
                               "signature such as 3/4")  # fmt: skip
        settings["meter"] = meter.strip()
        primer = self._upload("primer", request.get("primer"), model)
        melody = self._upload("melody", request.get("melody"), model)
        self._constraint(request, settings, model, primer, melody)
        job = Job(secrets.token_hex(8), model, settings, primer, melody)
        with self._lock:
            waiting = sum(j.state == "queued" for j in self.jobs.values())
            if waiting >= MAX_QUEUE:
                raise RequestError(f"{waiting} requests are waiting already: try again later")
            self.jobs[job.id] = job
        self._queue.put(job)
        return job

    def _upload(self, field: str, upload: Any, model: Model) -> Upload | None:
        """The checked upload of `field` ("primer" or "melody": {name, data (base64)}), or
        None; RequestError (naming the field and the file) for one over MAX_PRIMER_BYTES, bad
        base64, a file the lenient reader refuses, or one without (pitched) notes."""
        if upload is None:
            return None
        if not isinstance(upload, dict) or not isinstance(upload.get("data"), str):
            raise RequestError(f"{field}: expected {{name, data (base64)}}")
        name = upload.get("name")
        name = name[:MAX_NAME] if isinstance(name, str) and name else f"{field}.mid"
        too_large = f"{field} {name}: larger than the limit of {MAX_PRIMER_BYTES // 1024} KiB"
        if len(upload["data"]) > MAX_PRIMER_BYTES * 4 // 3 + 4:
            raise RequestError(too_large)
        try:
            raw = base64.b64decode(upload["data"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{field} {name}: the upload is not valid base64") from None
        if len(raw) > MAX_PRIMER_BYTES:
            raise RequestError(too_large)
        from jaxcomposer.data import midi_io

        tracks: list[str] = []
        try:  # the same lenient reader as prepare; `path` only names the file in messages
            piece, stats = midi_io.read_midi_bytes(
                raw, model.restored.config.data, path=f"{field} {name}", name=f"{field}.mid",
                track_names=tracks,
            )  # fmt: skip
        except midi_io.MidiReadError as e:
            raise RequestError(f"{field} {name}: {e.reason}") from None
        if len(piece.notes) == 0:
            drums = " (only drum notes)" if stats.get("drum_notes") else ""
            raise RequestError(f"{field} {name}: no notes{drums}")
        shown = [t[:MAX_NAME] for t in tracks if t.strip()][:MAX_SHOWN_NAMES]
        return Upload(raw, name, shown, piece)

    def _constraint(
        self, request: dict, settings: dict, model: Model, primer: Upload | None,
        melody: Upload | None,
    ) -> None:  # fmt: skip
        """Checks the constraint modes as the command line does (cli.check_flags, then
        constraints.prepare's checks on the file read): `melody` (harmonize it, voice part
        `melody_track` or the top voice) or `infill` (bar ranges of the primer to regenerate,
        "5-8" or "3-4,9-12"). Adds `infill` to `settings`; RequestError says what is wrong."""
        from jaxcomposer.sample import constraints

        infill = request.get("infill") or ""
        if not isinstance(infill, str) or len(infill) > MAX_TEXT:
            raise RequestError(f"infill: expected a text of at most {MAX_TEXT} characters")
        infill = infill.strip()
        if infill and primer is None:
            raise RequestError(f"infill {infill[:40]!r}: needs a primer MIDI (the piece to "
                               "rewrite)")  # fmt: skip
        if melody is not None and (primer is not None or infill):
            raise RequestError("melody: the melody is the whole piece: leave out the primer and "
                               "the bars to regenerate")  # fmt: skip
        if "melody_track" in settings and melody is None:
            raise RequestError("melody_track: needs a melody MIDI")
        config, tokenizer = model.restored.config, model.restored.tokenizer
        try:
            if melody is not None:
                track = settings.get("melody_track", -1)
                part = f"part {track}" if track >= 0 else "top voice"
                constraints.melody_request_for_piece(
                    config, tokenizer, melody.piece, track, f"melody {melody.name}",
                    f"melody {melody.name} ({part}",
                )  # fmt: skip
            if infill:
                ranges = constraints.parse_ranges(infill)
                if tokenizer.time_unit != "beat" or tokenizer.grammar.press is not None:
                    raise RequestError(
                        f"infill: the {tokenizer.name} tokenizer's tokens cannot be cut at bar "
                        "lines (tokens in seconds or held keys): pick a model with a score "
                        "tokenizer such as voices or event"
                    )
                constraints.infill_request_for_piece(config, tokenizer, primer.piece, ranges,
                                                     primer.name)  # fmt: skip
        except (UsageError, Failure) as e:
            if isinstance(e, RequestError):
                raise
            raise RequestError(str(e).replace("--primer_midi ", "primer ")) from None
        settings["infill"] = infill

    def status(self, job_id: str) -> dict | None:
        """The job's state for the page (None: no such job): state, stage, progress, queue
        position, message, and when done the samples with their file URLs."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            ahead = sum(
                j.state in ("queued", "running") and j.created < job.created
                for j in self.jobs.values()
            )
        out = dict(
            id=job.id, state=job.state, stage=job.stage, done=job.done, total=job.total,
            message=job.message, model=job.model.name, settings=job.settings,
            primer=dict(name=job.primer.name, tracks=job.primer.tracks) if job.primer else None,
            melody=dict(name=job.melody.name, tracks=job.melody.tracks) if job.melody else None,
        )  # fmt: skip
        if job.state == "queued":
            out["ahead"] = ahead
        if job.started is not None:
            end = job.finished or time.time()
            out["seconds"] = round(end - job.started, 3)
            out["waited"] = round(job.started - job.created, 3)
        if job.state == "done":
            out["samples"] = job.samples
            out["gallery"] = self._url(job, "index.html") if "index.html" in job.files else None
        return out

    def file(self, job_id: str, name: str) -> str | None:
        """The absolute path of a job's file by the name the job gave it, or None."""
        with self._lock:
            job = self.jobs.get(job_id)
            return job.files.get(name) if job is not None else None

    def wait(self, job_id: str, timeout: float) -> dict | None:
        """Polls until the job is done or failed (for benchmarks and tests); its status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(job_id)
            if status is None or status["state"] in ("done", "error"):
                return status
            time.sleep(0.02)
        return self.status(job_id)

    def close(self) -> None:
        """Stops the worker after the job it is doing (waiting jobs are dropped)."""
        self._queue.put(None)
        self._worker.join(timeout=60)
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    # --- the worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            try:
                self._run(job)
            except Exception as e:  # a job never kills the worker
                self._fail(job, e)
            finally:
                self._prune()

    def _url(self, job: Job, name: str) -> str:
        return f"/results/{job.id}/{name}"

    def _fail(self, job: Job, e: BaseException) -> None:
        from jaxcomposer import cli

        described = cli.describe_error(e)
        if described is None:  # a bug: the traceback goes to the server's log, not the page
            logging.getLogger(__name__).error("job %s failed", job.id, exc_info=e)
            message = f"internal error ({type(e).__name__}); the server's log has the details"
        else:
            message = described[1]
        for field, upload in (("primer", job.primer), ("melody", job.melody)):
            if upload is not None:
                path = os.path.join(self.results_dir, job.id, f"{field}.mid")
                flag = "--primer_midi" if field == "primer" else "--melody"
                message = message.replace(f"{flag} {path}", f"{field} {upload.name}")
        message = message.replace(self.results_dir, "(results)")
        message = message.replace("(raise --particles)", "(raise the particles)")
        with self._lock:
            job.state, job.stage, job.message = "error", "error", message
            job.finished = time.time()

    def _progress(self, job: Job, stage: str, done: int, total: int) -> None:
        with self._lock:
            job.stage, job.done, job.total = stage, done, total

    def _run(self, job: Job) -> None:
        from jaxcomposer.sample import generate

        with self._lock:
            job.state, job.started = "running", time.time()
        out_dir = os.path.join(self.results_dir, job.id)  # an id we made: never request text
        os.makedirs(out_dir)
        s = job.settings
        overrides: dict = {"decoder": "temperature", "key": s["key"], "scale": s["scale"],
                           "style": s.get("style", "")}  # fmt: skip
        if "meter" in s:
            overrides["meter"] = s["meter"]
        for field, name in (("num_bars", "bars"), ("num_samples", "num_samples"),
                            ("temperature", "temperature"), ("top_p", "top_p"),
                            ("scale_penalty", "scale_penalty")):  # fmt: skip
            if name in s:
                overrides[field] = s[name]
        if "particles" in s:
            overrides["particles"] = s["particles"]
        # Uploads are written under names we chose, in the job's own folder, and passed to
        # generate() as the command line's --primer_midi / --melody / --infill would be.
        overrides["primer"] = "none"
        given = job.primer is not None or job.melody is not None
        if given and s["key"] == job.model.restored.config.sample.key.strip():
            overrides["key"] = ""  # the saved keys are for unprimed samples: keep the upload's
        for field, upload in (("primer", job.primer), ("melody", job.melody)):
            if upload is not None:
                overrides[field] = os.path.join(out_dir, f"{field}.mid")
                with open(overrides[field], "wb") as f:
                    f.write(upload.raw)
        if job.melody is not None and "melody_track" in s:
            overrides["melody_track"] = s["melody_track"]
        if s.get("infill"):
            overrides["infill"] = s["infill"]
        paths = generate.generate(
            job.model.workdir, out_dir=out_dir, seed=s.get("seed", 0), overrides=overrides,
            restored=job.model.restored, qpm=s.get("qpm"), soundfont=self.soundfont,
            executor=self.executor, skip_stages=SKIP_STAGES,
            progress=lambda stage, done, total: self._progress(job, stage, done, total),
        )  # fmt: skip
        files = {name: os.path.join(out_dir, name) for name in _RUN_FILES}
        samples = []
        for info in paths["samples"]:
            shown = {k: info[k] for k in SHOWN if info.get(k) is not None}
            urls: dict = {}
            for key in _SAMPLE_FILE_KEYS:
                if info.get(key):
                    files[info[key]] = os.path.join(out_dir, info[key])
                    urls[key] = self._url(job, info[key])
            urls["svg"] = []
            for page in info.get("svg") or []:
                files[page] = os.path.join(out_dir, page)
                urls["svg"].append(self._url(job, page))
            roll = self._roll_notes(job, out_dir, info.get("midi"), info.get("given_notes"))
            samples.append(dict(shown, files=urls, errors=info.get("errors") or {}, roll=roll))
        files = {k: v for k, v in files.items() if os.path.isfile(v)}
        with self._lock:
            job.samples, job.files = samples, files
            job.state, job.stage, job.finished = "done", "done", time.time()

    def _roll_notes(
        self, job: Job, out_dir: str, midi: str | None, given: list | None = None
    ) -> dict | None:
        """The sample's notes for the page's piano roll, read back from its MIDI file:
        {notes: [[pitch, start beat, end beat, velocity, given], ...], bar_beats}; None without
        MIDI. `given`: samples.json's given_notes ([pitch, start, end] in beats): a note with
        their pitch and onset (to 1e-3 beat) has given 1 (the page draws it in the score's
        colour for given notes), else 0."""
        if not midi:
            return None
        from jaxcomposer.data import midi_io

        try:
            piece, _ = midi_io.read_midi(
                os.path.join(out_dir, midi), job.model.restored.config.data
            )
        except midi_io.MidiReadError:
            return None
        n = piece.notes[:MAX_ROLL_NOTES]
        rows = zip(n.pitch.tolist(), n.start.tolist(), n.end.tolist(), n.velocity.tolist(),
                   strict=True)  # fmt: skip
        meters = piece.time_signatures
        bar_beats = meters[0].bar_beats if meters else 4.0
        fixed = {(int(p), round(float(a), 3)) for p, a, *_ in given or ()}
        notes = [[p, round(a, 4), round(b, 4), v, int((p, round(a, 3)) in fixed)]
                 for p, a, b, v in rows]  # fmt: skip
        return dict(notes=notes, bar_beats=bar_beats)

    def _prune(self) -> None:
        """Keeps the files of the last `keep_jobs` finished jobs; older jobs are forgotten and
        their folders (named by our ids, inside results_dir) removed."""
        with self._lock:
            finished = [j for j in self.jobs.values() if j.state in ("done", "error")]
            old = finished[: max(0, len(finished) - self.keep_jobs)]
            for job in old:
                del self.jobs[job.id]
        for job in old:
            shutil.rmtree(os.path.join(self.results_dir, job.id), ignore_errors=True)
