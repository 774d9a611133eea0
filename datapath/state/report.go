package state

// NodeReport is one node as its agent reports it on the agent's state
// socket (meshbed-agent state): what the agent wants and what the node's
// BPF maps hold, with the policies it enforces with limitations or
// rejected. The Kind target of the scenario engine reads it for the final
// check and the backends expectation.
type NodeReport struct {
	Node string `json:"node"`
	// Desired is the agent's last desired state, nil before the first.
	Desired *State `json:"desired,omitempty"`
	// Services (active backends in slot order) and IPCache are read back
	// from the BPF maps.
	Services []Service      `json:"services"`
	IPCache  []IPCacheEntry `json:"ipcache"`
	// PolicyWarnings and PolicyErrors are by policy reference.
	PolicyWarnings map[string][]string `json:"policyWarnings,omitempty"`
	PolicyErrors   map[string]string   `json:"policyErrors,omitempty"`
	// Remotes are the remote clusters the agent is configured for, as it
	// sees them.
	Remotes []RemoteReport `json:"remotes,omitempty"`
}

// RemoteReport is one remote cluster as a node's agent sees it.
type RemoteReport struct {
	Name string `json:"name"`
	// Connected: the current session's cluster-config was validated and
	// the remote answers; Synced: its services are synced and it is
	// reachable, so the agent programs its backends.
	Connected bool `json:"connected"`
	Synced    bool `json:"synced"`
	// Cached: read through the local kvstoremesh.
	Cached    bool   `json:"cached,omitempty"`
	LastError string `json:"lastError,omitempty"`
}
