# Helpers shared by the launch scripts; sourced, never run. Each script defines usage()
# (the text printed by --help and after an argument error) before calling these.

# 1 while --dry-run is on: every external command is printed instead of run.
DRY_RUN=${DRY_RUN:-0}

# Where a gs:// bucket is mounted on every host (Cloud Storage FUSE). The program works on
# POSIX paths only (os.makedirs, the lock file, orbax's local-path checkpointer), so a bucket
# workdir is reached through this mount; docs/tpu.md says why.
GCS_MOUNT_ROOT=/mnt/gcs

die_usage() {
  echo "error: $*" >&2
  echo >&2
  usage >&2
  exit 2
}

die() {
  echo "error: $*" >&2
  exit 2
}

# Quotes one argument for a POSIX shell, leaving plain words bare so that the printed
# commands stay readable and can be pasted as they are.
shquote() {
  local s=$1
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

print_cmd() {
  local out="" a
  for a in "$@"; do out+="$(shquote "$a") "; done
  echo "${out% }"
}

# Runs a command, or prints it under --dry-run (exactly as it would run).
run() {
  if [[ $DRY_RUN == 1 ]]; then
    print_cmd "$@"
  else
    echo "+ $(print_cmd "$@")" >&2
    "$@"
  fi
}

# Runs a command with a document on its stdin (a manifest for kubectl apply -f -), or prints
# both under --dry-run.
run_with_stdin() {
  local doc=$1; shift
  if [[ $DRY_RUN == 1 ]]; then
    echo "$(print_cmd "$@") <<'EOF'"
    printf '%s\n' "$doc"
    echo "EOF"
  else
    echo "+ $(print_cmd "$@") < manifest" >&2
    printf '%s\n' "$doc" | "$@"
  fi
}

# Checks that option $1 got a value ($2 = the number of words left including the option).
need_value() {
  [[ $2 -ge 2 ]] || die_usage "$1 needs a value"
}

# The repository root (the launch scripts live one level below it).
repo_root() {
  (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
}

# A config argument must name an existing config file, so that a typo fails here and not
# after the slice has been provisioned. With "remote", it must be relative to the repository
# root: the hosts run it from their own copy of the repository.
check_config() {
  local config=$1 where=${2:-local} root
  root=$(repo_root)
  [[ $config == *.py ]] || die_usage "CONFIG must be a config file (configs/NAME.py), got '$config'"
  if [[ $where == remote ]]; then
    [[ $config != /* && -f $root/$config ]] ||
      die_usage "no config file '$config' in the repository (give it relative to the repository root)"
  else
    # Run here: python resolves the path from the current folder, so check it from there.
    [[ -f $config ]] || die_usage "no config file '$config' (from $(pwd))"
  fi
}

# Extra arguments are handed to the program as they are; only --config.* overrides and
# --mode make sense there, so anything else is refused.
check_extra() {
  local a
  for a in "$@"; do
    [[ $a == --config.* || $a == --mode=* ]] ||
      die_usage "extra arguments must be --config.FIELD=VALUE overrides or --mode=MODE, got '$a'"
  done
}

# Splits WORKDIR into the bucket to mount (empty for a plain path) and the path the program
# sees: gs://BUCKET/PATH -> BUCKET and /mnt/gcs/BUCKET/PATH. Sets WORKDIR_BUCKET, WORKDIR_PATH.
resolve_workdir() {
  local w=$1
  WORKDIR_BUCKET=""
  WORKDIR_PATH=$w
  if [[ $w == gs://* ]]; then
    local rest=${w#gs://}
    WORKDIR_BUCKET=${rest%%/*}
    local sub=${rest#"$WORKDIR_BUCKET"}
    sub=${sub#/}
    [[ -n $WORKDIR_BUCKET && -n $sub ]] ||
      die_usage "a bucket workdir needs a folder inside the bucket: gs://BUCKET/PATH, got '$w'"
    WORKDIR_PATH=$GCS_MOUNT_ROOT/$WORKDIR_BUCKET/$sub
  elif [[ $w != /* ]]; then
    die_usage "WORKDIR must be gs://BUCKET/PATH or an absolute path that every host sees (an NFS/Filestore mount), got '$w'"
  fi
}

# Shell lines (run on a TPU VM) that mount gs://$1 at /mnt/gcs/$1 with Cloud Storage FUSE,
# installing gcsfuse from Google's apt repository the first time. Implicit directories: the
# program creates nested folders with makedirs, which a bucket only has as object prefixes.
gcsfuse_mount_lines() {
  local bucket=$1 mnt=$GCS_MOUNT_ROOT/$1
  cat <<EOF
if ! mountpoint -q $mnt; then
  if ! command -v gcsfuse >/dev/null; then
    echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
    sudo apt-get update -q && sudo apt-get install -y -q gcsfuse
  fi
  sudo mkdir -p $mnt && sudo chown \$(id -u):\$(id -g) $mnt
  gcsfuse --implicit-dirs $bucket $mnt
fi
EOF
}

# The program line every host runs: the same command everywhere, jax.distributed.initialize()
# by --config.mesh.distributed=yes. $1 config, $2 workdir path, rest: extra overrides.
program_line() {
  local config=$1 workdir=$2; shift 2
  print_cmd python3 -m bidm_jax.main --config "$config" --workdir "$workdir" \
    --config.mesh.distributed=yes "$@"
}

# With --take-over-lock: a run that was preempted or killed leaves {workdir}/run.lock naming
# a host that no longer exists (a new slice has new host names), and the program only takes
# over locks of dead processes on its own host. Every host removes it before the program
# starts; the program takes the lock only after all hosts have joined, so no host removes the
# lock of the run it belongs to.
take_over_lock_line() {
  echo "rm -f $(shquote "$1/run.lock")"
}
