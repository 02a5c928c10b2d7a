#!/usr/bin/env bash
# Reduced-scale reproduction of BiDM's CIFAR-10 W1A1 and BinaryDM's W1A4 comparisons on one machine:
# FP teacher (data parallel) -> proxy feature network + 9 W1A1 and 3 W1A4/W2A4 students (one process each,
# spread over the GPUs) -> proxy FID/sFID/IS/PR + PSNR vs teacher -> results/cifar10_small/.
#
#   launch/repro_cifar10_small.sh --data /path/to/cifar10_jpeg_q75.npz   # 14 min on 4x H200
#   launch/repro_cifar10_small.sh --tiny                                 # CI size, CPU, ~2 min
#
# Options: --workdir DIR (resume: finished jobs are skipped), --results DIR, --phases
# teacher,students,eval,report, --models bidm,xnor,..., --parallel N, --cpu.
# The budget lives in configs/repro_cifar10_small.py (BUDGET).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 -m bidm_jax.repro.cifar10_small "$@"
