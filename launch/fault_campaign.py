r"""Issue 24's fault campaign: interrupts, damaged checkpoints, a full disk, a read-only workdir.

    python launch/fault_campaign.py --runs=20 --out=/tmp/faults [--parts=generate,checkpoints,...]

Trains the tiny config 4 steps on four midi_factory melodies (checkpoints at 2 and 4), then:

generate     --runs generate commands into a folder that holds an earlier sample set and files
             of the user's (sample_1.jpg, sample_2023-report.pdf, a foreign page.html, notes),
             each sent SIGINT or SIGKILL (alternating) at a moment cycling through: random in
             [0, a reference run's wall time]; once the staging folder exists (rendering), after
             a random delay up to 3 s; as soon as the swap journal appears (inside the swap).
             After each: foreign files byte-identical; no journal or staging left once the next
             writer opened the folder (`outputs.SampleSet`, as the next generate does); the
             folder holds exactly one complete set (every file samples.json lists, no other
             file of ours) which is the old set or a new one, never a mix.
checkpoints  10 damaged copies of the workdir (step 4 truncated, emptied, bit-flipped, a file
             missing, ... see DAMAGE), each read by generate, evaluate or train (cycling): exit
             0, no traceback, one warning naming step 4 and "using step 2"; plus one copy with
             both steps damaged: exit 1, one error line.
disk         (root only) a 3 MB tmpfs: train on it with room for the dataset and two
             checkpoints (one line, non-zero exit, every checkpoint left verifies), resume with
             nothing free (the same), then generate into a folder on it holding an earlier set
             with the disk filled but 64 kB (one line, non-zero exit, the earlier set intact, no
             staging left).
readonly     (root only) evaluate on a read-only bind mount of the workdir: the result table is
             printed, exit 1, one line naming evaluation_valid.json.
bomb         running-status MIDI bombs of 20 and 200 MB read under a 1 GiB address-space limit,
             with max_file_mb 32 (the default) and 1000: refused with a reason, in CPU seconds
             and extra memory printed (goal: under 1 s of CPU).

Prints one JSON line per run and a final summary (also written to OUT/summary.json); exits 1 if
any goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import midi_factory as mf  # noqa: E402

from jaxcomposer import workdir_lib  # noqa: E402
from jaxcomposer.model import checkpoints  # noqa: E402
from jaxcomposer.render import outputs  # noqa: E402

FOREIGN = {
    "sample_1.jpg": b"\xff\xd8 the user's photo",
    "sample_2023-report.pdf": b"%PDF the user's report",
    "page.html": b"<p>the user's own page</p>",
    "notes.txt": b"the user's notes",
}
TIMINGS = ("random", "rendering", "swap")


def env(args) -> dict:
    return dict(
        os.environ,
        PYTHONPATH=ROOT,
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=os.path.join(args.out, "jax-cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )


def main_command(mode: str, workdir: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "jaxcomposer.main", f"--mode={mode}", f"--workdir={workdir}",
            "--noprogress", *flags]  # fmt: skip


def train_flags(args, steps: int = 4) -> list[str]:
    return [
        "--config=configs/tiny.py", f"--config.data.midi_dir={args.midi}",
        f"--config.data.cache_dir={os.path.join(args.out, 'cache')}",
        "--config.data.num_workers=1", f"--config.train.num_steps={steps}",
        "--config.train.checkpoint_every=2", "--config.train.eval_every=2",
        "--config.train.log_every=2", "--config.train.early_stop_patience=0",
    ]  # fmt: skip


GENERATE = ("--num_steps=24", "--num_samples=2")


def run(cmd: list[str], args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env(args), **kwargs)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def set_of(folder: str) -> dict | None:
    """name -> sha256 of the complete set in `folder` (samples.json included), or None when
    samples.json is missing or one of the files it lists is."""
    try:
        with open(os.path.join(folder, outputs.SET_INDEX)) as f:
            names = json.load(f)["files"] + [outputs.SET_INDEX]
        return {name: digest(os.path.join(folder, name)) for name in names}
    except (OSError, ValueError, KeyError):
        return None


# --- generate under SIGINT / SIGKILL ------------------------------------------------------------
def wait_for(path: str, process: subprocess.Popen, poll: float) -> bool:
    while process.poll() is None:
        if os.path.lexists(path):
            return True
        time.sleep(poll)
    return False


def generate_part(args, workdir: str, results: list) -> dict:
    out = os.path.join(args.out, "samples")
    os.makedirs(out)
    for name, data in FOREIGN.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    started = time.perf_counter()
    done = run(main_command("generate", workdir, f"--out_dir={out}", "--seed=0", *GENERATE), args)
    reference = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    sets = [set_of(out)]  # every set seen complete in the folder, oldest first
    rng = random.Random(args.seed)
    counts = {"runs": 0, "foreign_lost": 0, "incomplete": 0, "old_kept": 0,
              "new_set": 0, "journal_completed_by_next_run": 0, "tracebacks": 0}  # fmt: skip
    for i in range(args.runs):
        sig = (signal.SIGINT, signal.SIGKILL)[i % 2]
        timing = TIMINGS[(i // 2) % len(TIMINGS)]
        cmd = main_command("generate", workdir, f"--out_dir={out}", f"--seed={i + 1}", *GENERATE)
        process = subprocess.Popen(cmd, cwd=ROOT, env=env(args), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        t0 = time.perf_counter()
        if timing == "random":
            time.sleep(rng.uniform(0, reference))
        elif timing == "rendering":
            if wait_for(outputs.staging_dir(out), process, 0.002):
                time.sleep(rng.uniform(0, 3.0))
        else:
            wait_for(os.path.join(out, outputs.JOURNAL), process, 0.0002)
        landed = process.poll() is None
        if landed:
            process.send_signal(sig)
        _, stderr = process.communicate(timeout=300)
        killed_at = time.perf_counter() - t0
        journal = os.path.exists(os.path.join(out, outputs.JOURNAL))
        outputs.SampleSet(out).close()  # what the next generate does first: recover, under lock
        now = set_of(out)
        foreign_ok = all(
            open(os.path.join(out, n), "rb").read() == data for n, data in FOREIGN.items()
        )
        ours = set(now or {}) | set(FOREIGN) | {outputs.LOCK}
        stray = sorted(set(os.listdir(out)) - ours)
        leftovers = [p for p in (os.path.join(out, outputs.JOURNAL), outputs.staging_dir(out))
                     if os.path.lexists(p)]  # fmt: skip
        kind = ("incomplete" if now is None or stray or leftovers
                else "old_kept" if now == sets[-1] else "new_set")  # fmt: skip
        if kind == "new_set":
            sets.append(now)
        counts["runs"] += 1
        counts[kind] += 1
        counts["foreign_lost"] += not foreign_ok
        counts["journal_completed_by_next_run"] += journal
        counts["tracebacks"] += "Traceback" in stderr
        os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
        with open(os.path.join(args.out, "logs", f"generate_{i:02d}.stderr"), "w") as f:
            f.write(stderr)
        record = {"part": "generate", "run": i, "signal": sig.name, "timing": timing,
                  "landed": landed, "at_s": round(killed_at, 3), "exit": process.returncode,
                  "result": kind, "journal_left": journal, "foreign_ok": foreign_ok,
                  "traceback": "Traceback" in stderr,
                  "stray": stray}  # fmt: skip
        print(json.dumps(record), flush=True)
        results.append(record)
    counts["reference_s"] = round(reference, 2)
    counts["ok"] = counts["foreign_lost"] == counts["incomplete"] == counts["tracebacks"] == 0
    return counts


# --- damaged checkpoints ------------------------------------------------------------------------
def _largest(folder: str) -> str:
    paths = [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names]
    return max((p for p in paths if checkpoints.SUMS_FILE not in p), key=os.path.getsize)


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(min(offset, os.path.getsize(path) - 1))
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x01]))


def _unsealed(fn):
    def damage(folder: str) -> None:
        os.remove(os.path.join(folder, checkpoints.SUMS_FILE))
        fn(folder)

    return damage


DAMAGE = {
    "array truncated": lambda d: os.truncate(_largest(d), 1000),
    "array emptied": lambda d: os.truncate(_largest(d), 0),
    "array bit flip": lambda d: _flip(_largest(d), 5000),
    "array missing": lambda d: os.remove(_largest(d)),
    "_METADATA emptied": lambda d: os.truncate(os.path.join(d, "state", "_METADATA"), 0),
    "_METADATA bit flip": lambda d: _flip(os.path.join(d, "state", "_METADATA"), 40),
    "manifest missing": lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
    "meta emptied": lambda d: os.truncate(os.path.join(d, "meta", "metadata"), 0),
    "unsealed, array truncated": _unsealed(lambda d: os.truncate(_largest(d), 1000)),
    "unsealed, _METADATA emptied": _unsealed(
        lambda d: os.truncate(os.path.join(d, "state", "_METADATA"), 0)
    ),
}


def checkpoint_part(args, workdir: str, results: list) -> dict:
    counts = {"cases": 0, "tracebacks": 0, "fallback_named": 0, "exit_0": 0}
    readers = ("generate", "evaluate", "train")
    for i, (name, damage) in enumerate([*DAMAGE.items(), ("both steps", None)]):
        copy = os.path.join(args.out, f"damaged_{i}")
        shutil.copytree(workdir, copy)
        steps = (2, 4) if damage is None else (4,)
        for step in steps:
            (damage or DAMAGE["array truncated"])(
                os.path.join(workdir_lib.checkpoint_dir(copy), str(step))
            )
        reader = readers[i % len(readers)]
        flags = {"generate": [f"--out_dir={copy}/s", "--checkpoint=latest", *GENERATE],
                 "evaluate": ["--checkpoint=latest"],
                 "train": train_flags(args, steps=6)}[reader]  # fmt: skip
        done = run(main_command(reader, copy, *flags), args)
        warned = [line for line in done.stderr.splitlines() if "is damaged" in line]
        named = len(warned) == 1 and "checkpoints/4 is damaged" in warned[0] and (
            "using step 2 instead" in warned[0])  # fmt: skip
        traceback = "Traceback" in done.stderr
        if damage is None:
            ok = done.returncode == 1 and len(error_lines(done.stderr)) == 1 and not traceback
        else:
            ok = done.returncode == 0 and named and not traceback
        counts["cases"] += 1
        counts["tracebacks"] += traceback
        counts["fallback_named"] += named
        counts["exit_0"] += done.returncode == 0
        record = {"part": "checkpoints", "damage": name, "reader": reader,
                  "exit": done.returncode, "ok": ok,
                  "line": (warned or error_lines(done.stderr) or [""])[0][-240:]}  # fmt: skip
        print(json.dumps(record), flush=True)
        results.append(record)
    counts["ok"] = all(r["ok"] for r in results if r["part"] == "checkpoints")
    return counts


# --- a full disk, a read-only workdir (mounts: root only) ---------------------------------------
@contextlib.contextmanager
def mounted(target: str, *options: str):
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", *options, target], check=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", target], check=False)


def fill(fs: str, leave: int, name: str = "filler") -> None:
    """Writes a file on the filesystem `fs` that leaves `leave` bytes free (as far as it can)."""
    stat = os.statvfs(fs)
    with open(os.path.join(fs, name), "wb") as f:
        f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))


def _train_record(args, train_dir: str, done, started: float) -> dict:
    steps = workdir_lib.checkpoint_steps(train_dir)
    return {"exit": done.returncode, "error_lines": error_lines(done.stderr),
            "tracebacks": done.stderr.count("Traceback"), "checkpoints": steps,
            "unreadable": [s for s in steps if checkpoints.verify(
                os.path.join(train_dir, "checkpoints", str(s)))],
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def _failed_cleanly(record: dict) -> bool:
    return (record["exit"] not in (0, None) and len(record["error_lines"]) == 1
            and not record["tracebacks"])  # fmt: skip


def disk_part(args, workdir: str, results: list) -> dict:
    out: dict = {}
    ckpt = os.path.join(workdir_lib.checkpoint_dir(workdir), "4")
    size = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(ckpt) for n in ns)
    with mounted(os.path.join(args.out, "tmpfs"), "-t", "tmpfs", "-o", "size=3m", "tmpfs") as fs:
        # Train: the disk holds the dataset and two checkpoints, not a third.
        train_dir = os.path.join(fs, "run")
        done = run(main_command("prepare", train_dir, *train_flags(args)), args)
        assert done.returncode == 0, done.stderr[-2000:]
        fill(fs, leave=int(2.25 * size) + (256 << 10) + (64 << 10))
        started = time.perf_counter()
        done = run(main_command("train", train_dir, *train_flags(args, steps=40)), args)
        out["train"] = _train_record(args, train_dir, done, started)
        # Resume on a disk with nothing free: the first write fails.
        fill(fs, leave=0, name="filler2")
        started = time.perf_counter()
        done = run(main_command("train", train_dir, *train_flags(args, steps=40)), args)
        out["train_full_disk"] = _train_record(args, train_dir, done, started)
        # Generate: an earlier set on the disk, then the disk filled but 64 kB.
        shutil.rmtree(train_dir)
        for name in ("filler", "filler2"):
            os.remove(os.path.join(fs, name))
        samples = os.path.join(fs, "samples")
        first = run(main_command("generate", workdir, f"--out_dir={samples}", *GENERATE), args)
        before = set_of(samples)
        fill(fs, leave=64 << 10)
        done = run(main_command("generate", workdir, f"--out_dir={samples}", "--seed=5",
                                *GENERATE), args)  # fmt: skip
        out["generate"] = {"first_exit": first.returncode, "exit": done.returncode,
                           "error_lines": error_lines(done.stderr),
                           "tracebacks": done.stderr.count("Traceback"),
                           "earlier_set_intact": before is not None and set_of(samples) == before,
                           "staging_left": os.path.lexists(outputs.staging_dir(samples)),
                           }  # fmt: skip
    t, f, g = out["train"], out["train_full_disk"], out["generate"]
    out["ok"] = bool(
        _failed_cleanly(t) and t["checkpoints"] and not t["unreadable"]
        and _failed_cleanly(f) and f["checkpoints"] == t["checkpoints"] and not f["unreadable"]
        and _failed_cleanly(g) and g["earlier_set_intact"] and not g["staging_left"]
    )  # fmt: skip
    print(json.dumps({"part": "disk", **out}), flush=True)
    return out


def readonly_part(args, workdir: str, results: list) -> dict:
    view = os.path.join(args.out, "readonly")
    with mounted(view, "--bind", workdir):
        subprocess.run(["mount", "-o", "remount,ro,bind", view], check=True)
        done = run(main_command("evaluate", view), args)
    lines = error_lines(done.stderr)
    out = {"exit": done.returncode, "error_lines": lines, "printed": "OVERALL" in done.stdout,
           "tracebacks": done.stderr.count("Traceback")}  # fmt: skip
    named = bool(lines) and f"{view}/evaluation_valid.json: Read-only file system" in lines[0]
    out["ok"] = done.returncode == 1 and len(lines) == 1 and out["printed"] and named
    print(json.dumps({"part": "readonly", **out}), flush=True)
    return out


BOMB = r"""
import json, resource, sys, time, tracemalloc
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB of address space in all
from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.data import midi_io
path, cap = sys.argv[1], float(sys.argv[2])
data = config_lib.replace(config_lib.freeze(tiny.get_config()), data={"max_file_mb": cap}).data
def read():
    try:
        midi_io.read_midi(path, data)
    except midi_io.MidiReadError as e:
        return str(e)
t, cpu = time.perf_counter(), time.process_time()
reason = read()
wall, cpu = time.perf_counter() - t, time.process_time() - cpu
tracemalloc.start()  # a second read, traced (ten times slower): what it allocates at most
read()
peak = tracemalloc.get_traced_memory()[1] / 1e6
print(json.dumps({"reason": reason, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                  "peak_mb": round(peak, 1)}))
"""


def bomb_part(args, workdir: str, results: list) -> dict:
    """Running-status bombs (one note-on, then 3-byte note-ons) of 20 and 200 MB, read under a
    1 GiB address-space limit with the default max_file_mb (32) and with it raised to 1000."""
    out = {}
    for mb in (20, 200):
        path = os.path.join(args.out, f"bomb{mb}.mid")
        body = b"\x00\x90\x3c\x40" + b"\x00\x3c\x40" * ((mb * 1_000_000 - 26) // 3)
        with open(path, "wb") as f:
            f.write(b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk")
            f.write(struct.pack(">I", len(body)) + body)
        del body
        for cap in (32, 1000):
            done = run([sys.executable, "-c", BOMB, path, str(cap)], args)
            record = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else {
                "exit": done.returncode, "stderr": done.stderr[-500:]}  # fmt: skip
            out[f"{mb} MB, max_file_mb={cap}"] = record
            print(json.dumps({"part": "bomb", "file_mb": mb, "max_file_mb": cap, **record}))
    out["ok"] = all(r.get("reason") and r.get("cpu_s", 9) < 1.0 for r in out.values())
    return out


PARTS = {"generate": generate_part, "checkpoints": checkpoint_part, "disk": disk_part,
         "readonly": readonly_part, "bomb": bomb_part}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="an empty or new folder for everything")
    parser.add_argument("--runs", type=int, default=20, help="interrupted generate runs")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    if os.listdir(args.out):
        parser.error(f"--out {args.out}: not empty")
    args.midi = os.path.join(args.out, "midi")
    os.makedirs(args.midi)
    for i in range(4):
        mf.simple_file(os.path.join(args.midi, f"m{i}.mid"), mf.melody(i), qpm=90)
    workdir = os.path.join(args.out, "run")
    done = run(main_command("train", workdir, *train_flags(args)), args)
    assert done.returncode == 0, done.stderr[-3000:]
    summary, results = {}, []
    for name in args.parts.split(","):
        if name in ("disk", "readonly") and os.geteuid() != 0:
            summary[name] = {"skipped": "needs root (mount)"}
            continue
        started = time.perf_counter()
        summary[name] = PARTS[name](args, workdir, results)
        summary[name]["part_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"summary": summary}), flush=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"summary": summary, "runs": results}, f, indent=1)
    return 0 if all(s.get("ok", True) for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
