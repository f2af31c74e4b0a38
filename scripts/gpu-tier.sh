#!/usr/bin/env bash
# The GPU tier in one command (target: under 6 minutes on one H100 or H200).
#
#   scripts/gpu-tier.sh [OUT_DIR]
#
# Probes the live driver, runs the plugin's GPU tests (tests/gpu), runs the random-weight suites
# from the shipped real configs, saves a baseline and compares against it twice (the run-to-run
# spread), writes every result as JSON under OUT_DIR, and prints a short table last.
# On a machine without a GPU it stops after the probe with exit 3.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${GPUFIT_TIER_OUT:-gpu-tier-out}}
mkdir -p "$out"
export GPUFIT_TIER_OUT=$out PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}

# The GPU machine has torch, transformers and pytest; install only this package, no downloads.
"$py" -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
  || "$py" -m pip install -q --no-deps -e . >>"$out/install.log" 2>&1

"$py" -m pytest_gpufit.cli probe | tee "$out/probe.txt"
"$py" -m pytest_gpufit.cli probe --json >"$out/probe.json"
if grep -q '^no GPU' "$out/probe.txt"; then
  echo "gpu-tier: no GPU on this machine; nothing else to run" >&2
  exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv \
  >"$out/nvidia-smi.csv" 2>&1 || true

status=0
step() { echo "== $1"; shift; "$@" || status=1; }

step "plugin GPU tests" "$py" -m pytest tests/gpu/test_gpu_tier.py --run-gpu-tier -p no:randomly \
  -p no:cacheprovider -q -rs --junitxml="$out/gpu-tests.xml"
common=(tests/gpu/tier.gpufit.yaml --run-gpu-tier -p no:randomly -p no:cacheprovider -q -rs
        --gpufit-on-missing=fail --gpufit-baseline-dir="$out/baselines")
step "suites: save a baseline" "$py" -m pytest "${common[@]}" --gpufit-baseline=save \
  --gpufit-report="$out/suite-save.json"
# Generous tolerance: these two runs measure the spread, they do not gate.
for i in 1 2; do
  step "suites: compare $i" "$py" -m pytest "${common[@]}" --gpufit-baseline=compare \
    --gpufit-baseline-tolerance=1000% --gpufit-report="$out/suite-compare-$i.json"
done
"$py" scripts/gpu_tier_summary.py "$out" | tee "$out/summary.txt"
exit $status
