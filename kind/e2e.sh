#!/usr/bin/env bash
# End-to-end test of meshbed on two Kind clusters: the commands of
# kind/README.md, then the seed demo. Needs Docker, kind, kubectl and Go; it
# is what .github/workflows/e2e.yaml runs.
#
#   kind/e2e.sh up      build, create c1 and c2, install, enable, connect
#   kind/e2e.sh demo    rebel-base and x-wing in both clusters
#   kind/e2e.sh check   x-wing in cluster1 is answered by both clusters
#   kind/e2e.sh dump    state and logs, for a failed run
#   kind/e2e.sh down    delete the clusters
#   kind/e2e.sh         up, demo, check
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-meshbed/meshbed:dev}
MESHBED=${MESHBED:-bin/meshbed}
CA_DIR=${CA_DIR:-${TMPDIR:-/tmp}/meshbed-e2e/ca}
CLUSTERS=(1 2)

log() { printf '\n=== %s\n' "$*" >&2; }
k() { local i=$1; shift; kubectl --context "kind-c$i" "$@"; }

up() {
	log "build meshbed CLI and image $IMAGE"
	go build -o bin/ ./cmd/meshbed
	docker build -f kind/image/Dockerfile -t "$IMAGE" .
	for i in "${CLUSTERS[@]}"; do
		log "cluster c$i"
		if ! kind get clusters | grep -qx "c$i"; then
			# No CNI yet: the nodes stay NotReady until meshbed runs.
			kind create cluster --config "kind/cluster$i.yaml"
		fi
		kind load docker-image "$IMAGE" --name "c$i"
		"$MESHBED" install --context "kind-c$i" --cluster-name "cluster$i" --cluster-id "$i" --image "$IMAGE"
	done
	log "enable (one mesh CA in $CA_DIR)"
	"$MESHBED" clustermesh enable --context kind-c1 --ca-dir "$CA_DIR" --create-ca
	"$MESHBED" clustermesh enable --context kind-c2 --ca-dir "$CA_DIR"
	for i in "${CLUSTERS[@]}"; do
		k "$i" -n meshbed-system rollout status daemonset/meshbed-agent --timeout 5m
		k "$i" -n meshbed-system rollout status deployment/meshbed-apiserver --timeout 5m
		k "$i" wait --for=condition=Ready nodes --all --timeout 5m
	done
	log "connect"
	"$MESHBED" clustermesh connect --context kind-c1 --destination-context kind-c2
	for i in "${CLUSTERS[@]}"; do
		"$MESHBED" clustermesh status --context "kind-c$i" --ca-dir "$CA_DIR" --wait --wait-timeout 5m
	done
}

demo() {
	for i in "${CLUSTERS[@]}"; do
		log "demo in c$i"
		k "$i" apply -f scenarios/manifests/rebel-base.yaml -f scenarios/manifests/x-wing.yaml
		k "$i" rollout status deployment/rebel-base --timeout 5m
		k "$i" rollout status deployment/x-wing --timeout 5m
	done
}

# answered N: x-wing in cluster1 gets N answers in a row from rebel-base,
# retrying for up to two minutes (the mesh converges within seconds; the
# kubelet's view of scaled pods takes longer).
answered() {
	local want=$1 ok=0 deadline=$((SECONDS + 120))
	while ((SECONDS < deadline)); do
		if k 1 exec deployment/x-wing -- curl -sS --fail --max-time 3 -o /dev/null http://rebel-base/; then
			ok=$((ok + 1))
			((ok >= want)) && return 0
		else
			ok=0
			sleep 1
		fi
	done
	return 1
}

scale() { # scale CLUSTER REPLICAS
	k "$1" scale deployment/rebel-base --replicas "$2"
	if (($2 == 0)); then
		k "$1" wait --for=delete pod -l name=rebel-base --timeout 2m
	else
		k "$1" rollout status deployment/rebel-base --timeout 2m
	fi
}

check() {
	log "cluster1's x-wing reaches a cluster2 pod directly (pod to pod across clusters)"
	local ip
	ip=$(k 2 get pods -l name=rebel-base -o jsonpath='{.items[0].status.podIP}')
	k 1 exec deployment/x-wing -- curl -sS --fail --max-time 5 -o /dev/null "http://$ip/"

	log "both clusters serve: 20 answers"
	answered 20

	log "only cluster2 has backends: cluster1's x-wing is answered by cluster2"
	scale 1 0
	answered 10
	scale 1 2

	log "only cluster1 has backends: answered by cluster1"
	scale 2 0
	answered 10
	scale 2 2

	log "PASS: x-wing in cluster1 got answers from both clusters"
}

dump() {
	for i in "${CLUSTERS[@]}"; do
		log "c$i"
		k "$i" get nodes -o wide || true
		k "$i" get pods -A -o wide || true
		k "$i" get events -A --sort-by=.lastTimestamp | tail -50 || true
		k "$i" -n meshbed-system logs daemonset/meshbed-agent --all-containers --tail 200 --prefix || true
		k "$i" -n meshbed-system logs deployment/meshbed-apiserver --tail 200 || true
		"$MESHBED" clustermesh status --context "kind-c$i" --ca-dir "$CA_DIR" || true
	done
}

down() {
	for i in "${CLUSTERS[@]}"; do
		kind delete cluster --name "c$i"
	done
}

case "${1:-all}" in
up | demo | check | dump | down) "$1" ;;
all) up && demo && check ;;
*)
	echo "usage: $0 [up|demo|check|dump|down]" >&2
	exit 2
	;;
esac
