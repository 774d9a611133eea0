package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/prometheus/common/expfmt"
	"sigs.k8s.io/yaml"

	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/mesh/remote"
	"github.com/meshbed/meshbed/mesh/wire"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	"github.com/meshbed/meshbed/sim"
)

// Server serves the verbs of a running simulated mesh on its control
// socket: one step at a time (POST /step, a step as it stands in the
// scenario file's spec.steps, as JSON), and reads of the mesh (/status,
// /kvstore, /bpf/lb, /clustermesh, /metrics and the flow stream).
type Server struct {
	file string
	raw  []byte
	s    *engine.Session
	mesh *sim.Mesh
}

// NewServer serves session s of the scenario file file (its text raw),
// which runs on mesh.
func NewServer(file string, raw []byte, s *engine.Session, mesh *sim.Mesh) *Server {
	return &Server{file: file, raw: raw, s: s, mesh: mesh}
}

// ServeHTTP implements http.Handler.
func (c *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var v any
	var err error
	switch r.URL.Path {
	case "/step":
		v, err = c.step(r)
	case "/status":
		v = c.status()
	case "/kvstore":
		v, err = c.kvstore(r)
	case "/bpf/lb":
		v, err = c.lb(r)
	case flow.Path:
		flow.Handler(r.Context(), func(req flow.Request) ([]*flow.Observer, error) {
			return c.mesh.FlowObservers(req.Cluster, req.Node)
		}).ServeHTTP(w, r)
		return
	case "/metrics":
		c.serveMetrics(w, r)
		return
	case "/clustermesh":
		v, err = c.clustermesh(r)
	default:
		http.NotFound(w, r)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}

// step parses one step in the context of the mesh's scenario file (so that
// references are checked exactly as in a file) and runs it.
func (c *Server) step(r *http.Request) (any, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxStepRequest+1))
	if err != nil {
		return nil, err
	}
	st, err := ParseStep(c.file, c.raw, body)
	if err != nil {
		return nil, err
	}
	return c.s.Step(r.Context(), st), nil
}

// maxStepRequest bounds a /step request body: a step is a few hundred
// bytes, an inline manifest a few kilobytes.
const maxStepRequest = 1 << 20

// ParseStep decodes a /step request body, one step as a JSON object
// the way it would stand in the scenario file's spec.steps, in the context
// of that file (file, raw): the step becomes the file's only step and the
// whole file is parsed, so references are checked as in a file.
func ParseStep(file string, raw, body []byte) (*scenarios.Step, error) {
	if len(body) > maxStepRequest {
		return nil, fmt.Errorf("step request larger than %d bytes", maxStepRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var st map[string]any
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("step request: %w", err)
	}
	if st == nil {
		return nil, errors.New("step request: want a JSON object, got null")
	}
	if dec.More() {
		return nil, errors.New("step request: more than one JSON value")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("step request: data after the step")
	}
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return nil, err
	}
	spec, _ := doc["spec"].(map[string]any)
	if spec == nil {
		return nil, errors.New("scenario file has no spec")
	}
	spec["steps"] = []any{st}
	data, err := yaml.Marshal(doc)
	if err != nil {
		return nil, err
	}
	sc, err := scenarios.Parse(file, data)
	if err != nil {
		return nil, err
	}
	if len(sc.Steps) != 1 {
		return nil, fmt.Errorf("step request: parsed into %d steps", len(sc.Steps))
	}
	return &sc.Steps[0], nil
}

// NodeStatus is a node in Status.
type NodeStatus struct {
	Name           string `json:"name"`
	IP             string `json:"ip"`
	Agent          bool   `json:"agent"`
	ServicesSynced bool   `json:"servicesSynced"`
	Endpoints      int    `json:"endpoints"`
	ApplyError     string `json:"applyError,omitempty"`
}

// ClusterStatus is a cluster in Status.
type ClusterStatus struct {
	Name      string       `json:"name"`
	ID        uint32       `json:"id"`
	APIServer string       `json:"apiserver"`
	Running   []string     `json:"running"`
	Nodes     []NodeStatus `json:"nodes"`
}

// Status is /status: clusters, nodes, components and partitions.
type Status struct {
	Clusters   []ClusterStatus `json:"clusters"`
	Partitions []string        `json:"partitions"`
}

func (c *Server) status() any {
	m := c.mesh
	var out Status
	for _, cl := range m.Clusters() {
		cs := ClusterStatus{Name: cl.Name(), ID: cl.Spec().ID, APIServer: cl.APIServerIP().String(), Running: cl.Running()}
		for _, n := range cl.Nodes() {
			ns := NodeStatus{Name: n.Name(), IP: n.IP().String()}
			if a := n.Agent(); a != nil {
				ns.Agent = true
				_, err, synced := a.State()
				ns.ServicesSynced = synced
				ns.Endpoints = len(a.Endpoints())
				if err != nil {
					ns.ApplyError = err.Error()
				}
			}
			cs.Nodes = append(cs.Nodes, ns)
		}
		out.Clusters = append(out.Clusters, cs)
	}
	out.Partitions = m.Partitioned()
	return out
}

func (c *Server) cluster(r *http.Request) (*sim.Cluster, error) {
	name := r.URL.Query().Get("cluster")
	cl, ok := c.mesh.Cluster(name)
	if !ok {
		return nil, fmt.Errorf("no cluster %q", name)
	}
	return cl, nil
}

func (c *Server) kvstore(r *http.Request) (any, error) {
	cl, err := c.cluster(r)
	if err != nil {
		return nil, err
	}
	key := r.URL.Query().Get("key")
	if r.URL.Query().Get("prefix") != "" {
		return cl.KVStoreList(r.Context(), key)
	}
	val, found, err := cl.KVStoreGet(r.Context(), key)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("key %s not found in cluster %s", key, cl.Name())
	}
	return map[string]string{key: string(val)}, nil
}

// LBEntry is one frontend of /bpf/lb as a node's BPF maps hold it.
type LBEntry struct {
	Node     string   `json:"node"`
	Service  string   `json:"service"`
	Frontend string   `json:"frontend"`
	Backends []string `json:"backends"`
}

func (c *Server) lb(r *http.Request) (any, error) {
	cl, err := c.cluster(r)
	if err != nil {
		return nil, err
	}
	var out []LBEntry
	for _, n := range cl.Nodes() {
		if want := r.URL.Query().Get("node"); want != "" && n.Name() != want {
			continue
		}
		entries, err := n.Datapath().Datapath().DumpServices()
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			le := LBEntry{Node: n.Name(), Service: e.Name, Frontend: e.Frontend.String()}
			for _, b := range e.Backends {
				le.Backends = append(le.Backends, b.Backend.String())
			}
			out = append(out, le)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Node != out[j].Node {
			return out[i].Node < out[j].Node
		}
		return out[i].Frontend < out[j].Frontend
	})
	return out, nil
}

// serveMetrics answers /metrics of the control socket: every component's
// metrics in Prometheus' text format, with cluster, node and component
// labels.
func (c *Server) serveMetrics(w http.ResponseWriter, _ *http.Request) {
	fams, err := c.mesh.Gather()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", string(expfmt.NewFormat(expfmt.TypeTextPlain)))
	enc := expfmt.NewEncoder(w, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			return
		}
	}
}

// RemoteView is one remote cluster as one component of a simulated
// cluster sees it: what `meshbed clustermesh status --cluster` prints, in
// the manner of `cilium clustermesh status`.
type RemoteView struct {
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

// ClusterMeshView is /clustermesh?cluster=C.
type ClusterMeshView struct {
	Cluster string `json:"cluster"`
	// KVStoreMesh is "running", "stopped" or "not used".
	KVStoreMesh string       `json:"kvstoremesh"`
	Cache       []RemoteView `json:"cache"`
	Agents      []RemoteView `json:"agents"`
	// Running counts the running agents; Stopped lists the nodes whose
	// agent is not running.
	Running int      `json:"runningAgents"`
	Stopped []string `json:"stoppedAgents,omitempty"`
}

func viewOf(node string, s remote.ClusterStatus, now time.Time) RemoteView {
	v := RemoteView{Node: node, Remote: s.Name, Connected: s.Up && s.Reachable, Synced: s.Reachable, Cached: s.Cached,
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
func (c *Server) clustermesh(r *http.Request) (any, error) {
	cl, err := c.cluster(r)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	out := ClusterMeshView{Cluster: cl.Name(), KVStoreMesh: "not used", Cache: []RemoteView{}, Agents: []RemoteView{}}
	if cl.UsesKVStoreMesh() {
		out.KVStoreMesh = "stopped"
		if st, conns, ok := cl.KVStoreMeshStatus(); ok {
			out.KVStoreMesh = "running"
			for _, s := range st {
				v := RemoteView{Remote: s.Name, Connected: s.Connected && s.Reachable, Synced: s.Reachable && s.Synced, LastError: s.LastError}
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

// Problems lists why the cluster is not fully meshed.
func (v *ClusterMeshView) Problems() []string {
	var out []string
	if v.KVStoreMesh == "stopped" {
		out = append(out, "kvstoremesh is stopped")
	}
	for _, n := range v.Stopped {
		out = append(out, "the agent on "+n+" is stopped")
	}
	for _, r := range append(append([]RemoteView(nil), v.Cache...), v.Agents...) {
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
