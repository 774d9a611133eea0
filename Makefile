# The Makefile only delegates to hack/ scripts.
.PHONY: all build test e2e generate generate-check bench scenario deps clean

all: build

deps:
	hack/deps.sh

build: deps
	go build -o bin/ ./cmd/...

test:
	hack/test.sh

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

# make scenario NAME=failover [REPORT=dir]
scenario:
	hack/scenario.sh $(NAME)

clean:
	rm -rf bin
