r"""How much the constraint encoder knows of the alto, tenor and bass given the soprano (issue 22;
a benchmark, not a test). Figures in docs/constraints.md.

For each of the first `--num_chorales` validation chorales (the split neither model trained on),
cut to `--bars` bars, the true token row x is scored four ways, in nats per frame of the lower
voices (a frame = one grid step: its alto, tenor and bass tokens together) and per token:

  encoder | soprano   the encoder model (model.constraint_encoder_size > 0) reading the
                      soprano and the bar lines as its constraint row: -log p(ATB | S) directly
  encoder | nothing   the same model with no constraint (what it knows left to right)
  plain, left-right   the unconstrained model teacher-forced: -sum log p(x_t | x_<t) over the
                      lower voices' tokens (it has seen the soprano only up to the current step)
  plain, Bayes        the unconstrained model's own conditional, -log p(ATB | S) =
                      -log p(x) + log p(S), with log p(S) = log Z estimated by SMC (sample/smc.py)
                      with `--particles` particles forcing the soprano and the bar lines (every
                      lower-voice token free). E[log Z_hat] <= log Z (Jensen), so this figure is,
                      if anything, too good for the plain model.
All four are the raw models (no grammar mask), so they are comparable.

The two workdirs must share the tokenizer (and so the validation split: the same chorales).

  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
  PYTHONPATH=$PWD taskset -c 1 python launch/bench_anticipation.py \
      --encoder=runs/anticip/enc --plain=runs/anticip/base [--num_chorales=40 --bars=16]

Prints a markdown table and one JSON line; writes nothing into the workdirs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ.setdefault("XLA_FLAGS", ONE_THREAD)  # before jax starts
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_keys  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxcomposer import workdir_lib  # noqa: E402
from jaxcomposer.data import dataset  # noqa: E402
from jaxcomposer.model import StepFunction, anticipation, conditioning  # noqa: E402
from jaxcomposer.sample import smc  # noqa: E402
from jaxcomposer.tokenizers import BOS, EOS, PAD  # noqa: E402


def rows(workdir: str, tokenizer, count: int, bars: int) -> list[tuple[np.ndarray, int]]:
    """(token row int32 (T,) from BOS, without EOS; key label or -1) of the first `count`
    validation pieces cut to `bars` bars."""
    data = dataset.load_split(workdir, "valid")
    out = []
    for i, row in enumerate(data.pieces()):
        if len(out) == count:
            break
        row = bench_keys.cut_bars(tokenizer, np.asarray(row), bars)
        row = row[row != EOS].astype(np.int32)
        key = -1 if data.keys is None else int(data.keys[data.offsets[i] + 1])
        out.append((row, key))
    return out


def target_voices(tokenizer, row: np.ndarray) -> np.ndarray:
    """int (T-1,): the voice of each target row[1:] (-1: bar lines, meters), by the grammar."""
    voice_S = tokenizer.voice_tables().voice_S
    next_state = tokenizer.grammar.next_state
    state, out = int(tokenizer.grammar.bos_state), []
    for token in row[1:].tolist():
        out.append(int(voice_S[state]))
        state = int(next_state[state, token])
    return np.asarray(out)


def padded(items: list[np.ndarray], fill) -> np.ndarray:
    width = max(len(x) for x in items)
    return np.stack([np.pad(x, (0, width - len(x)), constant_values=fill) for x in items])


def teacher_forced_nll(restored, rows_BxT, keys_B, constraints_BxL=None) -> np.ndarray:
    """float64 (B, T-1): -log p(x_t | x_<t[, constraints]) of every target, nats."""
    model, spec = restored.model, restored.spec
    inputs = jnp.asarray(rows_BxT[:, :-1])
    kwargs = {}
    if spec.dim:
        cond = conditioning.vector(spec, np.asarray(keys_B)).astype(np.float32)
        kwargs["cond_BxLxC"] = jnp.repeat(jnp.asarray(cond)[:, None], inputs.shape[1], axis=1)
    if constraints_BxL is not None:
        kwargs["constraints_BxL"] = jnp.asarray(constraints_BxL)
    logits, _ = model.apply(restored.variables, inputs, None, train=False, **kwargs)
    lp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    return -np.take_along_axis(lp, rows_BxT[:, 1:, None].astype(np.int64), axis=-1)[..., 0]


def log_soprano_evidence(restored, row: np.ndarray, voices: np.ndarray, key: int, particles: int,
                         seed: int) -> float:  # fmt: skip
    """SMC's log Z of the program forcing the soprano and the bar lines of `row`, the lower
    voices' tokens free, nats: an estimate of log p(S) = log sum over every lower-voice row of
    p(x). The grammar is a one-state table that allows every token (the raw model, as the
    teacher-forced figures are; EOS, which the filter never draws, has negligible mass)."""
    tokenizer, spec = restored.tokenizer, restored.spec
    forced_T = np.where(voices <= 0, row[1:], -1)
    program = smc.Program.from_forced(forced_T, tokenizer.vocab.size)
    primer = np.array([[BOS]], np.int32)
    everything = jnp.zeros((1, tokenizer.vocab.size), jnp.int32)  # state 0 -> state 0
    cond_GxC = cond_GxPxC = None
    if spec.dim:
        cond_GxC = conditioning.vector(spec, np.asarray([key])).astype(np.float32)
        cond_GxPxC = cond_GxC[:, None]
    result = smc.run_smc(
        restored.variables, jnp.asarray(primer), jnp.zeros(1, jnp.int32), everything,
        jnp.zeros(tokenizer.vocab.size, jnp.float32),
        jnp.zeros(1, jnp.float32), program.arrays(pad_to=-(-program.op_K.size // 64) * 64),
        jax.random.key(seed), cond_GxPxC, cond_GxC,
        step_fn=StepFunction(restored.model), num_steps=-(-forced_T.size // 64) * 64,
        settings=smc.SMCSettings(num_particles=particles),
    )  # fmt: skip
    return float(np.asarray(result.log_evidence_G)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", required=True, help="workdir of the constraint-encoder model")
    parser.add_argument("--plain", required=True, help="workdir of the unconstrained model")
    parser.add_argument("--num_chorales", type=int, default=40)
    parser.add_argument("--bars", type=int, default=16)
    parser.add_argument("--particles", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    enc = workdir_lib.restore_for_inference(args.encoder, "best")
    plain = workdir_lib.restore_for_inference(args.plain, "best")
    if not StepFunction(enc.model).reads_constraints:
        sys.exit(f"error: {args.encoder}: the model has no constraint encoder")
    if enc.tokenizer.vocab.size != plain.tokenizer.vocab.size:
        sys.exit("error: the two workdirs' vocabularies differ")
    tokenizer = enc.tokenizer
    items = rows(args.encoder, tokenizer, args.num_chorales, args.bars)
    voices = [target_voices(tokenizer, r) for r, _ in items]
    rows_BxT = padded([r for r, _ in items], PAD)
    voices_BxL = padded(voices, -2)  # -2: padding
    keys_B = [k for _, k in items]
    lower_BxL = voices_BxL >= 1
    soprano_row = np.where((voices_BxL == 0) | (voices_BxL == -1), rows_BxT[:, 1:],
                           anticipation.FREE)  # fmt: skip
    frames = lower_BxL.sum() / (tokenizer.config.num_voices - 1)
    def per(nll):
        total = float((nll * lower_BxL).sum())
        return dict(nats_per_frame=total / frames, nats_per_token=total / lower_BxL.sum())

    report = dict(encoder=os.path.abspath(args.encoder), encoder_step=enc.step,
                  plain=os.path.abspath(args.plain), plain_step=plain.step,
                  chorales=len(items), bars=args.bars, frames=int(frames),
                  machine=bench_keys.MACHINE, particles=args.particles)  # fmt: skip
    report["encoder | soprano"] = per(teacher_forced_nll(enc, rows_BxT, keys_B, soprano_row))
    report["encoder | nothing"] = per(teacher_forced_nll(enc, rows_BxT, keys_B))
    nll_plain = teacher_forced_nll(plain, rows_BxT, keys_B)
    report["plain, left-right"] = per(nll_plain)
    started = time.process_time()
    bayes = 0.0
    for i, (row, key) in enumerate(items):
        log_x = -nll_plain[i, : row.size - 1].sum()
        log_s = log_soprano_evidence(plain, row, voices[i], key, args.particles, args.seed + i)
        bayes += log_s - log_x  # -log p(ATB | S) = -log p(x) + log p(S)
    report["plain, Bayes"] = dict(
        nats_per_frame=float(bayes / frames), nats_per_token=float(bayes / lower_BxL.sum()),
        smc_cpu_seconds=round(time.process_time() - started, 1),
    )
    print("| model, reading | nats per frame (A+T+B) | nats per lower-voice token |")
    print("|---|---|---|")
    for name in ("encoder | soprano", "encoder | nothing", "plain, left-right", "plain, Bayes"):
        r = report[name]
        print(f"| {name} | {r['nats_per_frame']:.3f} | {r['nats_per_token']:.3f} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
