#!/usr/bin/env bash
# Builds the offline Kind node image meshbed/kind-node:<k8s version> from
# Debian's packages and the Go module proxy (no container registry), or
# reuses it from the cache. See kind/node/README.md.
#
#   hack/kind-node-image.sh            build or reuse; prints the image name
#   hack/kind-node-image.sh --bins-dir where the binaries are (or will be) cached
#
# Environment: K8S_VERSION (default v1.33.5), NODE_IMAGE (default
# meshbed/kind-node:$K8S_VERSION), MESHBED_CACHE_DIR (default
# /var/cache/meshbed). The cache holds the compiled binaries (bins-KEY/) and
# the image as a `docker save` archive (node-KEY.tar), KEY being a hash of the
# versions and of every build input, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

k8s=${K8S_VERSION:-v1.33.5}
image=${NODE_IMAGE:-meshbed/kind-node:$k8s}
cache=${MESHBED_CACHE_DIR:-/var/cache/meshbed}/kind-node
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

# What kubeadm pins for each supported Kubernetes version (checked against
# `kubeadm config images list` once kubeadm is built).
case "$k8s" in
v1.33.*) etcd=v3.5.21 coredns=v1.12.0 ;;
*)
	echo "hack/kind-node-image.sh: no etcd/CoreDNS versions known for Kubernetes $k8s (add them here)" >&2
	exit 1
	;;
esac

step=""
t0=$SECONDS
log() { printf 'kind-node-image: [%3ds] %s\n' $((SECONDS - t0)) "$*" >&2; }
die() {
	log "FAILED${step:+ at step \"$step\"}: $*"
	exit 1
}
trap 'rc=$?; [ $rc -eq 0 ] || log "FAILED${step:+ at step \"$step\"} (exit $rc)"' EXIT

# hash_inputs FILE...: one hash over paths and contents.
hash_inputs() {
	local f
	for f in "$@"; do
		find "$f" -type f -print0 | sort -z | xargs -0 sha256sum
	done | sha256sum | cut -c1-16
}

gov=$(go env GOVERSION)
bins_key=$(printf '%s\n' "$k8s $etcd $coredns $gov $(hash_inputs kind/node/build-bins.sh cmd/meshbed-pause kind/pause)" | sha256sum | cut -c1-16)
# meshbed-runc is built first and its binary hashed (a -trimpath build is
# reproducible): a go.mod change that does not touch it keeps the image.
runc_dir=$(mktemp -d)
trap 'rc=$?; rm -rf "$runc_dir"; [ $rc -eq 0 ] || log "FAILED${step:+ at step \"$step\"} (exit $rc)"' EXIT
GOFLAGS= CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$runc_dir/meshbed-runc" ./cmd/meshbed-runc
node_key=$(printf '%s\n' "$bins_key $suite $(hash_inputs hack/kind-node-image.sh kind/node) $(sha256sum <"$runc_dir/meshbed-runc" | cut -c1-16)" | sha256sum | cut -c1-16)
bins=$cache/bins-$bins_key
archive=$cache/node-$node_key.tar
label=io.meshbed.kind-node.key
if [ "${1:-}" = --bins-dir ]; then
	echo "$bins"
	exit 0
fi

step="docker"
docker info >/dev/null 2>&1 || die "no Docker engine answers (run hack/docker.sh start and eval \"\$(hack/docker.sh env)\")"

# Warm: the tagged image is this build's.
if [ "$(docker image inspect "$image" --format "{{index .Config.Labels \"$label\"}}" 2>/dev/null || true)" = "$node_key" ]; then
	log "$image is current (key $node_key)"
	echo "$image"
	exit 0
fi
if [ -f "$archive" ]; then
	step="docker load"
	log "loading $image from $archive"
	docker load -i "$archive" >/dev/null || die "docker load -i $archive"
	[ "$(docker image inspect "$image" --format "{{index .Config.Labels \"$label\"}}")" = "$node_key" ] ||
		die "$archive does not hold $image with key $node_key"
	log "$image loaded"
	echo "$image"
	exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

step="tools"
command -v mmdebstrap >/dev/null 2>&1 || {
	log "installing mmdebstrap (Debian)"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap >/dev/null || die "apt-get install mmdebstrap"
}

step="binaries"
if [ ! -d "$bins" ]; then
	log "building Kubernetes $k8s, etcd $etcd, CoreDNS $coredns from the Go module proxy (cold: tens of minutes)"
	kind/node/build-bins.sh "$bins" "$k8s" "$etcd" "$coredns" >"$bins.log" 2>&1 ||
		{ tail -30 "$bins.log" >&2; die "kind/node/build-bins.sh (log: $bins.log)"; }
	log "binaries built"
else
	log "binaries from $bins"
fi
[ "$("$bins/kubeadm" version -o short)" = "$k8s" ] || die "$bins/kubeadm is not $k8s"

work=$(mktemp -d "$cache/work.XXXXXX")
trap 'rc=$?; rm -rf "$work" "$runc_dir"; [ $rc -eq 0 ] || log "FAILED${step:+ at step \"$step\"} (exit $rc)"' EXIT

# --- the images kubeadm asks for ------------------------------------------------
step="control-plane images"
mapfile -t want < <("$bins/kubeadm" config images list --kubernetes-version "$k8s")
images=()
pause_image=""
debs="$work/debs.tar"
for ref in "${want[@]}"; do
	name=${ref##*/}
	name=${name%%:*}
	tag=${ref##*:}
	case "$name" in
	kube-apiserver | kube-controller-manager | kube-scheduler) bin=$name path=/usr/local/bin/$name ;;
	kube-proxy) bin=kube-proxy path=/usr/local/bin/kube-proxy ;;
	etcd) bin=etcd path=/usr/local/bin/etcd
		[ "${tag%-*}" = "${etcd#v}" ] || die "kubeadm wants $ref, this script builds etcd $etcd" ;;
	coredns) bin=coredns path=/coredns
		[ "$tag" = "$coredns" ] || die "kubeadm wants $ref, this script builds CoreDNS $coredns" ;;
	pause) bin=pause path=/pause pause_image=$ref ;;
	*) die "kubeadm wants $ref, which this script cannot build" ;;
	esac
	d=$work/img-$name
	mkdir -p "$d$(dirname "$path")"
	install -m 0755 "$bins/$bin" "$d$path"
	if [ "$name" = kube-proxy ]; then
		# kube-proxy runs iptables-restore and conntrack: a small Debian
		# userland under the binary.
		[ -f "$debs" ] || mmdebstrap --quiet --variant=essential --include=iptables,conntrack \
			--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
			--dpkgopt='path-exclude=/usr/share/locale/*' \
			--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
			"$suite" "$debs" "$mirror" || die "mmdebstrap (kube-proxy userland)"
		tar -C "$d" -rf "$debs" ./usr/local/bin/kube-proxy
		src=$debs
	else
		src=$work/img-$name.tar
		tar -C "$d" -cf "$src" .
	fi
	docker import --change "ENTRYPOINT [\"$path\"]" \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		"$src" "$ref" >/dev/null || die "docker import $ref"
	images+=("$ref")
	log "image $ref"
done
[ -n "$pause_image" ] || die "kubeadm names no pause image"
mkdir -p "$work/overlay/kind/images"
docker save -o "$work/overlay/kind/images/control-plane.tar" "${images[@]}" || die "docker save of the control-plane images"
docker rmi "${images[@]}" >/dev/null

# --- the node's root filesystem -------------------------------------------------
step="node rootfs"
ov=$work/overlay
cp -a kind/node/rootfs/. "$ov/"
sed -i "s|@PAUSE_IMAGE@|$pause_image|" "$ov/etc/containerd/config.toml"
install -d "$ov/usr/bin" "$ov/usr/local/bin"
install -m 0755 "$bins/kubeadm" "$bins/kubelet" "$bins/kubectl" "$ov/usr/bin/"
install -m 0755 "$runc_dir/meshbed-runc" "$ov/usr/local/bin/meshbed-runc"
echo "$k8s" >"$ov/kind/version"
pkgs=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,iptables,conntrack,iproute2,procps,kmod,ca-certificates,ethtool,socat,util-linux,mount
mmdebstrap --quiet --variant=minbase --include="$pkgs" \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
	--customize-hook="sync-in $ov /" \
	--customize-hook='chroot "$1" systemctl enable kubelet.service meshbed-preload.service containerd.service' \
	--customize-hook='chroot "$1" systemctl mask getty.target console-getty.service systemd-udevd.service systemd-udev-trigger.service systemd-modules-load.service systemd-remount-fs.service systemd-firstboot.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service' \
	--customize-hook='chroot "$1" systemctl set-default multi-user.target' \
	--customize-hook='mkdir -p "$1"/opt/cni/bin "$1"/etc/cni/net.d && for f in "$1"/usr/lib/cni/*; do ln -s /usr/lib/cni/$(basename "$f") "$1"/opt/cni/bin/; done' \
	--customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/etc/machine-id' \
	"$suite" "$work/rootfs.tar" "$mirror" || die "mmdebstrap (node rootfs)"

step="docker import"
docker import \
	--change 'ENTRYPOINT ["/usr/local/bin/meshbed-node-entrypoint", "/sbin/init"]' \
	--change 'ENV container=docker' \
	--change "LABEL $label=$node_key" \
	"$work/rootfs.tar" "$image" >/dev/null || die "docker import $image"

step="cache"
rm -f "$cache"/node-*.tar
docker save -o "$archive.tmp" "$image" || die "docker save $image"
mv "$archive.tmp" "$archive"
log "built $image (key $node_key, $(docker image inspect "$image" --format '{{.Size}}' | numfmt --to=iec) unpacked, archive $(du -h "$archive" | cut -f1))"
echo "$image"
