package remote

import (
	"bytes"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/meshbed/meshbed/mesh/pki"
)

// tlsEtcd is an embedded etcd that requires client certificates from ca.
type tlsEtcd struct {
	endpoint string
	ca       *pki.CA
	client   *clientv3.Client
}

func freePort(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startTLSEtcd(t testing.TB) *tlsEtcd {
	t.Helper()
	ca, err := pki.NewCA("meshbed-test-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.IssueServer("etcd", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	certs := pki.Dir(t.TempDir())
	if err := certs.WriteCA(ca); err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteCert("server", server); err != nil {
		t.Fatal(err)
	}
	var e *embed.Etcd
	for attempt := 0; ; attempt++ {
		cfg := embed.NewConfig()
		cfg.Name = "tls"
		cfg.Dir = t.TempDir()
		cu := url.URL{Scheme: "https", Host: freePort(t)}
		pu := url.URL{Scheme: "http", Host: freePort(t)}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = cfg.Name + "=" + pu.String()
		cfg.TickMs, cfg.ElectionMs = 10, 50
		cfg.UnsafeNoFsync = true
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.ClientTLSInfo.CertFile = certs.CertFile("server")
		cfg.ClientTLSInfo.KeyFile = certs.KeyFile("server")
		cfg.ClientTLSInfo.TrustedCAFile = certs.CAFile()
		cfg.ClientTLSInfo.ClientCertAuth = true
		e, err = embed.StartEtcd(cfg)
		if err == nil {
			break
		}
		if attempt == 4 {
			t.Fatalf("start TLS etcd: %v", err)
		}
	}
	t.Cleanup(func() {
		e.Close()
		<-e.Server.StopNotify()
	})
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		t.Fatal("TLS etcd not ready")
	}
	endpoint := e.Clients[0].Addr().String()
	root, err := ca.IssueClient("root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints: []string{"https://" + endpoint},
		TLS:       pki.ClientTLSConfig(ca.Pool(), root, ""),
		Logger:    zap.NewNop(), DialTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &tlsEtcd{endpoint: "https://" + endpoint, ca: ca, client: c}
}

// writeClientFiles writes a CA and client pair for cluster into dir/certs
// and returns the config lines naming them relative to dir.
func writeClientFiles(t testing.TB, dir, cluster string, ca, issuer *pki.CA) string {
	t.Helper()
	certs := pki.Dir(filepath.Join(dir, "certs-"+cluster))
	if err := certs.WriteCA(&pki.CA{Cert: ca.Cert}); err != nil {
		t.Fatal(err)
	}
	cert, err := issuer.IssueClient("remote-"+localName, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := certs.WriteCert("client", cert); err != nil {
		t.Fatal(err)
	}
	rel := "certs-" + cluster + "/"
	return "trusted-ca-file: " + rel + "ca.crt\ncert-file: " + rel + "client.crt\nkey-file: " + rel + "client.key\n"
}

func TestMutualTLS(t *testing.T) {
	srv := startTLSEtcd(t)
	newPublisher(t, srv.client, "cluster2", 2).basic()
	newPublisher(t, srv.client, "cluster3", 3).basic()

	dir := t.TempDir()
	// cluster2: a client certificate from the mesh CA.
	writeConfig(t, dir, "cluster2", []string{srv.endpoint}, writeClientFiles(t, dir, "cluster2", srv.ca, srv.ca))
	// cluster3: the same server, but a client certificate from a CA the
	// server does not trust.
	rogue, err := pki.NewCA("rogue", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeConfig(t, dir, "cluster3", []string{srv.endpoint}, writeClientFiles(t, dir, "cluster3", srv.ca, rogue))

	m, rec := startManager(t, fastConfig(t, dir))
	rec.expect(wait, "cluster2", func(v *view) error {
		if !v.reachable || v.services["default/rebel-base"] != "10.20.0.7" {
			return errorf("%+v", v)
		}
		return nil
	})
	// A negative: the rogue certificate never gets in.
	time.Sleep(time.Second)
	if v := rec.get("cluster3"); v.up || len(v.services) != 0 {
		t.Fatalf("connected with an untrusted client certificate: %+v", v)
	}
	if st, _ := statusOf(m, "cluster3"); st.Up || st.Reachable {
		t.Fatalf("status %+v", st)
	}
}

func TestLoadConfig(t *testing.T) {
	srv := startTLSEtcd(t)
	dir := t.TempDir()
	writeConfig(t, dir, "cluster2", []string{srv.endpoint}, writeClientFiles(t, dir, "cluster2", srv.ca, srv.ca))
	path := filepath.Join(dir, "cluster2")
	lc, err := loadConfig(dir, path)
	if err != nil {
		t.Fatal(err)
	}
	if lc.tls == nil || len(lc.tls.Certificates) != 1 || lc.tls.RootCAs == nil {
		t.Fatalf("TLS config %+v", lc.tls)
	}
	// Rotating a referenced certificate changes the fingerprint, so the
	// connection is re-established with it.
	writeClientFiles(t, dir, "cluster2", srv.ca, srv.ca)
	lc2, err := loadConfig(dir, path)
	if err != nil {
		t.Fatal(err)
	}
	if lc2.fingerprint == lc.fingerprint {
		t.Fatal("fingerprint unchanged after certificate rotation")
	}

	tests := []struct {
		name, content string
	}{
		{"missing CA file", "endpoints: [https://127.0.0.1:1]\ntrusted-ca-file: nope.crt\n"},
		{"garbage CA", "endpoints: [https://127.0.0.1:1]\ntrusted-ca-file: garbage\n"},
		{"key of another cert", "endpoints: [https://127.0.0.1:1]\ncert-file: certs-cluster2/client.crt\nkey-file: certs-cluster2/ca.crt\n"},
	}
	if err := os.WriteFile(filepath.Join(dir, "garbage"), []byte("not PEM"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, "bad")
			writeFileAtomic(t, p, tt.content)
			_, err := loadConfig(dir, p)
			if err == nil || !bytes.Contains([]byte(err.Error()), []byte(p)) {
				t.Fatalf("err = %v, want an error naming %s", err, p)
			}
		})
	}
}
