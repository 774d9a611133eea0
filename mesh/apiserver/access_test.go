package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
)

// TestAccessMatrix connects with every certificate of every cluster of a
// two-cluster mesh (one CA) to each cluster's mesh-apiserver and tries
// every kind of request — get, watch, put, delete, txn, and an admin call —
// on keys inside and outside each user's permitted prefixes. Every cell is
// asserted against the policy written out below, independently of
// rolePermissions: a cluster's admin, agents and kvstoremesh are nothing in
// another cluster; a remote reader reads the exported state, the read
// cluster's own config and canaries and the heartbeat, and nothing else.
func TestAccessMatrix(t *testing.T) {
	ca, err := pki.NewCA("matrix-mesh", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	clusters := []string{"cluster1", "cluster2"}
	servers := map[string]*Server{}
	for i, name := range clusters {
		dir := pki.Dir(t.TempDir())
		if err := pki.IssueServerTLS(dir, ca, name, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour); err != nil {
			t.Fatal(err)
		}
		other := clusters[1-i]
		s, _ := start(t, &mesh{ca: ca, dir: dir}, newEnv(), func(c *Config) {
			c.ClusterName, c.ClusterID, c.RemoteClusters = name, uint32(i+1), []string{other}
		})
		// What a kvstoremesh would have written: a cached cluster-config,
		// a cache entry and a canary of the other cluster.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		for _, k := range []string{wire.ClusterConfigKey(other), wire.CacheNodesPrefix + "/" + other + "/n1",
			wire.SyncedKey(other, wire.CacheNodesPrefix), wire.NodeKey(name, "n1")} {
			if err := s.Client().Put(ctx, k, []byte("{}")); err != nil {
				t.Fatal(err)
			}
		}
		cancel()
		servers[name] = s
	}

	// The keys of server S, by what they are.
	keys := func(s string) map[string]string {
		other := "cluster1"
		if s == "cluster1" {
			other = "cluster2"
		}
		return map[string]string{
			"state":        wire.NodeKey(s, "n1"),
			"cache":        wire.CacheNodesPrefix + "/" + other + "/n1",
			"own config":   wire.ClusterConfigKey(s),
			"other config": wire.ClusterConfigKey(other),
			"own canary":   wire.CanaryKey(wire.Nodes, s, false),
			"other canary": wire.SyncedKey(other, wire.CacheNodesPrefix),
			"heartbeat":    wire.HeartbeatKey,
			"heartbeat/x":  wire.HeartbeatKey + "/x",
			"elsewhere":    "meshbed-test/x",
		}
	}
	// The policy: which kinds of key user may read and write on server s.
	// The admin call and anything not listed are refused.
	type grants struct{ read, write []string }
	policy := func(role, owner, s string) (g grants, admin bool) {
		switch {
		case role == "admin" && owner == s:
			all := []string{"state", "cache", "own config", "other config", "own canary", "other canary", "heartbeat", "heartbeat/x", "elsewhere"}
			return grants{all, all}, true
		case role == "local" && owner == s:
			return grants{read: []string{"state", "cache", "own config", "other config", "own canary", "other canary", "heartbeat", "heartbeat/x"}}, false
		case role == "kvstoremesh" && owner == s:
			return grants{
				read:  []string{"state", "cache", "own config", "other config", "own canary", "other canary", "heartbeat", "heartbeat/x"},
				write: []string{"cache", "own config", "other config", "own canary", "other canary"},
			}, false
		case role == "remote" && owner != s:
			return grants{read: []string{"state", "own config", "own canary", "heartbeat", "heartbeat/x"}}, false
		}
		return grants{}, false
	}
	users := map[string]func(string) string{
		"admin": pki.AdminUser, "local": pki.LocalUser, "kvstoremesh": pki.KVStoreMeshUser, "remote": pki.RemoteUser,
	}
	m := &mesh{ca: ca}
	for _, s := range clusters {
		for _, owner := range clusters {
			for _, role := range []string{"admin", "local", "kvstoremesh", "remote"} {
				user := users[role](owner)
				t.Run(fmt.Sprintf("%s@%s", user, s), func(t *testing.T) {
					c := m.client(t, servers[s], m.pair(t, user))
					g, admin := policy(role, owner, s)
					for what, key := range keys(s) {
						for _, op := range []string{"get", "watch", "put", "delete", "txn"} {
							want := contains(g.read, what)
							if op == "put" || op == "delete" || op == "txn" {
								want = contains(g.write, what)
							}
							err := try(c, op, key)
							if err != nil && !refused(err) {
								t.Errorf("%s %s (%s): %v, neither an answer nor a refusal", op, key, what, err)
							} else if (err == nil) != want {
								t.Errorf("%s %s (%s): err = %v, want allowed=%v", op, key, what, err, want)
							}
						}
					}
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
					_, err := c.UserList(ctx)
					cancel()
					if err != nil && !refused(err) {
						t.Errorf("user list: %v, neither an answer nor a refusal", err)
					} else if (err == nil) != admin {
						t.Errorf("user list: err = %v, want allowed=%v", err, admin)
					}
				})
			}
		}
	}
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

// try makes one request of kind op on key and returns its error; a refused
// watch is one the server cancels instead of confirming its creation.
func try(c *clientv3.Client, op, key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var err error
	switch op {
	case "get":
		_, err = c.Get(ctx, key)
	case "put":
		_, err = c.Put(ctx, key, "{}")
	case "delete":
		_, err = c.Delete(ctx, key)
	case "txn":
		_, err = c.Txn(ctx).If(clientv3.Compare(clientv3.Version(key), ">", -1)).Then(clientv3.OpPut(key, "{}")).Commit()
	case "watch":
		wch := c.Watch(clientv3.WithRequireLeader(ctx), key, clientv3.WithCreatedNotify())
		resp, ok := <-wch
		switch {
		case !ok:
			err = errors.New("watch closed without an answer")
		case resp.Canceled || resp.Err() != nil:
			err = fmt.Errorf("watch canceled: %v (%s)", resp.Err(), resp.CancelReason)
		case !resp.Created:
			err = errors.New("first watch response is not its creation")
		}
	default:
		err = fmt.Errorf("unknown op %q", op)
	}
	return err
}

// refused tells an authorization refusal (what etcd answers to a user it
// does not know or a request outside its role) from any other failure.
func refused(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "permission denied") || strings.Contains(msg, "user name not found") ||
		strings.Contains(msg, "authentication failed") || strings.Contains(msg, "user name is empty")
}
