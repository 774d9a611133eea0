package main

import (
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshbed/meshbed/internal/cmdutil"
	"github.com/meshbed/meshbed/sim/control"
)

func simCmd(o *options) *cobra.Command {
	cmd := &cobra.Command{Use: "sim", Short: "Keep a simulated mesh running and drive it by hand"}
	cmd.PersistentFlags().StringVar(&o.simName, "name", "default", "name of the simulated mesh (several may run at once)")
	client := func() *control.Client { return control.NewClient(o.simName) }

	up := &cobra.Command{
		Use:   "up -f FILE",
		Short: "Bring up the topology and manifests of a scenario file and keep it running until Ctrl-C",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.up.Name = o.simName
			return control.Up(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), o.up)
		},
	}
	up.Flags().StringVarP(&o.up.File, "file", "f", "", "scenario file whose topology and manifests to bring up (its steps are not run)")
	up.Flags().StringVar(&o.up.LogFile, "log-file", "", "write the mesh components' logs to this file")
	up.Flags().BoolVarP(&o.up.Verbose, "verbose", "v", false, "print the mesh components' logs on stderr")
	up.Flags().StringVar(&o.up.PrometheusAddr, "prometheus-serve-addr", "", "also serve every component's metrics (cluster, node and component labels added) at /metrics on this address, e.g. 127.0.0.1:9962")
	cmd.AddCommand(up)

	// step is a command that runs one step on the mesh, named by the
	// first word of use.
	step := func(use, short string, args cobra.PositionalArgs) *cobra.Command {
		verb, _, _ := strings.Cut(use, " ")
		c := &cobra.Command{Use: use, Short: short, Args: args,
			RunE: func(cmd *cobra.Command, a []string) error {
				st, err := control.StepFromArgs(verb, a, o.step)
				if err != nil {
					return cmdutil.Invalid(err)
				}
				return client().PrintStep(cmd.Context(), cmd.OutOrStdout(), st)
			}}
		cmd.AddCommand(c)
		return c
	}
	curl := step("curl CLUSTER/[NAMESPACE/]DEPLOYMENT URL", "Send requests from a pod (namespace default unless given), as kubectl exec ... -- curl", cobra.ExactArgs(2))
	curl.Flags().IntVar(&o.step.Count, "count", 10, "number of requests")
	curl.Flags().DurationVar(&o.step.Timeout, "timeout", time.Second, "timeout of each request")
	scale := step("scale CLUSTER DEPLOYMENT REPLICAS", "Scale a deployment, as kubectl scale", cobra.ExactArgs(3))
	scale.Flags().StringVarP(&o.step.Namespace, "namespace", "n", "default", "namespace")
	annotate := step("annotate CLUSTER SERVICE KEY=VALUE|KEY- ...", "Set or remove annotations of a service, as kubectl annotate", cobra.MinimumNArgs(3))
	annotate.Flags().StringVarP(&o.step.Namespace, "namespace", "n", "default", "namespace")
	partition := step("partition GROUP GROUP ...", "Cut the network between groups (a group is a comma-separated list of clusters or cluster/node)", cobra.MinimumNArgs(2))
	partition.Flags().StringVar(&o.step.Plane, "plane", "both", "both, data or control")
	partition.Flags().BoolVar(&o.step.OneWay, "one-way", false, "cut only traffic from the first group to the others")
	step("heal", "Remove every partition", cobra.NoArgs)
	for _, verb := range []string{"stop", "start", "restart"} {
		step(verb+" COMPONENT CLUSTER [NODE]", strings.ToUpper(verb[:1])+verb[1:]+" apiserver, kvstoremesh or agent", cobra.RangeArgs(2, 3))
	}

	cmd.AddCommand(&cobra.Command{
		Use: "status", Short: "Show clusters, nodes, components and partitions", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return client().PrintJSON(cmd.Context(), cmd.OutOrStdout(), "/status", nil)
		},
	})
	kv := &cobra.Command{Use: "kvstore", Short: "Read a cluster's mesh-apiserver etcd"}
	kvGet := &cobra.Command{
		Use: "get CLUSTER KEY", Short: "Print a key (or every key under a prefix with --prefix)", Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, a []string) error {
			return client().PrintKVStore(cmd.Context(), cmd.OutOrStdout(), a[0], a[1], o.kvPrefix)
		},
	}
	kvGet.Flags().BoolVar(&o.kvPrefix, "prefix", false, "treat KEY as a prefix")
	kv.AddCommand(kvGet)
	cmd.AddCommand(kv)
	bpf := &cobra.Command{Use: "bpf", Short: "Read nodes' BPF maps"}
	lb := &cobra.Command{Use: "lb", Short: "Load-balancing maps"}
	lb.AddCommand(&cobra.Command{
		Use: "list CLUSTER [NODE]", Short: "List frontends and their backends as programmed in BPF", Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, a []string) error {
			return client().PrintLB(cmd.Context(), cmd.OutOrStdout(), a[0], strings.Join(a[1:], ""))
		},
	})
	bpf.AddCommand(lb)
	cmd.AddCommand(bpf)

	observe := &cobra.Command{
		Use:   "observe",
		Short: "Show the flows the agents of a running simulated mesh observe, as hubble observe",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.simFlows.LastSet = cmd.Flags().Changed("last")
			return client().Observe(cmd.Context(), cmd.OutOrStdout(), o.simFlows)
		},
	}
	flowFlags(observe, &o.simFlows, true)
	cmd.AddCommand(observe)

	// metrics: all of them or those whose name begins with one of the
	// given prefixes, and (with --cluster, --node, --component) of chosen
	// components only.
	metrics := &cobra.Command{
		Use:   "metrics [NAME-PREFIX ...]",
		Short: "Print the Prometheus metrics of every component of the running mesh (cluster, node and component labels added)",
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, prefixes []string) error {
			return client().PrintMetrics(cmd.Context(), cmd.OutOrStdout(), prefixes, o.metricsCluster, o.metricsNode, o.metricsOf)
		},
	}
	metrics.Flags().StringVar(&o.metricsCluster, "cluster", "", "only this cluster's components")
	metrics.Flags().StringVar(&o.metricsNode, "node", "", "only this node's agent (with --cluster)")
	metrics.Flags().StringVar(&o.metricsOf, "component", "", "only agent, apiserver, kvstoremesh or datapath")
	cmd.AddCommand(metrics)
	return cmd
}
