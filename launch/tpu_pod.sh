#!/usr/bin/env bash
# Runs one bidm_jax job on every host of a Cloud TPU pod slice (multi-host).
#
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [extra --config.* flags]
#
# WORKDIR must be storage every host sees (e.g. a gs:// bucket path or a shared mount): orbax
# writes one checkpoint from all hosts. The repository is copied to each host's home folder and
# installed there; jax.distributed.initialize() is called by the program on every host
# (--config.mesh.distributed=yes), and each host feeds its own slice of every global batch.
set -euo pipefail
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
extra="$*"
repo=$(cd "$(dirname "$0")/.." && pwd)
tar -C "$repo" --exclude=.git --exclude=.venv --exclude=runs -czf /tmp/bidm_jax_src.tgz .
gcloud compute tpus tpu-vm scp /tmp/bidm_jax_src.tgz "$tpu":bidm_jax_src.tgz --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e; mkdir -p bidm_jax && tar -C bidm_jax -xzf bidm_jax_src.tgz && cd bidm_jax &&
  python3 -m pip install -q -e . 'jax[tpu]' &&
  python3 -m bidm_jax.main --config $config --workdir $workdir --config.mesh.distributed=yes $extra"
