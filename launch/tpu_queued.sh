#!/usr/bin/env bash
# Cloud TPU slices through queued resources: ask for a slice (it is provisioned when capacity
# frees up, and spot slices can be preempted), wait until it is ACTIVE, run on every host with
# the same `tpu-vm ssh --worker=all` launch as launch/tpu_pod.sh, and delete it.
# docs/tpu.md walks through a whole run.
set -euo pipefail
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
usage: launch/tpu_queued.sh COMMAND --name NAME --zone ZONE [options]

commands:
  create --type TYPE [--runtime VERSION] [--spot | --reserved] [--valid-until DURATION]
         request the slice; TYPE is an accelerator type: v5litepod-16, v6e-16, v5p-32, ...
  status print the queued resource and its state (WAITING_FOR_RESOURCES, PROVISIONING,
         ACTIVE, SUSPENDED, FAILED, ...)
  wait   poll every 60 s until the state is ACTIVE (exit 1 on FAILED or SUSPENDED)
  run CONFIG WORKDIR [--config.FIELD=VALUE ...] [launch/tpu_pod.sh options]
         run the job on every host of the slice's node (NAME-node)
  delete delete the queued resource and its node (--force)

options:
  --name NAME      the queued resource's id; its node is NAME-node
  --zone ZONE      e.g. us-east5-b (v5e/v6e/v5p are offered in a few zones only)
  --project ID     the Google Cloud project (default: gcloud's configured one)
  --dry-run        print the commands instead of running them (needs no gcloud)
  -h, --help       this text

The runtime version defaults by TPU generation: v5litepod-* v2-alpha-tpuv5-lite,
v6e-* v2-alpha-tpuv6e, v5p-* v2-alpha-tpuv5.
EOF
}

[[ $# -ge 1 ]] || die_usage "a COMMAND is required"
cmd=$1; shift
case $cmd in
  create|status|wait|run|delete) ;;
  -h|--help) usage; exit 0 ;;
  *) die_usage "unknown command '$cmd'" ;;
esac

name="" zone="" type="" runtime="" capacity=() valid=() project=() pos=() passthrough=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY_RUN=1; passthrough+=(--dry-run); shift ;;
    --name) need_value "$1" $#; name=$2; shift 2 ;;
    --zone) need_value "$1" $#; zone=$2; shift 2 ;;
    --project) need_value "$1" $#; project=(--project "$2"); shift 2 ;;
    --type) need_value "$1" $#; type=$2; shift 2 ;;
    --runtime) need_value "$1" $#; runtime=$2; shift 2 ;;
    --spot) capacity=(--spot); shift ;;
    --reserved) capacity=(--reserved); shift ;;
    --valid-until) need_value "$1" $#; valid=(--valid-until-duration "$2"); shift 2 ;;
    --detach|--take-over-lock|--no-install) passthrough+=("$1"); shift ;;
    -h|--help) usage; exit 0 ;;
    --config.*|--mode=*) pos+=("$1"); shift ;;
    -*) die_usage "unknown option $1" ;;
    *) pos+=("$1"); shift ;;
  esac
done
[[ -n $name ]] || die_usage "--name is required"
[[ -n $zone ]] || die_usage "--zone is required"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die_usage "--name must be lower-case letters, digits and hyphens, starting with a letter: '$name'"
node=$name-node

case $cmd in
  create)
    [[ -n $type ]] || die_usage "create needs --type (v5litepod-16, v6e-16, v5p-32, ...)"
    if [[ -z $runtime ]]; then
      case $type in
        v5litepod-*) runtime=v2-alpha-tpuv5-lite ;;
        v6e-*) runtime=v2-alpha-tpuv6e ;;
        v5p-*) runtime=v2-alpha-tpuv5 ;;
        *) die_usage "no default runtime for --type $type; pass --runtime VERSION" ;;
      esac
    fi
    [[ ${#pos[@]} -eq 0 ]] || die_usage "create takes no positional arguments: ${pos[*]}"
    run gcloud compute tpus queued-resources create "$name" --node-id "$node" \
      --zone "$zone" --accelerator-type "$type" --runtime-version "$runtime" \
      ${capacity[@]+"${capacity[@]}"} ${valid[@]+"${valid[@]}"} ${project[@]+"${project[@]}"}
    ;;
  status)
    run gcloud compute tpus queued-resources describe "$name" --zone "$zone" \
      ${project[@]+"${project[@]}"}
    ;;
  wait)
    describe=(gcloud compute tpus queued-resources describe "$name" --zone "$zone"
              ${project[@]+"${project[@]}"} --format 'value(state.state)')
    if [[ $DRY_RUN == 1 ]]; then
      echo "# repeated every 60 s until it prints ACTIVE (FAILED or SUSPENDED: exit 1)"
      print_cmd "${describe[@]}"
      exit 0
    fi
    while true; do
      state=$("${describe[@]}")
      echo "$(date +%H:%M:%S) $name: $state" >&2
      case $state in
        ACTIVE) exit 0 ;;
        FAILED|SUSPENDED) exit 1 ;;
      esac
      sleep 60
    done
    ;;
  run)
    [[ ${#pos[@]} -ge 2 ]] || die_usage "run needs CONFIG and WORKDIR"
    exec "$(dirname "$0")/tpu_pod.sh" ${passthrough[@]+"${passthrough[@]}"} \
      ${project[@]+"${project[@]}"} "$node" "$zone" "${pos[@]}"
    ;;
  delete)
    # --force deletes the node first, then the request; --quiet skips the prompt.
    run gcloud compute tpus queued-resources delete "$name" --zone "$zone" --force --quiet \
      ${project[@]+"${project[@]}"}
    ;;
esac
