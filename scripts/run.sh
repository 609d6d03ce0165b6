#!/usr/bin/env bash
# Set up (if needed) and launch the dashboard on http://localhost:${PORT:-8501} with the sample loaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# shellcheck disable=SC1091
. scripts/env.sh
exec streamlit run dashboard/app.py --server.address localhost --server.port "${PORT:-8501}" "$@"
