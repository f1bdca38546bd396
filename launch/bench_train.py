"""Training-step throughput of the JAX LSTM vs PyTorch nn.LSTM on this machine (prints JSON lines).

One step = forward + backward + Adam update of Embedding(329, 512) -> 3 x LSTM(512) -> Linear(512,
329) on a (batch, 100) window with cross-entropy at every position: the shapes of
../shared/bench/peer_torch_lstm.py (beside the repository), which runs in a subprocess (when torch
is importable) so both figures come from the same run. Also printed: the achieved GFLOP/s of the JAX
step (LSTM and projection matmul FLOPs, x3 for forward + backward) against the fp32 matmul rate XLA
reaches on a large matmul here, and the load other processes put on the CPUs during the run (timings
on a shared machine are only comparable when that is ~0).

  python launch/bench_train.py                    # batches 64,128, 10 reps, 2 threads
  python launch/bench_train.py --quick            # tiny shapes: checks the script works
  python launch/bench_train.py --epoch            # seed_replica model: time per corpus epoch
  python launch/bench_train.py --variants         # implementation options side by side
  python launch/bench_train.py --rounds 3         # repeat; the summary takes the quietest round
  python launch/bench_train.py --precisions fp32,bf16   # also bfloat16 compute (params fp32)

On a GPU or TPU (jax's default backend) the same command times the step there, in fp32 and bf16
by default, and on a GPU runs the PyTorch peer on CUDA in the same script (nn.LSTM is cuDNN's
LSTM there) at the same shapes, once per precision (`--bf16` = bfloat16 autocast). JAX's fp32
matmuls run at `--gpu-fp32-precision` (default 'highest': true fp32; torch's cuDNN RNN may use
TF32 unless torch.backends.cudnn.allow_tf32 is off, so 'default' is the fairer setting on
Ampere and newer if you want TF32 on both sides). A TPU has no PyTorch cuDNN peer: the script
says so and prints JAX's figures alone. Not yet run on an accelerator: no GPU was at hand.

Measured on the 2-core AMD EPYC dev VM (undisturbed rounds, Nov 2026; XLA fp32 matmul ~190
GFLOP/s there): batch 64 JAX 4,380-4,630 vs torch 4,060-4,190 tokens/s (ratio 1.05-1.1), batch
128 JAX 4,440 vs torch 4,120 (1.08); ~0.9 of the XLA matmul rate in effective GFLOP/s.
--variants, batch 64: in-loop projection 0.78x, no token table 0.86x, autodiff scan ~0.85x,
unroll 2 ~1.0x of the default. --epoch: 44.3 windows/s (Keras recorded 43.8 on a faster day).
Under load torch's OpenMP threads collapse (10x slower) while XLA degrades ~2x: compare only
rounds whose other_load_cores is ~0.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TORCH_SCRIPT = ROOT.parent / "shared" / "bench" / "peer_torch_lstm.py"
QUIET = 0.15  # cores used by other processes below which a run counts as undisturbed
KERAS_RECORDED = {"seconds_per_epoch": 1040, "windows_per_s": 43.8, "recurrent_dropout": 0.3}
# The recorded epoch is ~45,500 windows (one per chord token); 83,664 is the corpus's note count.
KERAS_EPOCH_WINDOWS = round(KERAS_RECORDED["seconds_per_epoch"] * KERAS_RECORDED["windows_per_s"])


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", default="64,128", help="comma-separated batch sizes")
    ap.add_argument("--reps", type=int, default=10, help="timed steps per measurement (median)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat JAX + torch this many times")
    ap.add_argument("--threads", type=int, default=2, help="CPU cores to use (affinity)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 reps: a smoke test")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    ap.add_argument("--epoch", action="store_true", help="seed_replica epoch time instead")
    ap.add_argument(
        "--epoch-windows",
        type=int,
        default=KERAS_EPOCH_WINDOWS,
        help="windows in one epoch (default: the original's, 1,040 s x 43.8 windows/s)",
    )
    ap.add_argument(
        "--epoch-hoist",
        choices=["config", "on", "off"],
        default="config",
        help="--epoch: input projection hoisted out of the scan (config = seed_replica.py's)",
    )
    ap.add_argument("--variants", action="store_true", help="also time implementation options")
    ap.add_argument(
        "--precisions", default=None,
        help="comma-separated fp32,bf16 (default: fp32 on the CPU, fp32,bf16 on a GPU/TPU)",
    )  # fmt: skip
    ap.add_argument(
        "--gpu-fp32-precision", choices=["highest", "default"], default="highest",
        help="jax_default_matmul_precision for fp32 on a GPU/TPU",
    )  # fmt: skip
    ap.add_argument(
        "--recurrent-dropout", type=float, default=None, help="--epoch: override the config's rate"
    )
    ap.add_argument("--vocab", type=int, default=329)
    ap.add_argument("--seq", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--embed", type=int, default=512)
    ap.add_argument("--layers", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.batches, args.reps, args.seq = "8", 2, 20
        args.hidden = args.embed = 64
        args.epoch_windows = 1000
    return args


def pin_threads(threads: int) -> None:
    """Restricts this process (and children) to `threads` cores; XLA sizes its pool from this."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[: max(1, threads)])


class LoadMeter:
    """CPU time used by other processes during a block, in cores (from /proc/stat)."""

    def __enter__(self):
        self.start = (self._busy_jiffies(), os.times(), time.perf_counter())
        return self

    def __exit__(self, *exc):
        busy0, own0, t0 = self.start
        own1, t1 = os.times(), time.perf_counter()
        busy = (self._busy_jiffies() - busy0) / os.sysconf("SC_CLK_TCK")
        own = (own1.user + own1.system + own1.children_user + own1.children_system) - (
            own0.user + own0.system + own0.children_user + own0.children_system
        )
        self.other_cores = max(0.0, (busy - own) / (t1 - t0))

    @staticmethod
    def _busy_jiffies() -> int:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return f"{names[0] if names else 'unknown'} ({os.cpu_count()} cores on the machine)"


def lstm_flops_per_token(args: argparse.Namespace) -> float:
    """Matmul FLOPs per predicted token, forward only: input + recurrent gates and the head.

    These are the model's FLOPs as nn.LSTM executes them; the JAX layer 0 executes fewer (it
    projects the (V, E) table instead of every embedded token), so its GFLOP/s is "effective".
    """
    h, flops, d = args.hidden, 0.0, args.embed
    for _ in range(args.layers):
        flops += 2 * (d + h) * 4 * h
        d = h
    return flops + 2 * h * args.vocab


def time_steps(step, state, reps: int, batch_tokens: int, digits: int = 0) -> dict:
    for _ in range(3):  # compile + warm-up
        state = step(*state)
    _block(state)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state = step(*state)
        _block(state)
        rates.append(batch_tokens / (time.perf_counter() - t0))
    rnd = lambda v: round(v, digits) if digits else round(v)
    return {
        "tokens_per_s": rnd(statistics.median(rates)),
        "min": rnd(min(rates)),
        "max": rnd(max(rates)),
    }


def _block(tree) -> None:
    import jax

    jax.block_until_ready(tree)


def accelerator() -> str:
    """jax's default backend: 'cpu', 'gpu' or 'tpu'."""
    import jax

    return jax.default_backend()


def precisions(args: argparse.Namespace) -> list[str]:
    chosen = args.precisions or ("fp32" if accelerator() == "cpu" else "fp32,bf16")
    out = [p.strip() for p in chosen.split(",")]
    if not set(out) <= {"fp32", "bf16"}:
        raise SystemExit(f"--precisions takes fp32 and/or bf16, got {chosen!r}")
    return out


def lm_config(args: argparse.Namespace, **changes):
    from configs import default
    from jaxcomposer import config_lib

    model = config_lib.freeze(default.get_config()).model
    return dataclasses.replace(
        model,
        embed_dim=args.embed,
        hidden_size=args.hidden,
        num_layers=args.layers,
        dropout=0.0,
        recurrent_dropout=0.0,
        layer_norm=False,
        tie_embeddings=False,
        **changes,
    )


def make_lm_step(config, vocab: int, batch: int, seq: int, layer_options: dict | None = None):
    """Jitted Adam train step of ComposerLM on random tokens (same maths as the torch script)."""
    import jax
    import optax

    from jaxcomposer.model import build_model, stack

    layer_cls = stack.LSTMLayer
    if layer_options:  # implementation options not in ModelConfig (benchmark only)
        stack.LSTMLayer = lambda **kw: layer_cls(**{**kw, **layer_options})
    try:
        net = build_model(config, vocab)
        tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, vocab)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        params = jax.jit(net.init)(jax.random.key(0), inputs)["params"]

        def loss_fn(p):
            logits, _ = net.apply({"params": p}, inputs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        opt = optax.adam(1e-3)

        @jax.jit
        def step(p, s):
            grads = jax.grad(loss_fn)(p)
            updates, s = opt.update(grads, s, p)
            return optax.apply_updates(p, updates), s

        compiled = step.lower(params, opt.init(params)).compile()  # traced with the patch
    finally:
        stack.LSTMLayer = layer_cls
    return compiled, (params, opt.init(params))


def xla_matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        matmul(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def run_torch(args: argparse.Namespace, precision: str = "fp32") -> list[dict]:
    """The PyTorch peer at `precision` (it picks CUDA itself when torch sees a GPU)."""
    why = None
    if args.no_torch:
        why = "disabled"
    elif importlib.util.find_spec("torch") is None or not TORCH_SCRIPT.exists():
        why = "torch not importable or script missing"
    elif accelerator() == "tpu":
        why = "no PyTorch cuDNN LSTM on a TPU"
    if why:
        print(json.dumps({"system": "torch", "precision": precision, "skipped": why}), flush=True)
        return []
    cmd = [sys.executable, str(TORCH_SCRIPT), "--batches", args.batches, "--reps", str(args.reps)]
    cmd += ["--bf16"] if precision == "bf16" else []
    cmd += ["--threads", str(args.threads), "--vocab", str(args.vocab), "--seq", str(args.seq)]
    cmd += ["--embed", str(args.embed), "--hidden", str(args.hidden), "--layers", str(args.layers)]
    with LoadMeter() as load:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(json.dumps({"system": "torch", "error": out.stderr.strip()[-500:]}), flush=True)
        return []
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        row["precision"] = precision
        row["other_load_cores"] = round(load.other_cores, 2)
        print(json.dumps(row), flush=True)
    return rows


def bench_lm(args: argparse.Namespace) -> None:
    import jax

    flops = 3 * lstm_flops_per_token(args)  # forward + backward
    print(json.dumps({"jax": jax.__version__, "model_flops_per_token": flops}))
    variants = {"default": {}}
    if args.variants:
        variants |= {
            "in_loop_projection": {"hoist_input_projection": False},
            "no_token_table": {"token_table": False},
            "autodiff_scan": {"batched_weight_grads": False},
            "unroll_2": {"unroll": 2},
        }
    backend, kinds = accelerator(), precisions(args)
    if backend != "cpu":
        jax.config.update("jax_default_matmul_precision", args.gpu_fp32_precision)
    print(json.dumps({"backend": backend, "device": str(jax.devices()[0]), "precisions": kinds}))
    steps = {}
    for batch in (int(b) for b in args.batches.split(",")):
        for name, variant in variants.items():
            for precision in kinds:
                options = dict(variant)
                hoist = options.pop("hoist_input_projection", True)
                dtype = "bfloat16" if precision == "bf16" else "float32"
                config = lm_config(args, hoist_input_projection=hoist, dtype=dtype)
                label = name if precision == "fp32" else f"{name} bf16"
                steps[(label, batch)] = make_lm_step(config, args.vocab, batch, args.seq, options)
    runs = {}  # (system, batch) -> [(other_load_cores, tokens/s), ...] over rounds
    for round_ in range(args.rounds):
        with LoadMeter() as load:
            peak = xla_matmul_gflops(512 if args.quick else 2048)
        row = {"xla_fp32_matmul_gflops": round(peak, 1), "round": round_}
        print(json.dumps(row | {"other_load_cores": round(load.other_cores, 2)}), flush=True)
        for (name, batch), (step, state) in steps.items():
            with LoadMeter() as load:
                row = time_steps(step, state, args.reps, batch * args.seq)
            row = {"system": f"jax {name}", "batch": batch, "seq": args.seq, **row}
            row["gflops"] = round(row["tokens_per_s"] * flops / 1e9, 1)
            row["of_xla_matmul"] = round(row["tokens_per_s"] * flops / 1e9 / peak, 2)
            row |= {"other_load_cores": round(load.other_cores, 2), "round": round_}
            runs.setdefault((row["system"], batch), []).append((load.other_cores, row))
            print(json.dumps(row), flush=True)
        for precision in kinds:
            system = "torch" if precision == "fp32" else "torch bf16"
            for row in run_torch(args, precision):
                runs.setdefault((system, row["batch"]), []).append((row["other_load_cores"], row))
    print_summary(runs)


def print_summary(runs: dict) -> None:
    """Per system and batch the quietest round (least CPU used by others), and jax/torch."""
    quietest = {
        key: min(rows, key=lambda r: (r[0] if r[0] > QUIET else 0.0, -r[1]["tokens_per_s"]))
        for key, rows in runs.items()
    }
    for (system, batch), (load, row) in quietest.items():
        summary = {"summary": system, "batch": batch, "tokens_per_s": row["tokens_per_s"]}
        summary["other_load_cores"] = round(load, 2)
        # Each precision against the peer at the same precision.
        peer = "torch bf16" if system.endswith(" bf16") else "torch"
        torch = quietest.get((peer, batch))
        if torch and not system.startswith("torch"):
            summary["ratio_over_torch"] = round(row["tokens_per_s"] / torch[1]["tokens_per_s"], 3)
        if max(load, torch[0] if torch else 0.0) > QUIET:
            summary["warning"] = "other processes used the CPU: rerun on a quiet machine"
        print(json.dumps(summary), flush=True)


def bench_epoch(args: argparse.Namespace) -> None:
    """The seed_replica model at its training shapes: windows/s and one epoch extrapolated."""
    import jax
    import optax

    from configs import seed_replica
    from jaxcomposer import config_lib
    from jaxcomposer.model import build_model

    config = config_lib.freeze(seed_replica.get_config())
    mconf = config.model
    if args.epoch_hoist != "config":
        mconf = dataclasses.replace(mconf, hoist_input_projection=args.epoch_hoist == "on")
    if args.recurrent_dropout is not None:
        mconf = dataclasses.replace(mconf, recurrent_dropout=args.recurrent_dropout)
    if args.quick:
        mconf = dataclasses.replace(mconf, hidden_size=args.hidden, dense_size=32)
    batch, seq = (8, args.seq) if args.quick else (config.train.batch_size, config.train.seq_len)
    net = build_model(mconf, args.vocab)
    tokens = jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, args.vocab)
    inputs, target = tokens[:, :-1], tokens[:, -1]
    variables = jax.jit(net.init)(jax.random.key(0), inputs)
    opt = optax.rmsprop(config.train.learning_rate)

    @jax.jit
    def step(params, batch_stats, opt_state, key):
        def loss_fn(p):
            (logits, _), new = net.apply(
                {"params": p, "batch_stats": batch_stats},
                inputs,
                train=True,
                rngs={"dropout": key},
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits[:, -1], target).mean()
            return loss, new["batch_stats"]

        grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, key

    state = (variables["params"], variables["batch_stats"], opt.init(variables["params"]))
    state = (*state, jax.random.key(2))
    with LoadMeter() as load:
        row = time_steps(step, state, args.reps, batch, digits=1)
    windows_per_s = row.pop("tokens_per_s")
    print(
        json.dumps(
            {
                "system": "jax seed_replica",
                "batch": batch,
                "seq": seq,
                "recurrent_dropout": mconf.recurrent_dropout,
                "hoist_input_projection": mconf.hoist_input_projection,
                "windows_per_s": windows_per_s,
                "min": row["min"],
                "max": row["max"],
                "seconds_per_epoch": round(args.epoch_windows / windows_per_s, 1),
                "epoch_windows": args.epoch_windows,
                "other_load_cores": round(load.other_cores, 2),
            }
        )
    )
    print(
        json.dumps({"system": "keras seed model (recorded, not measured here)", **KERAS_RECORDED})
    )


def main() -> None:
    args = parse_args()
    # On a GPU, jax would otherwise take 75% of its memory up front, leaving torch's peer little.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    pin_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    print(json.dumps({"cpu": cpu_model(), "cores_used": len(os.sched_getaffinity(0))}))
    if args.epoch:
        bench_epoch(args)
    else:
        bench_lm(args)


if __name__ == "__main__":
    main()
