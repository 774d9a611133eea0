package scenarios

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Encode writes sc as a scenario file that Parse reads back to the same
// scenario: the topology with every default written out, the manifests
// inline (so that the file stands alone), and every step. Values are
// written in YAML's flow style, which is JSON.
//
// The shrinking of a chaos step writes its repro.yaml with it.
func Encode(sc *Scenario) ([]byte, error) {
	var b bytes.Buffer
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	j := flowJSON
	w("apiVersion: %s\nkind: %s\nmetadata:\n  name: %s\n", APIVersion, Kind, j(sc.Name))
	if sc.Description != "" {
		w("  description: %s\n", j(sc.Description))
	}
	w("spec:\n  seed: %d\n  topology:\n", sc.Seed)
	t := sc.Topology
	w("    routing: %s\n    kvstoremesh: %t\n    remoteLoss: %s\n", t.Routing, t.KVStoreMesh, t.RemoteLoss)
	if t.Encryption != "" {
		w("    encryption: %s\n", t.Encryption)
	}
	w("    clusters:\n")
	for _, c := range t.Clusters {
		w("      - %s\n", j(map[string]any{"name": c.Name, "id": c.ID, "nodes": c.Nodes,
			"podCIDR": c.PodCIDR.String(), "serviceCIDR": c.ServiceCIDR.String()}))
	}
	conns := make([][]string, 0, len(t.Connections))
	for _, p := range t.Connections {
		conns = append(conns, []string{p[0], p[1]})
	}
	w("    connections: %s\n", j(conns))
	if len(sc.Manifests) > 0 {
		w("  manifests:\n")
		for _, mf := range sc.Manifests {
			text, err := inlineObjects(mf.Objects)
			if err != nil {
				return nil, err
			}
			w("    - clusters: %s\n      inline: |\n%s", j(mf.Clusters), indent(text, "        "))
		}
	}
	w("  steps:\n")
	for i := range sc.Steps {
		st := &sc.Steps[i]
		key, val, err := encodeAction(st)
		if err != nil {
			return nil, fmt.Errorf("step %d (%s): %w", st.Index, st.Name, err)
		}
		w("    - name: %s\n", j(st.Name))
		if key == "apply" {
			a := st.Apply
			text, err := inlineObjects(a.Objects)
			if err != nil {
				return nil, err
			}
			w("      apply:\n        clusters: %s\n        inline: |\n%s", j(a.Clusters), indent(text, "          "))
		} else {
			w("      %s: %s\n", key, j(val))
		}
		if e := encodeExpect(&st.Expect); len(e) > 0 {
			w("      expect: %s\n", j(e))
		}
	}
	return b.Bytes(), nil
}

// flowJSON writes v as JSON, which YAML reads as flow style; ">" and "&"
// stay as they are.
func flowJSON(v any) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(err) // only maps, slices, strings, numbers and bools here
	}
	return strings.TrimSuffix(b.String(), "\n")
}

func indent(text, prefix string) string {
	var b strings.Builder
	for line := range strings.SplitSeq(strings.TrimRight(text, "\n"), "\n") {
		if line == "" {
			b.WriteString("\n")
			continue
		}
		b.WriteString(prefix + line + "\n")
	}
	return b.String()
}

// inlineObjects writes objects as a multi-document YAML text.
func inlineObjects(objs []Object) (string, error) {
	var docs []string
	for _, o := range objs {
		y, err := yaml.JSONToYAML(o.JSON)
		if err != nil {
			return "", fmt.Errorf("%s %s: %w", o.Kind, o.Name, err)
		}
		docs = append(docs, string(y))
	}
	return strings.Join(docs, "---\n"), nil
}

func dur(d time.Duration) string { return d.String() }

func workload(w Workload) string { return w.String() }

func processFields(p Process) map[string]any {
	m := map[string]any{"component": p.Component, "cluster": p.Cluster}
	if p.Node != "" {
		m["node"] = p.Node
	}
	return m
}

func encodeAction(st *Step) (string, any, error) {
	switch a := st.Action().(type) {
	case *Apply:
		return "apply", nil, nil
	case *Delete:
		m := map[string]any{"cluster": a.Cluster, "kind": a.Kind, "name": a.Name}
		if a.Namespace != "" {
			m["namespace"] = a.Namespace
		}
		if a.GracePeriod != nil {
			m["gracePeriodSeconds"] = a.GracePeriod.Seconds
		}
		return "delete", m, nil
	case *Scale:
		m := map[string]any{"cluster": a.Cluster, "namespace": a.Namespace, "deployment": a.Deployment, "replicas": a.Replicas}
		if a.GracePeriod != nil {
			m["gracePeriodSeconds"] = a.GracePeriod.Seconds
		}
		return "scale", m, nil
	case *Annotate:
		return "annotate", map[string]any{"cluster": a.Cluster, "namespace": a.Namespace, "service": a.Service, "annotations": a.Annotations}, nil
	case *Curl:
		return "curl", map[string]any{"from": workload(a.From), "url": a.URL.String(), "count": a.Count, "timeout": dur(a.Timeout)}, nil
	case *Traffic:
		return "traffic", map[string]any{"name": a.Name, "from": workload(a.From), "url": a.URL.String(),
			"rate": a.Rate.String(), "timeout": dur(a.Timeout)}, nil
	case *StopTraffic:
		return "stopTraffic", a.Name, nil
	case *Partition:
		groups := [][]string{}
		for _, g := range a.Groups {
			var ms []string
			for _, m := range g {
				ms = append(ms, m.String())
			}
			groups = append(groups, ms)
		}
		return "partition", map[string]any{"groups": groups, "plane": a.Plane, "oneWay": a.OneWay}, nil
	case *Heal:
		return "heal", map[string]any{}, nil
	case *Stop:
		return "stop", processFields(a.Process), nil
	case *Start:
		return "start", processFields(a.Process), nil
	case *Restart:
		return "restart", processFields(a.Process), nil
	case *Wait:
		return "wait", dur(a.Duration), nil
	case *AddNode:
		return "addNode", map[string]any{"cluster": a.Cluster}, nil
	case *Chaos:
		m := map[string]any{"duration": dur(a.Duration), "faults": a.Faults,
			"interval":   map[string]string{"min": dur(a.Interval.Min), "max": dur(a.Interval.Max)},
			"hold":       map[string]string{"min": dur(a.Hold.Min), "max": dur(a.Hold.Max)},
			"concurrent": a.Concurrent}
		if hasKind(a.Faults, FaultPartition) {
			m["planes"], m["oneWay"], m["nodes"] = a.Planes, a.OneWay, a.Nodes
		}
		if hasKind(a.Faults, FaultStop) || hasKind(a.Faults, FaultRestart) {
			m["components"] = a.Components
		}
		return "chaos", m, nil
	}
	return "", nil, fmt.Errorf("no action to encode")
}

func encodeExpect(e *Expect) map[string]any {
	m := map[string]any{}
	if e.Within > 0 {
		m["within"] = dur(e.Within)
	}
	if e.Responses != nil {
		rs := map[string]string{}
		for c, mt := range e.Responses {
			rs[c] = mt.String()
		}
		m["responses"] = rs
	}
	if e.Errors != nil {
		m["errors"] = e.Errors.String()
	}
	if e.MaxOutage != nil {
		m["maxOutage"] = dur(*e.MaxOutage)
	}
	if e.Converge > 0 {
		m["converge"] = dur(e.Converge)
	}
	if e.Backends != nil {
		var bs []map[string]any
		for _, b := range e.Backends {
			bs = append(bs, map[string]any{"cluster": b.Cluster, "service": b.Namespace + "/" + b.Service, "from": b.From})
		}
		m["backends"] = bs
	}
	if e.KVStore != nil {
		var ks []map[string]any
		for _, k := range e.KVStore {
			km := map[string]any{"cluster": k.Cluster}
			if k.Prefix != "" {
				km["prefix"], km["count"] = k.Prefix, k.Count.String()
			} else {
				km["key"], km["exists"] = k.Key, k.Exists
				if k.JSON != nil {
					km["json"] = k.JSON
				}
			}
			ks = append(ks, km)
		}
		m["kvstore"] = ks
	}
	if e.Encrypted != nil {
		m["encrypted"] = *e.Encrypted
	}
	if e.Events != nil {
		var es []map[string]any
		for _, x := range e.Events {
			em := map[string]any{"cluster": x.Cluster, "kind": x.Kind, "count": x.Count.String()}
			for k, v := range map[string]string{"node": x.Node, "component": x.Component, "remote": x.Remote, "service": x.Service} {
				if v != "" {
					em[k] = v
				}
			}
			es = append(es, em)
		}
		m["events"] = es
	}
	return m
}
