package kvstore

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// Operations measures the etcd calls of a component as Cilium's
// cilium_kvstore_operations_duration_seconds does: one histogram with the
// labels action (the etcd method: Range, Put, Txn, DeleteRange,
// LeaseGrant, ...), kind (the etcd service: KV, Lease, Auth, ...), outcome
// (success or failure) and scope (what the connection is for: "local",
// "remote/<cluster>").
type Operations struct {
	hist *prometheus.HistogramVec
}

// NewOperations registers the histogram under name (Cilium's names:
// "cilium_kvstore_operations_duration_seconds" for an agent,
// "cilium_kvstoremesh_kvstore_operations_duration_seconds",
// "cilium_clustermesh_apiserver_kvstore_operations_duration_seconds") in
// reg. A nil reg gives Operations that measure nothing.
func NewOperations(reg prometheus.Registerer, name string) (*Operations, error) {
	if reg == nil {
		return &Operations{}, nil
	}
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    name,
		Help:    "Duration in seconds of kvstore operations",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"action", "kind", "outcome", "scope"})
	if err := reg.Register(h); err != nil {
		return nil, err
	}
	return &Operations{hist: h}, nil
}

// scopeKey carries a call's scope label in its context.
type scopeKey struct{}

// WithScope labels the calls made with ctx (and contexts derived from it)
// with scope in the Operations series, overriding the connection's: for a
// connection shared by several users, each labels its own calls.
func WithScope(ctx context.Context, scope string) context.Context {
	return context.WithValue(ctx, scopeKey{}, scope)
}

// DialOption returns the gRPC option that measures every unary call of a
// connection (watches are streams and are not timed). scope labels the
// connection's series, unless the call's context has one (WithScope).
func (o *Operations) DialOption(scope string) grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any,
		cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		scope := scope
		if s, ok := ctx.Value(scopeKey{}).(string); ok {
			scope = s
		}
		start := time.Now()
		err := invoker(ctx, method, req, reply, cc, opts...)
		if o != nil && o.hist != nil {
			kind, action := splitMethod(method)
			outcome := "success"
			if err != nil {
				outcome = "failure"
			}
			o.hist.WithLabelValues(action, kind, outcome, scope).Observe(time.Since(start).Seconds())
		}
		return err
	})
}

// splitMethod turns "/etcdserverpb.KV/Range" into ("KV", "Range").
func splitMethod(method string) (kind, action string) {
	svc, action, ok := strings.Cut(strings.TrimPrefix(method, "/"), "/")
	if !ok {
		return "", method
	}
	if i := strings.LastIndexByte(svc, '.'); i >= 0 {
		svc = svc[i+1:]
	}
	return svc, action
}
