#!/usr/bin/env bash
# Start N `micronet-search worker` processes on this machine, all joined to one study, and wait for them.
#
#   scripts/launch_local.sh STUDY.yaml N [extra worker args, e.g. --storage URL --artifacts DIR]
#   nohup scripts/launch_local.sh studies/cifar10.yaml 4 >launch.log 2>&1 &     # survives logging out
#
# `micronet-search run STUDY.yaml --workers N` does the same in one Python process; this script gives plain
# processes, one log each: studies/logs/<study>-worker-<i>.log (LOG_DIR overrides the folder).
#
# Storage: --storage URL among the extra arguments, else $MICRONET_STORAGE (keeps the password out of `ps`), else
# the study file's storage:, else sqlite:///studies/<study>.db. Workers on other machines join the same study by
# pointing at the same PostgreSQL/MySQL URL (scripts/start_postgres.sh prints one).
# Threads: each worker gets MICRONET_THREADS = max(1, nproc / N) unless MICRONET_THREADS is set.
# GPUs: worker i gets CUDA_VISIBLE_DEVICES = one GPU, round-robin over $CUDA_VISIBLE_DEVICES if set, else over the
# GPUs nvidia-smi lists; no GPU, no pinning.
# Ctrl-C, SIGTERM (kill PID of this script) or SIGHUP is forwarded to every worker as SIGTERM: each re-queues its
# running trial and exits. Exit status: 0 when every worker finished, 1 when one failed, 128+signal when stopped.
set -uo pipefail

say() { printf 'launch_local: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }

[[ $# -ge 2 ]] || die "usage: $0 STUDY.yaml N [extra micronet-search worker args]"
study=$1
n=$2
shift 2
extra=("$@")
[[ -f $study ]] || die "study file not found: $study"
[[ $n =~ ^[1-9][0-9]*$ ]] || die "N must be a positive number of workers, got '$n'"

if command -v micronet-search >/dev/null; then
  cmd=(micronet-search)
elif python3 -c 'import search.cli' 2>/dev/null; then
  cmd=(python3 -m search)
else
  die "micronet-search is not installed here (python3 -m pip install -e .)"
fi

# The study's top-level `name:` (unquoted, comment stripped); the file stem if there is none.
yaml_value() {
  sed -n "s/^$1:[[:space:]]*//p" "$study" | head -n 1 | sed -e 's/[[:space:]]#.*$//' -e 's/[[:space:]]*$//' \
    -e "s/^[\"']//" -e "s/[\"']\$//"
}
name=$(yaml_value name)
if [[ -z $name ]]; then
  name=$(basename "$study")
  name=${name%.*}
fi

storage=''
for ((i = 0; i < ${#extra[@]}; i++)); do
  case ${extra[i]} in
    --storage) storage=${extra[i + 1]:-} ;;
    --storage=*) storage=${extra[i]#--storage=} ;;
  esac
done
if [[ -n $storage ]]; then
  [[ $storage != *://*:*@* ]] || say "note: --storage shows its password in the process list; MICRONET_STORAGE does not"
else
  storage=${MICRONET_STORAGE:-$(yaml_value storage)}
fi
if [[ -z $storage ]]; then
  storage="sqlite:///studies/$name.db"
  say "warning: neither --storage nor MICRONET_STORAGE is set; the workers use $storage"
fi
if [[ $storage == sqlite:* && $n -gt 1 ]]; then
  say "warning: $n workers share one SQLite file: this works on this machine only; for workers on several"
  say "         machines use PostgreSQL (scripts/start_postgres.sh) and export MICRONET_STORAGE"
fi

threads=${MICRONET_THREADS:-}
if [[ -z $threads ]]; then
  threads=$(($(nproc 2>/dev/null || echo 1) / n))
  ((threads >= 1)) || threads=1
fi

gpus=()
if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
  IFS=',' read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null; then
  mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)
fi

log_dir=${LOG_DIR:-studies/logs}
mkdir -p "$log_dir" || die "cannot create the log folder $log_dir"

pids=()
signals=0
status_on_signal=0
stop() {
  signals=$((signals + 1))
  case $1 in INT) status_on_signal=130 ;; TERM) status_on_signal=143 ;; HUP) status_on_signal=129 ;; esac
  say "got SIG$1: stopping ${#pids[@]} workers (they re-queue their running trials)"
  kill -TERM "${pids[@]}" 2>/dev/null
}
trap 'stop INT' INT
trap 'stop TERM' TERM
trap 'stop HUP' HUP  # the terminal closed; under nohup HUP stays ignored

# Each worker runs in its own session (setsid), so a Ctrl-C in the terminal reaches it once, as the SIGTERM that
# stop() sends, not also as the terminal's SIGINT.
launcher=()
command -v setsid >/dev/null && launcher=(setsid)

for ((i = 0; i < n; i++)); do
  log="$log_dir/$name-worker-$i.log"
  env_args=("MICRONET_THREADS=$threads")
  if ((${#gpus[@]} > 0)); then
    env_args+=("CUDA_VISIBLE_DEVICES=${gpus[i % ${#gpus[@]}]}")
  fi
  printf '\n=== %s worker %d of %d: %s\n' "$(date '+%F %T')" "$i" "$n" "${env_args[*]}" >>"$log"
  "${launcher[@]}" env "${env_args[@]}" "${cmd[@]}" worker "$study" "${extra[@]}" >>"$log" 2>&1 &
  pids+=($!)
  say "worker $i: pid $! ${env_args[*]} log $log"
done
say "$n workers on study $name; stop them all with Ctrl-C or: kill -TERM $$"

# The exit status of worker $1, waiting on through the signals this script traps: an interrupted `wait` returns
# 128+signal with the worker still running; asking again gives its status (or 127 once it was already given).
wait_for() {
  local pid=$1 rc=0 last before
  while :; do
    before=$signals
    wait "$pid" 2>/dev/null
    last=$?
    ((last == 127 && rc != 0)) && return "$rc"
    rc=$last
    ((rc > 128 && signals != before)) || return "$rc"
  done
}

failed=0
for i in "${!pids[@]}"; do
  wait_for "${pids[i]}"
  rc=$?
  if ((rc == 0)); then
    say "worker $i finished"
  elif ((signals > 0 && (rc == 130 || rc == 143))); then
    say "worker $i stopped (exit $rc)"
  else
    say "worker $i failed (exit $rc); see $log_dir/$name-worker-$i.log"
    failed=$((failed + 1))
  fi
done

if ((failed > 0)); then
  say "$failed of $n workers failed"
  exit 1
fi
if ((signals > 0)); then
  say "stopped; run the same command again to continue the study"
  exit "$status_on_signal"
fi
say "all $n workers finished"
