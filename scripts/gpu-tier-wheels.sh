#!/usr/bin/env bash
# Download the wheels the GPU tier's serve step needs on the device (Python 3.12, x86-64
# manylinux), which lacks them: fastapi, uvicorn, pydantic and openai (what `transformers serve`
# imports) with everything they need, offline-installable there with
#     python3 -m pip install --no-index --find-links .whl fastapi uvicorn pydantic openai
# (scripts/gpu-tier.sh does that when .whl is there). Run it here, where pip reaches PyPI, then
# name .whl in the device call's carry. .whl is git-ignored; the carried tree is capped at
# 64 MiB, so this stops if the wheels pass GPUFIT_WHEELS_MAX_MIB (default 40).
#
#   scripts/gpu-tier-wheels.sh [DIR]        (default .whl)
#
# GPUFIT_WHEELS_AB=VERSION also downloads transformers==VERSION's wheel alone (--no-deps) into
# .whl-ab (git-ignored; carry it too): side B of the tier's A/B step (GPUFIT_TIER_AB=1)
# installs it over the machine's packages, so the step compares two transformers versions.
# Only transformers goes there: B takes every other package from the machine, so VERSION's
# requirements must fit what the machine has. huggingface-hub is the one that moves: 5.17.0
# (the device image's) needs huggingface-hub>=1.5,<2.0; 5.20.0 and 5.24.0 need
# huggingface-hub>=1.31,<3.0 (tokenizers>=0.23.1,<0.24 and safetensors>=0.8 in all three).
# This script prints the wheel's huggingface-hub requirement; B's venv is checked to import
# transformers before the step measures anything.
#
# The versions are the ones this project's CI serves the tiny model with; change them together.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
max_mib=${GPUFIT_WHEELS_MAX_MIB-40}
py=${PYTHON:-python3}
case "$max_mib" in
  ''|*[!0-9]*) echo "gpu-tier-wheels: GPUFIT_WHEELS_MAX_MIB must be a whole number of MiB, not '$max_mib'" >&2; exit 2 ;;
esac
ab_version=${GPUFIT_WHEELS_AB-}
case "$ab_version" in
  ''|[0-9]*.[0-9]*) bad=0 ;;
  *) bad=1 ;;
esac
case "$ab_version" in *[!0-9a-z.+]*) bad=1 ;; esac
if [ "$bad" = 1 ]; then
  echo "gpu-tier-wheels: GPUFIT_WHEELS_AB must be a transformers version such as 5.24.0," \
       "not '$ab_version'" >&2
  exit 2
fi
wanted=(fastapi==0.165.0 uvicorn==0.54.0 pydantic==2.14.4 openai==3.57.0)

mkdir -p "$dest"
# One resolve for the device's interpreter: pip picks each dependency's wheel for cp312.
"$py" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$dest" "${wanted[@]}"

# Two versions of one package stop the whole install there: keep one.
dupes=$(ls "$dest"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dupes" ]; then
  echo "gpu-tier-wheels: $dest holds two versions of: $dupes; empty it and run again" >&2
  exit 1
fi
mib=$(du -sm "$dest" | cut -f1)
echo "gpu-tier-wheels: $(ls "$dest"/*.whl | wc -l) wheels, ${mib} MiB in $dest"
if [ "$mib" -gt "$max_mib" ]; then
  echo "gpu-tier-wheels: over the ${max_mib} MiB budget (the carried tree is capped at 64 MiB)" >&2
  exit 1
fi
# Prove the folder alone resolves the whole set for the device's Python (nothing fetched).
"$py" -m pip install -q --dry-run --ignore-installed --no-index --find-links "$dest" \
  --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --target "$(mktemp -d)" "${wanted[@]}"
echo "gpu-tier-wheels: $dest resolves ${wanted[*]} offline for cp312"

if [ -n "$ab_version" ]; then
  # Side B of the A/B step: one transformers wheel (pure Python), its dependencies the machine's.
  rm -rf .whl-ab && mkdir -p .whl-ab
  "$py" -m pip download -q --no-deps --only-binary=:all: -d .whl-ab "transformers==$ab_version"
  wheel=$(ls .whl-ab/transformers-*.whl)
  hub=$("$py" -c 'import sys, zipfile
w = zipfile.ZipFile(sys.argv[1])
meta = w.read(next(n for n in w.namelist() if n.endswith(".dist-info/METADATA"))).decode()
print(" ".join(x.split(":", 1)[1].split(";")[0].strip() for x in meta.splitlines()
               if x.startswith("Requires-Dist: huggingface-hub")))' "$wheel")
  total=$(( $(du -sm "$dest" | cut -f1) + $(du -sm .whl-ab | cut -f1) ))
  echo "gpu-tier-wheels: .whl-ab holds $(basename "$wheel") (needs ${hub:-huggingface-hub, any});" \
       "$dest and .whl-ab together ${total} MiB"
  if [ "$total" -gt "$max_mib" ]; then
    echo "gpu-tier-wheels: over the ${max_mib} MiB budget together (the carried tree is capped" \
         "at 64 MiB)" >&2
    exit 1
  fi
fi
