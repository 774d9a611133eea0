package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func newCA(t testing.TB) *CA {
	t.Helper()
	ca, err := NewCA("test-mesh-ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// handshake runs a TLS handshake between server and client over loopback
// and returns the verified client common name the server saw.
func handshake(t *testing.T, srv, cli *tls.Config) (string, error) {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		cn  string
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		tc := c.(*tls.Conn)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		st := tc.ConnectionState()
		_, _ = tc.Write([]byte("ok"))
		done <- result{cn: st.VerifiedChains[0][0].Subject.CommonName}
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), cli)
	if err == nil {
		// TLS 1.3 reports a rejected client certificate only on first read.
		_, err = io.ReadFull(c, make([]byte, 2))
		c.Close()
	}
	r := <-done
	if err != nil {
		return "", err
	}
	return r.cn, r.err
}

func TestMutualTLS(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	server, err := ca.IssueServer("apiserver", []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.IssueClient("remote-cluster2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := other.IssueClient("remote-cluster2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		cli     *tls.Config
		wantCN  string
		wantErr bool
	}{
		{"valid client, IP SAN", ClientTLSConfig(ca.Pool(), client, ""), "remote-cluster2", false},
		{"valid client, DNS server name", ClientTLSConfig(ca.Pool(), client, "localhost"), "remote-cluster2", false},
		{"no client certificate", ClientTLSConfig(ca.Pool(), nil, ""), "", true},
		{"client from another CA", ClientTLSConfig(ca.Pool(), stranger, ""), "", true},
		{"server name not in certificate", ClientTLSConfig(ca.Pool(), client, "elsewhere"), "", true},
		{"client does not trust server CA", ClientTLSConfig(other.Pool(), client, ""), "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cn, err := handshake(t, ServerTLSConfig(ca.Pool(), server), tt.cli)
			if (err != nil) != tt.wantErr {
				t.Fatalf("handshake error = %v, want error %v", err, tt.wantErr)
			}
			if cn != tt.wantCN {
				t.Fatalf("server saw CN %q, want %q", cn, tt.wantCN)
			}
		})
	}
}

func TestIssueShapes(t *testing.T) {
	ca := newCA(t)
	if !ca.Cert.IsCA || ca.Cert.MaxPathLen != 0 || !ca.Cert.MaxPathLenZero {
		t.Fatalf("CA constraints: IsCA=%v MaxPathLen=%d", ca.Cert.IsCA, ca.Cert.MaxPathLen)
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.7"), net.ParseIP("::1")}
	srv, err := ca.IssueServer("apiserver", []string{"localhost"}, ips, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(srv.Leaf.IPAddresses) != 3 || !srv.Leaf.IPAddresses[1].Equal(ips[1]) {
		t.Fatalf("server IP SANs = %v", srv.Leaf.IPAddresses)
	}
	// Never outlive the CA.
	if srv.Leaf.NotAfter.After(ca.Cert.NotAfter) {
		t.Fatalf("server NotAfter %v after CA NotAfter %v", srv.Leaf.NotAfter, ca.Cert.NotAfter)
	}
	for _, ip := range ips {
		if err := srv.Leaf.VerifyHostname(ip.String()); err != nil {
			t.Errorf("server certificate not valid for %s: %v", ip, err)
		}
	}
	cli, err := ca.IssueClient("kvstoremesh", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Fatal("client certificate verifies for server auth")
	}
	if _, err := ca.IssueServer("x", nil, nil, time.Hour); err == nil {
		t.Fatal("server certificate without SANs issued")
	}
	if _, err := ca.IssueClient("", time.Hour); err == nil {
		t.Fatal("client certificate without user issued")
	}
	verifyOnly := &CA{Cert: ca.Cert}
	if _, err := verifyOnly.IssueClient("root", time.Hour); err == nil {
		t.Fatal("issued without a CA key")
	}
}

func TestDirRoundTrip(t *testing.T) {
	d := Dir(filepath.Join(t.TempDir(), "tls"))
	if _, err := d.LoadCA(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("LoadCA on empty dir: %v, want ErrNotExist", err)
	}
	ca, err := d.LoadOrCreateCA("mesh", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	again, err := d.LoadOrCreateCA("mesh", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Cert.Equal(ca.Cert) || !again.Key.Equal(ca.Key) {
		t.Fatal("LoadOrCreateCA created a second CA")
	}
	root, err := ca.IssueClient("root", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.WriteCert("root", root); err != nil {
		t.Fatal(err)
	}
	got, err := d.LoadCert("root")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Leaf.Equal(root.Leaf) || !got.Key.Equal(root.Key) {
		t.Fatal("pair changed across write and load")
	}
	if err := d.Verify("root", x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(d.KeyFile("root"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v, want 0600", st.Mode().Perm())
	}

	// A verify-only copy of the directory: CA certificate without key.
	ro := Dir(t.TempDir())
	if err := ro.WriteCA(&CA{Cert: ca.Cert}); err != nil {
		t.Fatal(err)
	}
	loaded, err := ro.LoadCA()
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Key != nil {
		t.Fatal("verify-only CA loaded with a key")
	}

	// A key that does not match its certificate is refused.
	other, err := ca.IssueClient("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	k, err := other.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.KeyFile("root"), k, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := d.LoadCert("root"); err == nil {
		t.Fatal("mismatched pair loaded")
	}
}

func FuzzParsePair(f *testing.F) {
	ca := newCA(f)
	c, err := ca.IssueClient("root", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	k, err := c.KeyPEM()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(c.CertPEM(), k)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		p, err := ParsePair(certPEM, keyPEM)
		if err != nil {
			return
		}
		if p.Leaf == nil || p.Key == nil {
			t.Fatal("ParsePair returned a half pair without error")
		}
	})
}

func BenchmarkIssueClient(b *testing.B) {
	ca := newCA(b)
	for b.Loop() {
		if _, err := ca.IssueClient("local-agent", time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/cert")
}
