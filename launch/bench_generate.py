"""Benchmark: seconds to generate 1 x 500 and 64 x 500 tokens, after compilation.

Default model size (configs/default.py) with random weights (only time matters), the jitted scan
sampler with the grammar mask and nucleus decoding. Next to it, the original project's per-note
Keras loop (`../shared/bench/peer_seed_keras.py --generate 500`) run in the same script when
TensorFlow is installed, else its recorded figure (152.8 s on the development machine).

usage: python launch/bench_generate.py [--config configs/default.py] [--steps 500] [--reps 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "default.py")
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keras_python", default=None, help="a python with tensorflow-cpu")
    args = parser.parse_args()
    config = load_config(args.config)
    print(
        json.dumps(
            {
                "device": str(jax.devices()[0]),
                "cpu_count": os.cpu_count(),
                "model": config_lib.to_dict(config)["model"],
            }
        )
    )
    results = [
        time_sampling(config, int(b), args.steps, args.reps) for b in args.batches.split(",")
    ]
    peer = keras_peer(args.steps, args.keras_python)
    for r in results:
        r["speedup_vs_keras_per_sample"] = round(peer["seconds"] * r["batch"] / r["seconds"], 1)
        print(json.dumps(r), flush=True)
    print(json.dumps(peer), flush=True)


if __name__ == "__main__":
    main()
