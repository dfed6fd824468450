#!/usr/bin/env bash
# Create .venv (once) and install deployzoo with its test extras. torch/torchvision are pinned to the releases this
# project is tested with (pip takes them from the local wheel mirror where one exists).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DEPLOYZOO_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import deployzoo, torch, torchvision, onnxruntime; print('deployzoo ready: torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"
