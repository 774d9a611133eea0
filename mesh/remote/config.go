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
	"time"

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

// NewEtcdConfig is the config of a connection to endpoints with the CA and
// client pair pair of the certificate directory dir (as it is mounted
// where the config is read): what `meshbed clustermesh connect` writes into
// the Secrets and the simulator into its nodes' directories alike.
func NewEtcdConfig(endpoints []string, dir pki.Dir, pair string) EtcdConfig {
	return EtcdConfig{
		Endpoints: endpoints, TrustedCAFile: dir.CAFile(),
		CertFile: dir.CertFile(pair), KeyFile: dir.KeyFile(pair),
	}
}

// Marshal is the config file's content.
func (c EtcdConfig) Marshal() ([]byte, error) { return yaml.Marshal(c) }

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
	return loadConfigWith(os.ReadFile, dir, path, nil)
}

// loadConfigWith is loadConfig reading through readFile. When what it
// reads has prev's fingerprint, it returns prev rather than decoding the
// certificates again.
func loadConfigWith(readFile func(string) ([]byte, error), dir, path string, prev *loadedConfig) (*loadedConfig, error) {
	data, err := readFile(path)
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
		b, err := readFile(p)
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
	if prev != nil && prev.fingerprint == lc.fingerprint {
		return prev, nil
	}
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

// racyWindow: a file modified less than this long before it was read may
// change again without its stamp changing (timestamps are taken from a
// coarse clock, a jiffy on Linux, and some filesystems keep whole seconds),
// so it is read again at every poll until it is older than that.
const racyWindow = 2 * time.Second

// configFiles remembers what the polls of the config directory read, so
// that a poll over unchanged files costs one stat per file and nothing
// else: no read, no YAML, no certificate decoding. A file is known by its
// stamp (device and inode, size, modification time, mode), taken through
// symlinks, so that the swap of a Kubernetes Secret's ..data link is a
// change of every file behind it. The content still decides: a file whose
// stamp changed is read again, and a config whose inputs read the same as
// before (a touch, a rewrite with the same content) keeps its
// loadedConfig, hence its connection. It belongs to the goroutine that
// polls.
type configFiles struct {
	// readFile is os.ReadFile; tests count reads through it.
	readFile func(string) ([]byte, error)
	files    map[string]*cachedFile   // by path as read
	configs  map[string]*cachedConfig // by config file path

	// Per poll: when it started, the stamps taken and the entries used
	// (what is not used by a poll is forgotten at its end).
	start       time.Time
	stamps      map[string]fileStamp
	polled      map[string]*cachedFile
	usedConfigs map[string]bool
}

type cachedFile struct {
	path  string
	stamp fileStamp
	data  []byte
	err   error
	// racy: modified within racyWindow of the read; not trusted.
	racy bool
}

// cachedConfig is a config file's outcome and the files it was made of,
// the config file first.
type cachedConfig struct {
	inputs []*cachedFile
	lc     *loadedConfig
	err    error
}

// fileStamp identifies a version of a file without reading it; the zero
// value stands for a file that cannot be stat'ed (missing, no access).
type fileStamp struct{ fi os.FileInfo }

func (a fileStamp) same(b fileStamp) bool {
	if a.fi == nil || b.fi == nil {
		return a.fi == nil && b.fi == nil
	}
	return os.SameFile(a.fi, b.fi) && a.fi.Size() == b.fi.Size() &&
		a.fi.ModTime().Equal(b.fi.ModTime()) && a.fi.Mode() == b.fi.Mode()
}

func newConfigFiles() *configFiles {
	return &configFiles{
		readFile: os.ReadFile,
		files:    map[string]*cachedFile{}, configs: map[string]*cachedConfig{},
		stamps: map[string]fileStamp{}, polled: map[string]*cachedFile{}, usedConfigs: map[string]bool{},
	}
}

// beginPoll starts a poll; endPoll forgets what it did not use.
func (f *configFiles) beginPoll() {
	f.start = time.Now()
	// Cleared, not reallocated: polls are frequent and alike.
	clear(f.stamps)
	clear(f.polled)
	clear(f.usedConfigs)
}

func (f *configFiles) endPoll() {
	for p := range f.files {
		if f.polled[p] == nil {
			delete(f.files, p)
		}
	}
	for p := range f.configs {
		if !f.usedConfigs[p] {
			delete(f.configs, p)
		}
	}
}

// stat returns the stamp of path (following symlinks), once per poll: a
// CA shared by many clusters is stat'ed once.
func (f *configFiles) stat(path string) fileStamp {
	if st, ok := f.stamps[path]; ok {
		return st
	}
	var st fileStamp
	if fi, err := os.Stat(path); err == nil {
		st.fi = fi
	}
	f.stamps[path] = st
	return st
}

// read returns path's content, read again only if its stamp changed or it
// was racy. A read error is remembered like content: a missing certificate
// is not looked for again until its stamp changes (it appears).
func (f *configFiles) read(path string) *cachedFile {
	if cf := f.polled[path]; cf != nil {
		return cf
	}
	// Stat before reading: a change in between then shows as a changed
	// stamp at the next poll, never as new content under an old stamp.
	st := f.stat(path)
	cf := f.files[path]
	if cf == nil || cf.racy || !cf.stamp.same(st) {
		data, err := f.readFile(path)
		cf = &cachedFile{path: path, stamp: st, data: data, err: err,
			racy: st.fi != nil && st.fi.ModTime().After(f.start.Add(-racyWindow))}
		f.files[path] = cf
	}
	f.polled[path] = cf
	return cf
}

// load is loadConfig for a poll: the previous outcome if none of its
// files changed, else a reload that reads only the changed files.
func (f *configFiles) load(dir, path string) (*loadedConfig, error) {
	f.usedConfigs[path] = true
	c := f.configs[path]
	if c != nil && f.current(c) {
		for _, cf := range c.inputs {
			f.polled[cf.path] = cf
		}
		return c.lc, c.err
	}
	var inputs []*cachedFile
	read := func(p string) ([]byte, error) {
		cf := f.read(p)
		inputs = append(inputs, cf)
		return cf.data, cf.err
	}
	var prev *loadedConfig
	if c != nil {
		prev = c.lc
	}
	lc, err := loadConfigWith(read, dir, path, prev)
	f.configs[path] = &cachedConfig{inputs: inputs, lc: lc, err: err}
	return lc, err
}

// current reports whether every input of c is still what c was made of.
func (f *configFiles) current(c *cachedConfig) bool {
	for _, cf := range c.inputs {
		if cf.racy || f.files[cf.path] != cf {
			return false
		}
		if p := f.polled[cf.path]; p != nil && p != cf {
			return false
		}
		if !cf.stamp.same(f.stat(cf.path)) {
			return false
		}
	}
	return true
}
