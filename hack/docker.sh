#!/usr/bin/env bash
# A Docker engine for the Kind end-to-end run.
#
#   hack/docker.sh start   use the engine `docker info` answers; else install
#                          Debian's docker.io and start our own dockerd
#   hack/docker.sh env     print `export DOCKER_HOST=...` for that engine
#   hack/docker.sh stop    stop the dockerd that start started (by its PID)
#   hack/docker.sh status  say which engine is in use
#
# Our dockerd keeps everything under $MESHBED_DOCKER_DIR (default
# /var/lib/meshbed-docker): socket, data, exec root, pid file, log. It runs
# privileged containers through meshbed-runc (cmd/meshbed-runc), which drops
# the capabilities this host withholds (CAP_SYS_RESOURCE) from each OCI spec
# before it executes runc: without it `docker run --privileged` fails with
# "unable to apply caps: operation not permitted". Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${MESHBED_DOCKER_DIR:-/var/lib/meshbed-docker}
sock=$dir/docker.sock
pidfile=$dir/dockerd.pid
logfile=$dir/dockerd.log

die() {
	echo "hack/docker.sh: $*" >&2
	exit 1
}

# ours_running: our dockerd's PID file names a live dockerd.
ours_running() {
	[ -f "$pidfile" ] || return 1
	local pid
	pid=$(cat "$pidfile")
	[ -n "$pid" ] && [ -d "/proc/$pid" ] && grep -q dockerd "/proc/$pid/comm" 2>/dev/null
}

# answering: a Docker engine answers at the current DOCKER_HOST (or the
# default socket).
answering() { timeout 20 docker info >/dev/null 2>&1; }

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

install_docker() {
	command -v dockerd >/dev/null 2>&1 && return 0
	command -v apt-get >/dev/null 2>&1 ||
		die "no Docker engine answers and dockerd is not installed; there is no apt-get to install docker.io: install Docker and run again"
	echo "hack/docker.sh: installing docker.io (Debian)" >&2
	export DEBIAN_FRONTEND=noninteractive
	# Debian's postinst tries to start the service; there is no init here.
	if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends docker.io >/dev/null; }; then
		die "apt-get install docker.io failed"
	fi
	command -v dockerd >/dev/null 2>&1 || die "docker.io installed, but there is no dockerd on PATH"
}

# kind_limits raises the inotify limits that Kind's nodes exhaust (each
# node's systemd, containerd and kubelet take inotify instances): with the
# default 128 instances, the seventh or eighth node container of a machine
# exits while booting (Kind's known issue "too many open files").
kind_limits() {
	local key want have
	for kv in fs.inotify.max_user_instances=512 fs.inotify.max_user_watches=524288; do
		key=${kv%=*} want=${kv#*=}
		have=$(sysctl -n "$key" 2>/dev/null || echo 0)
		if [ "$have" -lt "$want" ]; then
			if sysctl -qw "$key=$want" 2>/dev/null; then
				echo "hack/docker.sh: $key $have -> $want (Kind nodes need it)" >&2
			else
				echo "hack/docker.sh: $key is $have; Kind nodes may fail to boot (as root: sysctl -w $key=$want)" >&2
			fi
		fi
	done
}

start() {
	kind_limits
	if ours_running; then
		DOCKER_HOST=unix://$sock answering && return 0
		die "our dockerd (PID $(cat "$pidfile")) runs but does not answer at $sock; see $logfile"
	fi
	if [ -z "${DOCKER_HOST:-}" ] && answering; then
		echo "hack/docker.sh: using the Docker engine that answers ($(docker info --format '{{.ServerVersion}}' 2>/dev/null))" >&2
		return 0
	fi
	if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix://$sock" ]; then
		answering && return 0
		die "DOCKER_HOST=$DOCKER_HOST does not answer"
	fi
	install_docker
	command -v docker >/dev/null 2>&1 || die "no docker client on PATH"
	mkdir -p "$dir/bin" "$dir/data" "$dir/exec"
	echo "hack/docker.sh: building the runtime wrapper meshbed-runc" >&2
	go build -o "$dir/bin/meshbed-runc" ./cmd/meshbed-runc || die "go build ./cmd/meshbed-runc failed"
	echo "hack/docker.sh: starting dockerd ($dir, log $logfile)" >&2
	# setsid: the daemon outlives this script and make; it is stopped by PID.
	setsid dockerd \
		--data-root "$dir/data" \
		--exec-root "$dir/exec" \
		--pidfile "$pidfile" \
		-H "unix://$sock" \
		--add-runtime "meshbed=$dir/bin/meshbed-runc" \
		--default-runtime meshbed \
		>>"$logfile" 2>&1 </dev/null &
	local i
	for i in $(seq 1 60); do
		if DOCKER_HOST=unix://$sock answering; then
			echo "hack/docker.sh: dockerd PID $(cat "$pidfile") answers at unix://$sock" >&2
			return 0
		fi
		if ! kill -0 $! 2>/dev/null; then
			tail -20 "$logfile" >&2
			die "dockerd exited; see $logfile"
		fi
		sleep 1
	done
	tail -20 "$logfile" >&2
	die "dockerd did not answer at $sock within 60 s; see $logfile"
}


stop() {
	if ! ours_running; then
		echo "hack/docker.sh: no dockerd of ours runs ($pidfile)" >&2
		return 0
	fi
	local pid i
	pid=$(cat "$pidfile")
	echo "hack/docker.sh: stopping dockerd PID $pid" >&2
	kill -TERM "$pid"
	for i in $(seq 1 60); do
		[ -d "/proc/$pid" ] || return 0
		sleep 1
	done
	die "dockerd PID $pid still runs 60 s after SIGTERM"
}

env_() {
	if ours_running; then
		echo "export DOCKER_HOST=unix://$sock"
	elif [ -n "${DOCKER_HOST:-}" ]; then
		echo "export DOCKER_HOST=$DOCKER_HOST"
	fi
}

status() {
	if ours_running; then
		echo "ours: dockerd PID $(cat "$pidfile"), unix://$sock"
	elif answering; then
		echo "theirs: ${DOCKER_HOST:-default socket}"
	else
		echo "none"
		return 1
	fi
}

case "${1:-}" in
start) start ;;
stop) stop ;;
env) env_ ;;
status) status ;;
*)
	echo "usage: $0 start|stop|env|status" >&2
	exit 2
	;;
esac
