package apiserver

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
)

// etcdRootUser must exist for etcd to enable auth (see mesh/pki's users).
const etcdRootUser = "root"

// roles of the etcd auth: the admin user has root, the local and
// kvstoremesh users their own role, every remote user the shared remote
// role.
const (
	roleRoot        = "root"
	roleRemote      = "remote"
	roleLocal       = "local-agent"
	roleKVStoreMesh = "kvstoremesh"
)

// grant is one permission: a single key, or a prefix when prefix is set.
type grant struct {
	key    string
	prefix bool
	perm   clientv3.PermissionType
}

func read(key string) grant { return grant{key: key, perm: clientv3.PermissionType(clientv3.PermRead)} }
func readPrefix(p string) grant {
	return grant{key: p, prefix: true, perm: clientv3.PermissionType(clientv3.PermRead)}
}
func writePrefix(p string) grant {
	return grant{key: p, prefix: true, perm: clientv3.PermissionType(clientv3.PermReadWrite)}
}

// rolePermissions is the whole access policy of the apiserver's etcd.
func rolePermissions(cluster string) map[string][]grant {
	return map[string][]grant{
		// A remote reader needs exactly what mesh/remote reads of a cluster
		// it connects to directly: the state, this cluster's config and
		// canaries (not those of the clusters this one caches), and the
		// heartbeat its health probe reads. The heartbeat is granted as a
		// prefix because Cilium's etcd client lists and watches it as one
		// before anything else: with the key alone a Cilium client never
		// gets past its first request.
		roleRemote: {
			readPrefix(wire.StateRoot),
			read(wire.ClusterConfigKey(cluster)),
			readPrefix(wire.SyncedRoot + cluster + "/"),
			readPrefix(wire.HeartbeatKey),
		},
		roleLocal: {
			readPrefix(wire.StateRoot),
			readPrefix(wire.CacheRoot),
			readPrefix(wire.ClusterConfigRoot),
			readPrefix(wire.SyncedRoot),
			readPrefix(wire.HeartbeatKey),
		},
		roleKVStoreMesh: {
			readPrefix(wire.StateRoot),
			writePrefix(wire.CacheRoot),
			writePrefix(wire.ClusterConfigRoot),
			writePrefix(wire.SyncedRoot),
			readPrefix(wire.HeartbeatKey),
		},
	}
}

// localServerName (pki.LocalServerName) is the name the apiserver checks the server certificate
// against on its own unix-socket connection; server certificates issued
// with pki.IssueServerTLS carry it.
const localServerName = pki.LocalServerName

// startEtcd starts the embedded etcd. Its listeners are bound here, on the
// calling goroutine's thread, so in its network namespace.
func (s *Server) startEtcd() (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = s.cfg.ClusterName
	cfg.Dir = filepath.Join(s.dataDir, "etcd")
	host, _, err := net.SplitHostPort(s.cfg.ListenAddress)
	if err != nil {
		return nil, fmt.Errorf("listen address %q: %w", s.cfg.ListenAddress, err)
	}
	// The peer listener is never dialled (one member), but etcd insists on
	// one. Bind it next to the client listener: loopback may be down in a
	// fresh network namespace.
	peerHost := host
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		peerHost = "127.0.0.1"
	}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort(peerHost, "0")}
	client := url.URL{Scheme: "https", Host: s.cfg.ListenAddress}
	local := url.URL{Scheme: "unixs", Path: s.socketPath()}
	cfg.ListenClientUrls = []url.URL{client, local}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.InitialClusterToken = fmt.Sprintf("meshbed-%s-%d", s.cfg.ClusterName, time.Now().UnixNano())
	cfg.ClientTLSInfo.CertFile = s.cfg.TLSDir.CertFile(pki.ServerName)
	cfg.ClientTLSInfo.KeyFile = s.cfg.TLSDir.KeyFile(pki.ServerName)
	cfg.ClientTLSInfo.TrustedCAFile = s.cfg.TLSDir.CAFile()
	cfg.ClientTLSInfo.ClientCertAuth = true
	cfg.TickMs = s.cfg.TickMs
	cfg.ElectionMs = s.cfg.ElectionMs
	// Ephemeral by design: everything is rewritten on start.
	cfg.UnsafeNoFsync = true
	// The gateway would dial the client URL from etcd's own goroutines,
	// outside the caller's network namespace.
	cfg.EnableGRPCGateway = false
	// Let clients ping often: remote readers detect loss with short
	// keepalives.
	cfg.GRPCKeepAliveMinTime = 100 * time.Millisecond
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(etcdLogger(s.logger))
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd on %s: %w", s.cfg.ListenAddress, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd on %s: %w", s.cfg.ListenAddress, err)
	case <-time.After(s.cfg.StartTimeout):
		e.Close()
		return nil, fmt.Errorf("embedded etcd on %s not ready after %v", s.cfg.ListenAddress, s.cfg.StartTimeout)
	}
}

func (s *Server) socketPath() string { return filepath.Join(s.dataDir, "etcd.sock") }

// bootstrapAuth creates the roles and users and enables auth. It runs on a
// fresh etcd, connected as root through the local socket.
func (s *Server) bootstrapAuth(ctx context.Context, c *clientv3.Client) error {
	for role, grants := range rolePermissions(s.cfg.ClusterName) {
		if _, err := c.RoleAdd(ctx, role); err != nil {
			return fmt.Errorf("add role %q: %w", role, err)
		}
		for _, g := range grants {
			end := ""
			if g.prefix {
				end = clientv3.GetPrefixRangeEnd(g.key)
			}
			if _, err := c.RoleGrantPermission(ctx, role, g.key, end, g.perm); err != nil {
				return fmt.Errorf("grant %q on %q to role %q: %w", g.perm, g.key, role, err)
			}
		}
	}
	if _, err := c.RoleAdd(ctx, roleRoot); err != nil {
		return fmt.Errorf("add role %q: %w", roleRoot, err)
	}
	// Only this cluster's own users, so that another cluster's admin or
	// agent certificate is refused here. etcd insists on a user named root
	// before it enables auth; no certificate is issued for it.
	name := s.cfg.ClusterName
	for _, u := range []struct{ user, role string }{
		{etcdRootUser, roleRoot},
		{pki.AdminUser(name), roleRoot},
		{pki.LocalUser(name), roleLocal},
		{pki.KVStoreMeshUser(name), roleKVStoreMesh},
	} {
		if err := addUser(ctx, c, u.user, u.role); err != nil {
			return err
		}
	}
	for _, r := range s.cfg.RemoteClusters {
		if err := addUser(ctx, c, pki.RemoteUser(r), roleRemote); err != nil {
			return err
		}
	}
	if _, err := c.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enable etcd auth: %w", err)
	}
	return nil
}

func addUser(ctx context.Context, c *clientv3.Client, user, role string) error {
	_, err := c.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true})
	if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("add etcd user %q: %w", user, err)
	}
	if _, err := c.UserGrantRole(ctx, user, role); err != nil {
		return fmt.Errorf("grant role %q to etcd user %q: %w", role, user, err)
	}
	return nil
}

// SetRemoteClusters makes the set of remote clusters allowed to read this
// cluster exactly names: users remote-<name> are added for new names and
// deleted for names no longer listed (their open connections fail at their
// next request). The mesh-apiserver command calls it with the clusters of
// its clustermesh config directory.
func (s *Server) SetRemoteClusters(ctx context.Context, names []string) error {
	for _, n := range names {
		if err := wire.ValidateClusterName(n); err != nil {
			return fmt.Errorf("remote cluster: %w", err)
		}
	}
	c := s.root.Etcd()
	resp, err := c.UserList(ctx)
	if err != nil {
		return fmt.Errorf("list etcd users: %w", err)
	}
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[pki.RemoteUser(n)] = true
	}
	var errs []error
	for _, u := range resp.Users {
		if strings.HasPrefix(u, pki.RemoteUserPrefix) && !want[u] {
			if _, err := c.UserDelete(ctx, u); err != nil {
				errs = append(errs, fmt.Errorf("delete etcd user %q: %w", u, err))
			}
		}
		delete(want, u)
	}
	for _, u := range slices.Sorted(maps.Keys(want)) {
		if err := addUser(ctx, c, u, roleRemote); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
