#!/usr/bin/env bash
# The long chaos tests (minutes each, not in make test): a promise broken on
# purpose fails, shrinks to repro.yaml, and repro.yaml fails too.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
MESHBED_CHAOS=1 go test -count="${COUNT:-1}" -timeout 60m -run 'TestChaos' -v ./sim/target/ "$@"
