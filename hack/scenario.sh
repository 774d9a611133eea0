#!/usr/bin/env bash
# make scenario NAME=failover [TARGET=sim|kind] [REPORT=dir] [KEEP=1]
#
# Builds meshbed and runs scenarios/$NAME.yaml in the simulator (TARGET=sim,
# the default) or on Kind clusters made from its topology (TARGET=kind:
# Docker, the node image and meshbed's images are made here first, offline;
# the clusters are deleted after the run unless KEEP=1). Extra arguments
# after the name go to `meshbed scenario run`, e.g. --context for clusters
# that exist.
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: hack/scenario.sh NAME [meshbed scenario run flags]}"
shift
target=${TARGET:-sim}
args=(--target "$target" ${REPORT:+--report "$REPORT"} ${KEEP:+--keep})
case "$target" in
sim)
	hack/deps.sh
	;;
kind)
	hack/docker.sh start
	eval "$(hack/docker.sh env)"
	export DOCKER_HOST
	NODE_IMAGE=${NODE_IMAGE:-$(hack/kind-node-image.sh)}
	eval "$(hack/meshbed-images.sh)"
	export NODE_IMAGE MESHBED_IMAGE DEMO_IMAGE
	mkdir -p bin/kind-target
	args+=(--kubeconfig "${KUBECONFIG_FILE:-$PWD/bin/kind-target/kubeconfig}" --ca-dir "$PWD/bin/kind-target/ca")
	;;
*)
	echo "hack/scenario.sh: TARGET=$target: want sim or kind" >&2
	exit 2
	;;
esac
go build -o bin/meshbed ./cmd/meshbed
exec bin/meshbed scenario run "scenarios/${name}.yaml" "${args[@]}" "$@"
