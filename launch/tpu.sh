#!/usr/bin/env bash
# Launches wst-jax training on a Cloud TPU VM slice (single host or multi-host pod):
#   create (or reuse) the slice -> copy the code -> install on every worker -> train on every
#   worker -> optionally delete the slice.
# Every worker runs the same `python -m wst_jax.train` command; the program calls
# jax.distributed.initialize() itself, so no coordinator address is passed here.
# Run `launch/tpu.sh --help` for the flags; `--dry-run` prints the commands and runs none.
set -euo pipefail

readonly PROG="${0##*/}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
# Shown instead of the real project in --dry-run, where gcloud must not be called at all.
readonly DRY_RUN_PROJECT="YOUR_GCP_PROJECT"

# Defaults (each one is a flag; see usage).
name="wst-jax"
zone="us-west4-a"
project=""
accelerator_type="v5litepod-32"
version=""  # empty: picked from the accelerator type, see default_version
spot=false
config="configs/pod_gsm8k.py"
overrides=""
# shellcheck disable=SC2088  # the tilde is for the workers' shell to expand, not this one
workdir="~/wst-jax"
log_file="train.log"
python="python3"
# The TPU runtime needs the jax[tpu] extra (libtpu); keep it on the jax series setup.py pins.
jax_spec="jax[tpu]>=0.10,<0.11"
reuse=false
teardown=false
dry_run=false
extra_overrides=()

usage() {
  cat <<EOF
Usage: $PROG [flags] [-- TRAIN_OVERRIDE ...]

Creates (or reuses) a Cloud TPU VM slice, copies this repo (git archive HEAD) to every worker,
installs it with $jax_spec, runs 'python -m wst_jax.train' on every worker and streams
worker 0's output (each worker also writes the log file below).

Flags (--flag VALUE or --flag=VALUE):
  --name NAME               TPU VM name (default: $name)
  --zone ZONE               zone (default: $zone)
  --project PROJECT         GCP project (default: 'gcloud config get-value project';
                            '$DRY_RUN_PROJECT' with --dry-run)
  --accelerator-type TYPE   slice type, e.g. v5litepod-16, v4-32 (default: $accelerator_type)
  --version VERSION         TPU runtime version (default: by accelerator generation:
                            v5litepod/v5e v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                            v6e v2-alpha-tpuv6e, others tpu-ubuntu2204-base)
  --spot                    create a Spot (preemptible) slice
  --config PATH             training config, relative to the repo (default: $config)
  --overrides "ARGS"        extra train flags, split on spaces, e.g.
                            "--config.train.num_steps=100 --config.workdir=/mnt/runs/a"
                            (arguments after '--' are passed on verbatim as well)
  --workdir DIR             code directory on every worker (default: $workdir)
  --log-file PATH           train log on every worker, relative to --workdir (default: $log_file)
  --python PYTHON           Python interpreter on the workers (default: $python)
  --jax-spec SPEC           jax requirement installed on the workers (default: '$jax_spec')
  --reuse                   use the slice if it already exists instead of creating it
  --teardown                delete the slice at the end, also when a step fails
  --dry-run                 print every command (prefixed with '+ ') and run none
  -h, --help                show this help and exit
EOF
}

die_usage() {
  echo "$PROG: $*" >&2
  usage >&2
  exit 2
}

log() { echo "[$PROG] $*" >&2; }

# Shell-quotes one word so the printed commands can be pasted back into a shell, and so the
# remote command strings survive the workers' shell unchanged.
quote_word() {
  local s=$1 sq="'\\''"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./=:,+@%^-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/"$sq"}"
  fi
}

# As quote_word, but '--flag=VALUE' keeps '--flag=' bare (easier to read, same word).
quote() {
  if [[ $1 =~ ^(--[A-Za-z0-9.-]+=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote_word "${BASH_REMATCH[2]}"
  else
    quote_word "$1"
  fi
}

quote_all() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  printf '%s' "$out"
}

# Like quote, but leaves a leading '~/' unquoted so it expands to the worker's home directory.
# shellcheck disable=SC2088  # a literal '~' is what is tested and printed here
remote_path() {
  if [[ $1 == "~" ]]; then
    printf '%s' "~"
  elif [[ $1 == "~/"* ]]; then
    printf '%s/%s' "~" "$(quote "${1#\~/}")"
  else
    quote "$1"
  fi
}

# Prints the command, then runs it unless --dry-run.
run() {
  echo "+ $(quote_all "$@")"
  if [[ $dry_run == false ]]; then "$@"; fi
}

parse_flags() {
  local flag value
  while (($#)); do
    flag=$1
    # Flags that take a value accept both '--flag VALUE' and '--flag=VALUE'.
    case $flag in
      --name | --zone | --project | --accelerator-type | --version | --config | --overrides | \
        --workdir | --log-file | --python | --jax-spec)
        (($# >= 2)) || die_usage "$flag needs a value"
        value=$2
        shift 2
        ;;
      --*=*)
        value=${flag#*=}
        flag=${flag%%=*}
        shift
        ;;
      *)
        value=""
        shift
        ;;
    esac
    case $flag in
      --name) name=$value ;;
      --zone) zone=$value ;;
      --project) project=$value ;;
      --accelerator-type) accelerator_type=$value ;;
      --version) version=$value ;;
      --config) config=$value ;;
      --overrides) overrides=$value ;;
      --workdir) workdir=$value ;;
      --log-file) log_file=$value ;;
      --python) python=$value ;;
      --jax-spec) jax_spec=$value ;;
      --spot) spot=true ;;
      --reuse) reuse=true ;;
      --teardown) teardown=true ;;
      --dry-run) dry_run=true ;;
      -h | --help)
        usage
        exit 0
        ;;
      --)
        extra_overrides=("$@")
        return
        ;;
      *) die_usage "unknown flag: $flag" ;;
    esac
    # A boolean flag given as --flag=VALUE is a mistake, not a silent 'true'.
    case $flag in
      --spot | --reuse | --teardown | --dry-run)
        [[ -z $value ]] || die_usage "$flag takes no value"
        ;;
    esac
  done
}

resolve_project() {
  if [[ -n $project ]]; then return; fi
  if [[ $dry_run == true ]]; then
    project=$DRY_RUN_PROJECT
    return
  fi
  project=$(gcloud config get-value project 2>/dev/null || true)
  [[ -n $project ]] || {
    echo "$PROG: no --project and no default project in 'gcloud config'" >&2
    exit 2
  }
}

# Google's recommended JAX runtime image per TPU generation (the base Ubuntu image for v4 and
# older); an explicit --version always wins.
default_version() {
  if [[ -n $version ]]; then return; fi
  case $accelerator_type in
    v5litepod-* | v5e-*) version="v2-alpha-tpuv5-lite" ;;
    v5p-*) version="v2-alpha-tpuv5" ;;
    v6e-*) version="v2-alpha-tpuv6e" ;;
    *) version="tpu-ubuntu2204-base" ;;
  esac
}

# The flags that locate the slice, shared by every gcloud call.
tpu_flags() {
  tpu_args=(--zone="$zone" --project="$project")
}

create_slice() {
  if [[ $reuse == true ]]; then
    if [[ $dry_run == true ]]; then
      echo "+ $(quote_all gcloud compute tpus tpu-vm describe "$name" "${tpu_args[@]}")"
      log "--reuse: assuming $name exists (dry run); otherwise it would be created"
      return
    fi
    if gcloud compute tpus tpu-vm describe "$name" "${tpu_args[@]}" >/dev/null 2>&1; then
      log "--reuse: $name exists, not creating it"
      return
    fi
    log "--reuse: $name not found, creating it"
  fi
  local create=(gcloud compute tpus tpu-vm create "$name" "${tpu_args[@]}"
    --accelerator-type="$accelerator_type" --version="$version")
  if [[ $spot == true ]]; then create+=(--spot); fi
  run "${create[@]}"
}

# Ships HEAD (not the working tree: only committed code is reproducible) as one tarball, which is
# much faster than a recursive scp of many small files to every worker.
copy_code() {
  if [[ $dry_run == false && -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no)" ]]; then
    log "warning: uncommitted changes are NOT shipped (git archive HEAD)"
  fi
  run git -C "$REPO_ROOT" archive --format=tar.gz -o "$local_tarball" HEAD
  run gcloud compute tpus tpu-vm scp "$local_tarball" "$name:$remote_tarball" --worker=all \
    "${tpu_args[@]}"
  run rm -f "$local_tarball"
}

install_code() {
  local wd py cmd
  wd=$(remote_path "$workdir")
  py=$(quote "$python")
  cmd="mkdir -p $wd && tar -xzf $(quote "$remote_tarball") -C $wd"
  cmd+=" && rm -f $(quote "$remote_tarball") && cd $wd"
  cmd+=" && $py -m pip install -q --upgrade pip"
  cmd+=" && $py -m pip install -q -e . $(quote "$jax_spec")"
  run gcloud compute tpus tpu-vm ssh "$name" "${tpu_args[@]}" --worker=all --command="$cmd"
}

train() {
  local wd log_path train_cmd cmd words=()
  wd=$(remote_path "$workdir")
  log_path=$(remote_path "$log_file")
  read -r -a words <<<"$overrides"
  # ${a[@]+"${a[@]}"}: bash < 4.4 (macOS /bin/bash) calls an empty array unbound under set -u.
  train_cmd=$(quote_all "$python" -m wst_jax.train --config "$config" \
    ${words[@]+"${words[@]}"} ${extra_overrides[@]+"${extra_overrides[@]}"})
  # A worker learns its index from the metadata server (hostname '...-w-N' as a fallback);
  # worker 0 streams to this terminal, the others only write their log, so the output is not
  # N interleaved copies of the same thing.
  cmd="cd $wd && worker=\$(curl -sf -H Metadata-Flavor:Google"
  cmd+=" http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number"
  cmd+=" || echo \"\${HOSTNAME##*-}\")"
  cmd+=" && if [ \"\$worker\" = 0 ]; then set -o pipefail; $train_cmd 2>&1 | tee -a $log_path;"
  cmd+=" else $train_cmd >>$log_path 2>&1; fi"
  run gcloud compute tpus tpu-vm ssh "$name" "${tpu_args[@]}" --worker=all --command="$cmd" || {
    local rc=$? where=$log_file
    if [[ $where != /* && $where != "~"* ]]; then where="$workdir/$where"; fi
    log "training failed (exit $rc); each worker's output is in $where, e.g.:" \
      "gcloud compute tpus tpu-vm ssh $name ${tpu_args[*]} --worker=1 --command='tail -n 50 $where'"
    return "$rc"
  }
}

# Runs on every exit (success, failure, Ctrl-C) once the slice may exist, so --teardown never
# leaves a billed slice behind.
on_exit() {
  local rc=$?
  trap - EXIT
  if [[ $dry_run == false ]]; then rm -f "$local_tarball"; fi
  if [[ $teardown == true ]]; then
    run gcloud compute tpus tpu-vm delete "$name" "${tpu_args[@]}" --quiet ||
      log "warning: could not delete $name; delete it by hand"
  fi
  exit "$rc"
}

main() {
  parse_flags "$@"
  resolve_project
  default_version
  tpu_flags
  local_tarball="${TMPDIR:-/tmp}/$name-code.tar.gz"
  remote_tarball="/tmp/$name-code.tar.gz"
  # Bash runs the EXIT trap on 'exit', so turn signals into exits.
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap on_exit EXIT
  create_slice
  copy_code
  install_code
  train
}

main "$@"
