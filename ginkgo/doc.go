// Package ginkgo holds meshbed's Ginkgo/Gomega suites: every scenario file
// in scenarios/ becomes a spec run against the simulator here (and, later,
// against Kind clusters where Docker runs).
package ginkgo
