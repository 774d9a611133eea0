package sim

import (
	"errors"
	"fmt"
)

// Component is a mesh process that faults can stop and start.
type Component string

const (
	ComponentAPIServer   Component = "apiserver"
	ComponentKVStoreMesh Component = "kvstoremesh"
	ComponentAgent       Component = "agent"
)

// Process stops, starts or restarts a component of the cluster: the
// apiserver (stopping it also stops its etcd, and kvstoremesh with it), its
// kvstoremesh, or the agent of node (all nodes when node is empty).
func (c *Cluster) Process(comp Component, node, verb string) error {
	var stop, start func() error
	switch comp {
	case ComponentAPIServer:
		stop, start = c.StopAPIServer, c.StartAPIServer
	case ComponentKVStoreMesh:
		stop, start = c.StopKVStoreMesh, c.StartKVStoreMesh
	case ComponentAgent:
		nodes := c.nodes
		if node != "" {
			n, ok := c.node(node)
			if !ok {
				return fmt.Errorf("cluster %s has no node %q", c.spec.Name, node)
			}
			nodes = []*Node{n}
		}
		stop = func() error {
			var errs []error
			for _, n := range nodes {
				errs = append(errs, n.StopAgent())
			}
			return errors.Join(errs...)
		}
		start = func() error {
			var errs []error
			for _, n := range nodes {
				errs = append(errs, n.StartAgent())
			}
			return errors.Join(errs...)
		}
	default:
		return fmt.Errorf("unknown component %q", comp)
	}
	switch verb {
	case "stop":
		return stop()
	case "start":
		return start()
	case "restart":
		if err := stop(); err != nil {
			return err
		}
		return start()
	}
	return fmt.Errorf("unknown verb %q", verb)
}

// Recover heals every partition and starts every stopped component.
func (m *Mesh) Recover() error {
	errs := []error{m.Heal()}
	for _, c := range m.clusters {
		c.mu.Lock()
		apiDown := c.apiserver == nil
		c.mu.Unlock()
		if apiDown {
			errs = append(errs, c.StartAPIServer())
		}
		c.mu.Lock()
		kmDown := c.kvstoremesh == nil && m.spec.KVStoreMesh
		c.mu.Unlock()
		if kmDown {
			errs = append(errs, c.StartKVStoreMesh())
		}
		for _, n := range c.nodes {
			if n.Agent() == nil {
				errs = append(errs, n.StartAgent())
			}
		}
	}
	return errors.Join(errs...)
}

// ComponentStatus is one mesh process of a cluster: Node is set for an
// agent; Exited holds the error of a process that ended on its own.
type ComponentStatus struct {
	Component Component
	Node      string
	Running   bool
	Exited    error
}

// Components reports the cluster's apiserver, its kvstoremesh (when the
// mesh runs them) and every node's agent. A process that ended without
// being stopped is not running and carries its error (nil when it
// returned without one).
func (c *Cluster) Components() []ComponentStatus {
	status := func(comp Component, node string, p *proc) ComponentStatus {
		s := ComponentStatus{Component: comp, Node: node, Running: p != nil}
		if p != nil {
			if done, err := p.exited(); done {
				s.Running = false
				s.Exited = err
				if err == nil {
					s.Exited = errors.New("exited")
				}
			}
		}
		return s
	}
	c.mu.Lock()
	out := []ComponentStatus{status(ComponentAPIServer, "", c.apiserver)}
	if c.mesh.spec.KVStoreMesh {
		out = append(out, status(ComponentKVStoreMesh, "", c.kvstoremesh))
	}
	c.mu.Unlock()
	for _, n := range c.nodes {
		n.mu.Lock()
		p := n.proc
		n.mu.Unlock()
		out = append(out, status(ComponentAgent, n.name, p))
	}
	return out
}
