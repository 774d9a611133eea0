#!/usr/bin/env bash
# Builds meshbed and runs scenarios/$1.yaml in the simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: hack/scenario.sh NAME}"
hack/deps.sh
go build -o bin/meshbed ./cmd/meshbed
exec bin/meshbed scenario run "scenarios/${name}.yaml" ${REPORT:+--report "$REPORT"} ${SEED:+--seed "$SEED"}
