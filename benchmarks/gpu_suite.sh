#!/usr/bin/env bash
# One-command GPU suite (issue 17, section 4): from the repository root on a machine with one NVIDIA H100/H200,
#   benchmarks/gpu_suite.sh              # installs .[gpu,test] into .venv-gpu, then one JSON line per row
#   benchmarks/gpu_suite.sh --dry-run    # (or GPU_SUITE_DRY_RUN=1) tiny sizes, current python, installs nothing
# Rows: benchmarks/gpu_suite.py (each in its own process under a time limit; the rows share a 9-minute budget,
# GPU_SUITE_BUDGET_S). Lines go to stdout and to $OUT/gpu_suite.jsonl (else out/gpu_suite/rows.jsonl).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=${GPU_SUITE_DRY_RUN:-0}
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUTFILE=${OUT:+$OUT/gpu_suite.jsonl}
OUTFILE=${OUTFILE:-out/gpu_suite/rows.jsonl}
mkdir -p "$(dirname "$OUTFILE")"
: > "$OUTFILE"
if [[ "$DRY" == 1 ]]; then
  PY=${PYTHON:-python}
  BUDGET=${GPU_SUITE_BUDGET_S:-600}
  # the rows' processes share compiled programs (the two training rows run the same tiny step)
  export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$(dirname "$OUTFILE")/xla_cache}
else
  VENV=${GPU_SUITE_VENV:-.venv-gpu}
  if [[ ! -x "$VENV/bin/python" ]]; then
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q --upgrade pip
  fi
  # torch from PyPI is its CUDA build on Linux; without it the sampling row reports diffusers "not installed"
  "$VENV/bin/pip" install -q -e '.[gpu,test]' >&2 || "$VENV/bin/pip" install -q -e '.[gpu]' >&2 || exit 1
  PY=$VENV/bin/python
  BUDGET=${GPU_SUITE_BUDGET_S:-540}
  export XLA_PYTHON_CLIENT_PREALLOCATE=false  # diffusers' child process shares the GPU
fi
export GPU_SUITE_DRY_RUN=$DRY PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$SECONDS
for row in $("$PY" benchmarks/gpu_suite.py --list); do
  left=$((BUDGET - (SECONDS - START)))
  if ((left < 10)); then
    line="{\"row\": \"$row\", \"error\": \"suite time budget (${BUDGET} s) spent before this row\", \"dry_run\": $([[ $DRY == 1 ]] && echo true || echo false)}"
    echo "$line"; echo "$line" >> "$OUTFILE"; continue
  fi
  timeout -k 10 "$left" "$PY" benchmarks/gpu_suite.py --row "$row" --out "$OUTFILE"
  rc=$?
  if ((rc == 124 || rc == 137)); then
    line="{\"row\": \"$row\", \"error\": \"timed out after ${left} s (suite budget ${BUDGET} s)\"}"
    echo "$line"; echo "$line" >> "$OUTFILE"
  elif ((rc != 0)); then
    line="{\"row\": \"$row\", \"error\": \"exit status $rc\"}"
    echo "$line"; echo "$line" >> "$OUTFILE"
  fi
done
echo "gpu_suite: $(wc -l < "$OUTFILE") rows in $OUTFILE ($((SECONDS - START)) s)" >&2
