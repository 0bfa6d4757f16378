#!/usr/bin/env bash
# Start N processes of COMMAND on this machine (127.0.0.1) as one JAX cluster and wait for all.
#   launch/local.sh N -- COMMAND [ARGS...]
# Each process gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (read by
# core_jax.distributed). Output of process i goes to stdout/stderr prefixed with "[i]". If any
# process fails, the others are stopped and the script exits with the first failing status.
set -uo pipefail
if [[ $# -lt 3 || "$2" != "--" ]]; then
  echo "usage: $0 N -- COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1; shift 2
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: N must be a positive integer, got '$n'" >&2
  exit 2
fi
port=${JAX_COORDINATOR_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
    "$@" > >(sed -u "s/^/[$i] /") 2> >(sed -u "s/^/[$i] /" >&2) &
  pids+=($!)
done
status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  wait -n -p done_pid "${running[@]}"
  rc=$?
  still=()
  for p in "${running[@]}"; do [[ "$p" != "$done_pid" ]] && still+=("$p"); done
  running=("${still[@]}")
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "$0: process pid $done_pid exited with status $rc; stopping the others" >&2
    cleanup
  fi
done
exit $status
