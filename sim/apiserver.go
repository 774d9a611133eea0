package sim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/meshbed/meshbed/mesh/apiserver"
	"github.com/meshbed/meshbed/mesh/event"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/kvstoremesh"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/remote"
)

// apiserverPort is the etcd client port of every simulated mesh-apiserver.
const apiserverPort = 2379

func (c *Cluster) tlsDir() pki.Dir {
	return pki.Dir(filepath.Join(c.mesh.dir, "tls", c.spec.Name))
}

// prepareTLS issues the cluster's certificates from the mesh CA: the etcd
// server pair and admin client of its apiserver, the local agents' client,
// and this cluster's client for reading remote clusters, each user named
// after the cluster (mesh/pki).
func (c *Cluster) prepareTLS() error {
	dir := c.tlsDir()
	if err := os.MkdirAll(string(dir), 0o700); err != nil {
		return err
	}
	const validity = 24 * time.Hour
	if err := pki.IssueServerTLS(dir, c.mesh.ca, c.spec.Name, []net.IP{c.apiIP.AsSlice()}, validity); err != nil {
		return fmt.Errorf("apiserver certificates: %w", err)
	}
	reader := pki.RemoteUser(c.spec.Name)
	for _, p := range []struct{ pair, user string }{
		{pki.LocalAgentPair, pki.LocalUser(c.spec.Name)},
		{reader, reader},
	} {
		cert, err := c.mesh.ca.IssueClient(p.user, validity)
		if err != nil {
			return err
		}
		if err := dir.WriteCert(p.pair, cert); err != nil {
			return err
		}
	}
	return nil
}

// endpointOf is the URL of the mesh-apiserver at ip.
func endpointOf(ip netip.Addr) string {
	return "https://" + net.JoinHostPort(ip.String(), fmt.Sprint(apiserverPort))
}

// writeRemoteConfigs writes the clustermesh config directories: one file
// per connected cluster, named after it, in Cilium's etcd config format.
// kvstoremesh reads the remote clusters directly; agents read them through
// the local apiserver's cache when kvstoremesh runs, directly otherwise.
func (c *Cluster) writeRemoteConfigs() error {
	dir := c.tlsDir()
	reader := pki.RemoteUser(c.spec.Name)
	for _, p := range c.mesh.peersOf(c) {
		direct := remote.NewEtcdConfig([]string{endpointOf(p.apiIP)}, dir, reader)
		agentCfg := direct
		if c.mesh.spec.KVStoreMesh {
			agentCfg = remote.NewEtcdConfig([]string{endpointOf(c.apiIP)}, dir, pki.LocalAgentPair)
		}
		for _, f := range []struct {
			dir string
			cfg remote.EtcdConfig
		}{{c.kvstoremeshConfigDir(), direct}, {c.agentConfigDir(), agentCfg}} {
			data, err := f.cfg.Marshal()
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(f.dir, p.spec.Name), data, 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// StartAPIServer starts the cluster's mesh-apiserver (with an empty,
// ephemeral etcd) in its network namespace, and kvstoremesh with it when
// the mesh uses kvstoremesh.
func (c *Cluster) StartAPIServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.startAPIServerLocked(); err != nil {
		return err
	}
	if c.mesh.spec.KVStoreMesh && c.kmWanted {
		return c.startKVStoreMeshLocked()
	}
	return nil
}

// startAPIServerLocked starts the apiserver alone. The mesh's bring-up
// starts every apiserver this way before any kvstoremesh, so that no
// cluster's etcd bootstraps its users and roles while earlier clusters'
// kvstoremeshes already replicate (at 64 clusters that load made later
// bootstraps miss their deadline).
func (c *Cluster) startAPIServerLocked() error {
	if c.apiserver != nil {
		return fmt.Errorf("apiserver of %s is already running", c.spec.Name)
	}
	var peers []string
	for _, p := range c.mesh.peersOf(c) {
		peers = append(peers, p.spec.Name)
	}
	// The binary's defaults (apiserver.DefaultConfig), then the environment.
	cfg := apiserver.DefaultConfig()
	cfg.ClusterName, cfg.ClusterID = c.spec.Name, c.spec.ID
	cfg.Kube, cfg.Dynamic = c.API.Client, c.API.Dynamic
	cfg.ListenAddress = net.JoinHostPort(c.apiIP.String(), fmt.Sprint(apiserverPort))
	cfg.TLSDir = c.tlsDir()
	cfg.DataDir = filepath.Join(c.mesh.dir, "etcd", fmt.Sprint(c.spec.ID))
	cfg.RemoteClusters = peers
	cfg.Logger = c.log.With("component", "apiserver")
	reg, events, err := c.mesh.registry(c.spec.Name, "", event.ComponentAPIServer)
	if err != nil {
		return err
	}
	cfg.Events, cfg.Metrics = events, reg
	// Deliberate override: raft timings ten times shorter than the
	// binary's (100/1000 ms), so that a simulated apiserver's etcd elects
	// itself sooner on every start and restart (bring-up and restart
	// measurements count that time).
	cfg.TickMs, cfg.ElectionMs = 10, 100
	srv, err := apiserver.New(cfg)
	if err != nil {
		return err
	}
	// Start's context outlives Start: the apiserver's own etcd client keeps
	// it. The apiserver bounds its start by itself.
	if err := c.apiNS.Do(func() error { return srv.Start(c.mesh.ctx) }); err != nil {
		srv.Close()
		return err
	}
	c.srv = srv
	c.apiserver = startProc(c.mesh.ctx, c.log, "apiserver", func(ctx context.Context) error {
		err := srv.Run(ctx)
		return errors.Join(err, srv.Close())
	})
	return nil
}

// StopAPIServer stops the apiserver and its etcd (and kvstoremesh, which
// lives on it). Everything in the etcd is lost, as with Cilium's ephemeral
// clustermesh-apiserver.
func (c *Cluster) StopAPIServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.apiserver == nil {
		return fmt.Errorf("apiserver of %s is not running", c.spec.Name)
	}
	var errs []error
	if c.kvstoremesh != nil {
		errs = append(errs, c.kvstoremesh.stop())
		c.kvstoremesh = nil
	}
	errs = append(errs, c.apiserver.stop())
	c.apiserver, c.srv = nil, nil
	return errors.Join(errs...)
}

// StartKVStoreMesh starts kvstoremesh on the running apiserver.
func (c *Cluster) StartKVStoreMesh() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.mesh.spec.KVStoreMesh {
		return fmt.Errorf("cluster %s does not use kvstoremesh", c.spec.Name)
	}
	c.kmWanted = true
	if c.kvstoremesh != nil {
		return fmt.Errorf("kvstoremesh of %s is already running", c.spec.Name)
	}
	if c.srv == nil {
		return fmt.Errorf("kvstoremesh of %s: the apiserver is not running", c.spec.Name)
	}
	return c.startKVStoreMeshLocked()
}

func (c *Cluster) startKVStoreMeshLocked() error {
	reg, events, err := c.mesh.registry(c.spec.Name, "", event.ComponentKVStoreMesh)
	if err != nil {
		return err
	}
	km, err := kvstoremesh.New(kvstoremesh.Config{
		ClusterName: c.spec.Name, ClusterID: c.spec.ID,
		ConfigDir:      c.kvstoremeshConfigDir(),
		Dialer:         func(ctx context.Context, addr string) (net.Conn, error) { return c.apiNS.Dial(ctx, nil, "tcp", addr) },
		Local:          c.srv.Client(),
		HealthInterval: c.mesh.spec.HealthInterval, HealthTimeout: c.mesh.spec.HealthTimeout,
		Logger: c.log.With("component", "kvstoremesh"),
		Events: events, Metrics: reg,
	})
	if err != nil {
		return err
	}
	c.km = km
	c.kvstoremesh = startProc(c.mesh.ctx, c.log, "kvstoremesh", km.Run)
	return nil
}

// StopKVStoreMesh stops kvstoremesh; the cache it wrote stays in the etcd.
func (c *Cluster) StopKVStoreMesh() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.kmWanted = false
	if c.kvstoremesh == nil {
		return fmt.Errorf("kvstoremesh of %s is not running", c.spec.Name)
	}
	err := c.kvstoremesh.stop()
	c.kvstoremesh, c.km = nil, nil
	return err
}

// Running lists the cluster's control-plane components that are running.
func (c *Cluster) Running() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	if c.apiserver != nil {
		out = append(out, "apiserver")
	}
	if c.kvstoremesh != nil {
		out = append(out, "kvstoremesh")
	}
	for _, n := range c.nodes {
		if n.Agent() != nil {
			out = append(out, "agent/"+n.name)
		}
	}
	return out
}

// kv is the apiserver's own (root) client, or an error when it is down.
func (c *Cluster) kv() (*kvstore.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.srv == nil {
		return nil, fmt.Errorf("apiserver of %s is not running", c.spec.Name)
	}
	return c.srv.Client(), nil
}

// KVStoreGet reads a key of the cluster's mesh-apiserver etcd.
func (c *Cluster) KVStoreGet(ctx context.Context, key string) ([]byte, bool, error) {
	kv, err := c.kv()
	if err != nil {
		return nil, false, err
	}
	return kv.Get(ctx, key)
}

// KVStoreList reads every key under prefix.
func (c *Cluster) KVStoreList(ctx context.Context, prefix string) (map[string]string, error) {
	kv, err := c.kv()
	if err != nil {
		return nil, err
	}
	kvs, _, err := kv.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(kvs))
	for k, v := range kvs {
		out[k] = string(v)
	}
	return out, nil
}

// KVStoreScan reads every key that begins with prefix, a plain key prefix
// (KVStoreList reads a directory: it appends a "/").
func (c *Cluster) KVStoreScan(ctx context.Context, prefix string) (map[string][]byte, error) {
	kv, err := c.kv()
	if err != nil {
		return nil, err
	}
	return kv.ListKeyPrefix(ctx, prefix)
}

// KVStoreCount counts the keys under prefix.
func (c *Cluster) KVStoreCount(ctx context.Context, prefix string) (int, error) {
	kvs, err := c.KVStoreList(ctx, prefix)
	return len(kvs), err
}

// KVStoreMeshStatus returns what the cluster's kvstoremesh knows of every
// remote cluster (its cache, and its remote connections); ok is false when
// kvstoremesh is not running.
func (c *Cluster) KVStoreMeshStatus() (st []kvstoremesh.ClusterStatus, conns []remote.ClusterStatus, ok bool) {
	c.mu.Lock()
	km := c.km
	c.mu.Unlock()
	if km == nil {
		return nil, nil, false
	}
	return km.Status(), km.Remotes(), true
}

// UsesKVStoreMesh reports whether the cluster's agents read the remote
// clusters through kvstoremesh.
func (c *Cluster) UsesKVStoreMesh() bool { return c.mesh.spec.KVStoreMesh }

// withLock runs f with the cluster's lock held.
func (c *Cluster) withLock(f func() error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return f()
}
