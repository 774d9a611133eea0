package clustermesh

import (
	"crypto/x509"
	"strconv"
	"testing"
	"time"

	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
)

// FuzzParseClusterConfigMap: meshbed's ConfigMap is read from clusters
// that may be anyone's; whatever it holds gives a valid cluster identity
// (name, ID within the maximum) or an error, never a panic.
func FuzzParseClusterConfigMap(f *testing.F) {
	f.Add("cluster1", "1", "255")
	f.Add("cluster-511", "511", "511")
	f.Add("", "", "")
	f.Add("Cluster_1", "0", "255")
	f.Add("c", "256", "255")
	f.Add("c", "-1", "18446744073709551617")
	f.Add("c", "+1", "0x1ff")
	f.Fuzz(func(t *testing.T, name, id, maxConn string) {
		gotName, gotID, gotMax, err := parseClusterConfigMap(map[string]string{
			kind.KeyClusterName: name, kind.KeyClusterID: id, kind.KeyMaxConnectedClusters: maxConn,
		})
		if err != nil {
			return
		}
		if gotName != name || wire.ValidateClusterName(gotName) != nil || wire.ValidateMaxConnectedClusters(gotMax) != nil ||
			wire.ValidateClusterID(gotID, gotMax) != nil {
			t.Fatalf("accepted %q/%q/%q as %q, %d, %d", name, id, maxConn, gotName, gotID, gotMax)
		}
		if n, _ := strconv.ParseUint(id, 10, 32); uint32(n) != gotID {
			t.Fatalf("ID %q read as %d", id, gotID)
		}
	})
}

// FuzzPairGood: the certificate Secrets of a cluster decide whether
// `clustermesh enable` keeps or reissues a pair. Whatever they hold, the
// check does not panic, and it keeps only a pair that parses, is signed by
// the mesh CA for the usage and is valid for a while yet.
func FuzzPairGood(f *testing.F) {
	ca, err := pki.NewCA("fuzz-mesh", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	good, err := ca.IssueClient("remote-cluster1", 90*24*time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	key, err := good.KeyPEM()
	if err != nil {
		f.Fatal(err)
	}
	short, err := ca.IssueClient("remote-cluster1", time.Minute)
	if err != nil {
		f.Fatal(err)
	}
	shortKey, _ := short.KeyPEM()
	other, _ := pki.NewCA("other-mesh", time.Hour)
	foreign, _ := other.IssueClient("remote-cluster1", 90*24*time.Hour)
	foreignKey, _ := foreign.KeyPEM()
	f.Add(good.CertPEM(), key)
	f.Add(short.CertPEM(), shortKey)
	f.Add(foreign.CertPEM(), foreignKey)
	f.Add(good.CertPEM(), shortKey)
	f.Add(good.CertPEM()[:len(good.CertPEM())/2], key)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte{})
	f.Add([]byte{}, []byte{})
	f.Fuzz(func(t *testing.T, crt, keyPEM []byte) {
		data := map[string][]byte{"ca.crt": ca.CertPEM(), "p.crt": crt, "p.key": keyPEM}
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
			if !pairGood(data, "p", ca, usage, "remote-cluster1", nil) {
				continue
			}
			pair, err := pki.ParsePair(crt, keyPEM)
			if err != nil {
				t.Fatalf("kept a pair that does not parse: %v", err)
			}
			if _, err := pair.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{usage},
				CurrentTime: time.Now().Add(renewBefore)}); err != nil {
				t.Fatalf("kept a pair that does not verify: %v", err)
			}
		}
		// Without the CA's certificate next to it, nothing is kept.
		delete(data, "ca.crt")
		if pairGood(data, "p", ca, x509.ExtKeyUsageClientAuth, "", nil) {
			t.Fatal("kept a pair whose Secret lacks the mesh CA")
		}
	})
}
