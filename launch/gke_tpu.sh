#!/usr/bin/env bash
# Multi-host TPU runs on GKE: a JobSet whose one Indexed Job starts one pod per TPU host, every
# pod running the same command (GKE tells each pod its worker id and the other hosts' names,
# which jax.distributed.initialize() reads: --config.mesh.distributed=yes), or the same
# command submitted through XPK (`xpk workload create`), which builds that JobSet itself.
# docs/tpu.md walks through a whole run.
set -euo pipefail
. "$(dirname "$0")/_common.sh"

usage() {
  cat <<'EOF'
usage: launch/gke_tpu.sh COMMAND --name NAME [options] [CONFIG WORKDIR [--config.FIELD=VALUE ...]]

commands (plain GKE, kubectl):
  manifest CONFIG WORKDIR   print the JobSet manifest (nothing is run)
  apply CONFIG WORKDIR      kubectl apply the manifest (needs --image)
  logs                      follow the logs of every pod, prefixed with the pod name
  delete                    delete the JobSet (its pods stop)
commands (XPK):
  xpk-create CONFIG WORKDIR xpk workload create on --cluster (the repository is built into
                            xpk's image from --base-image and installed when the pods start)
  xpk-list                  xpk workload list
  xpk-delete                xpk workload delete

options:
  --name NAME          JobSet / workload name (lower-case letters, digits, hyphens)
  --tpu TYPE           v5e-16 (default), v6e-16, v5p-32; single-host v5e-4, v6e-4, v5p-8
  --image IMAGE        (manifest, apply) an image with the repository installed and its
                       working directory at the repository root (docs/tpu.md has one)
  --service-account SA (manifest, apply) Kubernetes service account allowed to use the
                       bucket (Workload Identity); needed for a gs:// WORKDIR
  --max-restarts N     restart the whole slice up to N times after a failure or a
                       preemption (default 3); each restart resumes from the last checkpoint
  --take-over-lock     remove WORKDIR/run.lock before starting; on by default when
                       --max-restarts > 0 (see docs/tpu.md), --keep-lock turns it off
  --cluster NAME       (xpk-*) the XPK/GKE cluster
  --storage NAME       (xpk-create) an XPK storage attached to the cluster that mounts the
                       bucket at /mnt/gcs/BUCKET; needed for a gs:// WORKDIR
  --base-image IMAGE   (xpk-create) base image (default python:3.11-slim)
  --project ID, --zone ZONE   passed to xpk
  --namespace NS       (manifest, apply, logs, delete) Kubernetes namespace
  --dry-run            print the commands and manifests instead of running them
  -h, --help           this text

WORKDIR is gs://BUCKET/PATH (mounted in every pod at /mnt/gcs/BUCKET by the Cloud Storage
FUSE CSI driver, or by the XPK storage) or an absolute path on a volume every pod mounts.
EOF
}

[[ $# -ge 1 ]] || die_usage "a COMMAND is required"
cmd=$1; shift
case $cmd in
  manifest|apply|logs|delete|xpk-create|xpk-list|xpk-delete) ;;
  -h|--help) usage; exit 0 ;;
  *) die_usage "unknown command '$cmd'" ;;
esac

name="" tpu=v5e-16 image="" ksa="" max_restarts=3 lock="" cluster="" storage=""
base_image=python:3.11-slim namespace=() gcloud_args=() pos=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) DRY_RUN=1; shift ;;
    --name) need_value "$1" $#; name=$2; shift 2 ;;
    --tpu) need_value "$1" $#; tpu=$2; shift 2 ;;
    --image) need_value "$1" $#; image=$2; shift 2 ;;
    --service-account) need_value "$1" $#; ksa=$2; shift 2 ;;
    --max-restarts) need_value "$1" $#; max_restarts=$2; shift 2 ;;
    --take-over-lock) lock=take; shift ;;
    --keep-lock) lock=keep; shift ;;
    --cluster) need_value "$1" $#; cluster=$2; shift 2 ;;
    --storage) need_value "$1" $#; storage=$2; shift 2 ;;
    --base-image) need_value "$1" $#; base_image=$2; shift 2 ;;
    --project|--zone) need_value "$1" $#; gcloud_args+=("$1=$2"); shift 2 ;;
    --namespace) need_value "$1" $#; namespace=(--namespace "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --config.*|--mode=*) pos+=("$1"); shift ;;
    -*) die_usage "unknown option $1" ;;
    *) pos+=("$1"); shift ;;
  esac
done
[[ -n $name ]] || die_usage "--name is required"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ && ${#name} -le 40 ]] ||
  die_usage "--name must be at most 40 lower-case letters, digits and hyphens, starting with a letter: '$name'"
[[ $max_restarts =~ ^[0-9]+$ ]] || die_usage "--max-restarts must be a whole number, got '$max_restarts'"

# The slice shape: GKE's accelerator label and topology, chips per host, hosts, and XPK's
# name for it. Every multi-host shape here has 4 chips (4 JAX devices) per host.
case $tpu in
  v5e-16) accel=tpu-v5-lite-podslice topo=4x4   chips=4 hosts=4 xpk_type=v5litepod-16 ;;
  v6e-16) accel=tpu-v6e-slice        topo=4x4   chips=4 hosts=4 xpk_type=v6e-16 ;;
  v5p-32) accel=tpu-v5p-slice        topo=2x2x4 chips=4 hosts=4 xpk_type=v5p-32 ;;
  v5e-4)  accel=tpu-v5-lite-podslice topo=2x2   chips=4 hosts=1 xpk_type=v5litepod-4 ;;
  v6e-4)  accel=tpu-v6e-slice        topo=2x2   chips=4 hosts=1 xpk_type=v6e-4 ;;
  v5p-8)  accel=tpu-v5p-slice        topo=2x2x1 chips=4 hosts=1 xpk_type=v5p-8 ;;
  *) die_usage "unknown --tpu '$tpu' (v5e-16, v6e-16, v5p-32, v5e-4, v6e-4, v5p-8)" ;;
esac

# A restarted attempt finds the lock of the attempt before it: same pod host name and, in a
# fresh container, often the same pid, so the program cannot tell it from a live run.
# JobSet stops every pod of an attempt before the next starts, so taking the lock over is
# safe there; with no restarts the lock keeps its usual protection.
if [[ -z $lock ]]; then
  lock=$([[ $max_restarts -gt 0 ]] && echo take || echo keep)
fi

# The per-pod script: $1 = the workdir the program sees.
pod_script() {
  local workdir_path=$1; shift
  echo "set -euo pipefail"
  [[ $cmd == xpk-create ]] && echo "python3 -m pip install -q -e . \"jax[tpu]\""
  [[ $lock == take ]] && take_over_lock_line "$workdir_path"
  program_line "$config" "$workdir_path" ${extra[@]+"${extra[@]}"}
}

needs_job() {
  [[ ${#pos[@]} -ge 2 ]] || die_usage "$cmd needs CONFIG and WORKDIR"
  config=${pos[0]}; workdir=${pos[1]}
  extra=("${pos[@]:2}")
  check_config "$config" remote
  check_extra ${extra[@]+"${extra[@]}"}
  resolve_workdir "$workdir"
}

manifest() {
  local script
  script=$(pod_script "$WORKDIR_PATH" | sed 's/^/                /')
  cat <<EOF
apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: $name
  annotations:
    # one slice per node pool: the job's pods land on the hosts of one TPU slice
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: $max_restarts
  replicatedJobs:
  - name: slice
    replicas: 1
    template:
      spec:
        parallelism: $hosts
        completions: $hosts
        backoffLimit: 0
        template:
EOF
  if [[ -n $WORKDIR_BUCKET ]]; then
    cat <<EOF
          metadata:
            annotations:
              gke-gcsfuse/volumes: "true"
EOF
  fi
  cat <<EOF
          spec:
            restartPolicy: Never
EOF
  [[ -n $ksa ]] && echo "            serviceAccountName: $ksa"
  cat <<EOF
            nodeSelector:
              cloud.google.com/gke-tpu-accelerator: $accel
              cloud.google.com/gke-tpu-topology: $topo
            containers:
            - name: bidm
              image: $image
              command:
              - bash
              - -c
              - |
$script
              resources:
                limits:
                  google.com/tpu: $chips
EOF
  if [[ -n $WORKDIR_BUCKET ]]; then
    cat <<EOF
              volumeMounts:
              - name: workdir-bucket
                mountPath: $GCS_MOUNT_ROOT/$WORKDIR_BUCKET
            volumes:
            - name: workdir-bucket
              csi:
                driver: gcsfuse.csi.storage.gke.io
                volumeAttributes:
                  bucketName: $WORKDIR_BUCKET
                  mountOptions: implicit-dirs
EOF
  fi
}

case $cmd in
  manifest|apply)
    needs_job
    if [[ $cmd == apply ]]; then
      [[ -n $image ]] || die_usage "apply needs --image (an image with the repository installed)"
    fi
    [[ -n $image ]] || image=IMAGE_WITH_BIDM_JAX
    if [[ -n $WORKDIR_BUCKET && -z $ksa ]]; then
      echo "note: no --service-account: the pods use the namespace's default service account," \
           "which needs access to gs://$WORKDIR_BUCKET (Workload Identity)" >&2
    fi
    doc=$(manifest)
    if [[ $cmd == manifest ]]; then
      printf '%s\n' "$doc"
    else
      run_with_stdin "$doc" kubectl apply ${namespace[@]+"${namespace[@]}"} -f -
    fi
    ;;
  logs)
    run kubectl logs ${namespace[@]+"${namespace[@]}"} -f --prefix --max-log-requests=64 \
      -l "jobset.sigs.k8s.io/jobset-name=$name"
    ;;
  delete)
    run kubectl delete ${namespace[@]+"${namespace[@]}"} jobset "$name"
    ;;
  xpk-create)
    needs_job
    [[ -n $cluster ]] || die_usage "xpk-create needs --cluster"
    if [[ -n $WORKDIR_BUCKET && -z $storage ]]; then
      die_usage "a gs:// WORKDIR with XPK needs --storage NAME: an XPK storage attached to the cluster that mounts gs://$WORKDIR_BUCKET at $GCS_MOUNT_ROOT/$WORKDIR_BUCKET"
    fi
    script=$(pod_script "$WORKDIR_PATH" | paste -sd ';' - | sed 's/;/; /g')
    storage_args=()
    [[ -n $storage ]] && storage_args=(--storage "$storage")
    # Exit code 5 is the program's "a peer process died" (docs/reliability.md): worth a
    # restart, like a preemption (143). 2 (bad input), 3 (diverged), 4 (write failed) are not.
    run xpk workload create --cluster "$cluster" --workload "$name" --tpu-type "$xpk_type" \
      --num-slices 1 --base-docker-image "$base_image" --script-dir "$(repo_root)" \
      --max-restarts "$max_restarts" --restart-on-exit-codes 5 \
      ${storage_args[@]+"${storage_args[@]}"} ${gcloud_args[@]+"${gcloud_args[@]}"} \
      --command "$script"
    ;;
  xpk-list)
    [[ -n $cluster ]] || die_usage "xpk-list needs --cluster"
    run xpk workload list --cluster "$cluster" --filter-by-job "$name" \
      ${gcloud_args[@]+"${gcloud_args[@]}"}
    ;;
  xpk-delete)
    [[ -n $cluster ]] || die_usage "xpk-delete needs --cluster"
    run xpk workload delete --cluster "$cluster" --workload "$name" \
      ${gcloud_args[@]+"${gcloud_args[@]}"}
    ;;
esac
