"""Benchmark: `--mode=prepare` on a MIDI folder, cold and cached, next to the original project's
music21 data step (`../shared/bench/seed_notes.py DIR`, run here in a subprocess).

Figures (median of --reps runs, each cold run with a fresh temporary cache):
  cold, in-process     dataset.prepare() with the automatic worker choice
  cold, serial / pool  the same with num_workers=1 / 2 (what the automatic choice picks between)
  cold, new process    `python -c "prepare(...)"` wall time: interpreter, imports and all
  cached               a second prepare() over the same files (warm token cache)
The original's figure excludes its music21 import; its ratio is taken against the in-process
cold figure and against the new-process one.

usage: python launch/bench_prepare.py [--midi_dir DIR] [--reps 3] [--skip_seed]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import default  # noqa: E402
from jaxcomposer import config_lib  # noqa: E402
from jaxcomposer.data import dataset  # noqa: E402

SHARED = os.path.join(os.path.dirname(REPO), "shared")
SEED_NOTES = os.path.join(SHARED, "bench", "seed_notes.py")

FRESH_PROCESS = """
import sys, tempfile, time
sys.path.insert(0, {repo!r})
from configs import default
from jaxcomposer import config_lib
from jaxcomposer.data import dataset
config = config_lib.replace(config_lib.freeze(default.get_config()),
                            data={{"midi_dir": {midi_dir!r}, "cache_dir": {cache!r}}})
dataset.prepare(config, tempfile.mkdtemp(), progress=False)
"""


def make_config(midi_dir: str, cache_dir: str, workers: int = 0) -> config_lib.Config:
    base = config_lib.freeze(default.get_config())
    return config_lib.replace(
        base, data={"midi_dir": midi_dir, "cache_dir": cache_dir, "num_workers": workers}
    )


def time_prepare(config: config_lib.Config) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        manifest = dataset.prepare(config, workdir, progress=False)
        return time.perf_counter() - started, manifest


def cold(midi_dir: str, workers: int, reps: int) -> tuple[float, dict]:
    times, manifest = [], {}
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as cache:
            seconds, manifest = time_prepare(make_config(midi_dir, cache, workers))
            times.append(seconds)
    return statistics.median(times), manifest


def cached(midi_dir: str, reps: int) -> float:
    with tempfile.TemporaryDirectory() as cache:
        config = make_config(midi_dir, cache)
        time_prepare(config)
        return statistics.median(time_prepare(config)[0] for _ in range(reps))


def fresh_process(midi_dir: str, reps: int) -> float:
    times = []
    for _ in range(reps):
        with tempfile.TemporaryDirectory() as cache:
            code = FRESH_PROCESS.format(repo=REPO, midi_dir=midi_dir, cache=cache)
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def seed_notes(midi_dir: str) -> dict | None:
    if not os.path.exists(SEED_NOTES):
        print(f"(no {SEED_NOTES}: original's figure not measured)")
        return None
    out = subprocess.run([sys.executable, SEED_NOTES, midi_dir], check=True, capture_output=True,
                         text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--midi_dir", default=os.path.join(SHARED, "data", "final_fantasy"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip_seed", action="store_true", help="skip the ~30 s music21 run")
    args = parser.parse_args()

    auto_s, manifest = cold(args.midi_dir, 0, args.reps)
    serial_s, _ = cold(args.midi_dir, 1, args.reps)
    pool_s, _ = cold(args.midi_dir, 2, args.reps)
    process_s = fresh_process(args.midi_dir, args.reps)
    cached_s = cached(args.midi_dir, args.reps)
    totals = manifest["totals"]
    result = {
        "files": totals["found"],
        "used": totals["used"],
        "notes": totals["notes"],
        "tokens": totals["train"]["tokens"] + totals["valid"]["tokens"],
        "cpus": os.cpu_count(),
        "auto_workers": manifest["timing"]["workers"],
        "cold_s": round(auto_s, 3),
        "cold_serial_s": round(serial_s, 3),
        "cold_pool2_s": round(pool_s, 3),
        "cold_new_process_s": round(process_s, 3),
        "cached_s": round(cached_s, 3),
    }
    print(
        f"{result['files']} files, {result['notes']} notes, {result['tokens']} tokens "
        f"({os.cpu_count()} CPUs; automatic choice: {result['auto_workers']} worker(s))"
    )
    print(
        f"cold prepare:            {auto_s:.3f} s  (serial {serial_s:.3f} s, "
        f"2-process pool {pool_s:.3f} s)"
    )
    print(f"cold, fresh process:     {process_s:.3f} s  (interpreter start and imports included)")
    print(f"cached prepare:          {cached_s:.3f} s")
    if not args.skip_seed:
        seed = seed_notes(args.midi_dir)
        if seed:
            result["seed_notes_s"] = seed["seconds"]
            result["speedup_cold"] = round(seed["seconds"] / auto_s, 1)
            result["speedup_cold_new_process"] = round(seed["seconds"] / process_s, 1)
            result["speedup_cached"] = round(seed["seconds"] / cached_s, 1)
            print(
                f"original (music21):      {seed['seconds']:.3f} s for {seed['files']} files "
                f"-> {result['speedup_cold']}x faster cold "
                f"({result['speedup_cold_new_process']}x with a fresh process), "
                f"{result['speedup_cached']}x cached"
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
