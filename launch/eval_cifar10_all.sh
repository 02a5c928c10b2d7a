#!/usr/bin/env bash
# 50k-sample evaluation of every CIFAR-10 paper config that has a trained workdir under RUNS
# (RUNS/<config name>, e.g. RUNS/cifar10_ddim_xnor), one after another through
# launch/eval_50k.sh with the papers' DDIM 100, eta 0 sampler; then one table of the metrics.
set -euo pipefail
. "$(dirname "$0")/_common.sh"

# BiDM Table 1 (BiDM, its W1A1 baselines and ablations), BinaryDM Table 1 (BinaryDM,
# Baseline, LSQ), Q-DM, EfficientDM and the FP teacher.
CONFIGS=(cifar10_ddim_teacher cifar10_ddim cifar10_ddim_xnor cifar10_ddim_xnorpp
         cifar10_ddim_dorefa cifar10_ddim_reactnet cifar10_ddim_reste cifar10_ddim_bbcu
         cifar10_ddim_xnor_tbs cifar10_ddim_xnor_spd cifar10_ddim_binarydm
         cifar10_ddim_binarydm_baseline cifar10_ddim_lsq cifar10_ddim_qdm
         cifar10_ddim_efficientdm)

usage() {
  cat <<EOF
usage: launch/eval_cifar10_all.sh [options] RUNS [--config.FIELD=VALUE ...]
(from the repository root)

  RUNS   folder of workdirs named after their configs (RUNS/cifar10_ddim, ...); a config
         without RUNS/<name>/checkpoints is skipped with a note

options:
  --only A,B         evaluate only these config names
  --with-qdm-ddpm    also evaluate Q-DM with 1000-step DDPM (its headline), after its DDIM
                     run (samples and metrics are tagged per preset: both sets are kept)
  --dry-run          print the commands instead of running them
  --ref, --data, --inception, --proxy, --batch, --packed: as launch/eval_50k.sh
  -h, --help         this text

configs: ${CONFIGS[*]}
EOF
}

only="" qdm_ddpm=0 pass=() pos=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY_RUN=1; pass+=(--dry-run); shift ;;
    --only) need_value "$1" $#; only=$2; shift 2 ;;
    --with-qdm-ddpm) qdm_ddpm=1; shift ;;
    --ref|--data|--inception|--proxy|--batch) need_value "$1" $#; pass+=("$1" "$2"); shift 2 ;;
    --packed) pass+=("$1"); shift ;;
    -h|--help) usage; exit 0 ;;
    --config.*) pos+=("$1"); shift ;;
    -*) die_usage "unknown option $1" ;;
    *) pos+=("$1"); shift ;;
  esac
done
[[ ${#pos[@]} -ge 1 ]] || die_usage "RUNS is required"
runs=${pos[0]}
extra=("${pos[@]:1}")
[[ -d $runs ]] || die_usage "RUNS '$runs' is not a folder"
# The config paths below are relative, as python reads them: from the repository root.
[[ -f configs/default.py ]] || die "run this from the repository root"
selected=("${CONFIGS[@]}")
if [[ -n $only ]]; then
  IFS=, read -r -a selected <<< "$only"
  for c in "${selected[@]}"; do
    [[ " ${CONFIGS[*]} " == *" $c "* ]] || die_usage "--only: unknown config '$c'"
  done
fi

here=$(dirname "$0")
done_list=()
for c in "${selected[@]}"; do
  workdir=$runs/$c
  if [[ ! -d $workdir/checkpoints ]]; then
    echo "# skip $c: no $workdir/checkpoints" >&2
    continue
  fi
  "$here/eval_50k.sh" ${pass[@]+"${pass[@]}"} "configs/$c.py" "$workdir" ${extra[@]+"${extra[@]}"}
  done_list+=("$workdir/eval/metrics_cifar-ddim100.json")
  if [[ $c == cifar10_ddim_qdm && $qdm_ddpm == 1 ]]; then
    "$here/eval_50k.sh" ${pass[@]+"${pass[@]}"} --preset qdm-ddpm1000 "configs/$c.py" "$workdir" \
      ${extra[@]+"${extra[@]}"}
    done_list+=("$workdir/eval/metrics_qdm-ddpm1000.json")
  fi
done
[[ ${#done_list[@]} -gt 0 ]] || die "no workdir with checkpoints under $runs"

# One line per evaluated model: its top-level numbers (FID, sFID, IS, precision, recall, KID;
# proxy_* with --proxy).
run python3 -c 'import json, sys; [print(p, {k: round(v, 4) for k, v in json.load(open(p)).items() if type(v) is float}) for p in sys.argv[1:]]' "${done_list[@]}"
