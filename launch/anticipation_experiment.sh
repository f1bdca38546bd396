#!/usr/bin/env bash
# The constraint-encoder experiment of docs/constraints.md (issue 22), end to end: two chorale
# models of configs/quick.py trained for the same 3,000 steps, one with the Anticipation-RNN
# encoder (model.constraint_encoder_size=128) and one without, each pinned to its own core with
# one XLA thread; then the harmonization and infill benchmark on both and the likelihood of the
# lower voices given the soprano. About 35 minutes per model on an idle core of the 2-core dev VM.
#
#   bash launch/anticipation_experiment.sh [ROOT=runs/anticip]
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-runs/anticip}"
export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
export PYTHONPATH="$PWD"
common=(--mode=train --config=configs/quick.py --config.train.budget_minutes=0
        --config.train.num_steps=3000 --config.train.eval_every=500
        --config.train.checkpoint_every=500)
taskset -c 0 python -m jaxcomposer.main "${common[@]}" --workdir="$root/base" > "$root.base.log" 2>&1 &
taskset -c 1 python -m jaxcomposer.main "${common[@]}" --config.model.constraint_encoder_size=128 \
  --workdir="$root/enc" > "$root.enc.log" 2>&1
wait
for name in base enc; do
  taskset -c 1 python launch/bench_constraints.py --workdir="$root/$name" --num_chorales=40 \
    --bars=16 --decoders=forced,smc,smc_parallels --tasks=harmonize,infill \
    --out_dir="$root/bench_$name" | tee "$root/bench_$name.txt"
done
taskset -c 1 python launch/bench_anticipation.py --encoder="$root/enc" --plain="$root/base" \
  | tee "$root/bench_anticipation.txt"
