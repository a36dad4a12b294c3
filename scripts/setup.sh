#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtual environment in .venv with the package and its extras.
#
# torch: on a machine that already has torch in .venv nothing changes. Otherwise XKD_TORCH_SPEC chooses the
# build (default "torch==2.13.0", the CPU wheel this project's machines carry); a GPU user sets it to their own
# spec, e.g. XKD_TORCH_SPEC="torch" or points XKD_VENV at an environment that already has their torch.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${XKD_VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
"$VPY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q "${XKD_TORCH_SPEC:-torch==2.13.0}"
fi
# Keep whatever torch is now installed: every later install is constrained to it.
TORCH_VERSION=$("$VPY" -c "import torch; print(torch.__version__.split('+')[0])")
CONSTRAINTS=$(mktemp)
echo "torch==${TORCH_VERSION}" > "$CONSTRAINTS"
EXTRAS=${XKD_EXTRAS:-train,dev,peft,stream,viz}
"$VPY" -m pip install -q -c "$CONSTRAINTS" -e ".[${EXTRAS}]"
rm -f "$CONSTRAINTS"
echo "setup: $("$VPY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
