#!/usr/bin/env bash
# make e2e: meshbed on two Kind clusters, end to end (kind/e2e).
#
#   hack/e2e.sh          Docker (ours if none answers), the node image (built
#                        offline or from the cache, or $NODE_IMAGE), meshbed's
#                        images, then the Go harness: two clusters, install,
#                        enable, connect, status --wait, the seed demo
#   hack/e2e.sh down     delete the clusters a KEEP=1 run left
#
# Environment: NODE_IMAGE (e.g. kindest/node:v1.33.4 where pulls work; empty:
# build meshbed/kind-node:$K8S_VERSION here), K8S_VERSION, KEEP=1 (keep the
# clusters), E2E_DIR (default bin/e2e: kubeconfig, CA, dump, report.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
export E2E_START=${E2E_START:-$(date +%s.%N)}
export E2E_DIR=${E2E_DIR:-$PWD/bin/e2e}
export K8S_VERSION=${K8S_VERSION:-v1.33.5}

step=""
t0=$SECONDS
log() { printf '\n=== e2e [%4ds] %s\n' $((SECONDS - t0)) "$*" >&2; }
fail() {
	local rc=$?
	trap - EXIT
	if [ $rc -ne 0 ]; then
		echo >&2
		echo "make e2e: FAILED at step \"$step\" (exit $rc); dump, when the clusters existed: $E2E_DIR/dump" >&2
		if [ "${KEEP:-}" != 1 ] && [ -x bin/kind ]; then
			# The harness deletes its clusters itself; this catches a harness
			# that was killed (go test -timeout).
			for c in c1 c2; do
				bin/kind get clusters 2>/dev/null | grep -qx "$c" && bin/kind delete cluster --name "$c" --kubeconfig "$E2E_DIR/kubeconfig" >&2 || true
			done
		fi
	fi
	exit $rc
}
trap fail EXIT

step="docker"
log "Docker engine"
hack/docker.sh start
eval "$(hack/docker.sh env)"
docker info >/dev/null

step="kind"
# Kind itself, from the module go.mod pins (for `down` and for people).
go build -o bin/kind sigs.k8s.io/kind

if [ "${1:-}" = down ]; then
	for c in c1 c2; do
		bin/kind delete cluster --name "$c" --kubeconfig "$E2E_DIR/kubeconfig"
	done
	exit 0
fi

step="node image"
if [ -z "${NODE_IMAGE:-}" ]; then
	log "node image (offline build or cache)"
	NODE_IMAGE=$(hack/kind-node-image.sh)
else
	log "node image $NODE_IMAGE (given)"
fi
export NODE_IMAGE

step="meshbed images"
log "meshbed's images (FROM scratch, no registry)"
eval "$(hack/meshbed-images.sh)"
export MESHBED_IMAGE DEMO_IMAGE
echo "$MESHBED_IMAGE $DEMO_IMAGE" >&2

step="meshbed CLI"
go build -o bin/meshbed ./cmd/meshbed
export MESHBED=$PWD/bin/meshbed

step="two Kind clusters and the demo (kind/e2e)"
log "harness: go test -tags e2e ./kind/e2e/"
go test -tags e2e -count=1 -v -timeout 80m ./kind/e2e/ -run '^(TestStuckPod|TestKindMesh)$'
log "PASS"
