#!/usr/bin/env bash
# Create the local virtual environment .venv (if missing) and install the project into it.
# Idempotent: re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "bootstrap: Python >= 3.11 is required ($python is $("$python" --version 2>&1))" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.rbg-installed
wanted=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "bootstrap: installing RegisterByGeneration into .venv (first run takes a few minutes)" >&2
  # torch first and exactly pinned: an unpinned resolver pick would pull GBs of CUDA wheels.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,train]"
  echo "$wanted" > "$stamp"
fi
