#!/usr/bin/env bash
# Set up Atlas Explorer in ./.venv. Safe to run again: it only installs what is missing.
#   bash scripts/setup.sh          the app
#   bash scripts/setup.sh --test   the app, the test tools and Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$python" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned: a bare requirement would pull the newest release with GBs of CUDA packages.
if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  echo "==> installing torch 2.13.0 (CPU)"
  python -m pip install -q "torch==2.13.0"
fi

extras=""
[ "$with_tests" = 1 ] && extras="[test]"
echo "==> installing atlas-explorer${extras} and its dependencies"
python -m pip install -q -c constraints.txt -e ".${extras}"

if [ "$with_tests" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Debian's chromium for the browser tests"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# Compile the numba kernels (training's NB/ZINB likelihood, the UMAP layout) into the on-disk cache
# now (~9 s the first time, ~4 s when already cached, imports included), so that the first training run or first view on this
# machine does not pay for it (BENCHMARKS.md, "numba likelihood kernel").
echo "==> compiling the numba kernels"
# shellcheck disable=SC1091
. scripts/env.sh
python -c "from engine.warmup import warm_up; warm_up()"
echo "==> set-up done"
