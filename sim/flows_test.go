package sim

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/flow"
)

// xwingEgressToCluster2 puts cluster1's x-wing in egress default-deny
// except towards rebel-base pods of cluster2.
const xwingEgressToCluster2 = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: x-wing-to-cluster2
spec:
  endpointSelector:
    matchLabels: {name: x-wing}
  egress:
    - toEndpoints:
        - matchLabels:
            name: rebel-base
            io.cilium.k8s.policy.cluster: cluster2
`

// flowsOf returns the flows the observers of cluster (every cluster if
// empty) hold that match f, through the HTTP stream `meshbed sim observe`
// reads.
func flowsOf(ctx context.Context, tb testing.TB, m *Mesh, cluster string, f flow.Filter) []flow.Flow {
	tb.Helper()
	srv := httptest.NewServer(flow.Handler(ctx, func(req flow.Request) ([]*flow.Observer, error) {
		return m.FlowObservers(req.Cluster, req.Node)
	}))
	defer srv.Close()
	f.Cluster = cluster
	var out []flow.Flow
	err := flow.Get(ctx, srv.Client(), srv.URL, flow.Request{Filter: f, Last: flow.DefaultCapacity}, func(r flow.Record) error {
		if r.Flow != nil {
			out = append(out, *r.Flow)
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("flows of %q: %v", cluster, err)
	}
	return out
}

// TestIntegrationFlows: on a two-cluster mesh of two nodes each, a request
// from cluster1's x-wing answered by cluster2 shows as a flow naming both
// clusters and the backend's, on the client's node (into the tunnel) and on
// the server's (out of it); a request denied by policy shows as a drop with
// its reason.
func TestIntegrationFlows(t *testing.T) {
	testenv.Privileged(t)
	m, _ := startMesh(t, meshSpec(2, 2))
	deploy(t, m, echoManifest)
	c1, _ := m.Cluster("cluster1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	client, xwing, err := c1.Client("default", "x-wing", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	url, err := c1.ResolveURL(ctx, "http://rebel-base", "default")
	if err != nil {
		t.Fatal(err)
	}

	t.Run("cross-cluster request", func(t *testing.T) {
		// Requests are balanced over both clusters' backends: send until
		// cluster2 answers.
		var answer string
		testenv.Eventually(t, time.Minute, func() error {
			res := client.Get(ctx, url)
			if res.Err != nil {
				return res.Err
			}
			if res.Cluster != "cluster2" {
				return fmt.Errorf("answered by %s/%s", res.Cluster, res.Pod)
			}
			answer = res.Pod
			return nil
		})
		var out flow.Flow
		testenv.Eventually(t, 10*time.Second, func() error {
			for _, f := range flowsOf(ctx, t, m, "cluster1", flow.Filter{ToService: "default/rebel-base", FromCluster: "cluster1"}) {
				if f.Source.Pod == xwing.Name && f.Destination.Pod == answer {
					out = f
					return nil
				}
			}
			return fmt.Errorf("no flow %s -> %s on cluster1's nodes", xwing.Name, answer)
		})
		if out.Verdict != flow.VerdictForwarded || !out.New || out.Tunnel != "to-tunnel" ||
			out.Source.Cluster != "cluster1" || out.Source.Namespace != "default" || out.Source.Identity == 0 ||
			out.Destination.Cluster != "cluster2" || out.Destination.Identity == 0 ||
			out.Service == nil || out.Service.BackendCluster != "cluster2" || out.Service.Name != "rebel-base" {
			t.Fatalf("client-side flow %s\n%+v", flow.Compact(flow.Record{Flow: &out}), out)
		}
		// The same connection, seen where it leaves the tunnel: the
		// source pod is named from cluster1's exported state.
		testenv.Eventually(t, 10*time.Second, func() error {
			for _, f := range flowsOf(ctx, t, m, "cluster2", flow.Filter{FromCluster: "cluster1"}) {
				if f.Source.IP != out.Source.IP || f.Source.Port != out.Source.Port {
					continue
				}
				if f.Tunnel != "from-tunnel" || f.Source.Pod != xwing.Name || f.Destination.Pod != answer ||
					f.Destination.Cluster != "cluster2" || f.Verdict != flow.VerdictForwarded || !f.New {
					return fmt.Errorf("server-side flow %s", flow.Compact(flow.Record{Flow: &f}))
				}
				return nil
			}
			return fmt.Errorf("no flow from %s:%d on cluster2's nodes", out.Source.IP, out.Source.Port)
		})
	})

	t.Run("policy denial", func(t *testing.T) {
		if err := m.Apply(ctx, "cluster1", []byte(xwingEgressToCluster2)); err != nil {
			t.Fatal(err)
		}
		local := c1.Pods("default", "rebel-base")
		if len(local) == 0 {
			t.Fatal("no rebel-base pod in cluster1")
		}
		target := local[0]
		denied := client
		if denied, _, err = c1.Client("default", "x-wing", 200*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		testenv.Eventually(t, 30*time.Second, func() error {
			if res := denied.Get(ctx, "http://"+target.IP.String()+"/"); res.Err == nil {
				return fmt.Errorf("request to %s answered: the policy is not in force yet", target.Name)
			}
			for _, f := range flowsOf(ctx, t, m, "cluster1", flow.Filter{Verdict: flow.VerdictDropped}) {
				if f.Source.Pod != xwing.Name || f.Destination.Pod != target.Name {
					continue
				}
				if f.DropReason != "policy-denied-egress" || f.Destination.Cluster != "cluster1" || f.Source.Cluster != "cluster1" || f.New {
					t.Fatalf("drop %s\n%+v", flow.Compact(flow.Record{Flow: &f}), f)
				}
				return nil
			}
			return fmt.Errorf("no drop %s -> %s", xwing.Name, target.Name)
		})
	})
}

// eventRingRecords is how many flow events the default 256 KiB ring buffer
// holds: 64 bytes each plus an 8-byte record header.
const eventRingRecords = 256 * 1024 / (64 + 8)

// TestIntegrationFlowLossStalledReader: with the node's reader gone (its
// agent stopped), the datapath keeps forwarding every new connection; what
// does not fit the ring buffer is counted as lost, and the next agent's
// observer shows the count and the flows that fitted.
func TestIntegrationFlowLossStalledReader(t *testing.T) {
	testenv.Privileged(t)
	m, _ := startMesh(t, meshSpec(1, 1)) // one node: every event is its own
	deploy(t, m, echoManifest)
	c, _ := m.Cluster("cluster1")
	n := c.Nodes()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client, xwing, err := c.Client("default", "x-wing", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	url, err := c.ResolveURL(ctx, "http://rebel-base", "default")
	if err != nil {
		t.Fatal(err)
	}
	lost0, err := n.Datapath().LostEvents()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.StopAgent(); err != nil {
		t.Fatal(err)
	}
	const conns = eventRingRecords + 400
	if _, failed, err := curlURL(ctx, client, url, conns); err != nil {
		t.Fatalf("with nobody reading flow events: %d of %d requests failed: %v", failed, conns, err)
	}
	total, err := n.Datapath().LostEvents()
	if err != nil {
		t.Fatal(err)
	}
	lost := total - lost0
	if lost == 0 || conns-lost > eventRingRecords {
		t.Fatalf("%d new connections, %d events lost: a ring of %d records cannot hold the rest", conns, lost, eventRingRecords)
	}
	if err := n.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitAgentReady(ctx); err != nil {
		t.Fatal(err)
	}
	obs := n.Agent().Flows()
	testenv.Eventually(t, 30*time.Second, func() error {
		st := obs.Status()
		if st.LostDatapath != total || st.Seen < conns-lost {
			return fmt.Errorf("observer status %+v, want lost %d and at least %d flows seen", st, total, conns-lost)
		}
		return nil
	})
	got := 0
	for _, f := range flowsOf(ctx, t, m, "cluster1", flow.Filter{ToService: "default/rebel-base"}) {
		if f.Source.Pod == xwing.Name {
			got++
		}
	}
	if got == 0 {
		t.Fatal("none of the flows buffered while the reader was stalled shows")
	}
	t.Logf("%d connections: %d events lost, %d buffered; %d flows of x-wing shown", conns, lost, conns-lost, got)
}
