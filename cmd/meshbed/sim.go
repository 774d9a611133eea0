package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	"github.com/meshbed/meshbed/sim"
	simtarget "github.com/meshbed/meshbed/sim/target"
)

// socketDir holds the control sockets of running simulated meshes.
const socketDir = "/run/meshbed"

func socketPath(name string) string { return filepath.Join(socketDir, "sim-"+name+".sock") }

func simCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{Use: "sim", Short: "Keep a simulated mesh running and drive it by hand"}
	cmd.PersistentFlags().StringVar(&name, "name", "default", "name of the simulated mesh (several may run at once)")

	var file, logFile string
	var verbose bool
	up := &cobra.Command{
		Use:   "up -f FILE",
		Short: "Bring up the topology and manifests of a scenario file and keep it running until Ctrl-C",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return &exitError{2, errors.New("-f FILE is required")}
			}
			if os.Geteuid() != 0 {
				return &exitError{2, errors.New("the simulator needs root: it creates network namespaces and loads BPF programs (run with sudo)")}
			}
			return simUp(cmd, name, file, logFile, verbose)
		},
	}
	up.Flags().StringVarP(&file, "file", "f", "", "scenario file whose topology and manifests to bring up (its steps are not run)")
	up.Flags().StringVar(&logFile, "log-file", "", "write the mesh components' logs to this file")
	up.Flags().BoolVarP(&verbose, "verbose", "v", false, "print the mesh components' logs on stderr")
	cmd.AddCommand(up)

	step := func(use, short string, args cobra.PositionalArgs, build func(cmd *cobra.Command, args []string) (map[string]any, error)) *cobra.Command {
		c := &cobra.Command{Use: use, Short: short, Args: args,
			RunE: func(cmd *cobra.Command, args []string) error {
				st, err := build(cmd, args)
				if err != nil {
					return &exitError{2, err}
				}
				return postStep(cmd, name, st)
			}}
		return c
	}
	var count int
	var timeout time.Duration
	curl := step("curl CLUSTER/[NAMESPACE/]DEPLOYMENT URL", "Send requests from a pod (namespace default unless given), as kubectl exec ... -- curl", cobra.ExactArgs(2),
		func(_ *cobra.Command, a []string) (map[string]any, error) {
			return map[string]any{"curl": map[string]any{"from": a[0], "url": a[1], "count": count, "timeout": timeout.String()}}, nil
		})
	curl.Flags().IntVar(&count, "count", 10, "number of requests")
	curl.Flags().DurationVar(&timeout, "timeout", time.Second, "timeout of each request")
	cmd.AddCommand(curl)

	var namespace string
	scale := step("scale CLUSTER DEPLOYMENT REPLICAS", "Scale a deployment, as kubectl scale", cobra.ExactArgs(3),
		func(_ *cobra.Command, a []string) (map[string]any, error) {
			n, err := strconv.Atoi(a[2])
			if err != nil || n < 0 {
				return nil, fmt.Errorf("replicas %q: want a number ≥ 0", a[2])
			}
			return map[string]any{"scale": map[string]any{"cluster": a[0], "deployment": a[1], "replicas": n, "namespace": namespace}}, nil
		})
	scale.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace")
	cmd.AddCommand(scale)

	annotate := step("annotate CLUSTER SERVICE KEY=VALUE|KEY- ...", "Set or remove annotations of a service, as kubectl annotate", cobra.MinimumNArgs(3),
		func(_ *cobra.Command, a []string) (map[string]any, error) {
			ann := map[string]any{}
			for _, kv := range a[2:] {
				if k, ok := strings.CutSuffix(kv, "-"); ok && !strings.Contains(kv, "=") {
					ann[k] = nil
					continue
				}
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return nil, fmt.Errorf("annotation %q: want KEY=VALUE or KEY-", kv)
				}
				ann[k] = v
			}
			return map[string]any{"annotate": map[string]any{"cluster": a[0], "service": a[1], "namespace": namespace, "annotations": ann}}, nil
		})
	annotate.Flags().StringVarP(&namespace, "namespace", "n", "default", "namespace")
	cmd.AddCommand(annotate)

	var plane string
	var oneWay bool
	partition := step("partition GROUP GROUP ...", "Cut the network between groups (a group is a comma-separated list of clusters or cluster/node)", cobra.MinimumNArgs(2),
		func(_ *cobra.Command, a []string) (map[string]any, error) {
			var groups [][]string
			for _, g := range a {
				groups = append(groups, strings.Split(g, ","))
			}
			return map[string]any{"partition": map[string]any{"groups": groups, "plane": plane, "oneWay": oneWay}}, nil
		})
	partition.Flags().StringVar(&plane, "plane", "both", "both, data or control")
	partition.Flags().BoolVar(&oneWay, "one-way", false, "cut only traffic from the first group to the others")
	cmd.AddCommand(partition)
	cmd.AddCommand(step("heal", "Remove every partition", cobra.NoArgs,
		func(*cobra.Command, []string) (map[string]any, error) {
			return map[string]any{"heal": map[string]any{}}, nil
		}))
	for _, verb := range []string{"stop", "start", "restart"} {
		cmd.AddCommand(step(verb+" COMPONENT CLUSTER [NODE]", strings.ToUpper(verb[:1])+verb[1:]+" apiserver, kvstoremesh or agent", cobra.RangeArgs(2, 3),
			func(_ *cobra.Command, a []string) (map[string]any, error) {
				p := map[string]any{"component": a[0], "cluster": a[1]}
				if len(a) == 3 {
					p["node"] = a[2]
				}
				return map[string]any{verb: p}, nil
			}))
	}

	cmd.AddCommand(&cobra.Command{
		Use: "status", Short: "Show clusters, nodes, components and partitions", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return getAndPrint(cmd, name, "/status", nil) },
	})
	var prefix bool
	kv := &cobra.Command{Use: "kvstore", Short: "Read a cluster's mesh-apiserver etcd"}
	kvGet := &cobra.Command{
		Use: "get CLUSTER KEY", Short: "Print a key (or every key under a prefix with --prefix)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			q := map[string]string{"cluster": a[0], "key": a[1]}
			if prefix {
				q["prefix"] = "1"
			}
			return getAndPrint(cmd, name, "/kvstore", q)
		},
	}
	kvGet.Flags().BoolVar(&prefix, "prefix", false, "treat KEY as a prefix")
	kv.AddCommand(kvGet)
	cmd.AddCommand(kv)
	bpf := &cobra.Command{Use: "bpf", Short: "Read nodes' BPF maps"}
	lb := &cobra.Command{Use: "lb", Short: "Load-balancing maps"}
	lb.AddCommand(&cobra.Command{
		Use: "list CLUSTER [NODE]", Short: "List frontends and their backends as programmed in BPF", Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, a []string) error {
			q := map[string]string{"cluster": a[0]}
			if len(a) == 2 {
				q["node"] = a[1]
			}
			return getAndPrint(cmd, name, "/bpf/lb", q)
		},
	})
	bpf.AddCommand(lb)
	cmd.AddCommand(bpf)
	cmd.AddCommand(simObserveCmd(&name))
	return cmd
}

// simUp runs the mesh and serves the control socket until interrupted.
func simUp(cmd *cobra.Command, name, file, logFile string, verbose bool) error {
	sc, err := scenarios.Load(file)
	if err != nil {
		return &exitError{2, err}
	}
	raw, err := os.ReadFile(file)
	if err != nil {
		return &exitError{2, err}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger, closeLog, err := componentLogger(logFile, verbose, cmd.ErrOrStderr())
	if err != nil {
		return &exitError{2, err}
	}
	defer closeLog()
	if err := os.MkdirAll(socketDir, 0o755); err != nil {
		return &exitError{2, err}
	}
	sock := socketPath(name)
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		return &exitError{2, fmt.Errorf("a simulated mesh named %q is already running (%s); pick another --name", name, sock)}
	}
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return &exitError{2, err}
	}
	defer os.Remove(sock)
	tgt := simtarget.New(simtarget.Options{Logger: logger})
	s, err := engine.Start(ctx, sc, tgt, engine.Options{Progress: cmd.OutOrStdout()})
	if err != nil {
		ln.Close()
		return &exitError{2, err}
	}
	defer s.Close()
	srv := &http.Server{Handler: &control{file: file, raw: raw, s: s, mesh: tgt.Mesh()}, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	fmt.Fprintf(cmd.OutOrStdout(), "mesh %q is up; drive it with `meshbed sim --name %s ...`; Ctrl-C tears it down\n", name, name)
	<-ctx.Done()
	srv.Close()
	return nil
}

// control serves the verbs of a running simulated mesh.
type control struct {
	file string
	raw  []byte
	s    *engine.Session
	mesh *sim.Mesh
}

func (c *control) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
func (c *control) step(r *http.Request) (any, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxStepRequest+1))
	if err != nil {
		return nil, err
	}
	st, err := parseStepRequest(c.file, c.raw, body)
	if err != nil {
		return nil, err
	}
	return c.s.Step(r.Context(), st), nil
}

// maxStepRequest bounds a /step request body: a step is a few hundred
// bytes, an inline manifest a few kilobytes.
const maxStepRequest = 1 << 20

// parseStepRequest decodes a /step request body, one step as a JSON object
// the way it would stand in the scenario file's spec.steps, in the context
// of that file (file, raw): the step becomes the file's only step and the
// whole file is parsed, so references are checked as in a file.
func parseStepRequest(file string, raw, body []byte) (*scenarios.Step, error) {
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

type nodeStatus struct {
	Name           string `json:"name"`
	IP             string `json:"ip"`
	Agent          bool   `json:"agent"`
	ServicesSynced bool   `json:"servicesSynced"`
	Endpoints      int    `json:"endpoints"`
	ApplyError     string `json:"applyError,omitempty"`
}

type clusterStatus struct {
	Name      string       `json:"name"`
	ID        uint32       `json:"id"`
	APIServer string       `json:"apiserver"`
	Running   []string     `json:"running"`
	Nodes     []nodeStatus `json:"nodes"`
}

func (c *control) status() any {
	m := c.mesh
	var out struct {
		Clusters   []clusterStatus `json:"clusters"`
		Partitions []string        `json:"partitions"`
	}
	for _, cl := range m.Clusters() {
		cs := clusterStatus{Name: cl.Name(), ID: cl.Spec().ID, APIServer: cl.APIServerIP().String(), Running: cl.Running()}
		for _, n := range cl.Nodes() {
			ns := nodeStatus{Name: n.Name(), IP: n.IP().String()}
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

func (c *control) cluster(r *http.Request) (*sim.Cluster, error) {
	name := r.URL.Query().Get("cluster")
	cl, ok := c.mesh.Cluster(name)
	if !ok {
		return nil, fmt.Errorf("no cluster %q", name)
	}
	return cl, nil
}

func (c *control) kvstore(r *http.Request) (any, error) {
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

type lbEntry struct {
	Node     string   `json:"node"`
	Service  string   `json:"service"`
	Frontend string   `json:"frontend"`
	Backends []string `json:"backends"`
}

func (c *control) lb(r *http.Request) (any, error) {
	cl, err := c.cluster(r)
	if err != nil {
		return nil, err
	}
	var out []lbEntry
	for _, n := range cl.Nodes() {
		if want := r.URL.Query().Get("node"); want != "" && n.Name() != want {
			continue
		}
		entries, err := n.Datapath().Datapath().DumpServices()
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			le := lbEntry{Node: n.Name(), Service: e.Name, Frontend: e.Frontend.String()}
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

func client(name string) *http.Client {
	sock := socketPath(name)
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
}

func do(cmd *cobra.Command, name string, req *http.Request) ([]byte, error) {
	resp, err := client(name).Do(req)
	if err != nil {
		return nil, &exitError{2, fmt.Errorf("no simulated mesh %q is running (start one with `meshbed sim up -f FILE --name %s`): %w", name, name, err)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &exitError{2, errors.New(strings.TrimSpace(string(body)))}
	}
	return body, nil
}

func postStep(cmd *cobra.Command, name string, st map[string]any) error {
	data, _ := json.Marshal(st)
	req, _ := http.NewRequestWithContext(cmd.Context(), http.MethodPost, "http://sim/step", bytes.NewReader(data))
	body, err := do(cmd, name, req)
	if err != nil {
		return err
	}
	var rep scenarios.StepReport
	if err := json.Unmarshal(body, &rep); err != nil {
		return err
	}
	w := cmd.OutOrStdout()
	verdict := "ok"
	if !rep.Passed {
		verdict = "FAILED"
	}
	fmt.Fprintf(w, "%s  %.2fs", verdict, rep.Seconds)
	if rep.Action == "curl" {
		var cl []string
		for k := range rep.Responses {
			cl = append(cl, k)
		}
		sort.Strings(cl)
		for _, k := range cl {
			fmt.Fprintf(w, "  %s %d", k, rep.Responses[k])
		}
		fmt.Fprintf(w, "  errors %d", rep.Errors)
	}
	fmt.Fprintln(w)
	if rep.Message != "" {
		fmt.Fprintln(w, rep.Message)
	}
	if !rep.Passed {
		return &exitError{1, errors.New("step failed")}
	}
	return nil
}

func getAndPrint(cmd *cobra.Command, name, path string, q map[string]string) error {
	req, _ := http.NewRequestWithContext(cmd.Context(), http.MethodGet, "http://sim"+path, nil)
	qs := req.URL.Query()
	for k, v := range q {
		qs.Set(k, v)
	}
	req.URL.RawQuery = qs.Encode()
	body, err := do(cmd, name, req)
	if err != nil {
		return err
	}
	if path == "/bpf/lb" {
		var entries []lbEntry
		if err := json.Unmarshal(body, &entries); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tSERVICE\tFRONTEND\tBACKENDS")
		for _, e := range entries {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Node, e.Service, e.Frontend, strings.Join(e.Backends, " "))
		}
		return tw.Flush()
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, body, "", "  "); err != nil {
		return err
	}
	_, err = pretty.WriteTo(cmd.OutOrStdout())
	return err
}
