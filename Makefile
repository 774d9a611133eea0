# The Makefile only delegates to hack/ scripts.
.PHONY: all build test generate generate-check bench scenario deps clean

all: build

deps:
	hack/deps.sh

build: deps
	go build -o bin/ ./cmd/...

test:
	hack/test.sh

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
