// Package pki creates and loads the mesh's certificate authority and the
// certificates issued from it.
//
// Every cluster of a mesh trusts one CA. The mesh-apiserver serves its etcd
// with a server certificate issued from it, and every etcd client presents a
// client certificate whose common name is its etcd user name (etcd maps the
// CN of a verified client certificate to a user): "root" for the apiserver
// itself, "remote-<cluster>" for a remote cluster's reader, "local-agent" and
// "kvstoremesh" for the cluster's own readers and cache writer. The CA key is
// needed only to issue certificates (`meshbed clustermesh enable --create-ca`);
// a running apiserver or agent needs just the CA certificate and its own pair.
//
// Keys are ECDSA P-256. On disk, a directory holds PEM files named by role:
// ca.crt, ca.key, <name>.crt, <name>.key (see Dir).
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// DefaultValidity is the lifetime of certificates when the caller gives none.
// Long, because a test mesh or a Kind mesh should not expire under a user;
// rotation is a later concern.
const DefaultValidity = 3 * 365 * 24 * time.Hour

// clockSkew backdates NotBefore so that a freshly issued certificate is valid
// on a peer whose clock runs slightly behind.
const clockSkew = 5 * time.Minute

// ErrNoCertificate is returned when PEM input holds no CERTIFICATE block;
// the caller should check that it passed the right file.
var ErrNoCertificate = errors.New("no PEM certificate found")

// ErrNoKey is returned when PEM input holds no EC PRIVATE KEY (or PKCS#8
// PRIVATE KEY) block.
var ErrNoKey = errors.New("no PEM private key found")

// CA is a certificate authority: its self-signed certificate and its key.
// Key is nil for a CA loaded without its key (verify only).
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// Cert is an issued certificate with its private key.
type Cert struct {
	Leaf *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// NewCA creates a self-signed CA named commonName.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl, err := template(commonName, validity)
	if err != nil {
		return nil, err
	}
	tmpl.IsCA = true
	tmpl.BasicConstraintsValid = true
	tmpl.MaxPathLenZero = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-sign CA %q: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA %q: %w", commonName, err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// IssueServer issues a certificate for a TLS server, valid for the given DNS
// names and IP addresses. commonName is informational.
func (ca *CA) IssueServer(commonName string, dnsNames []string, ips []net.IP, validity time.Duration) (*Cert, error) {
	if len(dnsNames) == 0 && len(ips) == 0 {
		return nil, fmt.Errorf("issue server certificate %q: no DNS name or IP address", commonName)
	}
	return ca.issue(commonName, validity, func(t *x509.Certificate) {
		t.DNSNames = append([]string(nil), dnsNames...)
		t.IPAddresses = append([]net.IP(nil), ips...)
		// Server certificates double as client certificates so that a
		// server may also dial its peers with them (as etcd does).
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	})
}

// IssueClient issues a client certificate whose common name is user: etcd
// authenticates the connection as that user.
func (ca *CA) IssueClient(user string, validity time.Duration) (*Cert, error) {
	if user == "" {
		return nil, errors.New("issue client certificate: empty user name")
	}
	return ca.issue(user, validity, func(t *x509.Certificate) {
		t.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
}

func (ca *CA) issue(commonName string, validity time.Duration, shape func(*x509.Certificate)) (*Cert, error) {
	if ca.Key == nil {
		return nil, fmt.Errorf("issue certificate %q: CA %q was loaded without its key", commonName, ca.Cert.Subject.CommonName)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key for %q: %w", commonName, err)
	}
	tmpl, err := template(commonName, validity)
	if err != nil {
		return nil, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	shape(tmpl)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate %q: %w", commonName, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse certificate %q: %w", commonName, err)
	}
	return &Cert{Leaf: leaf, Key: key}, nil
}

func template(commonName string, validity time.Duration) (*x509.Certificate, error) {
	if validity <= 0 {
		validity = DefaultValidity
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number for %q: %w", commonName, err)
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{"meshbed"}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(validity),
	}, nil
}

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// CertPEM is the CA certificate in PEM.
func (ca *CA) CertPEM() []byte { return certPEM(ca.Cert) }

// CertPEM is the certificate in PEM.
func (c *Cert) CertPEM() []byte { return certPEM(c.Leaf) }

// KeyPEM is the private key in PEM (SEC 1, "EC PRIVATE KEY").
func (c *Cert) KeyPEM() ([]byte, error) { return keyPEM(c.Key) }

// TLSCertificate is the pair in the form crypto/tls wants.
func (c *Cert) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{c.Leaf.Raw}, PrivateKey: c.Key, Leaf: c.Leaf}
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func keyPEM(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("marshal EC key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// ParseCertPEM returns the first certificate in PEM input.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, ErrNoCertificate
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		return c, nil
	}
}

// ParseKeyPEM returns the first ECDSA private key in PEM input, in SEC 1 or
// PKCS#8 form.
func ParseKeyPEM(data []byte) (*ecdsa.PrivateKey, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, ErrNoKey
		}
		switch b.Type {
		case "EC PRIVATE KEY":
			k, err := x509.ParseECPrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse EC private key: %w", err)
			}
			return k, nil
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("parse PKCS#8 private key: %w", err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("PKCS#8 private key is %T, want ECDSA", k)
			}
			return ek, nil
		}
	}
}

// ParsePair parses a certificate and its key, and checks that they belong
// together.
func ParsePair(certPEM, keyPEM []byte) (*Cert, error) {
	leaf, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return nil, fmt.Errorf("certificate %q does not match its private key", leaf.Subject.CommonName)
	}
	return &Cert{Leaf: leaf, Key: key}, nil
}

// ServerTLSConfig is the configuration of a server that presents server and
// requires a client certificate issued by a CA in roots.
func ServerTLSConfig(roots *x509.CertPool, server *Cert) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{server.TLSCertificate()},
		ClientCAs:    roots,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}
}

// ClientTLSConfig is the configuration of a client that presents client and
// trusts servers issued by a CA in roots. serverName, when set, is the name
// checked against the server certificate instead of the dialled host (needed
// over unix sockets, and when dialling an IP the certificate lacks).
func ClientTLSConfig(roots *x509.CertPool, client *Cert, serverName string) *tls.Config {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    roots,
		ServerName: serverName,
	}
	if client != nil {
		cfg.Certificates = []tls.Certificate{client.TLSCertificate()}
	}
	return cfg
}
