#!/usr/bin/env bash
# Runs every test. Privileged tests (network namespaces, BPF) run as root and
# skip otherwise; MESHBED_REQUIRE_PRIVILEGED=1 turns such a skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh

go vet ./...
# Packages run one at a time: the privileged tests build network namespaces
# and embedded etcd servers, and the machines are small.
go test -p 1 -count=1 -timeout 40m ./... "$@"
# Every benchmark once (-short skips the scale ones), so they cannot rot.
if ! out=$(go test -p 1 -count=1 -short -run '^$' -bench . -benchtime 1x -timeout 20m ./... 2>&1); then
	echo "$out"
	exit 1
fi
