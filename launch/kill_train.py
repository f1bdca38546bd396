r"""Kill -9 at any moment: train the tiny config, SIGKILL it at random moments, resume each time.

    python launch/kill_train.py --kills=24 --midi_dir=../shared/data/final_fantasy

One uninterrupted reference run trains a prepared copy of the workdir to the end. Then, in
episodes, `python -m jaxcomposer.main --mode=train` runs on another copy and is killed with
SIGKILL, cycling through three timings:
  random    uniformly in [0, the reference run's wall time] (start-up and compile included);
  in_save   as soon as orbax's `*.orbax-checkpoint-tmp*` folder appears (inside a save);
  finalize  as soon as a new finished `<step>/` folder appears (orbax is then dropping old
            checkpoints and writing its metadata).
After each kill it checks that every finished `<step>/` folder restores completely and that
metrics.jsonl still reads; an attempt that exits non-zero on its own is a failed resume. When
an attempt runs to the end, its final checkpoint is compared leaf by leaf (bit for bit) with the
reference's, and a new episode starts until --kills kills have landed.

Prints one JSON line per attempt and a final JSON summary; exits 1 if any goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxcomposer import workdir_lib  # noqa: E402
from jaxcomposer.model import checkpoints  # noqa: E402
from jaxcomposer.train import reporting  # noqa: E402

MODES = ("random", "in_save", "finalize")
POLL_SECONDS = 0.002  # random mode
EVENT_POLL_SECONDS = 0.0002  # saves of the tiny model take milliseconds: poll hard to land inside


def train_command(workdir: str, args) -> list[str]:
    return [
        sys.executable, "-m", "jaxcomposer.main", "--mode=train", "--config=configs/tiny.py",
        f"--workdir={workdir}", "--noprogress",
        f"--config.data.midi_dir={args.midi_dir}", f"--config.data.cache_dir={args.cache_dir}",
        "--config.data.num_workers=1", f"--config.train.num_steps={args.steps}",
        f"--config.train.checkpoint_every={args.checkpoint_every}",
        f"--config.train.eval_every={args.eval_every}", "--config.train.log_every=10",
        "--config.train.early_stop_patience=0", *args.override,
    ]  # fmt: skip


def child_env(args) -> dict:
    """jax's persistent compilation cache, shared by all attempts: each restart then loads the
    compiled steps instead of compiling them again (the same executables, so the same bits)."""
    return dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=os.path.join(args.cache_dir, "jax"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )


def prepare(workdir: str, args) -> None:
    cmd = train_command(workdir, args)
    cmd[3] = "--mode=prepare"
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env(args))
    if done.returncode:
        raise RuntimeError(f"prepare failed: {done.stderr.strip()[-2000:]}")


def _names(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except FileNotFoundError:
        return []


def run_attempt(workdir: str, args, mode: str | None, rng: random.Random, budget: float):
    """One train process; killed per `mode` (None: runs to the end). Returns (outcome, info)."""
    ckpt = workdir_lib.checkpoint_dir(workdir)
    before = {n for n in _names(ckpt) if n.isdigit()}
    started = time.perf_counter()
    proc = subprocess.Popen(
        train_command(workdir, args), cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env=child_env(args),
    )  # fmt: skip
    deadline = started + (rng.uniform(0.0, budget) if mode == "random" else budget * 3)
    killed = False
    while proc.poll() is None:
        now = time.perf_counter()
        names = _names(ckpt) if mode in ("in_save", "finalize") else []
        hit = (
            (mode == "random" and now >= deadline)
            or (mode == "in_save" and _in_save(names))
            or (mode == "finalize" and any(n.isdigit() and n not in before for n in names))
            or (mode is not None and now >= deadline)  # the event never came: kill anyway
        )
        if hit:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(POLL_SECONDS if mode == "random" else EVENT_POLL_SECONDS)
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    if killed and proc.returncode == -signal.SIGKILL:
        return "killed", {"seconds": seconds, "in": _landed_in(ckpt)}
    if proc.returncode == 0:
        return "finished", {"seconds": seconds}
    tail = err.strip().splitlines()[-3:]
    return "failed", {"seconds": seconds, "returncode": proc.returncode, "stderr": tail}


def _in_save(names: list[str]) -> bool:
    """A save is under way and an earlier one finished (so the kill tests a resume)."""
    return any("orbax-checkpoint-tmp" in n for n in names) and any(n.isdigit() for n in names)


def _landed_in(ckpt: str) -> str:
    return "save" if any("orbax-checkpoint-tmp" in n for n in _names(ckpt)) else "other"


def check_workdir(workdir: str) -> dict:
    """Every finished checkpoint restores whole; metrics.jsonl reads. Returns counts/problems."""
    problems = []
    steps = workdir_lib.checkpoint_steps(workdir)
    if steps:
        manager = checkpoints.make_manager(workdir_lib.checkpoint_dir(workdir), 2, read_only=True)
        try:
            listed = sorted(int(s) for s in manager.all_steps())
            if listed != steps:
                problems.append(f"orbax lists {listed}, the folder holds {steps}")
            for step in steps:
                try:
                    load_state(manager, step)
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    problems.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
        finally:
            manager.close()
    try:
        records = reporting.read_metrics(workdir_lib.metrics_path(workdir))
    except Exception as e:  # noqa: BLE001
        problems.append(f"metrics.jsonl: {type(e).__name__}: {e}")
        records = []
    tmp = [n for n in _names(workdir_lib.checkpoint_dir(workdir)) if "tmp" in n]
    return {"steps": steps, "tmp_dirs": len(tmp), "metric_records": len(records),
            "problems": problems}  # fmt: skip


def load_state(manager, step: int):
    import jax

    stored = manager.item_metadata(step)["state"]
    stored = getattr(stored, "tree", stored)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored)
    state, meta = checkpoints.restore(manager, step, target)
    return jax.device_get(state), meta


def final_state(workdir: str):
    manager = checkpoints.make_manager(workdir_lib.checkpoint_dir(workdir), 2, read_only=True)
    try:
        step = int(manager.latest_step())
        return step, load_state(manager, step)[0]
    finally:
        manager.close()


def bitwise_differences(a, b) -> list[str]:
    import jax

    flat_a = dict(jax.tree_util.tree_flatten_with_path(a)[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    if flat_a.keys() != flat_b.keys():
        return ["different tree structure"]
    return [
        jax.tree_util.keystr(k)
        for k in flat_a
        if not np.array_equal(np.asarray(flat_a[k]), np.asarray(flat_b[k]))
        or np.asarray(flat_a[k]).dtype != np.asarray(flat_b[k]).dtype
    ]


def run(args) -> dict:
    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="kill_train.", dir=args.tmp_root)
    args.cache_dir = args.cache_dir or os.path.join(root, "cache")
    started = time.perf_counter()
    try:
        prepared = os.path.join(root, "prepared")
        prepare(prepared, args)
        reference = os.path.join(root, "reference")
        shutil.copytree(prepared, reference)
        outcome, info = run_attempt(reference, args, None, rng, 0.0)
        if outcome != "finished":
            raise RuntimeError(f"the reference run failed: {info}")
        budget = info["seconds"]
        ref_step, ref_state = final_state(reference)
        print(json.dumps({"reference_seconds": round(budget, 2), "step": ref_step}), flush=True)

        counts = {"kills": 0, "kills_in_save": 0, "resumes": 0, "failed_resumes": 0,
                  "episodes": 0, "bitwise_equal_episodes": 0, "bad_checkpoints": 0,
                  "tmp_dirs_seen": 0}  # fmt: skip
        failures: list = []
        attempt = 0
        while counts["kills"] < args.kills:
            counts["episodes"] += 1
            workdir = os.path.join(root, f"episode{counts['episodes']}")
            shutil.copytree(prepared, workdir)
            for _ in range(args.max_attempts):
                modes = args.modes.split(",")
                mode = modes[attempt % len(modes)] if counts["kills"] < args.kills else None
                attempt += 1
                resuming = bool(workdir_lib.checkpoint_steps(workdir))
                outcome, info = run_attempt(workdir, args, mode, rng, budget)
                check = check_workdir(workdir)
                counts["resumes"] += resuming and outcome != "failed"
                counts["kills"] += outcome == "killed"
                counts["kills_in_save"] += outcome == "killed" and info["in"] == "save"
                counts["tmp_dirs_seen"] += check["tmp_dirs"]
                counts["bad_checkpoints"] += len(check["problems"])
                if outcome == "failed":
                    counts["failed_resumes"] += 1
                    failures.append(info)
                failures += check["problems"]
                line = {
                    "attempt": attempt,
                    "mode": mode,
                    "outcome": outcome,
                    **info,
                    "steps_on_disk": check["steps"],
                    "problems": check["problems"],
                }
                print(json.dumps(line, default=str), flush=True)  # fmt: skip
                if outcome == "finished":
                    break
            else:
                failures.append(f"episode {counts['episodes']} never finished")
                break
            step, state = final_state(workdir)
            diff = bitwise_differences(ref_state, state)
            if step == ref_step and not diff:
                counts["bitwise_equal_episodes"] += 1
            else:
                failures.append(f"episode {counts['episodes']}: step {step}, differs in {diff[:5]}")
            with open(os.path.join(workdir, "train_summary.json")) as f:
                if json.load(f)["step"] != ref_step:
                    failures.append(f"episode {counts['episodes']}: train_summary step is wrong")
            shutil.rmtree(workdir, ignore_errors=True)
        summary = {**counts, "seconds": round(time.perf_counter() - started, 1),
                   "reference_seconds": round(budget, 2), "steps": args.steps,
                   "reference_step": ref_step,
                   "ok": not failures, "failures": failures[:10]}  # fmt: skip
        return summary
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--midi_dir", default=os.path.join(ROOT, "..", "shared", "data",
                                                           "final_fantasy"))  # fmt: skip
    parser.add_argument("--cache_dir", default="")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--checkpoint_every", type=int, default=5)
    parser.add_argument("--eval_every", type=int, default=20)
    parser.add_argument("--max_attempts", type=int, default=40)
    parser.add_argument("--modes", default=",".join(MODES), help="kill timings, in turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp_root", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the workdirs for inspection")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra --config.X=V flags for every train run (repeatable)",
    )
    return parser


def main(argv=None) -> int:
    summary = run(build_parser().parse_args(argv))
    print(json.dumps(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
