package kvstoremesh

// A fleet is many remote clusters served from a child process, for
// BenchmarkBootstrap: the benchmark process then holds only what a
// mesh-apiserver holds (kvstoremesh and the local etcd), so its heap and
// RSS are kvstoremesh's cost, and the remote side does not share its
// address space.
//
// Each remote cluster is its own etcd endpoint, reached over its own gRPC
// connection, as in the product. Running hundreds of etcd servers is too
// heavy, so a few embedded etcd servers hold the clusters' state, each
// cluster under its own key namespace ("<cluster>/cilium/state/..."), and
// each cluster's endpoint is an etcd gRPC proxy (etcd's own grpcproxy, the
// code behind `etcd grpc-proxy --namespace`) that maps the namespace to the
// plain key space. A reader of cluster-007's endpoint sees exactly
// cilium/state/..., cilium/cluster-config/cluster-007 and its canaries, as
// from a dedicated server: ip and identity keys, which carry no cluster
// name, do not mix. What differs from the product: the proxies add a hop
// and the servers are shared (both make the remote side slower, not
// faster), and connections are plaintext on loopback.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

// fleetEnv carries the fleetSpec (JSON) to the child process.
const fleetEnv = "MESHBED_KVSTOREMESH_FLEET"

func TestMain(m *testing.M) {
	if spec := os.Getenv(fleetEnv); spec != "" {
		os.Exit(runFleet(spec))
	}
	os.Exit(m.Run())
}

// fleetSpec sizes a fleet. Per cluster: Nodes nodes, Endpoints ipcache
// entries (pods, spread over the nodes), Identities identities (the pods
// share them), Services global services of BackendsPerService backends.
type fleetSpec struct {
	Clusters           int    `json:"clusters"`
	ClustersPerServer  int    `json:"clustersPerServer"`
	FirstID            uint32 `json:"firstID"`
	Nodes              int    `json:"nodes"`
	Endpoints          int    `json:"endpoints"`
	Identities         int    `json:"identities"`
	Services           int    `json:"services"`
	BackendsPerService int    `json:"backendsPerService"`
}

// keysPerCluster is how many state keys a cluster of the spec exports.
func (s fleetSpec) keysPerCluster() int { return s.Nodes + s.Endpoints + s.Identities + s.Services }

func (s fleetSpec) name(i int) string { return fmt.Sprintf("cluster-%03d", i) }

// fleetReady is the child's report once every cluster is published.
type fleetReady struct {
	Endpoints map[string]string `json:"endpoints"` // cluster → client URL
	Servers   int               `json:"servers"`
	Publish   time.Duration     `json:"publish"`
	Err       string            `json:"err,omitempty"`
}

// startFleet runs the fleet in a child process (this test binary) until the
// benchmark ends and returns each cluster's endpoint.
func startFleet(tb testing.TB, spec fleetSpec) fleetReady {
	tb.Helper()
	js, err := json.Marshal(spec)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), fleetEnv+"="+string(js))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start fleet: %v", err)
	}
	tb.Cleanup(func() {
		// Closing stdin asks the child to exit; kill it if it does not.
		stdin.Close()
		done := make(chan struct{})
		go func() {
			cmd.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	line, err := bufio.NewReader(stdout).ReadBytes('\n')
	if err != nil {
		tb.Fatalf("fleet did not report: %v", err)
	}
	var ready fleetReady
	if err := json.Unmarshal(line, &ready); err != nil {
		tb.Fatalf("fleet report %q: %v", line, err)
	}
	if ready.Err != "" {
		tb.Fatalf("fleet: %s", ready.Err)
	}
	return ready
}

// runFleet is the child process: it serves the fleet until stdin closes.
func runFleet(specJSON string) int {
	report := func(r fleetReady) {
		b, _ := json.Marshal(r)
		os.Stdout.Write(append(b, '\n'))
	}
	var spec fleetSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		report(fleetReady{Err: err.Error()})
		return 1
	}
	dir, err := os.MkdirTemp("", "kvstoremesh-fleet-")
	if err != nil {
		report(fleetReady{Err: err.Error()})
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready, err := serveFleet(ctx, spec, dir)
	if err != nil {
		report(fleetReady{Err: err.Error()})
		return 1
	}
	report(ready)
	io.Copy(io.Discard, os.Stdin)
	return 0
}

func serveFleet(ctx context.Context, spec fleetSpec, dir string) (fleetReady, error) {
	nServers := (spec.Clusters + spec.ClustersPerServer - 1) / spec.ClustersPerServer
	servers := make([]*embed.Etcd, nServers)
	for i := range servers {
		e, err := startBackend(filepath.Join(dir, fmt.Sprint(i)))
		if err != nil {
			return fleetReady{}, err
		}
		servers[i] = e
	}
	ready := fleetReady{Endpoints: map[string]string{}, Servers: nServers}
	start := time.Now()
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i := range spec.Clusters {
		name := spec.name(i)
		backend := servers[i/spec.ClustersPerServer].Clients[0].Addr().String()
		addr, err := startProxy(ctx, backend, name+"/")
		if err != nil {
			return fleetReady{}, fmt.Errorf("proxy for %s: %w", name, err)
		}
		ready.Endpoints[name] = "http://" + addr
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := publish(ctx, spec, i, "http://"+addr); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("publish %s: %w", name, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	ready.Publish = time.Since(start)
	return ready, errors.Join(errs...)
}

// freeURL returns a loopback URL with a port that was free a moment ago.
func freeURL() (url.URL, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return url.URL{}, err
	}
	defer l.Close()
	return url.URL{Scheme: "http", Host: l.Addr().String()}, nil
}

// startBackend starts an embedded single-member etcd tuned like etcdtest's.
func startBackend(dir string) (*embed.Etcd, error) {
	client, err := freeURL()
	if err != nil {
		return nil, err
	}
	peer, err := freeURL()
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "fleet"
	cfg.Dir = dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.TickMs, cfg.ElectionMs = 10, 50
	cfg.UnsafeNoFsync = true
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.GRPCKeepAliveMinTime = 100 * time.Millisecond
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start backend etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(30 * time.Second):
		e.Close()
		return nil, errors.New("backend etcd not ready")
	}
}

// startProxy serves the etcd API on a new loopback port, mapping every key
// k to prefix+k on backend.
func startProxy(ctx context.Context, backend, prefix string) (string, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{backend}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return "", err
	}
	c.KV = namespace.NewKV(c.KV, prefix)
	c.Watcher = namespace.NewWatcher(c.Watcher, prefix)
	c.Lease = namespace.NewLease(c.Lease, prefix)
	kvp, _ := grpcproxy.NewKvProxy(c)
	watchp, _ := grpcproxy.NewWatchProxy(ctx, zap.NewNop(), c)
	leasep, _ := grpcproxy.NewLeaseProxy(ctx, c)
	srv := grpc.NewServer()
	pb.RegisterKVServer(srv, kvp)
	pb.RegisterWatchServer(srv, watchp)
	pb.RegisterLeaseServer(srv, leasep)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	go srv.Serve(l)
	return l.Addr().String(), nil
}

// publish writes cluster i's state through its endpoint with a Writer, as
// its mesh-apiserver would, and waits until the canaries are written.
func publish(ctx context.Context, spec fleetSpec, i int, endpoint string) error {
	c, err := kvstore.Connect(ctx, kvstore.Config{Endpoints: []string{endpoint}, RequestTimeout: 30 * time.Second})
	if err != nil {
		return err
	}
	w := kvstore.NewWriter(c, kvstore.WriterConfig{})
	// The Writer keeps running (and its lease alive) until the process ends.
	go w.Run(ctx)
	name, id := spec.name(i), spec.FirstID+uint32(i)
	for k, v := range clusterState(spec, name, id) {
		w.Upsert(k, v)
	}
	for _, r := range wire.Resources {
		w.Synced(wire.CanaryKey(r, name, false))
	}
	fctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	return w.Flush(fctx)
}

// clusterState is what a cluster of the spec exports: cluster-config and
// every state key with its value.
func clusterState(spec fleetSpec, name string, id uint32) map[string][]byte {
	out := map[string][]byte{}
	put := func(k string, v any) {
		b, err := json.Marshal(v)
		if err != nil {
			panic(err)
		}
		out[k] = b
	}
	put(wire.ClusterConfigKey(name), wire.ClusterConfig{ID: id, Capabilities: wire.Capabilities{
		SyncedCanaries: true, MaxConnectedClusters: wire.MaxConnectedClusters255}})
	nodeIP := func(n int) net.IP { return net.IPv4(172, 20, byte(id), byte(n+1)) }
	for n := range spec.Nodes {
		node := fmt.Sprintf("node-%03d", n)
		put(wire.NodeKey(name, node), wire.Node{
			Name: node, Cluster: name, ClusterID: id, Source: "custom-resource",
			IPAddresses:   []wire.NodeAddress{{Type: wire.NodeAddressInternalIP, IP: nodeIP(n)}},
			IPv4AllocCIDR: &net.IPNet{IP: net.IPv4(10, byte(id), byte(n), 0).To4(), Mask: net.CIDRMask(24, 32)},
			Labels:        map[string]string{"kubernetes.io/hostname": node}, Annotations: map[string]string{},
		})
	}
	for n := range spec.Identities {
		labels := wire.NewLabels(wire.LabelSourceK8s, map[string]string{
			"app": fmt.Sprintf("app-%03d", n), wire.PolicyClusterLabel: name, wire.PodNamespaceLabel: "default",
		})
		out[wire.IdentityKey(id<<16|uint32(n+1))] = []byte(labels.String())
	}
	podsPerNode := max(1, spec.Endpoints/max(1, spec.Nodes))
	podIP := func(e int) net.IP { return net.IPv4(10, byte(id), byte(e/podsPerNode), byte(2+e%podsPerNode)) }
	for e := range spec.Endpoints {
		ip := podIP(e)
		put(wire.IPKey(ip.String()), wire.IPIdentityPair{
			IP: ip, HostIP: nodeIP(e / podsPerNode), ID: id<<16 | uint32(1+e%max(1, spec.Identities)),
			K8sNamespace: "default", K8sPodName: fmt.Sprintf("pod-%04d", e),
			NamedPorts: []wire.NamedPort{{Name: "http", Port: 80, Protocol: "TCP"}},
		})
	}
	for s := range spec.Services {
		svc := fmt.Sprintf("svc-%03d", s)
		cs := wire.ClusterService{
			Cluster: name, ClusterID: id, Namespace: "default", Name: svc, Shared: true, IncludeExternal: true,
			Frontends: map[string]wire.PortConfiguration{fmt.Sprintf("10.96.%d.%d", s/250, 1+s%250): {"http": {Protocol: "TCP", Port: 80}}},
			Backends:  map[string]wire.PortConfiguration{},
			Labels:    map[string]string{}, Selector: map[string]string{"app": svc},
		}
		for b := range spec.BackendsPerService {
			cs.Backends[podIP((s*spec.BackendsPerService+b)%max(1, spec.Endpoints)).String()] = wire.PortConfiguration{"http": {Protocol: "TCP", Port: 8080}}
		}
		put(wire.ServiceKey(name, "default", svc), cs)
	}
	return out
}
