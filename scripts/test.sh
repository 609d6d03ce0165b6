#!/usr/bin/env bash
# Set up (if needed) and run every test, the real-browser tests included. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# shellcheck disable=SC1091
. .venv/bin/activate
# shellcheck disable=SC1091
. scripts/env.sh
# Lint first: a finding fails the run in seconds instead of after the tests (rules in pyproject.toml).
python -m ruff check .
exec python -m pytest -q "$@"
