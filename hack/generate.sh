#!/usr/bin/env bash
# Regenerates committed generated code (bpf2go objects and bindings).
set -euo pipefail
cd "$(dirname "$0")/.."
hack/deps.sh
go generate ./...
