// Package metrics serves a component's Prometheus metrics. Every component
// (agent, mesh-apiserver, kvstoremesh) registers its own metrics in the
// prometheus.Registerer of its Config, never in the global default
// registry, so that many components in one process (the simulator) do not
// collide; a binary gives its components one registry (with the Go and
// process collectors) and serves it on --prometheus-serve-addr.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Default ports of --prometheus-serve-addr in the Kind manifests (Cilium's
// agent uses 9962, its kvstoremesh 9964; meshbed's mesh-apiserver takes
// 9963 between them).
const (
	AgentPort       = 9962
	APIServerPort   = 9963
	KVStoreMeshPort = 9964
)

// NewProcessRegistry returns a registry for a binary: the Go runtime and
// process collectors, to which the binary's components add theirs.
func NewProcessRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Serve serves g at /metrics on addr until ctx ends. It returns once the
// listener is bound (an error if it cannot be); the server runs in the
// background. An empty addr serves nothing.
func Serve(ctx context.Context, addr string, g prometheus.Gatherer, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--prometheus-serve-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelError)}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("Metrics server stopped", "addr", addr, "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("Serving Prometheus metrics", "addr", ln.Addr().String(), "path", "/metrics")
	return nil
}
