package remote

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"sigs.k8s.io/yaml"

	"github.com/meshbed/meshbed/mesh/pki"
)

// EtcdConfig is the content of one file of the config directory: Cilium's
// etcd client configuration. Unknown keys are ignored (Cilium's files may
// carry more). Relative file paths are relative to the config directory.
//
//	endpoints:
//	- https://cluster2.mesh.example:2379
//	trusted-ca-file: /var/lib/meshbed/clustermesh/ca.crt
//	cert-file: /var/lib/meshbed/clustermesh/cluster2.crt
//	key-file: /var/lib/meshbed/clustermesh/cluster2.key
type EtcdConfig struct {
	Endpoints     []string `json:"endpoints"`
	TrustedCAFile string   `json:"trusted-ca-file,omitempty"`
	CertFile      string   `json:"cert-file,omitempty"`
	KeyFile       string   `json:"key-file,omitempty"`
}

// ErrInvalidConfig is wrapped by every error about a config file's content;
// the caller should fix the file (the cluster keeps its previous config).
var ErrInvalidConfig = errors.New("invalid remote cluster config")

// ParseEtcdConfig decodes and checks a config file's content: at least one
// endpoint, every endpoint an http or https URL with a host, https and http
// not mixed, cert-file and key-file given together, TLS files only with
// https.
func ParseEtcdConfig(data []byte) (EtcdConfig, error) {
	var c EtcdConfig
	if err := yaml.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	if len(c.Endpoints) == 0 {
		return c, fmt.Errorf("%w: no endpoints", ErrInvalidConfig)
	}
	tlsEndpoints := 0
	for _, e := range c.Endpoints {
		u, err := url.Parse(e)
		if err != nil {
			return c, fmt.Errorf("%w: endpoint %q: %v", ErrInvalidConfig, e, err)
		}
		switch {
		case u.Scheme != "http" && u.Scheme != "https":
			return c, fmt.Errorf("%w: endpoint %q: scheme must be http or https", ErrInvalidConfig, e)
		case u.Host == "" || u.Hostname() == "":
			return c, fmt.Errorf("%w: endpoint %q: no host", ErrInvalidConfig, e)
		}
		if u.Scheme == "https" {
			tlsEndpoints++
		}
	}
	if tlsEndpoints != 0 && tlsEndpoints != len(c.Endpoints) {
		return c, fmt.Errorf("%w: endpoints mix http and https", ErrInvalidConfig)
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return c, fmt.Errorf("%w: cert-file and key-file must be given together", ErrInvalidConfig)
	}
	if tlsEndpoints == 0 && (c.TrustedCAFile != "" || c.CertFile != "") {
		return c, fmt.Errorf("%w: TLS files given but no https endpoint", ErrInvalidConfig)
	}
	return c, nil
}

// UsesTLS reports whether the endpoints are https.
func (c EtcdConfig) UsesTLS() bool {
	if len(c.Endpoints) == 0 {
		return false
	}
	u, err := url.Parse(c.Endpoints[0])
	return err == nil && u.Scheme == "https"
}

// loadedConfig is a config file with everything it references read, and a
// fingerprint over all of it: a change of the file or of a certificate it
// names (rotation) restarts the connection.
type loadedConfig struct {
	etcd        EtcdConfig
	tls         *tls.Config
	fingerprint [sha256.Size]byte
}

// loadConfig reads path and the files it references (resolved against
// dir). Every error names the file at fault.
func loadConfig(dir, path string) (*loadedConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	ec, err := ParseEtcdConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	h := sha256.New()
	h.Write(data)
	read := func(field, p string) ([]byte, error) {
		if p == "" {
			return nil, nil
		}
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, field, err)
		}
		fmt.Fprintf(h, "\x00%s\x00", field)
		h.Write(b)
		return b, nil
	}
	caPEM, err := read("trusted-ca-file", ec.TrustedCAFile)
	if err != nil {
		return nil, err
	}
	certPEM, err := read("cert-file", ec.CertFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := read("key-file", ec.KeyFile)
	if err != nil {
		return nil, err
	}
	lc := &loadedConfig{etcd: ec}
	copy(lc.fingerprint[:], h.Sum(nil))
	if !ec.UsesTLS() {
		return lc, nil
	}
	var roots *x509.CertPool // nil: the system roots
	if caPEM != nil {
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("%s: trusted-ca-file %s: %w: %w", path, ec.TrustedCAFile, ErrInvalidConfig, pki.ErrNoCertificate)
		}
	}
	var client *pki.Cert
	if certPEM != nil {
		client, err = pki.ParsePair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: cert-file %s / key-file %s: %w: %w", path, ec.CertFile, ec.KeyFile, ErrInvalidConfig, err)
		}
	}
	// The server name is left to gRPC, which takes it from the endpoint.
	lc.tls = pki.ClientTLSConfig(roots, client, "")
	return lc, nil
}
