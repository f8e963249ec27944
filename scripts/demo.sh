#!/usr/bin/env bash
# The README's main command (`make demo`): start the embedded service (SQLite + local broker +
# one Celery worker), submit a generated thorax PET/CT phantom with the Python client, show the
# progress, download the results, print the lesions and the Dice against the phantom's label,
# and stop the service. Everything is kept under runs/demo (delete it to start afresh).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${VENV:-.venv}/bin"
exec "$BIN/autopaint" demo --state-dir "${DEMO_DIR:-runs/demo}" --port "${DEMO_PORT:-8765}" "$@"
