package target

import (
	"net/netip"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshbed/meshbed/scenarios"
)

func TestPartitionRules(t *testing.T) {
	peers := []endpointSet{{ips: []string{"172.18.0.9"}, nodePort: 32379}}
	flat := func(rs [][]string) string {
		var lines []string
		for _, r := range rs {
			lines = append(lines, strings.Join(r, " "))
		}
		return strings.Join(lines, "\n")
	}
	both := flat(partitionRules(scenarios.PlaneBoth, 32380, peers, false))
	if both != "-s 172.18.0.9 -j DROP\n-d 172.18.0.9 -j DROP" {
		t.Errorf("both:\n%s", both)
	}
	ctl := flat(partitionRules(scenarios.PlaneControl, 32380, peers, false))
	for _, want := range []string{"-d 172.18.0.9 -p tcp --dport 32379 -j DROP", "-s 172.18.0.9 -p tcp --dport 32380 -j DROP"} {
		if !strings.Contains(ctl, want) {
			t.Errorf("control lacks %q:\n%s", want, ctl)
		}
	}
	if strings.Contains(ctl, "-s 172.18.0.9 -j DROP") {
		t.Errorf("control cuts everything:\n%s", ctl)
	}
	data := flat(partitionRules(scenarios.PlaneData, 32380, peers, false))
	// The node ports are let through before everything else is dropped.
	if i, j := strings.Index(data, "--dport 32379 -j RETURN"), strings.Index(data, "-s 172.18.0.9 -j DROP"); i < 0 || j < 0 || i > j {
		t.Errorf("data:\n%s", data)
	}
	// One way: only what the node sends.
	for _, plane := range []scenarios.Plane{scenarios.PlaneBoth, scenarios.PlaneData, scenarios.PlaneControl} {
		rules := flat(partitionRules(plane, 32380, peers, true))
		if strings.Contains(rules, "-s ") || !strings.Contains(rules, "-d 172.18.0.9") {
			t.Errorf("one-way %s:\n%s", plane, rules)
		}
	}
	if oneWay := flat(partitionRules(scenarios.PlaneBoth, 32380, peers, true)); oneWay != "-d 172.18.0.9 -j DROP" {
		t.Errorf("one-way both:\n%s", oneWay)
	}
}

func TestCheckRefusesWhatKindCannotBuild(t *testing.T) {
	sc := &scenarios.Scenario{Topology: scenarios.Topology{
		Routing: scenarios.RoutingNative, RemoteLoss: scenarios.RemoteLossFailStatic,
		Clusters: []scenarios.Cluster{{Name: "cluster1", ID: 1, Nodes: 2, PodCIDR: netip.MustParsePrefix("10.1.0.0/16")}},
	}}
	err := New(Options{Contexts: map[string]string{"cluster9": "kind-c9"}}).Check(sc)
	for _, want := range []string{"routing native", "fail-static", "cluster cluster1: no --context", "no cluster cluster9"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Check: %v, want %q", err, want)
		}
	}
	sc.Topology.Routing, sc.Topology.RemoteLoss = scenarios.RoutingTunnel, scenarios.RemoteLossWithdraw
	if err := New(Options{}).Check(sc); err == nil || !strings.Contains(err.Error(), "needs the node, meshbed and demo images") {
		t.Errorf("Check without images: %v", err)
	}
}

func TestSubstitute(t *testing.T) {
	tg := New(Options{DemoImage: "meshbed/demo:x"})
	d := &appsv1.Deployment{Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{
		{Name: "echo", Image: "docker.io/cilium/json-mock:1.2", Ports: []corev1.ContainerPort{{ContainerPort: 8080}}},
		{Name: "client", Image: "curlimages/curl", Command: []string{"sleep", "infinity"}},
	}}}}}
	got := tg.substitute("cluster2", d)
	e, c := got.Spec.Template.Spec.Containers[0], got.Spec.Template.Spec.Containers[1]
	if e.Image != "meshbed/demo:x" || strings.Join(e.Command, " ") != "/usr/local/bin/meshbed-demo echo --cluster cluster2 --port 8080" || e.ReadinessProbe == nil {
		t.Errorf("echo container = %+v", e)
	}
	if c.Image != "meshbed/demo:x" || strings.Join(c.Command, " ") != "/usr/local/bin/meshbed-demo idle" {
		t.Errorf("client container = %+v", c)
	}
	if d.Spec.Template.Spec.Containers[0].Image != "docker.io/cilium/json-mock:1.2" {
		t.Error("substitute changed its input")
	}
	if subs := tg.Substitutions(); len(subs) != 2 || !strings.Contains(subs[0], "json-mock:1.2 -> meshbed/demo:x (echo)") {
		t.Errorf("substitutions = %q", subs)
	}
}
