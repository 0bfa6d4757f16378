#!/usr/bin/env bash
# Start N processes of COMMAND on this machine (127.0.0.1) as one JAX cluster and wait for all.
#   launch/local.sh N -- COMMAND [ARGS...]
# Each process gets JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port> (or JAX_COORDINATOR_PORT),
# JAX_NUM_PROCESSES and JAX_PROCESS_ID (read by core_jax.distributed). Output of process i goes to
# stdout/stderr prefixed with "[i]". As soon as one process fails, the others get SIGTERM (SIGKILL
# after LOCAL_STOP_GRACE_S seconds, default 60) and the script exits with the first failing status
# (143 for a run stopped by SIGTERM). SIGTERM/SIGINT to this script are passed on to all processes.
# Needs bash >= 4.4 (no `wait -n -p`: the processes are polled).
set -uo pipefail
if ((BASH_VERSINFO[0] < 4 || (BASH_VERSINFO[0] == 4 && BASH_VERSINFO[1] < 4))); then
  echo "$0: needs bash >= 4.4, this is bash $BASH_VERSION" >&2
  exit 2
fi
if [[ $# -lt 3 || "$2" != "--" ]]; then
  echo "usage: $0 N -- COMMAND [ARGS...]" >&2
  exit 2
fi
n=$1; shift 2
if ! [[ "$n" =~ ^[1-9][0-9]*$ ]]; then
  echo "$0: N must be a positive integer, got '$n'" >&2
  exit 2
fi
grace=${LOCAL_STOP_GRACE_S:-60}
if ! [[ "$grace" =~ ^[0-9]+$ ]]; then
  echo "$0: LOCAL_STOP_GRACE_S must be a whole number of seconds, got '$grace'" >&2
  exit 2
fi
port=${JAX_COORDINATOR_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

running=()   # processes started and not yet reaped
status=0     # the first failing status (or 130/143 when this script was interrupted)
stopping=0   # 1 once the processes were sent SIGTERM, 2 once SIGKILL
stop_time=0  # when (bash's SECONDS) they were sent SIGTERM

stop_all() {  # SIGTERM to every process still running, once
  ((stopping > 0)) && return
  stopping=1
  stop_time=$SECONDS
  for p in "${running[@]}"; do kill -TERM "$p" 2>/dev/null; done
}
trap '((status == 0)) && status=130; stop_all' INT
trap '((status == 0)) && status=143; stop_all' TERM

for ((i = 0; i < n && stopping == 0; i++)); do
  JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
    "$@" > >(sed -u "s/^/[$i] /") 2> >(sed -u "s/^/[$i] /" >&2) &
  running+=($!)
done

while ((${#running[@]} > 0)); do
  still=()
  for p in "${running[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      still+=("$p")
      continue
    fi
    wait "$p"
    rc=$?
    if ((rc != 0 && status == 0)); then
      status=$rc
      echo "$0: process pid $p exited with status $rc; stopping the others" >&2
    fi
  done
  running=("${still[@]}")
  ((status != 0 && ${#running[@]} > 0)) && stop_all
  if ((stopping == 1 && SECONDS - stop_time >= grace && ${#running[@]} > 0)); then
    echo "$0: ${#running[@]} process(es) still running ${grace}s after SIGTERM; sending SIGKILL" >&2
    stopping=2
    for p in "${running[@]}"; do kill -KILL "$p" 2>/dev/null; done
  fi
  ((${#running[@]} > 0)) && sleep 0.2
done
exit "$status"
