"""The JSB chorales piano-roll benchmark: train the chosen recipe, score the valid split in nats
per frame, and print JSON lines next to the published (test-split) figures.

Data: ../shared/data/jsb_chorales (train/ and valid/ as the dataset gives them; the test split is
held out and scored separately with `--mode=evaluate --eval_dir=...`). Settings: configs/jsb.py.
`nats_per_frame` is evaluate's figure: the NLL of every token inside each frame (FRAME_END
included, EOS not), summed over the split and divided by its number of frames (4,602 on valid),
with the state carried through each whole chorale and the same grammar mask as training.

Each run trains for a fixed number of steps (same recipe, same length, whatever the machine's
load), so CPU time is what varies: it is printed per run (process user + system seconds). On the
README's 2-core machine the recipe (5,000 steps of a 2 x 384 LSTM) takes about 52 minutes of
one core (0.63 s per step; 76 minutes beside another job), a levers row about 6 minutes, and
scoring the 13 transposed views (--transpositions 6) about 1 minute.

  python launch/jsb.py --transpositions 6   # the recipe (configs/jsb.py), scored as it is and
      # mixed with its predictions on the chorales transposed by -6..6 (README: "JSB ...")
  python launch/jsb.py --levers        # the levers table: each row adds one lever to the last
  python launch/jsb.py --average 4     # also score the mean of the best 4 checkpoints' weights
  python launch/jsb.py --seeds 3 --transpositions 6   # 3 seeds of the recipe, then their
      # token-by-token mixture, each model also reading the chorales in 13 transpositions

One JSON line per run: {"run", "nats_per_frame", "frames", "steps", "train_wall_seconds",
"cpu_seconds", ..., "vs_walder_2016_test": ours / 4.34}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import jsb  # noqa: E402
from jaxcomposer import config_lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(REPO), "shared", "data", "jsb_chorales")
# Published TEST-split figures (nats per frame); ours is on valid until the test split is run.
PUBLISHED = {
    "RNN-RBM (Boulanger-Lewandowski 2012)": 6.27,
    "RNN-NADE HF (Boulanger-Lewandowski 2012)": 5.56,
    "LSTM, 12 transpositions (Walder 2016)": 4.34,
}
WALDER = 4.34

# The levers table (--levers): every row shares this run length and validation cadence.
SCHEDULE = {
    "num_steps": 1200, "warmup_steps": 100, "eval_every": 200, "checkpoint_every": 200,
    "log_every": 200, "eval_batches": 7, "max_wall_seconds": 0.0,
}  # fmt: skip
# Cumulative levers: each row is the previous one plus one change (README levers table). The base
# row sets every field the recipe in configs/jsb.py changes, so the table starts from the plain
# model whatever the recipe is.
LEVERS: list[tuple[str, dict]] = [
    ("base", {"model": {"hidden_size": 256, "embed_dim": 128, "dropout": 0.2},
              "train": {"grammar_mask_loss": False, "transpose_semitones": 0,
                        "weight_decay": 1e-4}}),
    ("+grammar_mask", {"train": {"grammar_mask_loss": True}}),
    ("+transpose_12_keys", {"train": {"transpose_semitones": 6}}),  # shifts -6..+6
]  # fmt: skip


def lever_configs(data_root: str) -> dict[str, config_lib.Config]:
    """Row name -> frozen config (each row = the previous row plus its own changes)."""
    config = config_lib.freeze(jsb.get_config(data_root))
    config = config_lib.replace(config, train=SCHEDULE)
    out = {}
    for name, changes in LEVERS:
        config = config_lib.replace(config, **changes)
        out[name] = config
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def score_valid(workdir: str, variables) -> dict:
    """evaluate's overall figures for the valid split under the given weights (the model,
    tokenizer and mask are those of the workdir's best checkpoint)."""
    from jaxcomposer import workdir_lib
    from jaxcomposer.data import dataset
    from jaxcomposer.evaluation import evaluate, likelihood
    from jaxcomposer.model import StepFunction

    restored = workdir_lib.restore_for_inference(workdir, "best")
    config, tokenizer = restored.config, restored.tokenizer
    split = dataset.load_split(workdir, "valid")
    pieces = list(split.pieces())
    grammar = tokenizer.grammar if config.train.grammar_mask_loss else None
    scored = likelihood.piece_token_nll(
        variables, StepFunction(restored.model), pieces, window=config.train.seq_len,
        batch_size=config.train.batch_size, grammar=grammar,
    )  # fmt: skip
    per_piece = {
        f"{i}:{name}": evaluate.piece_metrics(tokenizer, tokens, nll, correct)
        for i, (name, tokens, (nll, correct)) in enumerate(
            zip(split.names, pieces, scored, strict=True)
        )
    }
    return evaluate.total(per_piece)


def averaged_variables(workdir: str, count: int) -> tuple[dict, list[int]]:
    """Mean weights of the `count` kept checkpoints with the lowest validation loss
    (Polyak-style averaging of late iterates, as Izmailov et al. 2018 do along a cyclic
    schedule; here along the cosine tail)."""
    import jax

    from jaxcomposer import workdir_lib

    kept = set(workdir_lib.checkpoint_steps(workdir))
    losses = {}
    with open(workdir_lib.metrics_path(workdir), encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record.get("kind") == "valid" and record["step"] in kept:
                losses[int(record["step"])] = float(record["loss"])
    chosen = sorted(losses, key=losses.get)[:count]
    trees = [workdir_lib.restore_for_inference(workdir, s).variables for s in chosen]
    mean = jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)
    return mean, sorted(chosen)


def one_run(root: str, name: str, config: config_lib.Config, average: int) -> dict:
    from jaxcomposer.data import dataset
    from jaxcomposer.evaluation import evaluate
    from jaxcomposer.train import loop

    workdir = os.path.join(root, name.replace("+", "plus_"))
    dataset.prepare(config, workdir, progress=False)
    cpu0, wall0 = cpu_seconds(), time.perf_counter()
    summary = loop.train(config, workdir, progress=False)
    train_wall, train_cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    overall = evaluate.evaluate(workdir, progress=False)["overall"]
    row = {
        "run": name,
        "nats_per_frame": round(overall["nats_per_frame"], 4),
        "nats_per_token": round(overall["nats_per_token"], 4),
        "frames": overall["frames"],
        "pieces": overall["pieces"],
        "steps": summary["step"],
        "best_step": summary["best_step"],
        "train_wall_seconds": round(train_wall, 1),
        "cpu_seconds": round(train_cpu, 1),
        "vs_walder_2016_test": round(overall["nats_per_frame"] / WALDER, 4),
        "config": {
            "model": config_lib.to_dict(config)["model"],
            "train": config_lib.to_dict(config)["train"],
        },
    }
    if average > 1:
        variables, steps = averaged_variables(workdir, average)
        averaged = score_valid(workdir, variables)
        row["averaged"] = {
            "checkpoints": steps,
            "nats_per_frame": round(averaged["nats_per_frame"], 4),
            "frames": averaged["frames"],
        }
    return row


def ensemble_row(workdirs: list[str], transpositions: int) -> dict:
    """evaluate's token-by-token mixture of the runs' best checkpoints, each also reading every
    chorale transposed by -T..T semitones (evaluation/ensemble.py), on the valid split."""
    from jaxcomposer.evaluation import evaluate

    result = evaluate.evaluate(
        workdirs[0], ensemble=workdirs[1:], transpositions=transpositions, progress=False
    )
    overall = result["overall"]
    return {
        "run": f"mixture of {len(workdirs)} run(s) x {len(result['views']['shifts'])} views",
        "nats_per_frame": round(overall["nats_per_frame"], 4),
        "nats_per_token": round(overall["nats_per_token"], 4),
        "frames": overall["frames"],
        "members": {os.path.basename(m["workdir"]): round(m["overall"]["nats_per_frame"], 4)
                    for m in result["members"]},
        "shifts": result["views"]["shifts"],
        "vs_walder_2016_test": round(overall["nats_per_frame"] / WALDER, 4),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/jsb")
    parser.add_argument("--data", default=DATA, help="folder with train/ and valid/")
    parser.add_argument("--levers", action="store_true", help="run every row of the table")
    parser.add_argument("--average", type=int, default=0, help="also score N averaged ckpts")
    parser.add_argument("--steps", type=int, default=0, help="override the run length")
    parser.add_argument("--seeds", type=int, default=1, help="recipe runs (train.seed 0..N-1)")
    parser.add_argument(
        "--transpositions", type=int, default=0,
        help="score the mixture of the recipe runs, each also reading the chorales transposed "
        "by -T..T semitones (0 with one seed: no mixture row)",
    )  # fmt: skip
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.data, "valid")):
        sys.exit(f"launch/jsb.py: no JSB data at {args.data} (expects train/ and valid/)")
    if args.levers:
        configs = lever_configs(args.data)
    else:  # the chosen recipe: configs/jsb.py as it stands, once per seed
        recipe = config_lib.freeze(jsb.get_config(args.data))
        configs = {
            "recipe" + (f"_seed{seed}" if seed else ""): config_lib.replace(
                recipe, train={"seed": seed}
            )
            for seed in range(args.seeds)
        }
    for name, config in configs.items():
        changes = {"keep_best": max(args.average, config.train.keep_best)}
        if args.steps:
            changes["num_steps"] = args.steps
        configs[name] = config_lib.replace(config, train=changes)
    print(json.dumps({"published_test_nats_per_frame": PUBLISHED}), flush=True)
    root = os.path.abspath(args.root)
    for name, config in configs.items():
        row = one_run(root, name, config, args.average)
        print(json.dumps(row), flush=True)
    if not args.levers and (args.seeds > 1 or args.transpositions):
        workdirs = [os.path.join(root, name) for name in configs]
        print(json.dumps(ensemble_row(workdirs, args.transpositions)), flush=True)


if __name__ == "__main__":
    main()
