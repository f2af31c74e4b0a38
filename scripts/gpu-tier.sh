#!/usr/bin/env bash
# The GPU tier in one command (target: under 6 minutes on one H100 or H200).
#
#   scripts/gpu-tier.sh [OUT_DIR]
#
# Probes the live driver, runs the plugin's GPU tests (tests/gpu), runs the random-weight suites
# from the shipped real configs, saves a baseline and compares against it twice (the run-to-run
# spread), serves a random Qwen3-0.6B with `transformers serve` on the card and runs the openai
# backend's checks against it (tests/gpu/serve.gpufit.yaml), asks `gpufit fit` for its
# predictions, and, where the machine has two or more GPUs, measures all-reduce between them
# (benchmarks/allreduce_sweep.py --gpus all, then the gated suite tests/gpu/link-2gpu.gpufit.yaml);
# writes every result as JSON under OUT_DIR, prints a short table last and packs everything
# into OUT_DIR/bundle.json (one file to bring back).
# On a machine without a GPU it stops after the probe with exit 3, unless GPUFIT_TIER_DRY_RUN=1:
# then it runs the serve part on the CPU with a shrunk checkpoint (same suite file, rewritten by
# tests/gpu/serve_dry_run.py), the all-reduce sweep on gloo across 2 CPU processes, the fit
# predictions and the summary, so they are proven here.
# GPUFIT_TIER_SERVE_ONLY=1 runs only the probe, the fit predictions and the serve part (a short
# device call: about 3 to 4 minutes on top of the machine's start, not measured yet).
#
# GPUFIT_TIER_AB=1 adds the A/B step: `gpufit ab` of two environments on the card
# (tests/gpu/ab.gpufit.yaml, random Qwen3-0.6B: load, TTFT, prefill and decode tok/s; no
# greedy text, which an in-process check without a tokenizer does not record;
# GPUFIT_TIER_AB_ROUNDS rounds, default 6, the fewest that give a 95% interval). Side A is
# this machine's python; side B a venv made offline by scripts/gpu_tier_ab_env.py onto A's
# packages, plus every wheel carried in .whl-ab (GPUFIT_WHEELS_AB=VERSION
# scripts/gpu-tier-wheels.sh puts a transformers wheel there: a real A/B of two transformers
# versions). Without .whl-ab, B holds A's very packages: an A/A, which the summary says, and
# where a regressed or improved metric is a FALSE ALARM that fails the step.
# GPUFIT_TIER_AB_WHEELS names another folder than .whl-ab (an empty or absent one: an A/A).
# GPUFIT_TIER_AB_ONLY=1 runs only the probe and the A/B step (a short device call: 6 rounds of
# 2 sessions; its time on a card is not measured yet, 1.5 min on dev-cpu's dry run). On a dry
# run the A/B step runs on the CPU with the tiny model (fixtures/tiny-llama).
#
# On the device (15 minutes a session, the machine's start included): first the tier without
# the A/B, after scripts/gpu-tier-wheels.sh here, with a timeout that leaves time for a rerun:
#   run(command="scripts/gpu-tier.sh /tmp/tier; s=$?; cp /tmp/tier/bundle.json
#       /tmp/tier/summary.txt $OUT/; exit $s", carry=[".whl"], timeout_s=420)
# then, where time is left, the A/B alone (GPUFIT_WHEELS_AB=VERSION scripts/gpu-tier-wheels.sh
# here first, for a real A/B of two transformers versions; without .whl-ab it is an A/A):
#   run(command="GPUFIT_TIER_AB_ONLY=1 scripts/gpu-tier.sh /tmp/tier; s=$?; cp
#       /tmp/tier/bundle.json /tmp/tier/summary.txt $OUT/; exit $s", carry=[".whl-ab"],
#       timeout_s=300)
# GPUFIT_TIER_AB=1 runs both in one call (timeout_s=600: no time left for a rerun).
#
# The device image lacks fastapi, uvicorn, pydantic and openai (transformers serve needs them):
# run scripts/gpu-tier-wheels.sh here first and carry .whl; they install from it, offline.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${GPUFIT_TIER_OUT:-gpu-tier-out}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export GPUFIT_TIER_OUT=$out PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}
# A relative PYTHON (.venv/bin/python) would stop working in the steps that cd into OUT_DIR.
case "$py" in */*) py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py") ;; esac
dry=${GPUFIT_TIER_DRY_RUN-0}
serve_only=${GPUFIT_TIER_SERVE_ONLY-0}
ab=${GPUFIT_TIER_AB-0}
ab_only=${GPUFIT_TIER_AB_ONLY-0}
ab_rounds=${GPUFIT_TIER_AB_ROUNDS-6}
ab_wheels=${GPUFIT_TIER_AB_WHEELS-.whl-ab}
for pair in "GPUFIT_TIER_DRY_RUN=$dry" "GPUFIT_TIER_SERVE_ONLY=$serve_only" \
    "GPUFIT_TIER_AB=$ab" "GPUFIT_TIER_AB_ONLY=$ab_only"; do
  case "${pair#*=}" in
    0|1) ;;
    *) echo "gpu-tier: ${pair%%=*} must be 0 or 1, not '${pair#*=}'" >&2; exit 2 ;;
  esac
done
case "$ab_rounds" in
  ''|*[!0-9]*) bad="'$ab_rounds'" ab_rounds=0 ;;
  *) bad=$ab_rounds ab_rounds=$((10#$ab_rounds)) ;;
esac
if [ "$ab_rounds" -lt 1 ]; then
  echo "gpu-tier: GPUFIT_TIER_AB_ROUNDS must be a whole number of rounds, 1 or more (6 give" \
       "the first 95% interval), not $bad" >&2
  exit 2
elif [ "$ab_rounds" -lt 6 ] && [ "$((ab + ab_only))" -gt 0 ]; then
  echo "gpu-tier: GPUFIT_TIER_AB_ROUNDS=$ab_rounds gives no interval (6 give the first): the A/B" \
       "step runs, and fails as no evidence" >&2
fi
if [ "$serve_only" = 1 ] && [ "$ab_only" = 1 ]; then
  echo "gpu-tier: GPUFIT_TIER_SERVE_ONLY=1 and GPUFIT_TIER_AB_ONLY=1 each ask for a short call" \
       "of its own; set one of them" >&2
  exit 2
fi
[ "$ab_only" = 1 ] && ab=1

# The GPU machine has torch, transformers and pytest; install only this package, no downloads.
# Not on a dry run: that runs on a development machine, whose environment is not ours to
# change (put this checkout on PYTHONPATH instead).
: >"$out/install.log"
if [ "$dry" != 1 ]; then
  "$py" -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 \
    || "$py" -m pip install -q --no-deps -e . >>"$out/install.log" 2>&1
fi

status=0
step() { echo "== $1"; shift; "$@" || status=1; }
serving=(fastapi uvicorn pydantic openai aiohttp)
have_serving() { "$py" -c "import fastapi, uvicorn, pydantic, openai, aiohttp" 2>/dev/null; }
if ! have_serving && [ -d .whl ]; then
  # Offline: the names resolve against what is installed plus the carried wheels.
  "$py" -m pip install -q --no-index --find-links .whl "${serving[@]}" >>"$out/install.log" 2>&1
fi

"$py" -m pytest_gpufit.cli probe | tee "$out/probe.txt"
"$py" -m pytest_gpufit.cli probe --json >"$out/probe.json"
if grep -q '^no GPU' "$out/probe.txt" && [ "$dry" != 1 ]; then
  echo "gpu-tier: no GPU on this machine; nothing else to run (GPUFIT_TIER_DRY_RUN=1 runs" \
       "the serve part on the CPU)" >&2
  exit 3
fi

# The fit engine's predictions, for the summary to hold against measured peaks. An
# engine-aware fit (--engine transformers) is asked for too where this gpufit has it.
fit_models=(qwen3-0.6b llama-3.1-8b qwen3-30b-a3b)
[ "$ab_only" = 1 ] && fit_models=()
engine=0
"$py" -m pytest_gpufit.cli fit --help 2>/dev/null | grep -q -- '--engine' && engine=1
for model in "${fit_models[@]}"; do
  "$py" -m pytest_gpufit.cli fit "$model" --context 4096 --json >"$out/fit-$model.json" \
    2>>"$out/fit.log" || status=1
  if [ "$engine" = 1 ]; then
    "$py" -m pytest_gpufit.cli fit "$model" --context 4096 --engine transformers --json \
      >"$out/fit-engine-$model.json" 2>>"$out/fit.log" || status=1
  fi
done

serve_suite() {
  # transformers serve on the card (or, dry, on the CPU): make the checkpoint, run the suite.
  if ! have_serving; then
    echo "gpu-tier: transformers serve needs ${serving[*]}; run scripts/gpu-tier-wheels.sh" \
         "and carry .whl (see install.log)" >&2
    return 1
  fi
  local args=(-p no:randomly -p no:cacheprovider -q -rA --gpufit-on-missing=fail
              --gpufit-report="$out/suite-serve.json")
  if [ "$dry" = 1 ]; then
    "$py" tests/gpu/make_serve_model.py "$out/serve-model-tiny" --tiny || return 1
    "$py" tests/gpu/serve_dry_run.py "$out" "$out/serve-model-tiny" || return 1
    (cd "$out" && "$py" -m pytest serve-dry.gpufit.yaml "${args[@]}")
    return
  fi
  "$py" tests/gpu/make_serve_model.py tests/gpu/serve-model || return 1
  # The card's memory in use, every 200 ms, while the server runs: its peak, beside the fit.
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 \
    >"$out/serve-memory.csv" 2>/dev/null &
  local sampler=$!
  "$py" -m pytest tests/gpu/serve.gpufit.yaml --run-gpu-tier "${args[@]}"
  local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  # The checks see only HTTP: a server that fell back to the CPU would pass them. A served
  # 0.6B model in bf16 holds over 1 GiB of the card; under 256 MiB more than before it, no.
  if ! awk 'NR == 1 {base = $1} $1 > peak {peak = $1} END {exit !(peak - base >= 256)}' \
      "$out/serve-memory.csv"; then
    echo "gpu-tier: the server never held 256 MiB of the card's memory (serve-memory.csv):" \
         "it did not run on the GPU" >&2
    rc=1
  fi
  return $rc
}

gpu_count() {
  "$py" -c 'import json, sys; print(len(json.load(open(sys.argv[1])).get("gpus") or []))' \
    "$out/probe.json" 2>/dev/null || echo 0
}

allreduce_step() {
  # All-reduce between the cards as nccl-tests measures it (docs/link.md), then the same check
  # as a gated suite (2 GPUs with P2P, floors) on the GPUs its requirement picks. A dry run
  # proves the step and its files with gloo across 2 CPU processes (it measures no link).
  local sweep=(benchmarks/allreduce_sweep.py --json "$out/allreduce.json")
  if [ "$dry" = 1 ]; then
    "$py" "${sweep[@]}" --processes 2 --min 8B --max 64KiB >"$out/allreduce.txt" 2>&1
    local rc=$?
    cat "$out/allreduce.txt"
    return $rc
  fi
  "$py" "${sweep[@]}" --gpus all --min 8B --max 128MiB >"$out/allreduce.txt" 2>&1
  local rc=$?
  cat "$out/allreduce.txt"
  "$py" -m pytest tests/gpu/link-2gpu.gpufit.yaml --run-gpu-tier -p no:randomly \
    -p no:cacheprovider -q -rA --gpufit-on-missing=fail \
    --gpufit-report="$out/suite-allreduce.json" || rc=1
  return $rc
}

ab_step() {
  # gpufit ab of side A (this python) against side B (a venv onto A's packages, plus the
  # wheels of .whl-ab), interleaved on the card, or dry on the CPU with the tiny model.
  local venv="$out/ab-venv" a b rc where=. suite=tests/gpu/ab.gpufit.yaml
  local args=(-p no:randomly -p no:cacheprovider -q --gpufit-on-missing=fail)
  rm -rf "$venv"
  a=$("$py" -c 'import sys; print(sys.executable)') || return 1
  b=$("$py" scripts/gpu_tier_ab_env.py make "$venv" --wheels "$ab_wheels" \
    --json "$out/ab-env.json") || return 1
  if [ "$dry" = 1 ]; then
    "$py" scripts/gpu_tier_ab_env.py dry-suite "$out" fixtures/tiny-llama >/dev/null || return 1
    where=$out suite=ab-dry.gpufit.yaml
  else
    args+=(--run-gpu-tier)
  fi
  (cd "$where" && "$a" -m pytest_gpufit.cli ab --a "python=$a" --b "python=$b" \
    --rounds "$ab_rounds" --timeout 300 --json "$out/ab.json" --markdown "$out/ab.md" \
    -- "$suite" "${args[@]}") 2>&1 | tee "$out/ab.txt"
  rc=${PIPESTATUS[0]}
  # Exit 1 is a verdict (regressed, inconclusive, a metric lost), which the summary weighs:
  # no evidence, or an A/A that reads as a change (a false alarm), fails the step; exit 2 and
  # others are a broken step.
  [ "$rc" -le 1 ] || return 1
  "$py" scripts/gpu_tier_summary.py "$out" --ab
}

if [ "$ab_only" = 1 ]; then
  step "A/B: gpufit ab of two environments$([ "$dry" = 1 ] && echo ' on the CPU (dry run)')" \
    ab_step
elif [ "$dry" = 1 ]; then
  step "serve: transformers serve on the CPU (dry run)" serve_suite
  step "all-reduce: gloo across 2 CPU processes (dry run)" allreduce_step
elif [ "$serve_only" = 1 ]; then
  step "serve: transformers serve on the card" serve_suite
else
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv \
    >"$out/nvidia-smi.csv" 2>&1 || true
  step "plugin GPU tests" "$py" -m pytest tests/gpu/test_gpu_tier.py --run-gpu-tier \
    -p no:randomly -p no:cacheprovider -q -rs --junitxml="$out/gpu-tests.xml"
  common=(tests/gpu/tier.gpufit.yaml --run-gpu-tier -p no:randomly -p no:cacheprovider -q -rs
          --gpufit-on-missing=fail --gpufit-baseline-dir="$out/baselines")
  step "suites: save a baseline" "$py" -m pytest "${common[@]}" --gpufit-baseline=save \
    --gpufit-report="$out/suite-save.json"
  # Generous tolerance: these two runs measure the spread, they do not gate.
  for i in 1 2; do
    step "suites: compare $i" "$py" -m pytest "${common[@]}" --gpufit-baseline=compare \
      --gpufit-baseline-tolerance=1000% --gpufit-report="$out/suite-compare-$i.json"
  done
  step "serve: transformers serve on the card" serve_suite
  gpus=$(gpu_count)
  if [ "$gpus" -ge 2 ]; then
    step "all-reduce: NCCL across $gpus GPUs" allreduce_step
  else
    echo "== all-reduce: not run ($gpus GPU on this machine; it needs 2 or more)" \
      | tee "$out/allreduce.txt"
  fi
fi
if [ "$ab" = 1 ] && [ "$ab_only" != 1 ]; then
  step "A/B: gpufit ab of two environments$([ "$dry" = 1 ] && echo ' on the CPU (dry run)')" \
    ab_step
fi
"$py" scripts/gpu_tier_summary.py "$out" | tee "$out/summary.txt"
"$py" scripts/gpu_tier_summary.py "$out" --bundle "$out/bundle.json" || status=1
exit $status
