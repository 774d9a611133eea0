package pki

// etcd users of a mesh-apiserver. A client authenticates as the common name
// of its verified client certificate (etcd's certificate auth); there are no
// passwords. The mesh-apiserver grants each user its role; whoever issues
// certificates names them with these constants.
const (
	// UserRoot is the apiserver itself (and the in-process kvstoremesh).
	UserRoot = "root"
	// UserLocalAgent is the cluster's own agents: read-only on the local
	// state, the kvstoremesh cache, every cluster-config, every canary and
	// the heartbeat.
	UserLocalAgent = "local-agent"
	// UserKVStoreMesh is a kvstoremesh running outside the apiserver
	// process: it reads like a local agent and writes the cache, the
	// remote cluster-configs and their canaries.
	UserKVStoreMesh = "kvstoremesh"
	// RemoteUserPrefix starts the user name of a remote cluster's reader,
	// see RemoteUser.
	RemoteUserPrefix = "remote-"
)

// RemoteUser is the etcd user of remote cluster cluster's reader,
// "remote-<cluster>": read-only on this cluster's exported state, its
// cluster-config, its sync canaries and the heartbeat, nothing else.
func RemoteUser(cluster string) string { return RemoteUserPrefix + cluster }
