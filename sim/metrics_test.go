package sim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/meshbed/meshbed/datapath/netns/netnstest"
	"github.com/meshbed/meshbed/internal/testenv"
)

// scrape fetches url and parses it as Prometheus' text format.
func scrape(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	return p.TextToMetricFamilies(resp.Body)
}

// series returns the value of the one series of fams[name] whose labels
// include want (a histogram gives its sample count), and how many matched.
func series(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, int) {
	f := fams[name]
	if f == nil {
		return 0, 0
	}
	var v float64
	n := 0
metrics:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, lp := range m.Label {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, val := range want {
			if have[k] != val {
				continue metrics
			}
		}
		n++
		switch {
		case m.Gauge != nil:
			v += m.Gauge.GetValue()
		case m.Counter != nil:
			v += m.Counter.GetValue()
		case m.Histogram != nil:
			v += float64(m.Histogram.GetSampleCount())
		}
	}
	return v, n
}

// expectSeries checks one expected series: its value must satisfy ok.
type expectSeries struct {
	name string
	want map[string]string
	ok   func(float64) bool
	says string
}

func checkSeries(fams map[string]*dto.MetricFamily, exps []expectSeries) error {
	var errs []error
	for _, e := range exps {
		v, n := series(fams, e.name, e.want)
		if n == 0 || !e.ok(v) {
			errs = append(errs, fmt.Errorf("%s%v = %g over %d series, want %s", e.name, e.want, v, n, e.says))
		}
	}
	return errors.Join(errs...)
}

func is(x float64) func(float64) bool      { return func(v float64) bool { return v == x } }
func atLeast(x float64) func(float64) bool { return func(v float64) bool { return v >= x } }

// TestIntegrationMetricsAfterPartition scrapes the simulated mesh's
// metrics over HTTP (every component's registry, with cluster, node and
// component labels), parses them with expfmt, and checks the series a
// partition must move: readiness of the lost cluster, failures, decision
// events, withdrawn backends, and the timings of detection and withdrawal;
// after the heal, readiness is back.
func TestIntegrationMetricsAfterPartition(t *testing.T) {
	testenv.Privileged(t)
	if testing.Short() {
		t.Skip("integration test: builds a whole mesh")
	}
	netnstest.CheckLeaks(t)
	spec := meshSpec(2, 2)
	spec.HealthInterval, spec.HealthTimeout = planesHealthInterval, planesHealthTimeout
	m, _ := startMesh(t, spec)
	deploy(t, m, echoManifest)
	c1, _ := m.Cluster("cluster1")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv := httptest.NewServer(promhttp.HandlerFor(m, promhttp.HandlerOpts{}))
	defer srv.Close()
	url := srv.URL + "/metrics"

	km := map[string]string{"cluster": "cluster1", "component": "kvstoremesh", "target_cluster": "cluster2"}
	agent := func(extra map[string]string) map[string]string {
		l := map[string]string{"cluster": "cluster1", "node": "node-1", "component": "agent"}
		for k, v := range extra {
			l[k] = v
		}
		return l
	}
	svc := "default/rebel-base"
	netnstest.Eventually(t, 20*time.Second, func() error {
		if err := backendsFrom(ctx, c1, 1, 2); err != nil {
			return err
		}
		// Requests through the service, for the datapath's counters.
		if _, _, err := curlService(ctx, c1, 4, time.Second); err != nil {
			return err
		}
		fams, err := scrape(ctx, url)
		if err != nil {
			return err
		}
		return checkSeries(fams, []expectSeries{
			{"cilium_kvstoremesh_remote_clusters", map[string]string{"cluster": "cluster1", "component": "kvstoremesh"}, is(1), "1 remote cluster"},
			{"cilium_kvstoremesh_remote_cluster_readiness_status", km, is(1), "ready"},
			{"cilium_kvstoremesh_remote_cluster_nodes", km, is(2), "cluster2's 2 nodes"},
			{"cilium_clustermesh_remote_cluster_readiness_status", agent(map[string]string{"target_cluster": "cluster2", "source_node_name": "node-1"}), is(1), "ready"},
			{"meshbed_remote_cluster_entries", agent(map[string]string{"target_cluster": "cluster2", "resource": "services"}), is(1), "rebel-base"},
			{"meshbed_service_backends", agent(map[string]string{"service": svc, "backend_cluster": "cluster2", "state": "active"}), atLeast(1), "cluster2's backends active"},
			{"cilium_clustermesh_global_services", agent(nil), is(1), "rebel-base"},
			{"cilium_kvstoremesh_kvstore_operations_duration_seconds", map[string]string{"cluster": "cluster1", "component": "kvstoremesh", "scope": "remote/cluster2", "outcome": "success"}, atLeast(1), "etcd calls timed"},
			{"cilium_clustermesh_apiserver_kvstore_operations_duration_seconds", map[string]string{"cluster": "cluster1", "component": "apiserver", "scope": "local"}, atLeast(1), "etcd calls timed"},
			{"meshbed_events_total", map[string]string{"cluster": "cluster1", "component": "agent", "kind": "ComponentStarted"}, is(2), "both agents started"},
			{"meshbed_datapath_forwards_total", map[string]string{"cluster": "cluster1", "component": "datapath", "reason": "service"}, atLeast(1), "load-balanced connections counted"},
			// Heartbeats come every 5 s: the first lag sample may take that long.
			{"meshbed_remote_cluster_propagation_lag_seconds", km, atLeast(1), "a heartbeat's lag measured"},
		})
	})

	if err := m.Partition([][]Member{{{Cluster: "cluster1"}}, {{Cluster: "cluster2"}}}, PlaneControl, false); err != nil {
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			_ = m.Heal()
		}
	}()
	var last error
	netnstest.Eventually(t, 15*time.Second, func() error {
		fams, err := scrape(ctx, url)
		if err != nil {
			return err
		}
		last = checkSeries(fams, []expectSeries{
			{"cilium_kvstoremesh_remote_cluster_readiness_status", km, is(0), "not ready while cut off"},
			{"cilium_kvstoremesh_remote_cluster_failures", km, atLeast(1), "the loss counted"},
			{"cilium_kvstoremesh_remote_cluster_last_failure_ts", km, atLeast(float64(time.Now().Add(-time.Minute).Unix())), "a recent failure"},
			{"cilium_clustermesh_remote_cluster_readiness_status", agent(map[string]string{"target_cluster": "cluster2"}), is(0), "not ready"},
			{"meshbed_events_total", map[string]string{"cluster": "cluster1", "component": "kvstoremesh", "kind": "RemoteLost"}, is(1), "one RemoteLost"},
			{"meshbed_events_total", agent(map[string]string{"kind": "BackendsWithdrawn"}), is(1), "one BackendsWithdrawn"},
			{"meshbed_service_backends", agent(map[string]string{"service": svc, "backend_cluster": "cluster2", "state": "terminating"}), atLeast(1), "cluster2's backends withdrawn"},
			{"meshbed_remote_cluster_loss_detection_seconds", km, is(1), "one loss detected"},
			{"meshbed_backends_withdraw_seconds", agent(map[string]string{"target_cluster": "cluster2"}), is(1), "one withdrawal timed"},
		})
		return last
	})
	fams, err := scrape(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, n := series(fams, "meshbed_service_backends", agent(map[string]string{"service": svc, "backend_cluster": "cluster2", "state": "active"})); n != 0 {
		t.Errorf("cluster2's backends still active on cluster1/node-1 after the withdrawal")
	}
	if h := fams["meshbed_remote_cluster_loss_detection_seconds"]; h != nil {
		for _, mt := range h.Metric {
			if s := mt.Histogram.GetSampleSum(); s > 0 {
				t.Logf("loss detected after %.2fs of silence (%s)", s, labelsOf(mt))
			}
		}
	}

	if err := m.Heal(); err != nil {
		t.Fatal(err)
	}
	healed = true
	netnstest.Eventually(t, 20*time.Second, func() error {
		fams, err := scrape(ctx, url)
		if err != nil {
			return err
		}
		return checkSeries(fams, []expectSeries{
			{"cilium_kvstoremesh_remote_cluster_readiness_status", km, is(1), "ready again"},
			{"meshbed_events_total", map[string]string{"cluster": "cluster1", "component": "kvstoremesh", "kind": "RemoteRestored"}, is(1), "one RemoteRestored"},
			{"meshbed_service_backends", agent(map[string]string{"service": svc, "backend_cluster": "cluster2", "state": "active"}), atLeast(1), "cluster2's backends active again"},
		})
	})
}

func labelsOf(m *dto.Metric) string {
	var parts []string
	for _, lp := range m.Label {
		parts = append(parts, lp.GetName()+"="+lp.GetValue())
	}
	return strings.Join(parts, ",")
}
