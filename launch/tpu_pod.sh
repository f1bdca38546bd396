#!/usr/bin/env bash
# Training on a Cloud TPU VM pod slice: the same command on every worker (one process per host).
#
#   TPU_NAME=jc ZONE=us-central2-b ACCELERATOR=v4-32 BUCKET=my-bucket bash launch/tpu_pod.sh create
#   TPU_NAME=jc ZONE=us-central2-b BUCKET=my-bucket bash launch/tpu_pod.sh setup
#   TPU_NAME=jc ZONE=us-central2-b BUCKET=my-bucket bash launch/tpu_pod.sh train
#   TPU_NAME=jc ZONE=us-central2-b bash launch/tpu_pod.sh delete
#
# `train` is the one gcloud command, run on all workers (--worker=all). With
# `--distributed=auto`, jax.distributed.initialize() finds the pod's workers from the TPU
# metadata server; process 0 prepares the data and writes metrics, plots and samples, and
# every host writes its share of each orbax checkpoint. The workdir lives in a Cloud Storage
# bucket mounted with gcsfuse at the same path on every worker (checkpoints and the prepared
# data must be visible to all hosts). Running `train` again resumes from the latest checkpoint.
# train.batch_size must be divisible by the number of TPU chips (v4-32: 16 devices).
set -euo pipefail
: "${TPU_NAME:?}" "${ZONE:?}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
REPO_URL="${REPO_URL:-https://github.com/OWNER/jaxcomposer.git}"  # your clone's URL
CONFIG="${CONFIG:-configs/default.py}"
MOUNT=/mnt/jaxcomposer
RUN="${RUN:-default}"
ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$1"
}
case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$VERSION" ;;
  setup)
    : "${BUCKET:?}"
    # gcsfuse from Google's apt repository (https://cloud.google.com/storage/docs/gcsfuse-install)
    ssh_all "set -e
      echo deb https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main \
        | sudo tee /etc/apt/sources.list.d/gcsfuse.list
      curl -fsS https://packages.cloud.google.com/apt/doc/apt-key.gpg \
        | sudo tee /etc/apt/trusted.gpg.d/gcsfuse.asc >/dev/null
      sudo apt-get update -q && sudo apt-get install -yq gcsfuse git python3-venv
      [ -d jaxcomposer ] || git clone $REPO_URL jaxcomposer
      cd jaxcomposer && python3 -m venv .venv && . .venv/bin/activate
      pip install -q -e . 'jax[tpu]==0.10.2'
      sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT
      mountpoint -q $MOUNT || gcsfuse --implicit-dirs $BUCKET $MOUNT" ;;
  train)
    ssh_all "cd jaxcomposer && . .venv/bin/activate && python -m jaxcomposer.main \
      --mode=all --distributed=auto --config=$CONFIG --workdir=$MOUNT/runs/$RUN --progress=false \
      --config.train.batch_size=${BATCH:-64}" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet ;;
  *)
    echo "usage: TPU_NAME=.. ZONE=.. [BUCKET=..] bash launch/tpu_pod.sh create|setup|train|delete" >&2
    exit 2 ;;
esac
