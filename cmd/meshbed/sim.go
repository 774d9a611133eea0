package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/mesh/metrics"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
	"github.com/meshbed/meshbed/sim/control"
	simtarget "github.com/meshbed/meshbed/sim/target"
)

func simCmd() *cobra.Command {
	var name string
	cmd := &cobra.Command{Use: "sim", Short: "Keep a simulated mesh running and drive it by hand"}
	cmd.PersistentFlags().StringVar(&name, "name", "default", "name of the simulated mesh (several may run at once)")

	var file, logFile, promAddr string
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
			return simUp(cmd, name, file, logFile, promAddr, verbose)
		},
	}
	up.Flags().StringVarP(&file, "file", "f", "", "scenario file whose topology and manifests to bring up (its steps are not run)")
	up.Flags().StringVar(&logFile, "log-file", "", "write the mesh components' logs to this file")
	up.Flags().BoolVarP(&verbose, "verbose", "v", false, "print the mesh components' logs on stderr")
	up.Flags().StringVar(&promAddr, "prometheus-serve-addr", "", "also serve every component's metrics (cluster, node and component labels added) at /metrics on this address, e.g. 127.0.0.1:9962")
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
			q := url.Values{"cluster": {a[0]}, "key": {a[1]}}
			if prefix {
				q.Set("prefix", "1")
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
			node := ""
			if len(a) == 2 {
				node = a[1]
			}
			return printLB(cmd, name, a[0], node)
		},
	})
	bpf.AddCommand(lb)
	cmd.AddCommand(bpf)
	cmd.AddCommand(simObserveCmd(&name))
	cmd.AddCommand(metricsCmd(&name))
	return cmd
}

// simUp runs the mesh and serves the control socket until interrupted.
func simUp(cmd *cobra.Command, name, file, logFile, promAddr string, verbose bool) error {
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
	ln, err := control.Listen(name)
	if err != nil {
		return &exitError{2, err}
	}
	defer os.Remove(control.SocketPath(name))
	tgt := simtarget.New(simtarget.Options{Logger: logger})
	s, err := engine.Start(ctx, sc, tgt, engine.Options{Progress: cmd.OutOrStdout()})
	if err != nil {
		ln.Close()
		return &exitError{2, err}
	}
	defer s.Close()
	srv := &http.Server{Handler: control.NewServer(file, raw, s, tgt.Mesh()), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	if err := metrics.Serve(ctx, promAddr, tgt.Mesh(), logger); err != nil {
		return &exitError{2, err}
	}
	fmt.Fprintf(cmd.OutOrStdout(), "mesh %q is up; drive it with `meshbed sim --name %s ...`; Ctrl-C tears it down\n", name, name)
	<-ctx.Done()
	srv.Close()
	return nil
}

// cliError turns a control client's error into the command's: every one
// is the user's to fix (no mesh by that name, a refused step), exit 2.
func cliError(err error) error {
	if err == nil {
		return nil
	}
	return &exitError{2, err}
}

func postStep(cmd *cobra.Command, name string, st map[string]any) error {
	rep, err := control.NewClient(name).Step(cmd.Context(), st)
	if err != nil {
		return cliError(err)
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

// printLB prints the BPF load-balancing entries of a cluster (or node).
func printLB(cmd *cobra.Command, name, cluster, node string) error {
	entries, err := control.NewClient(name).LB(cmd.Context(), cluster, node)
	if err != nil {
		return cliError(err)
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSERVICE\tFRONTEND\tBACKENDS")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.Node, e.Service, e.Frontend, strings.Join(e.Backends, " "))
	}
	return tw.Flush()
}

// getAndPrint prints the JSON answer to path, indented.
func getAndPrint(cmd *cobra.Command, name, path string, q url.Values) error {
	body, err := control.NewClient(name).Get(cmd.Context(), path, q)
	if err != nil {
		return cliError(err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, body, "", "  "); err != nil {
		return err
	}
	_, err = pretty.WriteTo(cmd.OutOrStdout())
	return err
}
