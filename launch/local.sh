#!/usr/bin/env bash
# Local launcher: one machine (CPU by default, or one GPU host with --gpu).
# Creates .venv in the repo root if missing, installs wst-jax into it, then runs
#   python -m wst_jax.train --config "${CONFIG:-configs/gsm8k_cpu.py}" [TRAIN_FLAGS ...]
# with HF_HUB_OFFLINE=1 unless set (models, tokenizers and data come from local folders / the
# caches; HF_HUB_OFFLINE=0 lets hub names download).
# Any argument that is not one of the flags below is passed on to the train command, e.g.
#   launch/local.sh --config.train.num_steps=20
set -euo pipefail

readonly PROG="${0##*/}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO_ROOT
readonly VENV=".venv"  # relative to REPO_ROOT, where everything below runs

config="${CONFIG:-configs/gsm8k_cpu.py}"
install=true
gpu=false
dry_run=false
train_args=()

usage() {
  cat <<EOF
Usage: $PROG [flags] [TRAIN_FLAG ...] [-- TRAIN_FLAG ...]

Creates $VENV (python3 -m venv) in the repo root if missing, installs wst-jax into it
(pip install -e .) and runs 'python -m wst_jax.train' with HF_HUB_OFFLINE=\${HF_HUB_OFFLINE:-1}.

Flags:
  --config PATH   training config (default: \$CONFIG or configs/gsm8k_cpu.py; now: $config)
  --gpu           install jax[cuda12] (pip's bundled CUDA 12 libraries; needs an NVIDIA
                  driver) instead of the CPU jax, for one GPU host
  --no-install    skip pip (use $VENV as it is)
  --dry-run       print every command (prefixed with '+ ') and run none
  -h, --help      show this help and exit
Other arguments (e.g. --config.train.num_steps=20) go to the train command.
EOF
}

die_usage() {
  echo "$PROG: $*" >&2
  usage >&2
  exit 2
}

# Shell-quotes one word so a printed command can be pasted back into a shell.
quote() {
  local s=$1 sq="'\\''"
  if [[ -n $s && $s =~ ^[A-Za-z0-9_./=:,+@%^-]+$ ]]; then
    printf '%s' "$s"
  else
    printf "'%s'" "${s//\'/"$sq"}"
  fi
}

# Prints the command, then runs it unless --dry-run.
run() {
  local out="" word
  for word in "$@"; do out+="${out:+ }$(quote "$word")"; done
  echo "+ $out"
  if [[ $dry_run == false ]]; then "$@"; fi
}

parse_flags() {
  while (($#)); do
    case $1 in
      --config)
        (($# >= 2)) || die_usage "--config needs a value"
        config=$2
        shift
        ;;
      --config=*) config=${1#--config=} ;;
      --gpu) gpu=true ;;
      --no-install) install=false ;;
      --dry-run) dry_run=true ;;
      -h | --help)
        usage
        exit 0
        ;;
      --)
        shift
        train_args+=("$@")
        return
        ;;
      # Everything else (--config.x=y overrides, absl flags) belongs to wst_jax.train.
      *) train_args+=("$1") ;;
    esac
    shift
  done
}

install_package() {
  if [[ ! -x $VENV/bin/python ]]; then
    run python3 -m venv "$VENV"
    run "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  # No extras: torch lives only in the `test` extra, so pip never resolves (or downloads a CUDA
  # build of) torch here. jax from PyPI without an extra is the CPU build.
  local packages=(-e .)
  if [[ $gpu == true ]]; then packages+=("jax[cuda12]>=0.10,<0.11"); fi
  run "$VENV/bin/python" -m pip install -q "${packages[@]}"
}

main() {
  parse_flags "$@"
  cd "$REPO_ROOT"
  if [[ $install == true ]]; then install_package; fi
  export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
  # `env` makes the offline setting visible in the printed command (it is also exported).
  # ${a[@]+"${a[@]}"}: bash < 4.4 (macOS /bin/bash) calls an empty array unbound under set -u.
  run env "HF_HUB_OFFLINE=$HF_HUB_OFFLINE" "$VENV/bin/python" -m wst_jax.train --config "$config" \
    ${train_args[@]+"${train_args[@]}"}
}

main "$@"
