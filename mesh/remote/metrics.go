package remote

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/meshbed/meshbed/mesh/kvstore"
	"github.com/meshbed/meshbed/mesh/wire"
)

// metrics are a Manager's Prometheus metrics. With Cilium's names (the
// subsystem is "clustermesh" for an agent, "kvstoremesh" for kvstoremesh):
//
//	cilium_<sub>_remote_clusters                  configured remote clusters
//	cilium_<sub>_remote_cluster_readiness_status  1 while a remote is reachable and synced
//	cilium_<sub>_remote_cluster_failures          losses and failed sessions
//	cilium_<sub>_remote_cluster_last_failure_ts   when the last one happened (Unix seconds)
//	cilium_<sub>_remote_cluster_nodes             nodes received from a remote
//	cilium_kvstore_operations_duration_seconds    etcd calls (kvstoremesh: cilium_kvstoremesh_kvstore_...)
//
// and meshbed's own:
//
//	meshbed_remote_cluster_entries{resource}            entries received per resource (services, identities, ip = endpoints)
//	meshbed_remote_cluster_loss_detection_seconds       from a remote's last answer to the decision that it is lost (direct connections)
//	meshbed_remote_cluster_propagation_lag_seconds      from a remote apiserver writing its heartbeat to this component receiving it (direct connections; includes clock skew between clusters)
//
// Labels: source_cluster, source_node_name (agents only) and
// target_cluster, as Cilium's.
type metrics struct {
	ops         *kvstore.Operations
	loss, lag   *prometheus.HistogramVec
	constLabels prometheus.Labels
}

func newMetrics(m *Manager, reg prometheus.Registerer) (*metrics, error) {
	out := &metrics{ops: &kvstore.Operations{}}
	if reg == nil {
		return out, nil
	}
	sub := m.cfg.MetricsSubsystem
	out.constLabels = prometheus.Labels{"source_cluster": m.cfg.ClusterName}
	if m.cfg.SourceNode != "" {
		out.constLabels["source_node_name"] = m.cfg.SourceNode
	}
	opsName := "cilium_kvstore_operations_duration_seconds"
	if sub != "clustermesh" {
		opsName = "cilium_" + sub + "_kvstore_operations_duration_seconds"
	}
	var err error
	if out.ops, err = kvstore.NewOperations(reg, opsName); err != nil {
		return nil, err
	}
	out.loss = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:        "meshbed_remote_cluster_loss_detection_seconds",
		Help:        "Time from a remote cluster's last answer to the decision that it is lost",
		Buckets:     []float64{.25, .5, 1, 1.5, 2, 2.5, 3, 4, 5, 10},
		ConstLabels: out.constLabels,
	}, []string{"target_cluster"})
	out.lag = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:        "meshbed_remote_cluster_propagation_lag_seconds",
		Help:        "Time from a remote mesh-apiserver writing its heartbeat to its arrival here",
		Buckets:     []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		ConstLabels: out.constLabels,
	}, []string{"target_cluster"})
	for _, c := range []prometheus.Collector{out.loss, out.lag, &statusCollector{m: m, sub: sub, labels: out.constLabels}} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// dialOption measures a remote connection's calls, each under the scope
// of the cluster it is made for (kvstore.WithScope).
func (mt *metrics) dialOption() grpc.DialOption {
	return mt.ops.DialOption("remote")
}

func (mt *metrics) lossDetected(cluster string, silence time.Duration) {
	if mt.loss != nil {
		mt.loss.WithLabelValues(cluster).Observe(silence.Seconds())
	}
}

// watchHeartbeat measures the propagation lag of a directly read remote
// cluster from its heartbeat, which its mesh-apiserver rewrites with its
// clock's time; it runs until ctx ends.
func (mt *metrics) watchHeartbeat(ctx context.Context, client *kvstore.Client, cluster string) {
	if mt.lag == nil {
		return
	}
	obs := mt.lag.WithLabelValues(cluster)
	for ctx.Err() == nil {
		wch := client.Etcd().Watch(clientv3.WithRequireLeader(ctx), wire.HeartbeatKey)
		for wr := range wch {
			if wr.Err() != nil {
				break
			}
			now := time.Now()
			for _, ev := range wr.Events {
				if ev.Type != clientv3.EventTypePut {
					continue
				}
				if t, err := time.Parse(time.RFC3339Nano, string(ev.Kv.Value)); err == nil {
					obs.Observe(max(now.Sub(t), 0).Seconds())
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// statusCollector reads the Manager's status at every scrape.
type statusCollector struct {
	m      *Manager
	sub    string
	labels prometheus.Labels
}

func (s *statusCollector) desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, s.labels)
}

func (s *statusCollector) descs() (clusters, ready, failures, lastFailure, nodes, entries *prometheus.Desc) {
	p := "cilium_" + s.sub + "_"
	return s.desc(p+"remote_clusters", "The total number of remote clusters meshed with the local cluster"),
		s.desc(p+"remote_cluster_readiness_status", "The readiness status of the remote cluster", "target_cluster"),
		s.desc(p+"remote_cluster_failures", "The total number of failures related to the remote cluster", "target_cluster"),
		s.desc(p+"remote_cluster_last_failure_ts", "The timestamp of the last failure of the remote cluster", "target_cluster"),
		s.desc(p+"remote_cluster_nodes", "The total number of nodes in the remote cluster", "target_cluster"),
		s.desc("meshbed_remote_cluster_entries", "Entries received from the remote cluster, per resource (ip entries are its endpoints)", "target_cluster", "resource")
}

// Describe implements prometheus.Collector.
func (s *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	a, b, c, d, e, f := s.descs()
	for _, x := range []*prometheus.Desc{a, b, c, d, e, f} {
		ch <- x
	}
}

// Collect implements prometheus.Collector.
func (s *statusCollector) Collect(ch chan<- prometheus.Metric) {
	clusters, ready, failures, lastFailure, nodes, entries := s.descs()
	st := s.m.Status()
	ch <- prometheus.MustNewConstMetric(clusters, prometheus.GaugeValue, float64(len(st)))
	for _, c := range st {
		r := 0.0
		if c.Reachable {
			r = 1
		}
		ch <- prometheus.MustNewConstMetric(ready, prometheus.GaugeValue, r, c.Name)
		ch <- prometheus.MustNewConstMetric(failures, prometheus.GaugeValue, float64(c.Failures), c.Name)
		ts := 0.0
		if !c.LastFailure.IsZero() {
			ts = float64(c.LastFailure.UnixNano()) / 1e9
		}
		ch <- prometheus.MustNewConstMetric(lastFailure, prometheus.GaugeValue, ts, c.Name)
		ch <- prometheus.MustNewConstMetric(nodes, prometheus.GaugeValue, float64(c.Entries[wire.Nodes]), c.Name)
		for _, r := range wire.Resources {
			ch <- prometheus.MustNewConstMetric(entries, prometheus.GaugeValue, float64(c.Entries[r]), c.Name, string(r))
		}
	}
}
