#!/usr/bin/env bash
# Builds the Kubernetes, etcd, CoreDNS and pause binaries of the offline Kind
# node image from the Go module proxy, into $OUT (static, CGO_ENABLED=0).
#
#   kind/node/build-bins.sh OUT K8S_VERSION ETCD_VERSION COREDNS_VERSION
#
# Kubernetes cannot be built with `go install k8s.io/kubernetes/cmd/X@v`:
# its go.mod replaces the staging modules (k8s.io/api, client-go, ...) with
# local paths. A scratch module that requires k8s.io/kubernetes and requires
# and replaces every staging module at the matching v0.Y.Z builds it. Work
# dirs live next to OUT (the cache), never in the checkout.
set -euo pipefail

out=$1 k8s=$2 etcd=$3 coredns=$4
here=$(cd "$(dirname "$0")" && pwd)
work=$out.work
mkdir -p "$work" "$out.tmp"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off
# Deterministic build stamps (the cache key is the inputs, not the clock).
build_date=2025-01-01T00:00:00Z

log() { printf 'build-bins: %s\n' "$*" >&2; }

# --- Kubernetes -------------------------------------------------------------
minor=${k8s#v1.}
minor=${minor%%.*}
staging_v=v0.${k8s#v1.}
kmod=$work/k8s-$k8s
mkdir -p "$kmod"
gomod=$(cd "$kmod" && go mod download -json "k8s.io/kubernetes@$k8s" | sed -n 's/^\s*"GoMod": "\(.*\)",\?$/\1/p')
[ -f "$gomod" ] || { log "no go.mod for k8s.io/kubernetes@$k8s"; exit 1; }
# The sample-* modules are not published at every version (the proxy answers
# 403 for sample-cli-plugin v0.33.5) and nothing we build imports them.
mapfile -t staging < <(sed -n 's|^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*|\1|p' "$gomod" | grep -v '^k8s\.io/sample-')
[ ${#staging[@]} -gt 10 ] || { log "found only ${#staging[@]} staging modules in $gomod"; exit 1; }
log "kubernetes $k8s: ${#staging[@]} staging modules at $staging_v"
goline=$(sed -n 's/^go \(.*\)/\1/p' "$gomod")
{
	echo "module meshbed.local/k8s-build"
	echo
	echo "go $goline"
	echo
	echo "require k8s.io/kubernetes $k8s"
	for m in "${staging[@]}"; do echo "require $m $staging_v"; done
	for m in "${staging[@]}"; do echo "replace $m => $m $staging_v"; done
} >"$kmod/go.mod"
k8s_cmds=(kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy)
{
	echo "//go:build tools"
	echo
	echo "package tools"
	echo
	echo "import ("
	for c in "${k8s_cmds[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
	echo ")"
} >"$kmod/tools.go"
(cd "$kmod" && go mod tidy)
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ld="$ld -X $p.gitVersion=$k8s -X $p.gitMajor=1 -X $p.gitMinor=$minor"
	ld="$ld -X $p.gitCommit=0000000000000000000000000000000000000000 -X $p.gitTreeState=clean -X $p.buildDate=$build_date"
done
# An interrupted build resumes: what $out.tmp holds is not built again.
pkgs=()
for c in "${k8s_cmds[@]}"; do [ -x "$out.tmp/$c" ] || pkgs+=("k8s.io/kubernetes/cmd/$c"); done
if [ ${#pkgs[@]} -gt 0 ]; then
	log "go build ${pkgs[*]}"
	(cd "$kmod" && go build -trimpath -ldflags "$ld" -o "$out.tmp/" "${pkgs[@]}")
fi

# --- etcd, at the version kubeadm pins --------------------------------------
emod=$work/etcd-$etcd
mkdir -p "$emod"
cat >"$emod/go.mod" <<GOMOD
module meshbed.local/etcd-build

go 1.23

require go.etcd.io/etcd/server/v3 $etcd
GOMOD
cat >"$emod/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
(cd "$emod" && go mod tidy)
log "go build etcd $etcd"
[ -x "$out.tmp/etcd" ] || (cd "$emod" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3)

# --- CoreDNS ------------------------------------------------------------------
log "go install coredns $coredns"
[ -x "$out.tmp/coredns" ] || GOBIN=$out.tmp go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$coredns"

# --- pause (ours) -------------------------------------------------------------
log "go build pause"
(cd "$here/../.." && GOFLAGS= go build -trimpath -ldflags "-s -w" -o "$out.tmp/pause" ./cmd/meshbed-pause)

rm -rf "$out"
mv "$out.tmp" "$out"
log "done: $(ls "$out" | tr '\n' ' ')"
