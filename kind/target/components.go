package target

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/meshbed/meshbed/kind"
	"github.com/meshbed/meshbed/scenarios"
	"github.com/meshbed/meshbed/scenarios/engine"
)

// Components implements engine.Target from the pods in meshbed's
// namespace: the mesh-apiserver, kvstoremesh and the agent of every node. A component runs when a
// pod of it is Running, not being deleted, with every container ready; a
// container that restarted says why in Exited.
func (t *Target) Components(ctx context.Context, cluster string) ([]engine.ComponentStatus, error) {
	c, err := t.cluster(cluster)
	if err != nil {
		return nil, err
	}
	list := func(name string) ([]corev1.Pod, error) {
		pods, err := c.kube.CoreV1().Pods(kind.Namespace).List(ctx, metav1.ListOptions{LabelSelector: labels.Set{"app.kubernetes.io/name": name}.String()})
		if err != nil {
			return nil, fmt.Errorf("cluster %s: pods of %s: %w", cluster, name, err)
		}
		return pods.Items, nil
	}
	api, err := list(kind.APIServerName)
	if err != nil {
		return nil, err
	}
	km, err := list(kind.KVStoreMeshName)
	if err != nil {
		return nil, err
	}
	agents, err := list(kind.AgentName)
	if err != nil {
		return nil, err
	}
	out := []engine.ComponentStatus{
		podStatus(scenarios.Process{Component: scenarios.ComponentAPIServer, Cluster: cluster}, api),
		podStatus(scenarios.Process{Component: scenarios.ComponentKVStoreMesh, Cluster: cluster}, km),
	}
	for i, n := range c.nodes {
		var mine []corev1.Pod
		for _, p := range agents {
			if p.Spec.NodeName == n.Name {
				mine = append(mine, p)
			}
		}
		out = append(out, podStatus(scenarios.Process{Component: scenarios.ComponentAgent, Cluster: cluster, Node: scenarios.NodeName(i + 1)}, mine))
	}
	return out, nil
}

// podStatus is a component's status from its pods.
func podStatus(p scenarios.Process, pods []corev1.Pod) engine.ComponentStatus {
	s := engine.ComponentStatus{Process: p}
	for _, pod := range pods {
		if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning {
			continue
		}
		ready := len(pod.Status.ContainerStatuses) > 0
		for _, cs := range pod.Status.ContainerStatuses {
			ready = ready && cs.Ready
			if cs.RestartCount > 0 && s.Exited == "" {
				s.Exited = fmt.Sprintf("container %s restarted %d times", cs.Name, cs.RestartCount)
				if term := cs.LastTerminationState.Terminated; term != nil {
					s.Exited += fmt.Sprintf(" (last: %s, exit code %d)", term.Reason, term.ExitCode)
				}
			}
		}
		if ready {
			s.Running = true
		}
	}
	return s
}
