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
}
