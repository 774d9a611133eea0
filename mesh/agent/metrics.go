package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/service"
)

// agentMetrics are the agent's own metrics (its remote.Manager registers
// Cilium's clustermesh series):
//
//	cilium_clustermesh_global_services          global services in the local cluster
//	meshbed_service_backends{service,backend_cluster,state}  backends programmed per service and backend cluster (active, terminating)
//	meshbed_backends_withdraw_seconds{target_cluster}  from the agent learning that a cluster is unreachable to its datapath holding the withdrawal
//
// Labels source_cluster and source_node_name are constant, as Cilium's.
type agentMetrics struct {
	withdraw *prometheus.HistogramVec
}

func (a *Agent) registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	labels := prometheus.Labels{"source_cluster": a.cfg.ClusterName, "source_node_name": a.cfg.NodeName}
	a.metrics.withdraw = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:        "meshbed_backends_withdraw_seconds",
		Help:        "Time from the agent learning that a remote cluster is unreachable to its datapath holding the withdrawal of that cluster's backends",
		Buckets:     []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		ConstLabels: labels,
	}, []string{"target_cluster"})
	for _, c := range []prometheus.Collector{a.metrics.withdraw, &agentCollector{a: a, labels: labels}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// withdrawnLocked observes, after an Apply that succeeded, the time to
// withdraw every cluster whose loss it is the first to carry.
func (a *Agent) withdrawnLocked(res service.Result) {
	withdrawn := map[string]bool{}
	for _, d := range res.Decisions {
		if d.Kind == service.DecisionClusterWithdrawn {
			withdrawn[d.Cluster] = true
		}
	}
	for name, rc := range a.remotes {
		if rc.lostAt.IsZero() || !withdrawn[name] {
			continue
		}
		if a.metrics.withdraw != nil {
			a.metrics.withdraw.WithLabelValues(name).Observe(time.Since(rc.lostAt).Seconds())
		}
		rc.lostAt = time.Time{}
	}
}

type agentCollector struct {
	a      *Agent
	labels prometheus.Labels
}

func (c *agentCollector) descs() (global, backends *prometheus.Desc) {
	return prometheus.NewDesc("cilium_clustermesh_global_services", "The total number of global services in the cluster mesh", nil, c.labels),
		prometheus.NewDesc("meshbed_service_backends", "Backends programmed for a service, per cluster and state (active, terminating)",
			[]string{"service", "backend_cluster", "state"}, c.labels)
}

// Describe implements prometheus.Collector.
func (c *agentCollector) Describe(ch chan<- *prometheus.Desc) {
	g, b := c.descs()
	ch <- g
	ch <- b
}

// Collect implements prometheus.Collector.
func (c *agentCollector) Collect(ch chan<- prometheus.Metric) {
	global, backends := c.descs()
	a := c.a
	a.mu.Lock()
	names := map[uint32]string{a.cfg.ClusterID: a.cfg.ClusterName}
	for name, rc := range a.remotes {
		names[rc.id] = name
	}
	type key struct{ svc, cluster, state string }
	type addr struct {
		ip   string
		port uint16
	}
	counts := map[key]map[addr]bool{}
	if a.last != nil {
		for _, s := range a.last.Services {
			for _, b := range s.Backends {
				st := "active"
				if b.State != state.BackendActive {
					st = "terminating"
				}
				k := key{s.Name, names[b.ClusterID], st}
				if counts[k] == nil {
					counts[k] = map[addr]bool{}
				}
				counts[k][addr{b.IP.String(), b.Port}] = true
			}
		}
	}
	a.mu.Unlock()
	n := 0
	for _, o := range a.svcInf.GetStore().List() {
		if p, _ := service.ParseAnnotations(o.(*corev1.Service).Annotations); p.Global {
			n++
		}
	}
	ch <- prometheus.MustNewConstMetric(global, prometheus.GaugeValue, float64(n))
	for k, set := range counts {
		ch <- prometheus.MustNewConstMetric(backends, prometheus.GaugeValue, float64(len(set)), k.svc, k.cluster, k.state)
	}
}
