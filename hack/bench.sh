#!/usr/bin/env bash
# Runs the benchmarks that carry the project's figures.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
go test -p 1 -count=1 -run '^$' -bench "${BENCH:-.}" -benchmem -timeout 60m ./... "$@"
