#!/usr/bin/env bash
# Run the test suite in the project's virtual environment (created on first use), in two
# worker processes (CI has 2 cores; RBG_TEST_WORKERS=N for another count, 0 for one process).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n "${RBG_TEST_WORKERS:-2}" "$@"
