package pki

// etcd users of a mesh-apiserver. A client authenticates as the common name
// of its verified client certificate (etcd's certificate auth); there are no
// passwords. Every user is named after the cluster it belongs to, so that a
// certificate of one cluster means nothing in another cluster's etcd
// (where that user does not exist), although every cluster trusts the same
// CA:
//
//   - AdminUser(c): cluster c's mesh-apiserver itself (and its in-process
//     kvstoremesh), with etcd's root role.
//   - LocalUser(c): cluster c's agents, read-only on the local state, the
//     kvstoremesh cache, every cluster-config, every canary and the
//     heartbeat.
//   - KVStoreMeshUser(c): a kvstoremesh of cluster c running outside the
//     apiserver process: it reads like an agent and writes the cache, the
//     remote cluster-configs and their canaries.
//   - RemoteUser(r): remote cluster r's reader, which exists in the etcd of
//     every cluster that r may read.
//
// etcd requires a user named "root" before it enables auth; it exists, with
// no certificate ever issued for it.

// AdminUser is cluster's own mesh-apiserver: "admin-<cluster>".
func AdminUser(cluster string) string { return AdminUserPrefix + cluster }

// LocalUser is cluster's agents: "local-<cluster>".
func LocalUser(cluster string) string { return LocalUserPrefix + cluster }

// KVStoreMeshUser is cluster's out-of-process kvstoremesh:
// "kvstoremesh-<cluster>".
func KVStoreMeshUser(cluster string) string { return KVStoreMeshUserPrefix + cluster }

// RemoteUser is remote cluster cluster's reader, "remote-<cluster>":
// read-only on the exported state, the read cluster's config, its sync
// canaries and the heartbeat, nothing else.
func RemoteUser(cluster string) string { return RemoteUserPrefix + cluster }

// Prefixes of the user names.
const (
	AdminUserPrefix       = "admin-"
	LocalUserPrefix       = "local-"
	KVStoreMeshUserPrefix = "kvstoremesh-"
	RemoteUserPrefix      = "remote-"
)

// Pair names: the file names (see Dir) under which the client pairs are
// kept. They name the role, not the user, so that a directory or Secret
// has the same layout in every cluster.
const (
	// AdminPair is the mesh-apiserver's own client pair (AdminUser).
	AdminPair = "admin"
	// LocalAgentPair is the agents' pair for their local mesh-apiserver
	// (LocalUser).
	LocalAgentPair = "local-agent"
	// KVStoreMeshPair is an out-of-process kvstoremesh's pair
	// (KVStoreMeshUser).
	KVStoreMeshPair = "kvstoremesh"
)
