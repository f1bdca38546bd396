"""Benchmark: seconds to generate 1 x 500 and 64 x 500 tokens, after compilation.

Default model size (configs/default.py) with random weights (only time matters), the jitted scan
sampler with the grammar mask and nucleus decoding. Next to it, the original project's per-note
Keras loop (`../shared/bench/peer_seed_keras.py --generate 500`) run in the same script when
TensorFlow is installed, else its recorded figure (152.8 s on the development machine).

On a GPU or TPU (jax's default backend) it times the sampler there, in fp32 and bf16 compute,
and on a GPU also a PyTorch peer on CUDA in the same script: the same Embedding -> nn.LSTM
(cuDNN) -> Linear shapes, one `nn.LSTM` call per token with the carried (h, c), nucleus
sampling on the GPU (no grammar mask: an upper bound on what a PyTorch port would reach), at
fp32 and bf16 autocast. On the CPU it behaves as before. Not yet run on an accelerator.

usage: python launch/bench_generate.py [--config configs/default.py] [--steps 500] [--reps 3]
                                       [--precisions fp32,bf16] [--no-torch]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# On a GPU, jax would otherwise take 75% of its memory up front, leaving the torch peer little.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxcomposer import config_lib  # noqa: E402
from jaxcomposer.model import StepFunction, build_model  # noqa: E402
from jaxcomposer.sample import sampler  # noqa: E402
from jaxcomposer.tokenizers import BOS, get_tokenizer  # noqa: E402

KERAS_RECORDED_S = 152.8  # peer_seed_keras.py --generate 500 on the development machine
SHARED_BENCH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "bench"
)


def load_config(path: str) -> config_lib.Config:
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return config_lib.freeze(module.get_config())


def time_sampling(config, batch: int, steps: int, reps: int) -> dict:
    """Median seconds of `batch` x `steps` tokens from the jitted sampler (random weights)."""
    tokenizer = get_tokenizer(config.tokenizer)
    model = build_model(config.model, tokenizer.vocab.size)
    variables = {"params": model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]}
    primers = jnp.full((batch, 1), BOS, jnp.int32)
    states = jnp.asarray(sampler.grammar_states_after(tokenizer.grammar, np.asarray(primers)))
    table = jnp.asarray(tokenizer.grammar.next_state)
    step_fn = StepFunction(model)
    settings = sampler.DecoderSettings(top_p=0.95)

    def run(seed):
        out = sampler.sample(
            variables,
            primers,
            states,
            table,
            jax.random.key(seed),
            step_fn=step_fn,
            num_steps=steps,
            settings=settings,
        )
        return jax.block_until_ready(out)

    started = time.perf_counter()
    run(0)
    compile_s = time.perf_counter() - started
    times = []
    for rep in range(reps):
        started = time.perf_counter()
        run(rep + 1)
        times.append(time.perf_counter() - started)
    return {
        "system": "jaxcomposer scan sampler",
        "backend": jax.default_backend(),
        "dtype": config.model.dtype,
        "batch": batch,
        "tokens": steps,
        "seconds": round(statistics.median(times), 4),
        "min": round(min(times), 4),
        "first_call_with_compile_s": round(compile_s, 2),
        "tokens_per_s": round(batch * steps / statistics.median(times)),
    }


def keras_peer(steps: int, python: str | None) -> dict:
    """The original's loop, run by `python` (e.g. a separate venv with tensorflow-cpu)."""
    script = os.path.join(SHARED_BENCH, "peer_seed_keras.py")
    has_tf = python is not None or importlib.util.find_spec("tensorflow") is not None
    if not has_tf or not os.path.exists(script):
        return {
            "system": "keras seed model (recorded, TensorFlow not installed)",
            "batch": 1,
            "tokens": 500,
            "seconds": KERAS_RECORDED_S,
        }
    out = subprocess.run(
        [python or sys.executable, script, "--generate", str(steps)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = json.loads(out.strip().splitlines()[-1])
    return {
        "system": "keras seed model (same run)",
        "batch": 1,
        "tokens": steps,
        "seconds": line["seconds"],
    }


TORCH_PEER = textwrap.dedent(
    """
    import json, statistics, sys, time
    import torch
    from torch import nn
    vocab, embed, hidden, layers, batch, steps, reps, bf16 = map(int, sys.argv[1:])
    dev = "cuda"
    torch.manual_seed(0)
    emb, head = nn.Embedding(vocab, embed).to(dev), nn.Linear(hidden, vocab).to(dev)
    lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True).to(dev)

    @torch.no_grad()
    def run():
        tok = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        state, out = None, []
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bool(bf16)):
            for _ in range(steps):
                y, state = lstm(emb(tok), state)
                probs = torch.softmax(head(y[:, -1]).float(), -1)
                sorted_p, idx = probs.sort(-1, descending=True)
                keep = sorted_p.cumsum(-1) - sorted_p < 0.95  # nucleus, top_p = 0.95
                sorted_p = sorted_p * keep
                tok = idx.gather(-1, torch.multinomial(sorted_p, 1))
                out.append(tok)
        torch.cuda.synchronize()
        return torch.cat(out, 1)

    run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"system": "torch " + torch.__version__ + " nn.LSTM (cuDNN) per-token loop",
                      "dtype": "bfloat16" if bf16 else "float32", "batch": batch,
                      "tokens": steps, "seconds": round(statistics.median(times), 4)}))
    """
)


def torch_peer(config, batch: int, steps: int, reps: int, bf16: bool) -> dict | None:
    """PyTorch's per-token cuDNN LSTM loop at the config's shapes (only on a GPU)."""
    m = config.model
    vocab = get_tokenizer(config.tokenizer).vocab.size
    argv = [vocab, m.embed_dim, m.hidden_size, m.num_layers, batch, steps, reps, int(bf16)]
    out = subprocess.run(
        [sys.executable, "-c", TORCH_PEER, *map(str, argv)], capture_output=True, text=True
    )
    if out.returncode != 0:
        return {"system": "torch", "batch": batch, "error": out.stderr.strip()[-400:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "default.py")
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keras_python", default=None, help="a python with tensorflow-cpu")
    parser.add_argument(
        "--precisions", default=None,
        help="comma-separated fp32,bf16 (default: fp32 on the CPU, fp32,bf16 on a GPU/TPU)",
    )  # fmt: skip
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch GPU peer")
    args = parser.parse_args()
    config = load_config(args.config)
    backend = jax.default_backend()
    kinds = (args.precisions or ("fp32" if backend == "cpu" else "fp32,bf16")).split(",")
    print(
        json.dumps(
            {
                "device": str(jax.devices()[0]),
                "cpu_count": os.cpu_count(),
                "model": config_lib.to_dict(config)["model"],
            }
        )
    )
    results = []
    for kind in kinds:
        dtype = {"fp32": "float32", "bf16": "bfloat16"}[kind.strip()]
        model = dataclasses.replace(config.model, dtype=dtype)
        for b in args.batches.split(","):
            row = time_sampling(
                dataclasses.replace(config, model=model), int(b), args.steps, args.reps
            )
            if backend == "gpu" and not args.no_torch and importlib.util.find_spec("torch"):
                peer_row = torch_peer(config, int(b), args.steps, args.reps, kind == "bf16")
                print(json.dumps(peer_row), flush=True)
                if "seconds" in peer_row:
                    row["speedup_vs_torch"] = round(peer_row["seconds"] / row["seconds"], 2)
            results.append(row)
    peer = keras_peer(args.steps, args.keras_python)
    for r in results:
        r["speedup_vs_keras_per_sample"] = round(peer["seconds"] * r["batch"] / r["seconds"], 1)
        print(json.dumps(r), flush=True)
    print(json.dumps(peer), flush=True)


if __name__ == "__main__":
    main()
