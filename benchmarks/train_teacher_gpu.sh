#!/usr/bin/env bash
# Full-width DDIM CIFAR-10 teacher training throughput on 1 GPU and on all GPUs of one host.
#   bash benchmarks/train_teacher_gpu.sh DATA_NPZ OUT_DIR "NAME:GPUS:BATCH:STEPS ..."
# GPUS is "1" (the first GPU) or "all". Example:
#   bash benchmarks/train_teacher_gpu.sh cifar10_jpeg_q75.npz logs "gpu1:1:128:6000 gpu4:all:512:5000"
# Writes OUT_DIR/NAME.log and prints one summary line per run (benchmarks/train_summary.py).
set -euo pipefail
data=$1; out=$2; runs=$3
n=$(python3 -c "import jax; print(jax.device_count())")
for spec in $runs; do
  IFS=: read -r name gpus batch steps <<< "$spec"
  vis=0; [ "$gpus" = all ] && vis=$(seq -s, 0 $((n - 1)))
  CUDA_VISIBLE_DEVICES=$vis python3 -m bidm_jax.main --config configs/cifar10_ddim_teacher.py \
    --workdir "/tmp/bench_$name" --mode train --config.data.path="$data" \
    --config.train.batch_size="$batch" --config.train.num_steps="$steps" \
    --config.train.log_every=200 --config.ckpt.save_every=100000 \
    --config.sample.num_samples=16 --config.sample.grid_size=16 > "$out/$name.log" 2>&1
  echo "$name gpus=$gpus batch=$batch $(python3 benchmarks/train_summary.py /tmp/bench_$name "$batch") \
$(grep -o 'peak device memory [0-9.]* GiB' "$out/$name.log" | tail -1)"
done
