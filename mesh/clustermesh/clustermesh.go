// Package clustermesh runs meshbed on real Kubernetes clusters, as the
// meshbed CLI (install, clustermesh enable|connect|status) and the Kind
// target of the scenario engine do: it renders and applies the manifests,
// issues the mesh certificates into Secrets, writes the remote-cluster
// configs, and reports whether a cluster is ready.
package clustermesh

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/wire"
)

// caCommonName names the mesh CA that enable --create-ca creates.
const caCommonName = "meshbed mesh CA"

// renewBefore: a certificate that expires sooner is reissued by enable.
const renewBefore = 30 * 24 * time.Hour

// Cluster is what the clustermesh commands learn about an installed
// cluster.
type Cluster struct {
	context     string
	clients     *Clients
	name        string
	id, maxConn uint32
	// NodeIPs are the InternalIP of every node, sorted; NodePort is the
	// mesh-apiserver Service's: where other clusters reach it.
	NodeIPs      []string
	NodePort     int32
	clusterIPs   []string // of the mesh-apiserver Service
	apiserverTLS *corev1.Secret
}

// Name is the cluster's name in the mesh.
func (c *Cluster) Name() string { return c.name }

// ID is the cluster's ID in the mesh.
func (c *Cluster) ID() uint32 { return c.id }

// LoadCluster reads the installed configuration of the cluster of kctx;
// a cluster without meshbed is an error that says so.
func LoadCluster(ctx context.Context, clients ClientFactory, kubeconfig, kctx string) (*Cluster, error) {
	cl, err := clients(kubeconfig, kctx)
	if err != nil {
		return nil, err
	}
	c := &Cluster{context: kctx, clients: cl}
	cm, err := cl.Kube.CoreV1().ConfigMaps(kind.Namespace).Get(ctx, kind.ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("context %q: meshbed is not installed (no ConfigMap %s/%s): run meshbed install first", kctx, kind.Namespace, kind.ConfigMapName)
	}
	if err != nil {
		return nil, fmt.Errorf("context %q: %w", kctx, err)
	}
	if c.name, c.id, c.maxConn, err = parseClusterConfigMap(cm.Data); err != nil {
		return nil, fmt.Errorf("context %q: ConfigMap %s/%s: %w", kctx, kind.Namespace, kind.ConfigMapName, err)
	}
	nodes, err := cl.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %q: list nodes: %w", kctx, err)
	}
	for _, n := range nodes.Items {
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP && net.ParseIP(a.Address) != nil {
				c.NodeIPs = append(c.NodeIPs, a.Address)
			}
		}
	}
	sort.Strings(c.NodeIPs)
	svc, err := cl.Kube.CoreV1().Services(kind.Namespace).Get(ctx, kind.APIServerName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %q: mesh-apiserver Service: %w", kctx, err)
	}
	for _, ip := range append([]string{svc.Spec.ClusterIP}, svc.Spec.ClusterIPs...) {
		if net.ParseIP(ip) != nil && !slices.Contains(c.clusterIPs, ip) {
			c.clusterIPs = append(c.clusterIPs, ip)
		}
	}
	for _, p := range svc.Spec.Ports {
		c.NodePort = p.NodePort
	}
	c.apiserverTLS, err = cl.Kube.CoreV1().Secrets(kind.Namespace).Get(ctx, kind.SecretAPIServerTLS, metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("context %q: %w", kctx, err)
	}
	return c, nil
}

// parseClusterConfigMap reads the cluster's name, ID and maximum of
// connected clusters from meshbed's ConfigMap (written by meshbed install,
// but read from a cluster that may be anyone's).
func parseClusterConfigMap(data map[string]string) (name string, id, maxConn uint32, err error) {
	name = data[kind.KeyClusterName]
	id64, err1 := strconv.ParseUint(data[kind.KeyClusterID], 10, 32)
	max64, err2 := strconv.ParseUint(data[kind.KeyMaxConnectedClusters], 10, 32)
	if err1 != nil {
		err1 = fmt.Errorf("%s: %w", kind.KeyClusterID, err1)
	}
	if err2 != nil {
		err2 = fmt.Errorf("%s: %w", kind.KeyMaxConnectedClusters, err2)
	}
	if err := errors.Join(err1, err2); err != nil {
		return "", 0, 0, err
	}
	id, maxConn = uint32(id64), uint32(max64)
	if err := errors.Join(wire.ValidateClusterName(name), wire.ValidateMaxConnectedClusters(maxConn),
		wire.ValidateClusterID(id, maxConn)); err != nil {
		return "", 0, 0, err
	}
	return name, id, maxConn, nil
}

func (c *Cluster) String() string {
	return fmt.Sprintf("cluster %s (context %s)", c.name, c.context)
}

// enabled: the mesh-apiserver's certificates are there.
func (c *Cluster) enabled() bool {
	return c.apiserverTLS != nil && len(c.apiserverTLS.Data["ca.crt"]) > 0 && len(c.apiserverTLS.Data["server.crt"]) > 0
}

// EnableOptions are enable's: the cluster (kubeconfig file, empty for
// $KUBECONFIG or ~/.kube/config, and context) and the mesh CA's directory.
type EnableOptions struct {
	Kubeconfig, Context, CADir string
	// CreateCA creates the mesh CA in CADir if there is none.
	CreateCA bool
}

func loadCA(dir string, create bool) (*pki.CA, error) {
	d := pki.Dir(dir)
	var ca *pki.CA
	var err error
	if create {
		ca, err = d.LoadOrCreateCA(caCommonName, pki.DefaultValidity)
	} else {
		ca, err = d.LoadCA()
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("--ca-dir %s: no mesh CA there; pass --create-ca to create one (once, for the whole mesh)", dir)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("--ca-dir %s: %w", dir, err)
	}
	if ca.Key == nil {
		return nil, fmt.Errorf("--ca-dir %s: the CA has no key (%s): it cannot issue certificates", dir, d.KeyFile(pki.CAName))
	}
	return ca, nil
}

// pairGood says whether data holds a pair name issued by ca that is valid
// for usage for a while yet, has common name cn (if given) and, for a
// server, covers every address of ips.
func pairGood(data map[string][]byte, name string, ca *pki.CA, usage x509.ExtKeyUsage, cn string, ips []string) bool {
	if !bytes.Equal(data["ca.crt"], ca.CertPEM()) {
		return false
	}
	pair, err := pki.ParsePair(data[name+".crt"], data[name+".key"])
	if err != nil {
		return false
	}
	if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{usage},
		CurrentTime: time.Now().Add(renewBefore)}); err != nil {
		return false
	}
	if cn != "" && pair.Leaf.Subject.CommonName != cn {
		return false
	}
	for _, ip := range ips {
		if pair.Leaf.VerifyHostname(ip) != nil {
			return false
		}
	}
	return true
}

func putPair(data map[string][]byte, name string, c *pki.Cert) error {
	k, err := c.KeyPEM()
	if err != nil {
		return err
	}
	data[name+".crt"], data[name+".key"] = c.CertPEM(), k
	return nil
}

// enableSecrets computes the content of the three certificate Secrets,
// keeping what is still good in current.
func enableSecrets(c *Cluster, ca *pki.CA, current map[string]map[string][]byte) (map[string]map[string][]byte, error) {
	out := map[string]map[string][]byte{}
	caPEM := ca.CertPEM()

	// The mesh-apiserver: server pair for every address it is dialled at
	// (node addresses from other clusters, cluster IPs from its agents),
	// and its own admin client pair. pki.IssueServerTLS is what the
	// mesh-apiserver's own tests use; it writes a pki.Dir. A Secret written
	// by an older meshbed (a "root" pair, users not named per cluster) fails
	// these checks and is reissued.
	ips := append(slices.Clone(c.NodeIPs), c.clusterIPs...)
	srv := current[kind.SecretAPIServerTLS]
	if !pairGood(srv, pki.ServerName, ca, x509.ExtKeyUsageServerAuth, "", append(ips, "127.0.0.1")) ||
		!pairGood(srv, pki.AdminPair, ca, x509.ExtKeyUsageClientAuth, pki.AdminUser(c.name), nil) {
		tmp, err := os.MkdirTemp("", "meshbed-enable-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		var netIPs []net.IP
		for _, ip := range ips {
			netIPs = append(netIPs, net.ParseIP(ip))
		}
		if err := pki.IssueServerTLS(pki.Dir(tmp), ca, c.name, netIPs, pki.DefaultValidity); err != nil {
			return nil, fmt.Errorf("issue mesh-apiserver certificates: %w", err)
		}
		srv = map[string][]byte{"ca.crt": caPEM}
		for _, name := range []string{pki.ServerName, pki.AdminPair} {
			for _, f := range []string{pki.Dir(tmp).CertFile(name), pki.Dir(tmp).KeyFile(name)} {
				b, err := os.ReadFile(f)
				if err != nil {
					return nil, err
				}
				srv[filepath.Base(f)] = b
			}
		}
	}
	out[kind.SecretAPIServerTLS] = srv

	// Client pairs, each Secret holding the CA and its pairs; a pair that
	// is still good is kept, any other is issued anew.
	type pair struct{ name, user string }
	for _, cl := range []struct {
		secret string
		pairs  []pair
	}{
		{kind.SecretAgentTLS, []pair{{kind.AgentPair, pki.LocalUser(c.name)}}},
		// kvstoremesh reads the other clusters (remote) and writes its
		// cache into this one's etcd (kvstoremesh).
		{kind.SecretKVStoreMeshTLS, []pair{{kind.RemotePair, pki.RemoteUser(c.name)}, {pki.KVStoreMeshPair, pki.KVStoreMeshUser(c.name)}}},
	} {
		cur := current[cl.secret]
		data := map[string][]byte{"ca.crt": caPEM}
		for _, p := range cl.pairs {
			if pairGood(cur, p.name, ca, x509.ExtKeyUsageClientAuth, p.user, nil) {
				data[p.name+".crt"], data[p.name+".key"] = cur[p.name+".crt"], cur[p.name+".key"]
				continue
			}
			cert, err := ca.IssueClient(p.user, pki.DefaultValidity)
			if err != nil {
				return nil, fmt.Errorf("issue certificate of user %s: %w", p.user, err)
			}
			if err := putPair(data, p.name, cert); err != nil {
				return nil, err
			}
		}
		out[cl.secret] = data
	}
	return out, nil
}

// HashData is a stable hash of a Secret's content.
func HashData(data map[string][]byte) string {
	h := sha256.New()
	for _, k := range slices.Sorted(maps.Keys(data)) {
		fmt.Fprintf(h, "%s\x00%d\x00", k, len(data[k]))
		h.Write(data[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// writeSecret sets a Secret's data, creating the Secret if needed. It
// reports whether anything changed.
func writeSecret(ctx context.Context, c *Cluster, name string, data map[string][]byte) (bool, error) {
	secrets := c.clients.Kube.CoreV1().Secrets(kind.Namespace)
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: kind.Namespace,
			Labels: map[string]string{"app.kubernetes.io/part-of": "meshbed"}}, Type: corev1.SecretTypeOpaque, Data: data}
		if _, err := secrets.Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return false, fmt.Errorf("%s: create Secret %s: %w", c, name, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: read Secret %s: %w", c, name, err)
	}
	if HashData(s.Data) == HashData(data) {
		return false, nil
	}
	s.Data = data
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		return false, fmt.Errorf("%s: update Secret %s: %w", c, name, err)
	}
	return true, nil
}

func readSecret(ctx context.Context, c *Cluster, name string) (map[string][]byte, error) {
	s, err := c.clients.Kube.CoreV1().Secrets(kind.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: read Secret %s: %w", c, name, err)
	}
	if s.Data == nil {
		return map[string][]byte{}, nil
	}
	return s.Data, nil
}

func Enable(ctx context.Context, out io.Writer, clients ClientFactory, o EnableOptions) error {
	c, err := LoadCluster(ctx, clients, o.Kubeconfig, o.Context)
	if err != nil {
		return err
	}
	if len(c.NodeIPs) == 0 {
		return fmt.Errorf("%s: no node has an InternalIP address: other clusters could not reach the mesh-apiserver", c)
	}
	ca, err := loadCA(o.CADir, o.CreateCA)
	if err != nil {
		return err
	}
	current := map[string]map[string][]byte{}
	for _, name := range []string{kind.SecretAPIServerTLS, kind.SecretAgentTLS, kind.SecretKVStoreMeshTLS} {
		if current[name], err = readSecret(ctx, c, name); err != nil {
			return err
		}
	}
	want, err := enableSecrets(c, ca, current)
	if err != nil {
		return fmt.Errorf("%s: %w", c, err)
	}
	for _, name := range []string{kind.SecretAPIServerTLS, kind.SecretAgentTLS, kind.SecretKVStoreMeshTLS} {
		changed, err := writeSecret(ctx, c, name, want[name])
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "Secret %s %s\n", name, map[bool]string{true: "written", false: "unchanged"}[changed])
	}
	// Roll the mesh-apiserver when its certificates change: it reads them
	// at start (and, before enable, could not start without them).
	// Likewise kvstoremesh when its own change.
	deps := c.clients.Kube.AppsV1().Deployments(kind.Namespace)
	for _, d := range []struct{ name, secret string }{
		{kind.APIServerName, kind.SecretAPIServerTLS}, {kind.KVStoreMeshName, kind.SecretKVStoreMeshTLS},
	} {
		name := d.name
		dep, err := deps.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("%s: Deployment %s: %w", c, name, err)
		}
		if h := HashData(want[d.secret]); dep.Spec.Template.Annotations[kind.TLSHashAnnotation] != h {
			if dep.Spec.Template.Annotations == nil {
				dep.Spec.Template.Annotations = map[string]string{}
			}
			dep.Spec.Template.Annotations[kind.TLSHashAnnotation] = h
			if _, err := deps.Update(ctx, dep, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("%s: restart %s: %w", c, name, err)
			}
			fmt.Fprintf(out, "Deployment %s restarted with the new certificates\n", name)
		}
	}
	fmt.Fprintf(out, "%s enabled (mesh CA %q from %s)\n", c, ca.Cert.Subject.CommonName, o.CADir)
	return nil
}

// ConnectOptions are connect's: the two clusters' contexts in one
// kubeconfig file (empty: $KUBECONFIG or ~/.kube/config).
type ConnectOptions struct {
	Kubeconfig, Context, Destination string
}

// etcdConfigFile is a config file in Cilium's format, as package remote
// reads it.
func etcdConfigFile(endpoints []string, tlsDir, pair string) ([]byte, error) {
	return remote.NewEtcdConfig(endpoints, pki.Dir(tlsDir), pair).Marshal()
}

func endpointsOf(ips []string, port int32) []string {
	var out []string
	for _, ip := range ips {
		out = append(out, "https://"+net.JoinHostPort(ip, strconv.Itoa(int(port))))
	}
	return out
}

// connectFiles are the two files local gets for remote: its kvstoremesh's
// connection to remote, and its agents' to the local cache of remote.
func connectFiles(local, remote *Cluster) (kvstoremesh, agents []byte, err error) {
	if len(remote.NodeIPs) == 0 || remote.NodePort == 0 {
		return nil, nil, fmt.Errorf("%s: the mesh-apiserver has no node address or node port to be reached at", remote)
	}
	if len(local.clusterIPs) == 0 {
		return nil, nil, fmt.Errorf("%s: the mesh-apiserver Service has no cluster IP", local)
	}
	if kvstoremesh, err = etcdConfigFile(endpointsOf(remote.NodeIPs, remote.NodePort), kind.KVStoreMeshTLSDir, kind.RemotePair); err != nil {
		return nil, nil, err
	}
	if agents, err = etcdConfigFile(endpointsOf(local.clusterIPs, kind.APIServerPort), kind.AgentTLSDir, kind.AgentPair); err != nil {
		return nil, nil, err
	}
	return kvstoremesh, agents, nil
}

func Connect(ctx context.Context, out io.Writer, clients ClientFactory, o ConnectOptions) error {
	a, err := LoadCluster(ctx, clients, o.Kubeconfig, o.Context)
	if err != nil {
		return fmt.Errorf("--context: %w", err)
	}
	b, err := LoadCluster(ctx, clients, o.Kubeconfig, o.Destination)
	if err != nil {
		return fmt.Errorf("--destination-context: %w", err)
	}
	var errs []error
	if a.name == b.name {
		errs = append(errs, fmt.Errorf("%s and %s have the same name: cluster names must be unique in a mesh", a, b))
	}
	if a.id == b.id {
		errs = append(errs, fmt.Errorf("%s and %s have the same ID %d: cluster IDs must be unique in a mesh", a, b, a.id))
	}
	if a.maxConn != b.maxConn {
		errs = append(errs, fmt.Errorf("%s allows %d clusters, %s %d: must be equal", a, a.maxConn, b, b.maxConn))
	}
	for _, c := range []*Cluster{a, b} {
		if !c.enabled() {
			errs = append(errs, fmt.Errorf("%s is not enabled: run meshbed clustermesh enable --context %s", c, c.context))
		}
	}
	if a.enabled() && b.enabled() && !bytes.Equal(a.apiserverTLS.Data["ca.crt"], b.apiserverTLS.Data["ca.crt"]) {
		errs = append(errs, fmt.Errorf("%s and %s have different mesh CAs: enable both with the same --ca-dir", a, b))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, p := range [][2]*Cluster{{a, b}, {b, a}} {
		local, rem := p[0], p[1]
		kvFile, agentFile, err := connectFiles(local, rem)
		if err != nil {
			return err
		}
		for _, f := range []struct {
			secret string
			data   []byte
		}{{kind.SecretKVStoreMesh, kvFile}, {kind.SecretClusterMesh, agentFile}} {
			data, err := readSecret(ctx, local, f.secret)
			if err != nil {
				return err
			}
			data = maps.Clone(data)
			data[rem.name] = f.data
			if _, err := writeSecret(ctx, local, f.secret, data); err != nil {
				return err
			}
		}
		fmt.Fprintf(out, "%s: %s configured (kvstoremesh → %s)\n", local, rem.name, strings.Join(endpointsOf(rem.NodeIPs, rem.NodePort), ", "))
	}
	fmt.Fprintf(out, "connected %s and %s; the pods pick up the configuration within about a minute (meshbed clustermesh status --context %s --wait)\n", a.name, b.name, a.context)
	return nil
}

// StatusOptions are status's: the cluster, and with Wait, how long and how
// often to look again until it is ready.
type StatusOptions struct {
	Kubeconfig, Context   string
	Wait                  bool
	WaitTimeout, Interval time.Duration
}

// RemoteSync is what the mesh-apiserver knows of a remote cluster.
type RemoteSync struct {
	// ID is from the remote's cluster-config that kvstoremesh copied; zero
	// when there is none yet.
	ID uint32
	// Synced: kvstoremesh has copied the remote's services (their canary
	// is in the cache).
	Synced bool
}

// Probe asks the cluster's mesh-apiserver about remote clusters; nil
// skips the question.
type Probe func(ctx context.Context, c *Cluster, remotes []string) (map[string]RemoteSync, error)

// KVStoreProbe connects to the mesh-apiserver at its node port as a local
// agent, with a certificate issued for the occasion from the CA in caDir.
func KVStoreProbe(caDir string) Probe {
	return func(ctx context.Context, c *Cluster, remotes []string) (map[string]RemoteSync, error) {
		cfg, err := KVStoreConfig(caDir, c)
		if err != nil {
			return nil, err
		}
		return ProbeKVStore(ctx, cfg, remotes)
	}
}

// KVStoreConfig is a client of the cluster's mesh-apiserver at its node
// port, as a local agent, with a certificate issued for the occasion (valid
// for an hour) from the mesh CA in caDir.
func KVStoreConfig(caDir string, c *Cluster) (kvstore.Config, error) {
	ca, err := loadCA(caDir, false)
	if err != nil {
		return kvstore.Config{}, err
	}
	cert, err := ca.IssueClient(pki.LocalUser(c.name), time.Hour)
	if err != nil {
		return kvstore.Config{}, err
	}
	if c.NodePort == 0 || len(c.NodeIPs) == 0 {
		return kvstore.Config{}, errors.New("the mesh-apiserver has no node port or node address")
	}
	return kvstore.Config{
		Endpoints:   endpointsOf(c.NodeIPs, c.NodePort),
		TLS:         pki.ClientTLSConfig(ca.Pool(), cert, ""),
		DialTimeout: 3 * time.Second, RequestTimeout: 3 * time.Second,
	}, nil
}

// ProbeKVStore reads, for each remote cluster, the cluster-config and the
// services canary that kvstoremesh writes into the local etcd.
func ProbeKVStore(ctx context.Context, cfg kvstore.Config, remotes []string) (map[string]RemoteSync, error) {
	kv, err := kvstore.Connect(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to the mesh-apiserver at %s: %w", strings.Join(cfg.Endpoints, ", "), err)
	}
	defer kv.Close()
	out := map[string]RemoteSync{}
	for _, r := range remotes {
		var s RemoteSync
		key := wire.ClusterConfigKey(r)
		v, found, err := kv.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("read %s from the mesh-apiserver at %s: %w", key, strings.Join(cfg.Endpoints, ", "), err)
		}
		if found {
			cc, err := wire.DecodeClusterConfig(key, v, r)
			if err != nil {
				return nil, err
			}
			s.ID = cc.ID
		}
		if _, s.Synced, err = kv.Get(ctx, wire.CanaryKey(wire.Services, r, true)); err != nil {
			return nil, err
		}
		out[r] = s
	}
	return out, nil
}

// statusReport is one look at a cluster.
type statusReport struct {
	cluster                    string
	id                         uint32
	agentsReady, agentsDesired int32
	apiserverReady             int32
	enabled                    bool
	remotes                    []remoteStatus
	probeErr                   error
	problems                   []string
}

type remoteStatus struct {
	name               string
	kvstoremesh, agent bool
	sync               *RemoteSync
}

func (r *statusReport) ready() bool { return len(r.problems) == 0 }

func collectStatus(ctx context.Context, c *Cluster, probe Probe) (*statusReport, error) {
	r := &statusReport{cluster: c.name, id: c.id, enabled: c.enabled()}
	kube := c.clients.Kube
	ds, err := kube.AppsV1().DaemonSets(kind.Namespace).Get(ctx, kind.AgentName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: agent DaemonSet: %w", c, err)
	}
	r.agentsReady, r.agentsDesired = ds.Status.NumberReady, ds.Status.DesiredNumberScheduled
	if r.agentsDesired == 0 || r.agentsReady < r.agentsDesired {
		r.problems = append(r.problems, fmt.Sprintf("agents: %d of %d ready", r.agentsReady, r.agentsDesired))
	}
	dep, err := kube.AppsV1().Deployments(kind.Namespace).Get(ctx, kind.APIServerName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: mesh-apiserver Deployment: %w", c, err)
	}
	r.apiserverReady = dep.Status.ReadyReplicas
	if r.apiserverReady < 1 || dep.Status.UpdatedReplicas < 1 {
		r.problems = append(r.problems, "mesh-apiserver: not ready")
	}
	km, err := kube.AppsV1().Deployments(kind.Namespace).Get(ctx, kind.KVStoreMeshName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("%s: kvstoremesh Deployment: %w", c, err)
	}
	if km.Status.ReadyReplicas < 1 || km.Status.UpdatedReplicas < 1 {
		r.problems = append(r.problems, "kvstoremesh: not ready")
	}
	if !r.enabled {
		r.problems = append(r.problems, "certificates: missing (meshbed clustermesh enable)")
	}
	kvFiles, err := readSecret(ctx, c, kind.SecretKVStoreMesh)
	if err != nil {
		return nil, err
	}
	agentFiles, err := readSecret(ctx, c, kind.SecretClusterMesh)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for n := range kvFiles {
		names[n] = true
	}
	for n := range agentFiles {
		names[n] = true
	}
	var remotes []string
	for _, n := range slices.Sorted(maps.Keys(names)) {
		_, kv := kvFiles[n]
		_, ag := agentFiles[n]
		r.remotes = append(r.remotes, remoteStatus{name: n, kvstoremesh: kv, agent: ag})
		if !kv || !ag {
			r.problems = append(r.problems, fmt.Sprintf("%s: configured for kvstoremesh %v, for agents %v (meshbed clustermesh connect)", n, kv, ag))
		}
		remotes = append(remotes, n)
	}
	if probe != nil && len(remotes) > 0 {
		syncs, err := probe(ctx, c, remotes)
		if err != nil {
			r.probeErr = err
			r.problems = append(r.problems, fmt.Sprintf("mesh-apiserver: %v", err))
		}
		for i := range r.remotes {
			if s, ok := syncs[r.remotes[i].name]; ok {
				r.remotes[i].sync = &s
				if !s.Synced {
					r.problems = append(r.problems, fmt.Sprintf("%s: not synced by kvstoremesh yet", r.remotes[i].name))
				}
			}
		}
	}
	return r, nil
}

func (r *statusReport) print(out io.Writer) {
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "cluster:\t%s (ID %d)\n", r.cluster, r.id)
	fmt.Fprintf(w, "agents:\t%d/%d ready\n", r.agentsReady, r.agentsDesired)
	fmt.Fprintf(w, "mesh-apiserver:\t%d ready\n", r.apiserverReady)
	fmt.Fprintf(w, "certificates:\t%s\n", map[bool]string{true: "issued", false: "missing"}[r.enabled])
	if len(r.remotes) == 0 {
		fmt.Fprintf(w, "remote clusters:\tnone\n")
	}
	for _, rc := range r.remotes {
		state := "configured"
		if !rc.kvstoremesh || !rc.agent {
			state = "half configured"
		}
		switch {
		case rc.sync == nil:
		case rc.sync.Synced:
			state += fmt.Sprintf(", synced (ID %d)", rc.sync.ID)
		default:
			state += ", not synced"
		}
		fmt.Fprintf(w, "remote %s:\t%s\n", rc.name, state)
	}
	if r.ready() {
		fmt.Fprintf(w, "status:\tready\n")
	} else {
		fmt.Fprintf(w, "status:\tnot ready: %s\n", strings.Join(r.problems, "; "))
	}
	w.Flush()
}

func Status(ctx context.Context, out io.Writer, clients ClientFactory, probe Probe, o StatusOptions) error {
	c, err := LoadCluster(ctx, clients, o.Kubeconfig, o.Context)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(o.WaitTimeout)
	for {
		r, err := collectStatus(ctx, c, probe)
		if err != nil {
			return err
		}
		if r.ready() || !o.Wait || time.Now().After(deadline) {
			r.print(out)
			if !r.ready() {
				return fmt.Errorf("%s: %w", c, ErrNotReady)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(o.Interval):
		}
		// Secrets and nodes change while waiting (enable, connect).
		if c, err = LoadCluster(ctx, clients, o.Kubeconfig, o.Context); err != nil {
			return err
		}
	}
}

// ErrNotReady is what Status returns (wrapped) when the cluster is not
// ready: the report it printed says why.
var ErrNotReady = errors.New("not ready")
