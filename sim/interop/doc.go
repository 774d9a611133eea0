// Package interop holds the interop tests (build tag interop, run by make
// interop): meshbed's simulated mesh against Cilium's own code, built from
// a pinned Cilium release by hack/interop.sh. The package has no code of
// its own.
package interop
