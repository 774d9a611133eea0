package pki

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// Dir is a directory of PEM files:
//
//	ca.crt, ca.key          the mesh CA (ca.key only where certificates are issued)
//	<name>.crt, <name>.key  an issued pair, e.g. server, root, remote-cluster2
//
// Key files are written with mode 0600.
type Dir string

// Well-known pair names in a Dir.
const (
	// CAName is the base name of the CA files.
	CAName = "ca"
	// ServerName is the base name of the mesh-apiserver's etcd server pair.
	ServerName = "server"
)

// CertFile is the path of the certificate of pair name.
func (d Dir) CertFile(name string) string { return filepath.Join(string(d), name+".crt") }

// KeyFile is the path of the key of pair name.
func (d Dir) KeyFile(name string) string { return filepath.Join(string(d), name+".key") }

// CAFile is the path of the CA certificate.
func (d Dir) CAFile() string { return d.CertFile(CAName) }

// WriteCA writes the CA certificate and, if present, its key.
func (d Dir) WriteCA(ca *CA) error {
	if err := d.mkdir(); err != nil {
		return err
	}
	if err := writeFile(d.CAFile(), ca.CertPEM(), 0o644); err != nil {
		return err
	}
	if ca.Key == nil {
		return nil
	}
	k, err := keyPEM(ca.Key)
	if err != nil {
		return fmt.Errorf("write CA key: %w", err)
	}
	return writeFile(d.KeyFile(CAName), k, 0o600)
}

// WriteCert writes pair name.
func (d Dir) WriteCert(name string, c *Cert) error {
	if err := d.mkdir(); err != nil {
		return err
	}
	k, err := c.KeyPEM()
	if err != nil {
		return fmt.Errorf("write pair %q: %w", name, err)
	}
	if err := writeFile(d.CertFile(name), c.CertPEM(), 0o644); err != nil {
		return err
	}
	return writeFile(d.KeyFile(name), k, 0o600)
}

// LoadCA reads the CA certificate and, if the file exists, its key.
func (d Dir) LoadCA() (*CA, error) {
	data, err := os.ReadFile(d.CAFile())
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	cert, err := ParseCertPEM(data)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate %s: %w", d.CAFile(), err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("read CA certificate %s: %q is not a CA", d.CAFile(), cert.Subject.CommonName)
	}
	ca := &CA{Cert: cert}
	kdata, err := os.ReadFile(d.KeyFile(CAName))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return ca, nil
	case err != nil:
		return nil, fmt.Errorf("read CA key: %w", err)
	}
	if ca.Key, err = ParseKeyPEM(kdata); err != nil {
		return nil, fmt.Errorf("read CA key %s: %w", d.KeyFile(CAName), err)
	}
	if pub, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&ca.Key.PublicKey) {
		return nil, fmt.Errorf("CA key %s does not match %s", d.KeyFile(CAName), d.CAFile())
	}
	return ca, nil
}

// Pool reads the CA certificate as a pool of trusted roots.
func (d Dir) Pool() (*x509.CertPool, error) {
	ca, err := d.LoadCA()
	if err != nil {
		return nil, err
	}
	return ca.Pool(), nil
}

// LoadCert reads pair name.
func (d Dir) LoadCert(name string) (*Cert, error) {
	c, err := os.ReadFile(d.CertFile(name))
	if err != nil {
		return nil, fmt.Errorf("read certificate %q: %w", name, err)
	}
	k, err := os.ReadFile(d.KeyFile(name))
	if err != nil {
		return nil, fmt.Errorf("read key %q: %w", name, err)
	}
	p, err := ParsePair(c, k)
	if err != nil {
		return nil, fmt.Errorf("read pair %q from %s: %w", name, d, err)
	}
	return p, nil
}

// LoadOrCreateCA loads the CA of the directory, or creates and writes a new
// one named commonName if there is none.
func (d Dir) LoadOrCreateCA(commonName string, validity time.Duration) (*CA, error) {
	ca, err := d.LoadCA()
	if err == nil {
		return ca, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if ca, err = NewCA(commonName, validity); err != nil {
		return nil, err
	}
	if err := d.WriteCA(ca); err != nil {
		return nil, err
	}
	return ca, nil
}

// Verify checks that pair name was issued by the directory's CA and is valid
// now for the given usage.
func (d Dir) Verify(name string, usage x509.ExtKeyUsage) error {
	roots, err := d.Pool()
	if err != nil {
		return err
	}
	c, err := d.LoadCert(name)
	if err != nil {
		return err
	}
	if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return fmt.Errorf("verify %q against %s: %w", name, d.CAFile(), err)
	}
	return nil
}

func (d Dir) mkdir() error {
	if err := os.MkdirAll(string(d), 0o755); err != nil {
		return fmt.Errorf("create TLS directory: %w", err)
	}
	return nil
}

// writeFile writes through a temporary file and a rename so that a reader
// never sees half a PEM file.
func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
