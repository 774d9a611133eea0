#!/usr/bin/env bash
# make interop: meshbed against Cilium's own code.
#
# Builds Cilium's clustermesh-apiserver (a pinned release) in a scratch module
# under the cache directory -- Cilium's code comes from the Go module proxy and
# is never committed here -- then runs the interop tests (build tag interop):
# Cilium's kvstoremesh mirrors a simulated meshbed cluster, and its cache must
# equal meshbed's own kvstoremesh cache before and after a scale change; every
# key meshbed exports is decoded with Cilium's own types and validators.
set -euo pipefail
cd "$(dirname "$0")/.."

version=${CILIUM_VERSION:-v1.18.8}
cache=${MESHBED_CACHE:-/var/cache/meshbed}/interop/$version
bin=$cache/clustermesh-apiserver
decoder=$cache/decode
log() { echo "hack/interop.sh: $*" >&2; }

build() {
	mkdir -p "$cache"
	cd "$cache"
	if [ ! -f go.mod ]; then
		cat >go.mod <<MOD
module meshbed.local/interop

go 1.24
MOD
		# Cilium's own go.mod replaces some modules with forks. A dependency's
		# replace directives do not apply to the module that requires it, so
		# those we need are repeated here. k8s.io/apimachinery stays upstream:
		# the fork (github.com/cilium/apimachinery) is not served by the
		# module proxy, and the code built here does not need its patches.
		go mod edit -require=github.com/cilium/cilium@"$version"
		go mod edit -replace=github.com/osrg/gobgp/v3=github.com/cilium/gobgp/v3@v3.0.0-20250717193620-26a4abb75464
	fi
	# -mod=mod: let the go command complete the module graph itself (some of
	# the exact versions Cilium pins are not served; the next one is taken).
	go build -mod=mod -trimpath -o "$bin.tmp" github.com/cilium/cilium/clustermesh-apiserver
	mv "$bin.tmp" "$bin"
}

# build_decoder builds hack/interop/decode.go (meshbed's keys through
# Cilium's types) in the same scratch module; it is rebuilt when it changes.
build_decoder() {
	cp hack/interop/decode.go "$cache/decode.go"
	(cd "$cache" && go build -mod=mod -trimpath -o "$decoder" ./decode.go)
}

if [ ! -x "$bin" ] || [ "${REBUILD:-}" = 1 ]; then
	start=$(date +%s)
	log "building Cilium clustermesh-apiserver $version in $cache (first run only)"
	(build)
	log "built in $(($(date +%s) - start)) s"
else
	log "using $bin (REBUILD=1 to build again)"
fi

if [ ! -x "$decoder" ] || ! cmp -s hack/interop/decode.go "$cache/decode.go"; then
	log "building the decoder (hack/interop/decode.go)"
	build_decoder
fi

start=$(date +%s)
MESHBED_INTEROP=1 CILIUM_INTEROP_DECODER=$decoder CILIUM_CLUSTERMESH_APISERVER=$bin \
	go test -tags interop -count=1 -v ${INTEROP_RUN:+-run "$INTEROP_RUN"} ./sim/interop/
log "interop tests took $(($(date +%s) - start)) s"
