#!/usr/bin/env bash
# Set up (if needed) and launch the dashboard on http://localhost:${PORT:-8501} with the sample loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# shellcheck disable=SC1091
. scripts/env.sh
dev_flags=()
# ATLAS_DEV=1: reload pages when their source changes (the served default watches nothing).
[ "${ATLAS_DEV:-0}" = 1 ] && dev_flags=(--server.fileWatcherType auto --server.runOnSave true)
exec streamlit run dashboard/app.py "${dev_flags[@]}" --server.address localhost --server.port "${PORT:-8501}" "$@"
