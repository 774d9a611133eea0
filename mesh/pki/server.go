package pki

import (
	"errors"
	"net"
	"os"
	"slices"
	"time"
)

// LocalServerName is the name in every mesh-apiserver's server certificate
// that its own clients (the apiserver itself, the agents of its cluster
// through the local endpoint) check.
const LocalServerName = "localhost"

// IssueServerTLS writes into dir what cluster's apiserver needs besides the
// CA certificate: the etcd server pair ("server", valid for localhost,
// loopback and ips) and the apiserver's own client pair (AdminPair, user
// AdminUser(cluster)). The CA certificate is written too, without its
// key.
func IssueServerTLS(dir Dir, ca *CA, cluster string, ips []net.IP, validity time.Duration) error {
	all := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	for _, ip := range ips {
		if !slices.ContainsFunc(all, ip.Equal) {
			all = append(all, ip)
		}
	}
	if _, err := os.Stat(dir.CAFile()); errors.Is(err, os.ErrNotExist) {
		if err := dir.WriteCA(&CA{Cert: ca.Cert}); err != nil {
			return err
		}
	}
	srv, err := ca.IssueServer("meshbed-apiserver", []string{LocalServerName}, all, validity)
	if err != nil {
		return err
	}
	if err := dir.WriteCert(ServerName, srv); err != nil {
		return err
	}
	admin, err := ca.IssueClient(AdminUser(cluster), validity)
	if err != nil {
		return err
	}
	return dir.WriteCert(AdminPair, admin)
}
