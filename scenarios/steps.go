package scenarios

import (
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
)

// actionKeys are the step keys that are actions, in the order of
// docs/scenarios.md.
var actionKeys = []string{"apply", "delete", "scale", "annotate", "curl", "traffic", "stopTraffic",
	"partition", "heal", "stop", "start", "restart", "wait", "addNode", "chaos"}

var stepKeys = append([]string{"name", "expect"}, actionKeys...)

// stepAt decodes the step numbered n (from 1).
func (d *decoder) stepAt(n int, v any, st *state) (Step, bool) {
	d.step, d.stepName = n, ""
	defer func() { d.step, d.stepName = 0, "" }()
	errsBefore := len(d.errs)

	m, ok := v.(map[string]any)
	if !ok {
		d.errorf("", "must be an object, got %s", describe(v))
		return Step{}, false
	}
	step := Step{Index: n}
	// A key that is present counts as an action even when its value is
	// null: "heal:" is a heal.
	var present []string
	for _, k := range actionKeys {
		if _, ok := m[k]; ok {
			present = append(present, k)
		}
	}
	// The name goes into every message about the step, so it is read
	// before anything is reported.
	if v, ok := get(m, "name"); ok {
		if s, ok := v.(string); ok {
			step.Name = s
		}
	}
	if step.Name == "" && len(present) == 1 {
		step.Name = present[0]
	}
	d.stepName = step.Name
	d.object("", m, stepKeys...)
	if v, ok := get(m, "name"); ok {
		d.str("name", v)
	}
	switch len(present) {
	case 0:
		d.errorf("", "no action: a step has exactly one of %s", strings.Join(actionKeys, ", "))
	case 1:
		d.action(&step, present[0], m[present[0]], st)
	default:
		d.errorf("", "%d actions (%s): a step has exactly one", len(present), strings.Join(present, ", "))
	}
	if v, ok := get(m, "expect"); ok {
		action := ""
		if len(present) == 1 {
			action = present[0]
		}
		step.Expect = d.expect("expect", v, action, st)
	}
	return step, len(d.errs) == errsBefore
}

func (d *decoder) action(step *Step, key string, v any, st *state) {
	switch key {
	case "apply":
		if mf, ok := d.manifest(key, v, "cluster", st); ok {
			step.Apply = &Apply{mf}
		}
	case "delete":
		step.Delete = d.delete(key, v, st)
	case "scale":
		step.Scale = d.scale(key, v, st)
	case "annotate":
		step.Annotate = d.annotate(key, v, st)
	case "curl":
		step.Curl = d.curl(key, v, st)
	case "traffic":
		step.Traffic = d.traffic(key, v, st)
	case "stopTraffic":
		step.StopTraffic = d.stopTraffic(key, v, st)
	case "partition":
		step.Partition = d.partition(key, v, st)
	case "heal":
		if m, ok := v.(map[string]any); v != nil && (!ok || len(m) > 0) {
			d.errorf(key, "takes no fields: write heal: {}")
			return
		}
		step.Heal = &Heal{}
	case "stop":
		if p, ok := d.process(key, v, st); ok {
			step.Stop = &Stop{p}
		}
	case "start":
		if p, ok := d.process(key, v, st); ok {
			step.Start = &Start{p}
		}
	case "restart":
		if p, ok := d.process(key, v, st); ok {
			step.Restart = &Restart{p}
		}
	case "wait":
		if dur, ok := d.duration(key, v, false); ok {
			step.Wait = &Wait{Duration: dur}
		}
	case "addNode":
		m := d.object(key, v, "cluster")
		if m == nil {
			return
		}
		if cv, ok := d.required(key, m, "cluster"); ok {
			if c, ok := d.cluster(join(key, "cluster"), cv, st); ok {
				step.AddNode = &AddNode{Cluster: c}
				if st.added == nil {
					st.added = map[string]int{}
				}
				st.added[c]++ // later steps may name the new node
				if cl, ok := st.topo.Cluster(c); ok && cl.Nodes+st.added[c] > NodeCapacity(cl.PodCIDR) {
					d.errorf(join(key, "cluster"), "cluster %q has room for %d nodes (pod CIDR %s), and this would be node %d",
						c, NodeCapacity(cl.PodCIDR), cl.PodCIDR, cl.Nodes+st.added[c])
				}
			}
		}
	case "chaos":
		step.Chaos = d.chaos(key, v, st)
	}
}

// namespace reads an optional namespace field, defaulting to "default".
func (d *decoder) namespace(field string, m map[string]any) (string, bool) {
	v, ok := get(m, "namespace")
	if !ok {
		return DefaultNamespace, true
	}
	ns, ok := d.nonEmpty(join(field, "namespace"), v)
	if !ok {
		return "", false
	}
	if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
		d.errorf(join(field, "namespace"), "%q: %s", ns, strings.Join(errs, "; "))
		return "", false
	}
	return ns, true
}

func (d *decoder) delete(field string, v any, st *state) *Delete {
	m := d.object(field, v, "cluster", "kind", "name", "namespace", "gracePeriodSeconds")
	if m == nil {
		return nil
	}
	var del Delete
	good := true
	if v, ok := d.required(field, m, "cluster"); ok {
		del.Cluster, ok = d.cluster(join(field, "cluster"), v, st)
		good = good && ok
	} else {
		good = false
	}
	var info kindInfo
	if v, ok := d.required(field, m, "kind"); ok {
		if s, ok := d.str(join(field, "kind"), v); ok {
			if info, ok = kinds[s]; ok {
				del.Kind = s
			} else {
				d.errorf(join(field, "kind"), "%q is not a supported kind (%s)", s, strings.Join(KindNames(), ", "))
				good = false
			}
		} else {
			good = false
		}
	} else {
		good = false
	}
	if v, ok := d.required(field, m, "name"); ok {
		del.Name, ok = d.nonEmpty(join(field, "name"), v)
		good = good && ok
	} else {
		good = false
	}
	if del.Kind != "" && !info.namespaced {
		if _, ok := get(m, "namespace"); ok {
			d.errorf(join(field, "namespace"), "a %s has no namespace", del.Kind)
			good = false
		}
	} else {
		ns, ok := d.namespace(field, m)
		del.Namespace = ns
		good = good && ok
	}
	if v, ok := get(m, "gracePeriodSeconds"); ok {
		if del.Kind != "" && del.Kind != "Deployment" {
			d.errorf(join(field, "gracePeriodSeconds"), "applies to the pods of a Deployment; a %s has none", del.Kind)
			good = false
		} else {
			del.GracePeriod, ok = d.gracePeriod(join(field, "gracePeriodSeconds"), v)
			good = good && ok
		}
	}
	if !good {
		return nil
	}
	k := objectKey{del.Kind, del.Namespace, del.Name}
	if !d.haveObject(field, del.Cluster, k, st) {
		return nil
	}
	st.remove(del.Cluster, k, d.step)
	return &del
}

func (d *decoder) scale(field string, v any, st *state) *Scale {
	m := d.object(field, v, "cluster", "deployment", "replicas", "namespace", "gracePeriodSeconds")
	if m == nil {
		return nil
	}
	var s Scale
	good := true
	if v, ok := d.required(field, m, "cluster"); ok {
		s.Cluster, ok = d.cluster(join(field, "cluster"), v, st)
		good = good && ok
	} else {
		good = false
	}
	if v, ok := d.required(field, m, "deployment"); ok {
		s.Deployment, ok = d.nonEmpty(join(field, "deployment"), v)
		good = good && ok
	} else {
		good = false
	}
	ns, ok := d.namespace(field, m)
	s.Namespace, good = ns, good && ok
	if v, ok := d.required(field, m, "replicas"); ok {
		n, ok := d.integer(join(field, "replicas"), v, 0, 1000)
		s.Replicas, good = int(n), good && ok
	} else {
		good = false
	}
	if v, ok := get(m, "gracePeriodSeconds"); ok {
		s.GracePeriod, ok = d.gracePeriod(join(field, "gracePeriodSeconds"), v)
		good = good && ok
	}
	if !good || !d.haveObject(join(field, "deployment"), s.Cluster, objectKey{"Deployment", s.Namespace, s.Deployment}, st) {
		return nil
	}
	return &s
}

// gracePeriod decodes gracePeriodSeconds: whole seconds, at most an hour
// (Kubernetes' own limit is far above any test's patience).
func (d *decoder) gracePeriod(field string, v any) (*GracePeriod, bool) {
	n, ok := d.integer(field, v, 0, 3600)
	if !ok {
		return nil, false
	}
	return &GracePeriod{Seconds: n}, true
}

func (d *decoder) annotate(field string, v any, st *state) *Annotate {
	m := d.object(field, v, "cluster", "service", "namespace", "annotations")
	if m == nil {
		return nil
	}
	var a Annotate
	good := true
	if v, ok := d.required(field, m, "cluster"); ok {
		a.Cluster, ok = d.cluster(join(field, "cluster"), v, st)
		good = good && ok
	} else {
		good = false
	}
	if v, ok := d.required(field, m, "service"); ok {
		a.Service, ok = d.nonEmpty(join(field, "service"), v)
		good = good && ok
	} else {
		good = false
	}
	ns, ok := d.namespace(field, m)
	a.Namespace, good = ns, good && ok
	af := join(field, "annotations")
	if v, ok := d.required(field, m, "annotations"); ok {
		if am, ok := v.(map[string]any); ok && len(am) > 0 {
			a.Annotations = map[string]*string{}
			for _, k := range sortedKeys(am) {
				kf := join(af, k)
				if errs := validation.IsQualifiedName(k); len(errs) > 0 {
					d.errorf(kf, "not a valid annotation key: %s", strings.Join(errs, "; "))
					good = false
					continue
				}
				switch val := am[k].(type) {
				case nil:
					a.Annotations[k] = nil
				case string:
					a.Annotations[k] = &val
				default:
					// YAML reads true and 5 as non-strings; Kubernetes
					// annotations are strings only.
					d.errorf(kf, "must be a string or null (to remove it), got %s", describe(val))
					good = false
				}
			}
		} else {
			d.errorf(af, "must be an object of at least one key: value (null removes the key), got %s", describe(v))
			good = false
		}
	} else {
		good = false
	}
	if !good || !d.haveObject(join(field, "service"), a.Cluster, objectKey{"Service", a.Namespace, a.Service}, st) {
		return nil
	}
	return &a
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// workload resolves "<cluster>/<deployment>" (namespace default) or
// "<cluster>/<namespace>/<deployment>" to a deployment that exists.
func (d *decoder) workload(field string, v any, st *state) (Workload, bool) {
	s, ok := d.str(field, v)
	if !ok {
		return Workload{}, false
	}
	parts := strings.Split(s, "/")
	var w Workload
	switch len(parts) {
	case 2:
		w = Workload{Cluster: parts[0], Namespace: DefaultNamespace, Deployment: parts[1]}
	case 3:
		w = Workload{Cluster: parts[0], Namespace: parts[1], Deployment: parts[2]}
	}
	if w.Cluster == "" || w.Namespace == "" || w.Deployment == "" {
		d.errorf(field, "%q is not <cluster>/<deployment> (or <cluster>/<namespace>/<deployment>)", s)
		return Workload{}, false
	}
	if !st.clusterNames[w.Cluster] {
		d.errorf(field, "unknown cluster %q%s", w.Cluster, knownClusters(st))
		return Workload{}, false
	}
	if !d.haveObject(field, w.Cluster, objectKey{"Deployment", w.Namespace, w.Deployment}, st) {
		return Workload{}, false
	}
	return w, true
}

func (d *decoder) httpURL(field string, v any) (*url.URL, bool) {
	s, ok := d.nonEmpty(field, v)
	if !ok {
		return nil, false
	}
	u, err := url.Parse(s)
	if err != nil {
		d.errorf(field, "%q is not a URL: %v", s, errUnwrapURL(err))
		return nil, false
	}
	if u.Scheme != "http" {
		d.errorf(field, "%q: only http:// URLs are supported", s)
		return nil, false
	}
	if u.Hostname() == "" {
		d.errorf(field, "%q has no host", s)
		return nil, false
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			d.errorf(field, "%q: port %s is not a port", s, p)
			return nil, false
		}
	}
	return u, true
}

func errUnwrapURL(err error) error {
	if ue, ok := err.(*url.Error); ok {
		return ue.Err
	}
	return err
}

func (d *decoder) timeout(field string, m map[string]any) (time.Duration, bool) {
	v, present := get(m, "timeout")
	if !present {
		return DefaultTimeout, true
	}
	return d.duration(join(field, "timeout"), v, false)
}

func (d *decoder) curl(field string, v any, st *state) *Curl {
	m := d.object(field, v, "from", "url", "count", "timeout")
	if m == nil {
		return nil
	}
	c := Curl{Count: DefaultCurlCount}
	good := true
	if v, ok := d.required(field, m, "from"); ok {
		c.From, ok = d.workload(join(field, "from"), v, st)
		good = good && ok
	} else {
		good = false
	}
	if v, ok := d.required(field, m, "url"); ok {
		c.URL, ok = d.httpURL(join(field, "url"), v)
		good = good && ok
	} else {
		good = false
	}
	if v, ok := get(m, "count"); ok {
		n, ok := d.integer(join(field, "count"), v, 1, 100000)
		c.Count, good = int(n), good && ok
	}
	t, ok := d.timeout(field, m)
	c.Timeout, good = t, good && ok
	if !good {
		return nil
	}
	return &c
}

func (d *decoder) traffic(field string, v any, st *state) *Traffic {
	m := d.object(field, v, "name", "from", "url", "rate", "timeout")
	if m == nil {
		return nil
	}
	var t Traffic
	good := true
	if v, ok := d.required(field, m, "name"); ok {
		if name, ok := d.nonEmpty(join(field, "name"), v); ok {
			t.Name = name
			if started, running := st.traffic[name]; running {
				d.errorf(join(field, "name"), "traffic %q is already running (started by step %d, never stopped)", name, started)
				good = false
			} else {
				st.traffic[name] = d.step
			}
		} else {
			good = false
		}
	} else {
		good = false
	}
	if v, ok := d.required(field, m, "from"); ok {
		t.From, ok = d.workload(join(field, "from"), v, st)
		good = good && ok
	} else {
		good = false
	}
	if v, ok := d.required(field, m, "url"); ok {
		t.URL, ok = d.httpURL(join(field, "url"), v)
		good = good && ok
	} else {
		good = false
	}
	if v, ok := d.required(field, m, "rate"); ok {
		if s, ok := d.str(join(field, "rate"), v); ok {
			r, err := ParseRate(s)
			if err != nil {
				d.errorf(join(field, "rate"), "%v", err)
				good = false
			}
			t.Rate = r
		} else {
			good = false
		}
	} else {
		good = false
	}
	to, ok := d.timeout(field, m)
	t.Timeout, good = to, good && ok
	if !good {
		return nil
	}
	return &t
}

func (d *decoder) stopTraffic(field string, v any, st *state) *StopTraffic {
	name, ok := d.nonEmpty(field, v)
	if !ok {
		return nil
	}
	if _, running := st.traffic[name]; !running {
		if step, ok := st.stopped[name]; ok {
			d.errorf(field, "traffic %q is not running: step %d stopped it", name, step)
		} else {
			d.errorf(field, "no traffic named %q was started before this step", name)
		}
		return nil
	}
	delete(st.traffic, name)
	st.stopped[name] = d.step
	return &StopTraffic{Name: name}
}

// member resolves a partition group member: "<cluster>" or
// "<cluster>/node-N".
func (d *decoder) member(field string, v any, st *state) (Member, bool) {
	s, ok := d.nonEmpty(field, v)
	if !ok {
		return Member{}, false
	}
	cluster, node, hasNode := strings.Cut(s, "/")
	if !st.clusterNames[cluster] {
		d.errorf(field, "unknown cluster %q%s", cluster, knownClusters(st))
		return Member{}, false
	}
	if !hasNode {
		return Member{Cluster: cluster}, true
	}
	if !d.node(field, cluster, node, st) {
		return Member{}, false
	}
	return Member{Cluster: cluster, Node: node}, true
}

// node checks that node is one of cluster's node-1..node-N.
func (d *decoder) node(field, cluster, node string, st *state) bool {
	c, known := st.topo.Cluster(cluster)
	if !known {
		return true // the cluster itself is invalid and reported
	}
	num, ok := strings.CutPrefix(node, "node-")
	i, err := strconv.Atoi(num)
	if n := c.Nodes + st.added[cluster]; !ok || err != nil || NodeName(i) != node || i < 1 || i > n {
		d.errorf(field, "cluster %q has no node %q (its nodes are node-1..node-%d)", cluster, node, n)
		return false
	}
	return true
}

func (d *decoder) partition(field string, v any, st *state) *Partition {
	m := d.object(field, v, "groups", "plane", "oneWay")
	if m == nil {
		return nil
	}
	plane, good := d.enum(field, m, "plane", string(PlaneBoth), string(PlaneBoth), string(PlaneData), string(PlaneControl))
	p := Partition{Plane: Plane(plane)}
	if v, ok := get(m, "oneWay"); ok {
		b, ok := d.boolean(join(field, "oneWay"), v)
		p.OneWay, good = b, good && ok
	}
	gf := join(field, "groups")
	gv, ok := d.required(field, m, "groups")
	if !ok {
		return nil
	}
	groups, ok := d.list(gf, gv)
	if !ok {
		return nil
	}
	if len(groups) < 2 {
		d.errorf(gf, "a partition needs at least two groups, got %d", len(groups))
		good = false
	}
	// where remembers each member's place, to report one named twice or a
	// cluster named both whole and by node.
	where := map[Member]string{}
	for i, g := range groups {
		mf := index(gf, i)
		members, ok := d.list(mf, g)
		if !ok {
			good = false
			continue
		}
		if len(members) == 0 {
			d.errorf(mf, "a group needs at least one member")
			good = false
			continue
		}
		var group []Member
		for j, mv := range members {
			ef := index(mf, j)
			mem, ok := d.member(ef, mv, st)
			if !ok {
				good = false
				continue
			}
			if prev, dup := where[mem]; dup {
				d.errorf(ef, "%s is already in %s", mem, prev)
				good = false
				continue
			}
			clash := ""
			for other, at := range where {
				if other.Cluster == mem.Cluster && (other.Node == "" || mem.Node == "") {
					clash = fmt.Sprintf("%s (%s)", at, other)
					break
				}
			}
			if clash != "" {
				d.errorf(ef, "%s overlaps %s: name a cluster whole or by nodes, not both", mem, clash)
				good = false
				continue
			}
			where[mem] = ef
			group = append(group, mem)
		}
		p.Groups = append(p.Groups, group)
	}
	if !good {
		return nil
	}
	return &p
}

func (d *decoder) process(field string, v any, st *state) (Process, bool) {
	m := d.object(field, v, "component", "cluster", "node")
	if m == nil {
		return Process{}, false
	}
	var p Process
	good := true
	if _, ok := get(m, "component"); !ok {
		d.errorf(join(field, "component"), "required (apiserver, kvstoremesh or agent)")
		good = false
	} else {
		c, ok := d.enum(field, m, "component", "",
			string(ComponentAPIServer), string(ComponentKVStoreMesh), string(ComponentAgent))
		p.Component, good = Component(c), ok
	}
	if p.Component == ComponentKVStoreMesh && !st.topo.KVStoreMesh {
		d.errorf(join(field, "component"), "kvstoremesh is off in this topology (spec.topology.kvstoremesh: false)")
		good = false
	}
	if v, ok := d.required(field, m, "cluster"); ok {
		p.Cluster, ok = d.cluster(join(field, "cluster"), v, st)
		good = good && ok
	} else {
		good = false
	}
	nv, hasNode := get(m, "node")
	switch {
	case p.Component == ComponentAgent && !hasNode:
		d.errorf(join(field, "node"), "required for an agent (node-1..node-N)")
		good = false
	case p.Component == ComponentAgent:
		if s, ok := d.nonEmpty(join(field, "node"), nv); ok {
			p.Node = s
			if p.Cluster != "" && !d.node(join(field, "node"), p.Cluster, s, st) {
				good = false
			}
		} else {
			good = false
		}
	case hasNode && p.Component != "":
		d.errorf(join(field, "node"), "only an agent runs per node; the %s runs once per cluster", p.Component)
		good = false
	}
	return p, good
}

// expectations and the actions they apply to; nil means every action.
var expectAppliesTo = map[string][]string{
	"within":    nil,
	"responses": {"curl", "stopTraffic"},
	"errors":    {"curl", "stopTraffic"},
	"maxOutage": {"stopTraffic", "chaos"},
	"converge":  {"chaos", "heal", "start", "restart"},
	"backends":  nil,
	"kvstore":   nil,
	"encrypted": {"curl"},
	"events":    nil,
}

func (d *decoder) expect(field string, v any, action string, st *state) Expect {
	m := d.object(field, v, "within", "responses", "errors", "maxOutage", "converge", "backends", "kvstore", "encrypted", "events")
	if m == nil {
		return Expect{}
	}
	var e Expect
	for _, key := range sortedKeys(m) {
		only := expectAppliesTo[key]
		if only != nil && action != "" && !contains(only, action) {
			d.errorf(join(field, key), "applies to %s steps only, not %s", strings.Join(only, " and "), action)
			delete(m, key)
		}
	}
	if v, ok := get(m, "within"); ok {
		if action == "chaos" {
			d.errorf(join(field, "within"), "does not apply to chaos steps: every fault is checked as it happens (use converge)")
		} else {
			e.Within, _ = d.duration(join(field, "within"), v, false)
		}
	}
	if v, ok := get(m, "converge"); ok {
		e.Converge, _ = d.duration(join(field, "converge"), v, false)
	}
	if v, ok := get(m, "responses"); ok {
		rf := join(field, "responses")
		if rm := d.responsesObject(rf, v); rm != nil {
			e.Responses = map[string]Matcher{}
			for _, c := range sortedKeys(rm) {
				cf := join(rf, c)
				if !st.clusterNames[c] {
					d.errorf(cf, "unknown cluster %q%s", c, knownClusters(st))
					continue
				}
				if mt, ok := d.matcher(cf, rm[c], false); ok {
					e.Responses[c] = mt
				}
			}
		}
	}
	if v, ok := get(m, "errors"); ok {
		if mt, ok := d.matcher(join(field, "errors"), v, true); ok {
			e.Errors = &mt
		}
	}
	if v, ok := get(m, "encrypted"); ok {
		if b, ok := d.boolean(join(field, "encrypted"), v); ok {
			e.Encrypted = &b
		}
	}
	if v, ok := get(m, "maxOutage"); ok {
		if dur, ok := d.duration(join(field, "maxOutage"), v, true); ok {
			e.MaxOutage = &dur
		}
	}
	if v, ok := get(m, "backends"); ok {
		bf := join(field, "backends")
		items := oneOrList(v)
		for i, item := range items {
			f := bf
			if _, isList := v.([]any); isList {
				f = index(bf, i)
			}
			if b, ok := d.backends(f, item, st); ok {
				e.Backends = append(e.Backends, b)
			}
		}
	}
	if v, ok := get(m, "kvstore"); ok {
		kf := join(field, "kvstore")
		for i, item := range oneOrList(v) {
			f := kf
			if _, isList := v.([]any); isList {
				f = index(kf, i)
			}
			if k, ok := d.kvstore(f, item, st); ok {
				e.KVStore = append(e.KVStore, k)
			}
		}
	}
	if v, ok := get(m, "events"); ok {
		ef := join(field, "events")
		for i, item := range oneOrList(v) {
			f := ef
			if _, isList := v.([]any); isList {
				f = index(ef, i)
			}
			if x, ok := d.events(f, item, st); ok {
				e.Events = append(e.Events, x)
			}
		}
	}
	return e
}

func (d *decoder) responsesObject(field string, v any) map[string]any {
	rm, ok := v.(map[string]any)
	if !ok {
		d.errorf(field, "must be an object of cluster: share or count, like {cluster1: \">=25%%\"}, got %s", describe(v))
		return nil
	}
	return rm
}

// matcher parses a count or share matcher from a YAML number or string.
func (d *decoder) matcher(field string, v any, isErrors bool) (Matcher, bool) {
	var s string
	switch v := v.(type) {
	case json.Number:
		s = v.String()
	case string:
		s = v
	default:
		d.errorf(field, "must be a count or a share like \">=25%%\", got %s", describe(v))
		return Matcher{}, false
	}
	mt, err := ParseMatcher(s, true, isErrors)
	if err != nil {
		d.errorf(field, "%v", err)
		return Matcher{}, false
	}
	return mt, true
}

// serviceRef resolves "ns/name" or "name" (namespace default).
func (d *decoder) serviceRef(field string, v any) (ns, name string, ok bool) {
	s, ok := d.nonEmpty(field, v)
	if !ok {
		return "", "", false
	}
	ns, name, hasNS := strings.Cut(s, "/")
	if !hasNS {
		ns, name = DefaultNamespace, s
	}
	if ns == "" || name == "" || strings.Contains(name, "/") {
		d.errorf(field, "%q is not <namespace>/<service>", s)
		return "", "", false
	}
	return ns, name, true
}

func (d *decoder) backends(field string, v any, st *state) (BackendsExpect, bool) {
	m := d.object(field, v, "cluster", "service", "from")
	if m == nil {
		return BackendsExpect{}, false
	}
	var b BackendsExpect
	good := true
	if v, ok := d.required(field, m, "cluster"); ok {
		b.Cluster, ok = d.cluster(join(field, "cluster"), v, st)
		good = good && ok
	} else {
		good = false
	}
	if v, ok := d.required(field, m, "service"); ok {
		var ok bool
		b.Namespace, b.Service, ok = d.serviceRef(join(field, "service"), v)
		good = good && ok
	} else {
		good = false
	}
	ff := join(field, "from")
	if v, present := m["from"]; !present {
		d.errorf(ff, "required (a list of cluster names; [] for no backends)")
		good = false
	} else if v != nil {
		l, ok := d.list(ff, v)
		good = good && ok
		b.From = []string{}
		for i, item := range l {
			c, ok := d.cluster(index(ff, i), item, st)
			if !ok {
				good = false
				continue
			}
			if contains(b.From, c) {
				d.errorf(index(ff, i), "cluster %q is listed twice", c)
				good = false
				continue
			}
			b.From = append(b.From, c)
		}
		sort.Strings(b.From)
	} else {
		b.From = []string{}
	}
	if good && !d.haveObject(join(field, "service"), b.Cluster, objectKey{"Service", b.Namespace, b.Service}, st) {
		good = false
	}
	return b, good
}

func (d *decoder) kvstore(field string, v any, st *state) (KVStoreExpect, bool) {
	m := d.object(field, v, "cluster", "key", "exists", "json", "prefix", "count")
	if m == nil {
		return KVStoreExpect{}, false
	}
	k := KVStoreExpect{Exists: true}
	good := true
	if v, ok := d.required(field, m, "cluster"); ok {
		k.Cluster, ok = d.cluster(join(field, "cluster"), v, st)
		good = good && ok
	} else {
		good = false
	}
	kv, hasKey := get(m, "key")
	pv, hasPrefix := get(m, "prefix")
	switch {
	case hasKey && hasPrefix:
		d.errorf(field, "give either key (with exists/json) or prefix (with count), not both")
		return k, false
	case hasKey:
		var ok bool
		k.Key, ok = d.nonEmpty(join(field, "key"), kv)
		good = good && ok
		if v, ok := get(m, "exists"); ok {
			b, ok := d.boolean(join(field, "exists"), v)
			k.Exists, good = b, good && ok
		}
		if v, ok := get(m, "json"); ok {
			if !k.Exists {
				d.errorf(join(field, "json"), "cannot match the value of a key expected not to exist")
				good = false
			}
			k.JSON = v
		}
		if _, ok := get(m, "count"); ok {
			d.errorf(join(field, "count"), "goes with prefix, not key")
			good = false
		}
	case hasPrefix:
		var ok bool
		k.Prefix, ok = d.nonEmpty(join(field, "prefix"), pv)
		good = good && ok
		for _, bad := range []string{"exists", "json"} {
			if _, ok := get(m, bad); ok {
				d.errorf(join(field, bad), "goes with key, not prefix")
				good = false
			}
		}
		cv, ok := d.required(field, m, "count")
		if !ok {
			return k, false
		}
		var s string
		switch cv := cv.(type) {
		case json.Number:
			s = cv.String()
		case string:
			s = cv
		default:
			d.errorf(join(field, "count"), "must be a count like 2 or \">=1\", got %s", describe(cv))
			return k, false
		}
		mt, err := ParseMatcher(s, false, false)
		if err != nil {
			d.errorf(join(field, "count"), "%v", err)
			return k, false
		}
		k.Count = &mt
	default:
		d.errorf(field, "key or prefix is required")
		good = false
	}
	return k, good
}
