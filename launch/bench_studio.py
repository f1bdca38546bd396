"""Benchmark (not a test): the studio's time from request to score and audio ready.

Starts the studio (app.Studio + server on a free loopback port, in this process) on a trained
workdir, sends one warm-up request (it compiles the sampler for these settings), then times
`--reps` single requests and `--reps` rounds of two requests sent at once, each from POST
/api/generate until the job is done AND its first score page (SVG) and first WAV have been
fetched over HTTP. Same settings throughout (default: 4 samples of 8 bars of 4/4, D minor,
soft scale), a different seed each time. Prints one JSON line per figure and a summary; each
request's line has its stage breakdown from the job's samples.json: sampling (the jitted scan),
and per render stage (midi, musicxml, svg, wav) the seconds summed over the samples and the
slowest sample's (samples render in parallel in --render_processes processes).

usage: python launch/bench_studio.py --workdir /tmp/sq [--samples 4] [--bars 8] [--reps 3]
                                     [--render_processes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxcomposer.studio import app, server  # noqa: E402


def request_until_ready(base: str, body: dict, timeout: float = 600.0) -> dict:
    """POST, poll, then fetch the first SVG page and WAV: {seconds, queued, job seconds}."""
    started = time.perf_counter()
    data = json.dumps(body).encode()
    post = urllib.request.Request(
        base + "api/generate", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(post, timeout=timeout) as answer:
        job = json.load(answer)["job"]
    while True:
        with urllib.request.urlopen(f"{base}api/jobs/{job}", timeout=timeout) as answer:
            status = json.load(answer)
        if status["state"] in ("done", "error"):
            break
        time.sleep(0.02)
    if status["state"] != "done":
        raise RuntimeError(status["message"])
    first = status["samples"][0]["files"]
    for url in (first["svg"][0], first["wav"]):
        with urllib.request.urlopen(base + url.lstrip("/"), timeout=timeout) as answer:
            answer.read()
    seconds = round(time.perf_counter() - started, 3)
    with urllib.request.urlopen(f"{base}results/{job}/samples.json", timeout=timeout) as answer:
        run = json.load(answer)
    stages: dict = {"sampling": run["settings"]["sample_seconds"]}
    for name in ("midi", "musicxml", "svg", "wav"):
        each = [s["seconds"].get(name, 0.0) for s in run["samples"]]
        stages[name] = dict(total=round(sum(each), 3), slowest=round(max(each), 3))
    stages["tokens"] = sum(s["tokens"] for s in run["samples"])
    stages["notes"] = sum(s["notes"] for s in run["samples"])
    return dict(seconds=seconds, waited=status["waited"], job_seconds=status["seconds"],
                stages=stages)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--render_processes", type=int, default=None)
    args = parser.parse_args()
    results_dir = tempfile.mkdtemp(prefix="bench-studio-")
    started = time.perf_counter()
    studio = app.Studio([args.workdir], results_dir, render_processes=args.render_processes)
    start_seconds = time.perf_counter() - started
    httpd = server.make_server(studio, "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = httpd.url
    # 4/4 held: 8 bars are 32 beats in every sample (a young model's first sampled meter may be
    # 1/16 or 14/8, which would make the samples, and their render times, differ tenfold).
    body = dict(model="0", key="D minor", scale="soft", meter="4/4", bars=args.bars,
                num_samples=args.samples, temperature=1.0, top_p=0.9)  # fmt: skip
    out: dict = {"start_seconds": round(start_seconds, 2), "cpus": os.cpu_count()}
    out["warm_up"] = request_until_ready(base, dict(body, seed=0))
    print(json.dumps({"warm_up": out["warm_up"]}), flush=True)
    singles = []
    for rep in range(args.reps):
        singles.append(request_until_ready(base, dict(body, seed=1 + rep)))
        print(json.dumps({"single": singles[-1]}), flush=True)
    pairs = []
    for rep in range(args.reps):
        answers: list = [None, None]

        def run(i: int, rep: int = rep, answers: list = answers) -> None:
            answers[i] = request_until_ready(base, dict(body, seed=100 + 2 * rep + i))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pairs.append(answers)
        print(json.dumps({"pair": answers}), flush=True)
    out["single_median_s"] = statistics.median(r["seconds"] for r in singles)
    out["single_stage_medians"] = {
        name: statistics.median(
            r["stages"][name]["slowest"]
            if isinstance(r["stages"][name], dict)
            else r["stages"][name]
            for r in singles
        )
        for name in singles[0]["stages"]
    }  # sampling, tokens, notes; each render stage: its slowest sample
    out["pair_first_median_s"] = statistics.median(min(r["seconds"] for r in p) for p in pairs)
    out["pair_last_median_s"] = statistics.median(max(r["seconds"] for r in p) for p in pairs)
    out["render_processes"] = 0 if studio.executor is None else studio.executor._max_workers
    out["settings"] = body
    print(json.dumps({"summary": out}), flush=True)
    httpd.shutdown()
    studio.close()


if __name__ == "__main__":
    main()
