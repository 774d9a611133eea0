package remote

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/meshbed/meshbed/mesh/kvstore"
)

// sharedConn is one connection used by every remote cluster whose config
// has the same fingerprint: the same endpoints and the same TLS material,
// hence the same server seen as the same user. With kvstoremesh, an agent
// reads every remote cluster through its local mesh-apiserver, and one
// connection serves them all instead of one per remote cluster (at 64
// clusters, 63 connections per agent and as many on the server).
type sharedConn struct {
	client *kvstore.Client
	cancel context.CancelFunc
	refs   int
}

// acquireConn returns the connection for lc, opening it on first use, and
// the function that gives it back; the last release closes it. Calls are
// labelled with the cluster they are made for through the context
// (kvstore.WithScope), as the connection is no one cluster's.
func (m *Manager) acquireConn(lc *loadedConfig, logger *slog.Logger) (*kvstore.Client, func(), error) {
	m.connMu.Lock()
	defer m.connMu.Unlock()
	if sc, ok := m.conns[lc.fingerprint]; ok {
		sc.refs++
		return sc.client, m.releaser(lc.fingerprint, sc), nil
	}
	cfg := m.cfg
	// The connection outlives the cluster that opened it; the last release
	// cancels it.
	ctx, cancel := context.WithCancel(context.Background())
	client, err := kvstore.Connect(ctx, kvstore.Config{
		Endpoints:        lc.etcd.Endpoints,
		TLS:              lc.tls,
		Dialer:           cfg.Dialer,
		KeepAliveTime:    cfg.KeepAliveTime,
		KeepAliveTimeout: cfg.KeepAliveTimeout,
		RequestTimeout:   cfg.RequestTimeout,
		DialOptions: append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			// gRPC's default reconnect backoff grows to 2 minutes, far
			// beyond how fast a healed partition should be noticed.
			Backoff:           backoff.Config{BaseDelay: cfg.MinBackoff, Multiplier: 1.6, Jitter: 0.2, MaxDelay: cfg.MaxBackoff},
			MinConnectTimeout: max(cfg.MaxBackoff, 2*time.Second),
		}), m.metrics.dialOption()}, cfg.dialOptions...),
		Logger: logger,
	})
	if err != nil {
		cancel()
		return nil, nil, err
	}
	sc := &sharedConn{client: client, cancel: cancel, refs: 1}
	m.conns[lc.fingerprint] = sc
	return client, m.releaser(lc.fingerprint, sc), nil
}

func (m *Manager) releaser(key [sha256.Size]byte, sc *sharedConn) func() {
	return func() {
		m.connMu.Lock()
		sc.refs--
		last := sc.refs == 0
		if last && m.conns[key] == sc {
			delete(m.conns, key)
		}
		m.connMu.Unlock()
		if last {
			_ = sc.client.Close()
			sc.cancel()
		}
	}
}
