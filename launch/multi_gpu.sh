#!/usr/bin/env bash
# Multi-GPU launch.
#
# One host, all its GPUs (one process sees every GPU; batches are split over them):
#   launch/multi_gpu.sh CONFIG WORKDIR [extra --config.* flags]
#
# Several hosts under SLURM (one process per host, each seeing that host's GPUs):
#   srun --nodes=N --ntasks-per-node=1 launch/multi_gpu.sh CONFIG WORKDIR [flags]
# jax.distributed.initialize() picks up SLURM's environment (--config.mesh.distributed=auto).
# Without SLURM, start one process per host yourself with
#   --config.mesh.coordinator_address=HOST0:PORT --config.mesh.num_processes=N
#   --config.mesh.process_id=I
# WORKDIR must be on storage every host sees.
set -euo pipefail
config=$1; workdir=$2; shift 2
cd "$(dirname "$0")/.."
exec python3 -m bidm_jax.main --config "$config" --workdir "$workdir" "$@"
