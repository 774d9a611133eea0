# The Makefile only delegates to hack/ scripts.
.PHONY: all build test check e2e generate generate-check bench scenario chaos-test interop deps clean

all: build

# System packages (clang, libbpf-dev, ...) for generate and the privileged
# tests; build needs none of them (the generated code is committed).
deps:
	hack/deps.sh

build:
	go build -o bin/ ./cmd/...

# Installs missing system packages (hack/deps.sh), then runs every test.
test:
	hack/test.sh

# gofmt, go mod tidy, vet, staticcheck, no large tracked files.
check:
	hack/check.sh

# meshbed on two Kind clusters, end to end (Docker started if needed, the
# node image built offline or reused from /var/cache/meshbed). KEEP=1 keeps
# the clusters; NODE_IMAGE=kindest/node:vX uses a stock node image.
e2e:
	hack/e2e.sh

generate:
	hack/generate.sh

# Proves the committed generated code is current.
generate-check: generate
	git diff --exit-code -- bpf datapath

bench:
	hack/bench.sh

# make scenario NAME=failover [TARGET=sim|kind] [REPORT=dir] [KEEP=1] [SEED=n]
scenario:
	hack/scenario.sh $(NAME)

# The long chaos tests (minutes; not in make test). COUNT=n repeats them.
chaos-test:
	hack/chaos-test.sh

# meshbed against Cilium's own code: builds Cilium's clustermesh-apiserver
# (pinned release, scratch module under /var/cache/meshbed/interop; first
# run only) and runs the interop tests. Not in make test.
interop:
	hack/interop.sh

clean:
	rm -rf bin
