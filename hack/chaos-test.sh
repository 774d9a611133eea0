#!/usr/bin/env bash
# The long chaos tests (minutes each, not in make test): a promise broken on
# purpose fails, shrinks to repro.yaml, and repro.yaml fails too. In the
# simulator always; on Kind too when MESHBED_KIND_CONTEXTS names running
# clusters (e.g. after KEEP=1 make e2e:
# MESHBED_KIND_CONTEXTS=cluster1=kind-c1,cluster2=kind-c2 MESHBED_CA_DIR=...
# DEMO_IMAGE=...).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
MESHBED_CHAOS=1 go test -count="${COUNT:-1}" -timeout 60m -run 'TestChaos' -v ./sim/target/ ./kind/target/ "$@"
