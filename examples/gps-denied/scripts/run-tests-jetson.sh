#!/usr/bin/env bash
# The team's harness before pytest-hil: sync the checkout to the board, build the runner
# there, run the compose project, return the runner's exit code (pytest's).
#   BOARD=orin scripts/run-tests-jetson.sh
# On the simulated rig: BOARD=hil-sim-jetson SSH_CONFIG=/var/lib/hil-sim/ssh/config
set -euo pipefail
cd "$(dirname "$0")/.."
BOARD="${BOARD:-orin}"
REMOTE_DIR="${REMOTE_DIR:-gps-denied}"
ssh_opts=()
if [ -n "${SSH_CONFIG:-}" ]; then ssh_opts=(-F "$SSH_CONFIG"); fi
compose="docker compose -f docker-compose.test.yml"

rsync -az --delete --exclude .git --exclude reports -e "ssh ${ssh_opts[*]}" ./ "$BOARD:$REMOTE_DIR/"
# shellcheck disable=SC2029  # expanded here on purpose: the board runs these words
ssh "${ssh_opts[@]}" "$BOARD" "cd $REMOTE_DIR && $compose build e2e-runner \
  && { $compose up --abort-on-container-exit --exit-code-from e2e-runner; rc=\$?; \
       $compose down -v --remove-orphans >/dev/null 2>&1; exit \$rc; }"
