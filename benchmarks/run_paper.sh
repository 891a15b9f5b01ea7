#!/usr/bin/env bash
# The paper report (issue 15): a thin wrapper over `prompt-registry bench paper`.
#   bash benchmarks/run_paper.sh            # smoke scale, 3 seeds, into benchmarks/results
#   bash benchmarks/run_paper.sh --seeds 5
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE=1
exec prompt-registry bench paper --out benchmarks/results "$@"
