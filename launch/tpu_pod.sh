#!/usr/bin/env bash
# Runs one bidm_jax job on every host of a Cloud TPU VM slice (multi-host) through
# `gcloud compute tpus tpu-vm ssh --worker=all`: the repository is copied to each host's home
# folder and installed there, then the same command starts on every host; the program calls
# jax.distributed.initialize() (--config.mesh.distributed=yes) and each host feeds its own
# slice of every global batch. docs/tpu.md walks through a whole run.
set -euo pipefail
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh [options] TPU_NAME ZONE CONFIG WORKDIR [--config.FIELD=VALUE ...]

  TPU_NAME   the TPU VM slice (or a queued resource's node id)
  ZONE       its zone, e.g. us-east5-b
  CONFIG     a config file of this repository, e.g. configs/cifar10_ddim.py
  WORKDIR    gs://BUCKET/PATH (mounted on every host at /mnt/gcs/BUCKET with Cloud Storage
             FUSE) or an absolute path every host sees (NFS / Filestore)

options:
  --dry-run          print the commands instead of running them (needs no gcloud)
  --project ID       the Google Cloud project (default: gcloud's configured one)
  --detach           start the job in the background on every host (it survives the ssh
                     session; output in ~/bidm_jax_run.log on each host) and return
  --take-over-lock   remove WORKDIR/run.lock left by a preempted or killed run first
  --no-install       skip copying and installing the repository (already done)
  -h, --help         this text
EOF
}

project=()
detach=0
take_over=0
install=1
pos=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY_RUN=1; shift ;;
    --project) need_value "$1" $#; project=(--project "$2"); shift 2 ;;
    --project=*) project=(--project "${1#*=}"); shift ;;
    --detach) detach=1; shift ;;
    --take-over-lock) take_over=1; shift ;;
    --no-install) install=0; shift ;;
    -h|--help) usage; exit 0 ;;
    --config.*|--mode=*) pos+=("$1"); shift ;;
    -*) die_usage "unknown option $1" ;;
    *) pos+=("$1"); shift ;;
  esac
done
[[ ${#pos[@]} -ge 4 ]] || die_usage "TPU_NAME, ZONE, CONFIG and WORKDIR are required"
tpu=${pos[0]}; zone=${pos[1]}; config=${pos[2]}; workdir=${pos[3]}
extra=("${pos[@]:4}")
check_config "$config" remote
check_extra ${extra[@]+"${extra[@]}"}
resolve_workdir "$workdir"

# What every host runs, as one shell script passed to ssh --command.
script="set -euo pipefail"
if [[ $install == 1 ]]; then
  script+=$'\n'"mkdir -p ~/bidm_jax && tar -C ~/bidm_jax -xzf ~/bidm_jax_src.tgz"
  script+=$'\n'"python3 -m pip install -q -e ~/bidm_jax \"jax[tpu]\""
fi
[[ -n $WORKDIR_BUCKET ]] && script+=$'\n'"$(gcsfuse_mount_lines "$WORKDIR_BUCKET")"
[[ $take_over == 1 ]] && script+=$'\n'"$(take_over_lock_line "$WORKDIR_PATH")"
prog=$(program_line "$config" "$WORKDIR_PATH" ${extra[@]+"${extra[@]}"})
if [[ $detach == 1 ]]; then
  # setsid + nohup: the job must outlive the ssh session that starts it.
  script+=$'\n'"cd ~/bidm_jax && setsid nohup $prog > ~/bidm_jax_run.log 2>&1 < /dev/null &"
  script+=$'\n'"echo \"started on \$(hostname); log: ~/bidm_jax_run.log\""
else
  script+=$'\n'"cd ~/bidm_jax && $prog"
fi

if [[ $install == 1 ]]; then
  src=/tmp/bidm_jax_src.tgz
  run tar -C "$(repo_root)" --exclude=.git --exclude=.venv --exclude=runs \
    --exclude=__pycache__ -czf "$src" .
  run gcloud compute tpus tpu-vm scp "$src" "$tpu:bidm_jax_src.tgz" --zone "$zone" \
    --worker=all ${project[@]+"${project[@]}"}
fi
run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all \
  ${project[@]+"${project[@]}"} --command "$script"
