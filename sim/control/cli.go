package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	simtarget "github.com/meshbed/meshbed/sim/target"
)

// What follows are the bodies of `meshbed sim ...`. Their errors carry
// the command's exit code (cmdutil.ExitError): 2 for what the user must
// fix (no mesh by that name, a refused step), 1 for a step that failed.

// UpOptions are the flags of `meshbed sim up`.
type UpOptions struct {
	// Name is the mesh's, File the scenario file whose topology and
	// manifests are brought up.
	Name, File string
	// LogFile and Verbose send the components' logs to a file or stderr.
	LogFile string
	Verbose bool
	// PrometheusAddr, when set, serves every component's metrics.
	PrometheusAddr string
}

// Up runs the mesh of o.File and serves its control socket until
// interrupted.
func Up(ctx context.Context, stdout, stderr io.Writer, o UpOptions) error {
	if o.File == "" {
		return cmdutil.Invalid(errors.New("-f FILE is required"))
	}
	if err := cmdutil.NeedRoot(); err != nil {
		return err
	}
	sc, err := scenarios.Load(o.File)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	raw, err := os.ReadFile(o.File)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger, closeLog, err := cmdutil.ComponentLogger(o.LogFile, o.Verbose, stderr)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	defer closeLog()
	ln, err := Listen(o.Name)
	if err != nil {
		return cmdutil.Invalid(err)
	}
	defer os.Remove(SocketPath(o.Name))
	tgt := simtarget.New(simtarget.Options{Logger: logger})
	s, err := engine.Start(ctx, sc, tgt, engine.Options{Progress: stdout})
	if err != nil {
		ln.Close()
		return cmdutil.Invalid(err)
	}
	defer s.Close()
	srv := &http.Server{Handler: NewServer(o.File, raw, s, tgt.Mesh()), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	if err := metrics.Serve(ctx, o.PrometheusAddr, tgt.Mesh(), logger); err != nil {
		return cmdutil.Invalid(err)
	}
	fmt.Fprintf(stdout, "mesh %q is up; drive it with `meshbed sim --name %s ...`; Ctrl-C tears it down\n", o.Name, o.Name)
	<-ctx.Done()
	srv.Close()
	return nil
}

// StepOptions are the flags of the step commands of `meshbed sim`.
type StepOptions struct {
	Count     int           // curl: number of requests
	Timeout   time.Duration // curl: timeout of each request
	Namespace string        // scale, annotate
	Plane     string        // partition: both, data or control
	OneWay    bool          // partition
}

// StepFromArgs is the step of `meshbed sim VERB ARGS...` (curl, scale,
// annotate, partition, heal, stop, start, restart), as a scenario file
// writes it.
func StepFromArgs(verb string, a []string, o StepOptions) (map[string]any, error) {
	var p map[string]any
	switch verb {
	case "curl":
		p = map[string]any{"from": a[0], "url": a[1], "count": o.Count, "timeout": o.Timeout.String()}
	case "scale":
		n, err := strconv.Atoi(a[2])
		if err != nil || n < 0 {
			return nil, fmt.Errorf("replicas %q: want a number ≥ 0", a[2])
		}
		p = map[string]any{"cluster": a[0], "deployment": a[1], "replicas": n, "namespace": o.Namespace}
	case "annotate":
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
		p = map[string]any{"cluster": a[0], "service": a[1], "namespace": o.Namespace, "annotations": ann}
	case "partition":
		var groups [][]string
		for _, g := range a {
			groups = append(groups, strings.Split(g, ","))
		}
		p = map[string]any{"groups": groups, "plane": o.Plane, "oneWay": o.OneWay}
	case "heal":
		p = map[string]any{}
	default: // stop, start, restart COMPONENT CLUSTER [NODE]
		p = map[string]any{"component": a[0], "cluster": a[1]}
		if len(a) == 3 {
			p["node"] = a[2]
		}
	}
	return map[string]any{verb: p}, nil
}

// cliError turns a client's error into a command's: every one is the
// user's to fix (no mesh by that name, a refused step), exit 2.
func cliError(err error) error { return cmdutil.Invalid(err) }

// PrintStep runs st on the mesh and prints its verdict (and a curl's
// answers); a failed step is exit 1.
func (c *Client) PrintStep(ctx context.Context, w io.Writer, st map[string]any) error {
	rep, err := c.Step(ctx, st)
	if err != nil {
		return cliError(err)
	}
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
		return cmdutil.Failed(errors.New("step failed"))
	}
	return nil
}

// PrintLB prints the BPF load-balancing entries of a cluster (or node).
func (c *Client) PrintLB(ctx context.Context, w io.Writer, cluster, node string) error {
	entries, err := c.LB(ctx, cluster, node)
	if err != nil {
		return cliError(err)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSERVICE\tFRONTEND\tBACKENDS")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Node, e.Service, e.Frontend, strings.Join(e.Backends, " "))
	}
	return tw.Flush()
}

// PrintJSON prints the JSON answer to path, indented.
func (c *Client) PrintJSON(ctx context.Context, w io.Writer, path string, q url.Values) error {
	body, err := c.Get(ctx, path, q)
	if err != nil {
		return cliError(err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, body, "", "  "); err != nil {
		return err
	}
	_, err = pretty.WriteTo(w)
	return err
}

// PrintKVStore prints a key of a cluster's mesh-apiserver etcd, or with
// prefix every key under it.
func (c *Client) PrintKVStore(ctx context.Context, w io.Writer, cluster, key string, prefix bool) error {
	q := url.Values{"cluster": {cluster}, "key": {key}}
	if prefix {
		q.Set("prefix", "1")
	}
	return c.PrintJSON(ctx, w, "/kvstore", q)
}

// PrintMetrics prints the mesh's metrics whose name begins with one of
// prefixes (all without), of the components that cluster, node and
// component name (empty: any); none matching is exit 1.
func (c *Client) PrintMetrics(ctx context.Context, w io.Writer, prefixes []string, cluster, node, component string) error {
	switch component {
	case "", "agent", "apiserver", "kvstoremesh", "datapath":
	default:
		return cmdutil.Invalidf("--component %q: want agent, apiserver, kvstoremesh or datapath", component)
	}
	if node != "" && cluster == "" {
		return cmdutil.Invalidf("--node %s needs --cluster", node)
	}
	body, err := c.Get(ctx, "/metrics", nil)
	if err != nil {
		return cliError(err)
	}
	err = FilterMetrics(w, body, prefixes, map[string]string{"cluster": cluster, "node": node, "component": component})
	var none *NoMatchError
	if errors.As(err, &none) {
		return cmdutil.Failed(err)
	}
	return err
}

// PrintClusterMesh prints the clustermesh status of one cluster, as
// summary or json; a remote not synced or a component stopped is exit 1.
func (c *Client) PrintClusterMesh(ctx context.Context, w io.Writer, cluster, output string) error {
	if output != "" && output != "json" && output != "summary" {
		return cmdutil.Invalidf("-o %q: want summary or json", output)
	}
	v, body, err := c.ClusterMesh(ctx, cluster)
	if err != nil {
		return cliError(err)
	}
	if output == "json" {
		_, err := w.Write(body)
		return err
	}
	v.Print(w)
	if problems := v.Problems(); len(problems) > 0 {
		return cmdutil.Failed(errors.New(strings.Join(problems, "; ")))
	}
	return nil
}

// Observe prints the flows the agents of the mesh observe, as hubble
// observe.
func (c *Client) Observe(ctx context.Context, w io.Writer, o flow.Options) error {
	req, err := o.Request()
	if err != nil {
		return cmdutil.Invalid(err)
	}
	p := flow.Printer{W: w, Output: o.Output}
	err = c.Flows(ctx, req, p.Print)
	return flow.StreamError(err, req, fmt.Sprintf("no simulated mesh %q is running (start one with `meshbed sim up -f FILE --name %s`)", c.name, c.name),
		fmt.Sprintf("flow stream ended: the simulated mesh %q or the agents observed stopped", c.name))
}
