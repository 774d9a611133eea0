package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/wire"
)

// remoteView is one remote cluster as one component of a simulated
// cluster sees it: what `meshbed clustermesh status --cluster` prints, in
// the manner of `cilium clustermesh status`.
type remoteView struct {
	// Node is the agent's node; empty for kvstoremesh.
	Node   string `json:"node,omitempty"`
	Remote string `json:"remote"`
	// Connected: the remote's cluster-config was validated by the current
	// session and the remote answers its health probe (a partition turns
	// it to no while the session lives on, retrying); Synced: its state is
	// complete and current.
	Connected bool `json:"connected"`
	Synced    bool `json:"synced"`
	// Through kvstoremesh (agents of a cluster that runs it).
	Cached     bool   `json:"cached,omitempty"`
	Nodes      int    `json:"nodes"`
	Services   int    `json:"services"`
	Identities int    `json:"identities"`
	Endpoints  int    `json:"endpoints"`
	Since      string `json:"since,omitempty"` // RFC 3339
	// ForSeconds is how long Synced has had its value.
	ForSeconds float64 `json:"forSeconds"`
	Failures   int     `json:"failures"`
	LastError  string  `json:"lastError,omitempty"`
}

type clustermeshView struct {
	Cluster string `json:"cluster"`
	// KVStoreMesh is "running", "stopped" or "not used".
	KVStoreMesh string       `json:"kvstoremesh"`
	Cache       []remoteView `json:"cache"`
	Agents      []remoteView `json:"agents"`
	// Running counts the running agents; Stopped lists the nodes whose
	// agent is not running.
	Running int      `json:"runningAgents"`
	Stopped []string `json:"stoppedAgents,omitempty"`
}

func viewOf(node string, s remote.ClusterStatus, now time.Time) remoteView {
	v := remoteView{Node: node, Remote: s.Name, Connected: s.Up && s.Reachable, Synced: s.Reachable, Cached: s.Cached,
		Nodes: s.Entries[wire.Nodes], Services: s.Entries[wire.Services],
		Identities: s.Entries[wire.Identities], Endpoints: s.Entries[wire.IP], Failures: s.Failures}
	if !s.Since.IsZero() {
		v.Since = s.Since.UTC().Format(time.RFC3339Nano)
		v.ForSeconds = now.Sub(s.Since).Seconds()
	}
	switch {
	case s.ConfigErr != nil:
		v.LastError = s.ConfigErr.Error()
	case s.LastErr != nil:
		v.LastError = s.LastErr.Error()
	}
	return v
}

// clustermesh answers /clustermesh?cluster=C on the control socket.
func (c *control) clustermesh(r *http.Request) (any, error) {
	cl, err := c.cluster(r)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := clustermeshView{Cluster: cl.Name(), KVStoreMesh: "not used", Cache: []remoteView{}, Agents: []remoteView{}}
	if cl.UsesKVStoreMesh() {
		out.KVStoreMesh = "stopped"
		if st, conns, ok := cl.KVStoreMeshStatus(); ok {
			out.KVStoreMesh = "running"
			for _, s := range st {
				v := remoteView{Remote: s.Name, Connected: s.Connected && s.Reachable, Synced: s.Reachable && s.Synced, LastError: s.LastError}
				if s.ConfigError != "" {
					v.LastError = s.ConfigError
				}
				for _, rs := range s.Resources {
					switch rs.Resource {
					case wire.Nodes:
						v.Nodes = rs.Keys
					case wire.Services:
						v.Services = rs.Keys
					case wire.Identities:
						v.Identities = rs.Keys
					case wire.IP:
						v.Endpoints = rs.Keys
					}
				}
				if !s.Since.IsZero() {
					v.Since = s.Since.UTC().Format(time.RFC3339Nano)
					v.ForSeconds = now.Sub(s.Since).Seconds()
				}
				out.Cache = append(out.Cache, v)
			}
			// The failure count is the remote Manager's.
			for _, rs := range conns {
				for i := range out.Cache {
					if out.Cache[i].Remote == rs.Name {
						out.Cache[i].Failures = rs.Failures
					}
				}
			}
		}
	}
	for _, n := range cl.Nodes() {
		if n.Agent() == nil {
			out.Stopped = append(out.Stopped, n.Name())
			continue
		}
		out.Running++
		for _, s := range n.Remotes() {
			out.Agents = append(out.Agents, viewOf(n.Name(), s, now))
		}
	}
	return out, nil
}

// clustermeshStatusSim prints the clustermesh status of one cluster of a
// running simulated mesh.
func clustermeshStatusSim(cmd *cobra.Command, mesh, cluster, output string) error {
	if output != "" && output != "json" && output != "summary" {
		return &exitError{2, fmt.Errorf("-o %q: want summary or json", output)}
	}
	req, _ := http.NewRequestWithContext(cmd.Context(), http.MethodGet, "http://sim/clustermesh", nil)
	q := req.URL.Query()
	q.Set("cluster", cluster)
	req.URL.RawQuery = q.Encode()
	body, err := do(cmd, mesh, req)
	if err != nil {
		return err
	}
	var v clustermeshView
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("clustermesh status of %s: %w", cluster, err)
	}
	if output == "json" {
		_, err := cmd.OutOrStdout().Write(body)
		return err
	}
	printClustermesh(cmd.OutOrStdout(), &v)
	if problems := v.problems(); len(problems) > 0 {
		return &exitError{1, errors.New(strings.Join(problems, "; "))}
	}
	return nil
}

// problems lists why the cluster is not fully meshed.
func (v *clustermeshView) problems() []string {
	var out []string
	if v.KVStoreMesh == "stopped" {
		out = append(out, "kvstoremesh is stopped")
	}
	for _, n := range v.Stopped {
		out = append(out, "the agent on "+n+" is stopped")
	}
	for _, r := range append(append([]remoteView(nil), v.Cache...), v.Agents...) {
		who := "kvstoremesh"
		if r.Node != "" {
			who = "agent on " + r.Node
		}
		if !r.Synced {
			out = append(out, fmt.Sprintf("%s: %s not synced", who, r.Remote))
		}
	}
	return out
}

func printClustermesh(w io.Writer, v *clustermeshView) {
	yn := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	table := func(rows []remoteView, agents bool) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		head := "REMOTE\tCONNECTED\tSYNCED\tNODES\tSERVICES\tIDENTITIES\tENDPOINTS\tFOR\tFAILURES\tLAST ERROR"
		if agents {
			head = "NODE\tVIA\t" + head
		}
		fmt.Fprintln(tw, head)
		for _, r := range rows {
			state := "—"
			if r.Since != "" {
				state = fmt.Sprintf("%s (%s)", (time.Duration(r.ForSeconds * float64(time.Second))).Round(100*time.Millisecond), map[bool]string{true: "synced", false: "not synced"}[r.Synced])
			}
			line := fmt.Sprintf("%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\t%d\t%s", r.Remote, yn(r.Connected), yn(r.Synced),
				r.Nodes, r.Services, r.Identities, r.Endpoints, state, r.Failures, r.LastError)
			if agents {
				via := "direct"
				if r.Cached {
					via = "kvstoremesh"
				}
				line = r.Node + "\t" + via + "\t" + line
			}
			fmt.Fprintln(tw, line)
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "Cluster %s\n", v.Cluster)
	fmt.Fprintf(w, "\nKVStoreMesh: %s\n", v.KVStoreMesh)
	if len(v.Cache) > 0 {
		table(v.Cache, false)
	}
	fmt.Fprintf(w, "\nAgents: %d running", v.Running)
	if len(v.Stopped) > 0 {
		fmt.Fprintf(w, ", stopped on %s", strings.Join(v.Stopped, ", "))
	}
	fmt.Fprintln(w)
	if len(v.Agents) > 0 {
		table(v.Agents, true)
	}
}
