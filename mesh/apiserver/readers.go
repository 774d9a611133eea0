package apiserver

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/meshbed/meshbed/mesh/pki"
	"github.com/meshbed/meshbed/mesh/wire"
)

// RemoteReaders are the clusters allowed to read this one: those of the
// clustermesh config directory dir (empty: none) and extra.
func RemoteReaders(dir string, extra []string) ([]string, error) {
	names := slices.Clone(extra)
	if dir != "" {
		dirNames, err := configClusters(dir)
		if err != nil {
			return nil, fmt.Errorf("clustermesh config %s: %w", dir, err)
		}
		names = append(names, dirNames...)
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// configClusters lists the cluster names of a clustermesh config directory
// as package remote reads it: one file per cluster, names starting with "."
// skipped (the ..data symlinks of a mounted Secret). Files that are not
// valid cluster names are skipped too; package remote reports them.
func configClusters(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		n := e.Name()
		if strings.HasPrefix(n, ".") || e.IsDir() || wire.ValidateClusterName(n) != nil {
			continue
		}
		names = append(names, n)
	}
	return names, nil
}

// WatchReaders rescans the clustermesh config directory dir every period
// and keeps the remote readers' users (RemoteReaders of dir and extra) in
// step, so that `meshbed clustermesh connect` needs no restart. current is
// what the server was started with. It returns when ctx ends.
func (s *Server) WatchReaders(ctx context.Context, dir string, extra []string, every time.Duration, current []string) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		next, err := RemoteReaders(dir, extra)
		if err != nil {
			s.logger.Warn("rescan of remote readers failed", "error", err)
			continue
		}
		if slices.Equal(next, current) {
			continue
		}
		if err := s.SetRemoteClusters(ctx, next); err != nil {
			s.logger.Warn("update of remote readers failed", "error", err)
			continue
		}
		s.logger.Info("remote readers changed", "clusters", next)
		current = next
	}
}

// VerifyPair checks the client pair pair of d: issued by d's CA, for
// user.
func VerifyPair(d pki.Dir, pair, user string) error {
	if err := d.Verify(pair, x509.ExtKeyUsageClientAuth); err != nil {
		return err
	}
	c, err := d.LoadCert(pair)
	if err != nil {
		return err
	}
	if cn := c.Leaf.Subject.CommonName; cn != user {
		return fmt.Errorf("%s is for user %q, want %q (run `meshbed clustermesh enable` to reissue it)", d.CertFile(pair), cn, user)
	}
	return nil
}

// VerifyAdmin checks the apiserver's own client pair in d: issued by the
// CA, for cluster's admin user. A directory written by an older meshbed holds
// a "root" pair instead; `meshbed clustermesh enable` reissues it.
func VerifyAdmin(d pki.Dir, cluster string) error {
	if err := d.Verify(pki.AdminPair, x509.ExtKeyUsageClientAuth); err != nil {
		if _, old := d.LoadCert("root"); old == nil {
			return fmt.Errorf("%w (a certificate directory from an older meshbed: run `meshbed clustermesh enable` to reissue it)", err)
		}
		return err
	}
	return VerifyPair(d, pki.AdminPair, pki.AdminUser(cluster))
}
