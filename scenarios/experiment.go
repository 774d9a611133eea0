package scenarios

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// ExperimentOptions are meshbed chaos run's flags: the chaos step of an
// experiment. Empty lists and zero values take the chaos step's defaults.
type ExperimentOptions struct {
	Duration   time.Duration
	Faults     []string
	Planes     []string
	Components []string
	OneWay     bool
	Nodes      bool
	Interval   Range
	Hold       Range
	Concurrent int
	MaxOutage  time.Duration
	Converge   time.Duration
	// Rate and Timeout of every client's stream ("20/s", 1s if empty).
	Rate    string
	Timeout time.Duration
}

// Experiment builds a chaos experiment on sc's topology and manifests
// (its steps are dropped): one steady traffic stream from every client
// deployment to the service the clients call, a chaos step made of o,
// then every stream stopped. A client deployment is one that no Service
// of the manifests selects; the service is the first global one
// (service.cilium.io/global: "true"), else the first one. Each client
// first reaches the service (within 30s) so that the faults meet a
// working mesh. The scenario goes through the ordinary decoder: a bad
// option is reported like a bad field of the chaos step.
func Experiment(sc *Scenario, o ExperimentOptions) (*Scenario, error) {
	type client struct {
		cluster string
		dep     *appsv1.Deployment
	}
	var clients []client
	var service *corev1.Service
	var services []*corev1.Service
	for _, mf := range sc.Manifests {
		for _, obj := range mf.Objects {
			if svc, ok := obj.Object.(*corev1.Service); ok {
				services = append(services, svc)
				if service == nil && svc.Annotations["service.cilium.io/global"] == "true" {
					service = svc
				}
			}
		}
	}
	if service == nil && len(services) > 0 {
		service = services[0]
	}
	if service == nil {
		return nil, fmt.Errorf("%s: no Service in spec.manifests for the clients to call", sc.File)
	}
	seen := map[string]bool{}
	for _, mf := range sc.Manifests {
		for _, obj := range mf.Objects {
			dep, ok := obj.Object.(*appsv1.Deployment)
			if !ok || selected(dep, services) {
				continue
			}
			for _, cl := range mf.Clusters {
				key := cl + "/" + dep.Namespace + "/" + dep.Name
				if !seen[key] {
					seen[key] = true
					clients = append(clients, client{cl, dep})
				}
			}
		}
	}
	if len(clients) == 0 {
		return nil, fmt.Errorf("%s: no client deployment (one that no Service selects) in spec.manifests", sc.File)
	}
	sort.SliceStable(clients, func(i, j int) bool { return clients[i].cluster < clients[j].cluster })
	rate := o.Rate
	if rate == "" {
		rate = "20/s"
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	url := "http://" + service.Name
	if service.Namespace != DefaultNamespace {
		url += "." + service.Namespace
	}

	base := *sc
	base.Steps = nil
	base.Name = sc.Name + "-chaos"
	base.Description = fmt.Sprintf("meshbed chaos run on the topology and manifests of %s", sc.File)
	data, err := Encode(&base)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	b.Write(data)
	step := func(name, key string, v any, expect map[string]any) {
		fmt.Fprintf(&b, "    - name: %s\n      %s: %s\n", mustJSON(name), key, mustJSON(v))
		if len(expect) > 0 {
			fmt.Fprintf(&b, "      expect: %s\n", mustJSON(expect))
		}
	}
	var names []string
	for _, c := range clients {
		from := Workload{Cluster: c.cluster, Namespace: c.dep.Namespace, Deployment: c.dep.Name}.String()
		step(fmt.Sprintf("%s reaches %s", from, url), "curl", map[string]any{"from": from, "url": url, "count": 10},
			map[string]any{"within": "30s", "errors": 0})
	}
	for _, c := range clients {
		from := Workload{Cluster: c.cluster, Namespace: c.dep.Namespace, Deployment: c.dep.Name}.String()
		name := c.cluster + "-" + c.dep.Name
		if c.dep.Namespace != DefaultNamespace {
			name = c.cluster + "-" + c.dep.Namespace + "-" + c.dep.Name
		}
		names = append(names, name)
		step("steady traffic from "+from, "traffic", map[string]any{"name": name, "from": from, "url": url,
			"rate": rate, "timeout": timeout.String()}, nil)
	}
	chaos := map[string]any{"duration": o.Duration.String()}
	if len(o.Faults) > 0 {
		chaos["faults"] = o.Faults
	}
	if len(o.Planes) > 0 {
		chaos["planes"] = o.Planes
	}
	if len(o.Components) > 0 {
		chaos["components"] = o.Components
	}
	if o.OneWay {
		chaos["oneWay"] = true
	}
	if o.Nodes {
		chaos["nodes"] = true
	}
	if o.Interval != (Range{}) {
		chaos["interval"] = map[string]string{"min": o.Interval.Min.String(), "max": o.Interval.Max.String()}
	}
	if o.Hold != (Range{}) {
		chaos["hold"] = map[string]string{"min": o.Hold.Min.String(), "max": o.Hold.Max.String()}
	}
	if o.Concurrent > 0 {
		chaos["concurrent"] = o.Concurrent
	}
	expect := map[string]any{}
	if o.MaxOutage > 0 {
		expect["maxOutage"] = o.MaxOutage.String()
	}
	if o.Converge > 0 {
		expect["converge"] = o.Converge.String()
	}
	step("chaos", "chaos", chaos, expect)
	for _, n := range names {
		step("stop "+n, "stopTraffic", n, nil)
	}
	out, err := Parse(sc.File, []byte(b.String()))
	if err != nil {
		return nil, errors.Join(fmt.Errorf("the chaos experiment built from the flags is invalid"), err)
	}
	return out, nil
}

func mustJSON(v any) string { return flowJSON(v) }

// selected reports whether a Service selects the deployment's pods.
func selected(dep *appsv1.Deployment, services []*corev1.Service) bool {
	pods := labels.Set(dep.Spec.Template.Labels)
	for _, svc := range services {
		if svc.Namespace == dep.Namespace && len(svc.Spec.Selector) > 0 &&
			labels.SelectorFromSet(svc.Spec.Selector).Matches(pods) {
			return true
		}
	}
	return false
}
