#!/usr/bin/env bash
# The main job: a synthetic pelvis case through the bundled model, scored against its truth.
# Creates .venv on first use. Extra arguments go to `rbg demo` (e.g. --modality cbct -o DIR).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
exec .venv/bin/rbg demo "$@"
