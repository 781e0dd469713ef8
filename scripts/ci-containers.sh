#!/usr/bin/env bash
# Run the container test (tests/containers/test_compose.py) and print how long it took.
#
# The test validates every Compose file, builds the images, runs a tiny experiment with
# two worker containers, checks the database, optuna-dashboard and TensorBoard, and stops
# the Docker engines again. It needs root and the docker-sandbox tool, found at
# ../shared/tools/docker-sandbox or at $DOCKER_SANDBOX. Without them it skips, unless
# CI=true, where it fails. Extra arguments go to pytest.
#
#   scripts/ci-containers.sh
#   PYTHON=/path/to/venv/bin/python scripts/ci-containers.sh -x
set -euo pipefail

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
sandbox=${DOCKER_SANDBOX:-../shared/tools/docker-sandbox}

start=$(date +%s)
status=0
# -s shows the test's timing and per-fold trial counts.
"$python" -m pytest -m containers tests/containers -v -s -rs --durations=0 "$@" || status=$?

# The test stops the engines itself; this also stops them when pytest was interrupted.
if [ -f "$sandbox" ]; then
    bash "$sandbox" stop >/dev/null 2>&1 || echo "ci-containers: docker-sandbox stop failed" >&2
fi
echo "ci-containers: container test took $(( $(date +%s) - start )) s, pytest exit status $status"
exit "$status"
