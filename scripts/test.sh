#!/usr/bin/env bash
# Run the test suite in the project's virtual environment (created on first use).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
