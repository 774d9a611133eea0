// Package kvstore is the mesh's access layer to etcd: a connection with a
// custom dialer and a bounded health signal, a Writer that owns a set of
// leased keys, and a Reader that mirrors a prefix into events.
//
// The three consumers use it as follows:
//
//   - mesh-apiserver: one Writer on its own (ephemeral) etcd. It upserts its
//     cluster's nodes, services, ipcache entries and identities, calls
//     Writer.Synced for each prefix once the initial set is enqueued (which
//     prunes leftovers and then writes the sync canary), and upserts the
//     cluster-config and heartbeat keys.
//   - kvstoremesh: per remote cluster, a Client dialled to the remote etcd,
//     one Reader per remote prefix (waiting for the remote canary), and a
//     Writer on the local etcd that copies every event under the cache prefix
//     and writes the cached cluster-config and canaries. A Health on the remote
//     Client tells it when the remote cluster is lost.
//   - agent: Readers (on the remote etcd directly, or on the local cache) whose
//     events it decodes with package wire, plus a Health to withdraw the
//     cluster's backends within a bounded time when it becomes unreachable.
//
// Every component runs in Run(ctx) and stops when ctx is done; none logs
// except through the *slog.Logger it is given.
package kvstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/connectivity"
)

// Defaults of Config. The keepalive makes gRPC drop a silently dead
// transport (black-holed partition) and reconnect, which in turn makes
// Readers resync. It is not what bounds loss detection (Health is): etcd
// servers refuse pings more often than every 5 s by default
// (--grpc-keepalive-min-time) and would close the connection.
const (
	DefaultDialTimeout      = 5 * time.Second
	DefaultKeepAliveTime    = 10 * time.Second
	DefaultKeepAliveTimeout = 3 * time.Second
	DefaultRequestTimeout   = 5 * time.Second
	// DefaultMaxReconnectDelay caps gRPC's reconnect backoff (its own
	// default cap is 2 minutes, far too long to notice a healed partition).
	DefaultMaxReconnectDelay = 5 * time.Second
)

// Config describes how to reach one etcd cluster.
type Config struct {
	// Endpoints are etcd client URLs, e.g. "https://10.0.0.1:2379".
	Endpoints []string
	// TLS, when set, is used for every endpoint (mTLS: put the client
	// certificate in it). Nil means plaintext.
	TLS *tls.Config
	// Username and Password authenticate with etcd's auth, if enabled.
	Username, Password string

	// DialTimeout bounds the initial connection; zero means
	// DefaultDialTimeout. Connect does not fail when the server is down: the
	// connection is retried in the background and Health reports it.
	DialTimeout time.Duration
	// KeepAliveTime and KeepAliveTimeout set the gRPC keepalive pings that
	// detect a dead transport; zero means the defaults above. KeepAliveTime
	// must not be below the server's --grpc-keepalive-min-time, and gRPC
	// raises anything below 10 s to 10 s.
	KeepAliveTime, KeepAliveTimeout time.Duration
	// RequestTimeout bounds the one-shot requests of Client (Get, Put, ...)
	// when the caller's context has no earlier deadline; zero means
	// DefaultRequestTimeout.
	RequestTimeout time.Duration

	// MaxReconnectDelay caps the jittered exponential backoff between
	// reconnection attempts (it starts at 100ms); zero means
	// DefaultMaxReconnectDelay.
	MaxReconnectDelay time.Duration

	// Dialer, when set, opens every transport connection (for instance from
	// inside a network namespace in the simulator). addr is "host:port".
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// DialOptions are appended to the gRPC dial options, after Dialer.
	DialOptions []grpc.DialOption

	// Logger receives the package's diagnostics; nil discards them.
	Logger *slog.Logger
}

// Client is a connection to one etcd cluster. It is safe for concurrent use;
// Writers, Readers and Health built on it share its single gRPC connection.
type Client struct {
	etcd   *clientv3.Client
	cfg    Config
	logger *slog.Logger

	// epoch and activity record when a successful response (or stream
	// message) last arrived: activity holds the monotonic time since epoch
	// in nanoseconds, 0 before the first. Every consumer of the connection
	// feeds it, which lets Health take any answer as proof of life rather
	// than its own probe only.
	epoch    time.Time
	activity atomic.Int64

	// transport follows the connections dialed, for Health's verdict on a
	// silence (transport.go).
	transport *transport
}

// Connect creates a Client. It does not wait for the server: an unreachable
// etcd is not an error here (readers and writers retry, Health reports it).
// It fails only on an invalid Config.
func Connect(ctx context.Context, cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("connect to etcd: no endpoints")
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.KeepAliveTime <= 0 {
		cfg.KeepAliveTime = DefaultKeepAliveTime
	}
	if cfg.KeepAliveTimeout <= 0 {
		cfg.KeepAliveTimeout = DefaultKeepAliveTimeout
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.MaxReconnectDelay <= 0 {
		cfg.MaxReconnectDelay = DefaultMaxReconnectDelay
	}
	c := &Client{cfg: cfg, logger: logger, epoch: time.Now(), transport: newTransport()}
	dialOpts := []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: grpcbackoff.Config{
			BaseDelay:  100 * time.Millisecond,
			Multiplier: 1.6,
			Jitter:     0.2,
			MaxDelay:   cfg.MaxReconnectDelay,
		},
		MinConnectTimeout: cfg.DialTimeout,
	})}
	dialOpts = append(dialOpts, grpc.WithContextDialer(c.transport.dialer(cfg.Dialer)))
	dialOpts = append(dialOpts, cfg.DialOptions...)
	// Last, so that they sit next to the wire: after the etcd client's
	// retries and any caller's interceptor, each sees one real answer.
	dialOpts = append(dialOpts,
		grpc.WithChainUnaryInterceptor(c.unaryActivity),
		grpc.WithChainStreamInterceptor(c.streamActivity))
	ec, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  cfg.TLS,
		Username:             cfg.Username,
		Password:             cfg.Password,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    cfg.KeepAliveTime,
		DialKeepAliveTimeout: cfg.KeepAliveTimeout,
		DialOptions:          dialOpts,
		Context:              ctx,
		// The etcd client logs through zap; this package logs through slog
		// only, so the client's own chatter is dropped.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	c.etcd = ec
	return c, nil
}

// LastActivity is when a successful response or stream message (a watch
// event, a lease keepalive answer) last arrived on the connection, zero if
// none has. Errors do not count: a server that answers only with errors
// (no leader, overloaded) is not proven alive by them.
func (c *Client) LastActivity() time.Time {
	d := c.activity.Load()
	if d == 0 {
		return time.Time{}
	}
	return c.epoch.Add(time.Duration(d))
}

func (c *Client) recordActivity() {
	// At least 1 so that an answer in the first nanosecond is not "none".
	c.activity.Store(max(int64(time.Since(c.epoch)), 1))
}

func (c *Client) unaryActivity(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if err == nil {
		c.recordActivity()
	}
	return err
}

func (c *Client) streamActivity(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &activityStream{ClientStream: s, c: c}, nil
}

// activityStream records every message received on a stream (watch
// responses, lease keepalive answers) as activity of its Client.
type activityStream struct {
	grpc.ClientStream
	c *Client
}

func (s *activityStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil {
		s.c.recordActivity()
	}
	return err
}

// Close closes the connection. Components still running on the Client see
// their requests fail and should be stopped first.
func (c *Client) Close() error {
	if err := c.etcd.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("close etcd client: %w", err)
	}
	return nil
}

// Etcd returns the underlying etcd client, for what this package does not
// cover (tests, diagnostics). Leases and watches opened on it are the
// caller's to manage.
func (c *Client) Etcd() *clientv3.Client { return c.etcd }

// Endpoints returns the configured endpoints.
func (c *Client) Endpoints() []string { return c.cfg.Endpoints }

func (c *Client) requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok && time.Until(d) < c.cfg.RequestTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.cfg.RequestTimeout)
}

// Get reads one key (linearizable). found is false when the key does not exist.
func (c *Client) Get(ctx context.Context, key string) (value []byte, found bool, err error) {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	resp, err := c.etcd.Get(ctx, key)
	if err != nil {
		return nil, false, fmt.Errorf("get %q: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, false, nil
	}
	return resp.Kvs[0].Value, true, nil
}

// List reads every key under prefix (a trailing "/" is added if missing, so
// "cluster1" never matches "cluster10") and the store revision of the read.
func (c *Client) List(ctx context.Context, prefix string) (kvs map[string][]byte, revision int64, err error) {
	prefix = DirPrefix(prefix)
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	resp, err := c.etcd.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, fmt.Errorf("list %q: %w", prefix, err)
	}
	kvs = make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	return kvs, resp.Header.Revision, nil
}

// ListKeyPrefix reads every key that begins with prefix exactly as given,
// as etcdctl get --prefix does: unlike List, no "/" is added, so
// "cilium/state/ip/v1/default/10.20." matches the addresses it begins.
func (c *Client) ListKeyPrefix(ctx context.Context, prefix string) (map[string][]byte, error) {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	resp, err := c.etcd.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("list keys beginning %q: %w", prefix, err)
	}
	kvs := make(map[string][]byte, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		kvs[string(kv.Key)] = kv.Value
	}
	return kvs, nil
}

// Put writes key without a lease: it stays until deleted. Owners of state
// use a Writer instead; Put is for tools and tests.
func (c *Client) Put(ctx context.Context, key string, value []byte) error {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	if _, err := c.etcd.Put(ctx, key, string(value)); err != nil {
		return fmt.Errorf("put %q: %w", key, err)
	}
	return nil
}

// Delete removes key; deleting a missing key is not an error.
func (c *Client) Delete(ctx context.Context, key string) error {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	if _, err := c.etcd.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete %q: %w", key, err)
	}
	return nil
}

// waitKeyRecheck bounds how long WaitKey trusts a watch alone: a watch on
// an etcd that restarted empty resumes at a revision the new store has not
// reached yet and would miss the key.
const waitKeyRecheck = 2 * time.Second

// WaitKey blocks until key exists and returns its value. It retries across
// connection errors until ctx is done, and then returns ctx's error. It is
// how readers wait for sync canaries and cluster-config.
func (c *Client) WaitKey(ctx context.Context, key string) ([]byte, error) {
	v, _, err := c.WaitKeyRev(ctx, key)
	return v, err
}

// WaitKeyRev is WaitKey that also returns the ModRevision of the value
// found: the revision at which it was written.
func (c *Client) WaitKeyRev(ctx context.Context, key string) ([]byte, int64, error) {
	bo := newBackoff(0, 0)
	for {
		kv, rev, err := c.getKV(ctx, key)
		if err == nil && kv != nil {
			return kv.Value, kv.ModRevision, nil
		}
		if err != nil {
			c.logger.Debug("waiting for key", "key", key, "error", err)
			if !bo.wait(ctx) {
				return nil, 0, fmt.Errorf("wait for %q: %w", key, ctx.Err())
			}
			continue
		}
		bo.reset()
		if kv, ok := c.watchForKey(ctx, key, rev); ok {
			return kv.Value, kv.ModRevision, nil
		}
		if ctx.Err() != nil {
			return nil, 0, fmt.Errorf("wait for %q: %w", key, ctx.Err())
		}
	}
}

// watchForKey watches key from after rev and returns its value once it is
// put. It gives up (false) on a watch error, a reconnect, or after
// waitKeyRecheck, so that the caller reads the key again.
func (c *Client) watchForKey(ctx context.Context, key string, rev int64) (*mvccpb.KeyValue, bool) {
	wctx, cancel := context.WithTimeout(ctx, waitKeyRecheck)
	defer cancel()
	reconnected := c.Reconnects(wctx)
	wch := c.etcd.Watch(clientv3.WithRequireLeader(wctx), key, clientv3.WithRev(rev+1))
	for {
		select {
		case <-reconnected:
			return nil, false
		case resp, ok := <-wch:
			if !ok || resp.Err() != nil {
				return nil, false
			}
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypePut {
					return ev.Kv, true
				}
			}
		}
	}
}

// getKV reads key: its KeyValue (nil if absent) and the revision of the
// read.
func (c *Client) getKV(ctx context.Context, key string) (*mvccpb.KeyValue, int64, error) {
	ctx, cancel := c.requestContext(ctx)
	defer cancel()
	resp, err := c.etcd.Get(ctx, key)
	if err != nil {
		return nil, 0, fmt.Errorf("get %q: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, nil
	}
	return resp.Kvs[0], resp.Header.Revision, nil
}

// Reconnects returns a channel that is closed the first time the gRPC
// connection becomes ready again after having been ready and then lost,
// or never if ctx ends first. Watches survive a reconnect by resuming at
// their last revision, which is wrong after the server restarted empty
// (the revision went back) and hides nothing but costs a relist
// otherwise; so every consumer resyncs on this signal.
func (c *Client) Reconnects(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{})
	conn := c.etcd.ActiveConnection()
	go func() {
		seenReady, lost := false, false
		s := conn.GetState()
		for {
			switch s {
			case connectivity.Ready:
				if lost {
					close(ch)
					return
				}
				seenReady = true
			case connectivity.Idle:
				// An idle channel only reconnects when asked.
				conn.Connect()
				lost = lost || seenReady
			case connectivity.Shutdown:
				return
			default:
				lost = lost || seenReady
			}
			if !conn.WaitForStateChange(ctx, s) {
				return
			}
			// The state left s. When s was Ready the connection was
			// lost, however briefly: on a busy machine this goroutine may
			// run only after the channel is Ready again, and reading the
			// state alone would miss the reconnect.
			if s == connectivity.Ready {
				lost = true
			}
			s = conn.GetState()
		}
	}()
	return ch
}

// DirPrefix returns prefix with exactly one trailing "/", the form every
// watch and list uses so that "cluster1" never matches "cluster10".
func DirPrefix(prefix string) string {
	return strings.TrimRight(prefix, "/") + "/"
}
