#!/usr/bin/env bash
# Builds meshbed's two images for Kind from this checkout, FROM scratch (no
# registry): meshbed/meshbed (agent, mesh-apiserver, CNI plugin) and
# meshbed/demo (the echo server and client that replace workload images).
# Each is tagged by a hash of its content (never latest), so a rebuild of
# the same code reuses the image. Prints two lines, for eval:
#
#   MESHBED_IMAGE=meshbed/meshbed:e2e-<hash>
#   DEMO_IMAGE=meshbed/demo:e2e-<hash>
#
# Needs a Docker engine (hack/docker.sh start; eval "$(hack/docker.sh env)").
set -euo pipefail
cd "$(dirname "$0")/.."
imgdir=$(mktemp -d)
trap 'rm -rf "$imgdir"' EXIT
# scratch_image NAME DIR: import DIR as a one-layer image tagged by a hash
# of its content; prints the reference.
scratch_image() {
	local name=$1 dir=$2 tag
	tag=e2e-$(cd "$dir" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
	if ! docker image inspect "$name:$tag" >/dev/null 2>&1; then
		tar -C "$dir" --owner=0 --group=0 -cf - . | docker import - "$name:$tag" >/dev/null
	fi
	echo "$name:$tag"
}
mkdir -p "$imgdir/meshbed/usr/local/bin" "$imgdir/meshbed/tmp" "$imgdir/demo/usr/local/bin"
chmod 1777 "$imgdir/meshbed/tmp"
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$imgdir/meshbed/usr/local/bin/" ./cmd/meshbed-agent ./cmd/meshbed-apiserver ./cmd/meshbed-cni
CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$imgdir/demo/usr/local/bin/" ./cmd/meshbed-demo
echo "MESHBED_IMAGE=$(scratch_image meshbed/meshbed "$imgdir/meshbed")"
echo "DEMO_IMAGE=$(scratch_image meshbed/demo "$imgdir/demo")"
