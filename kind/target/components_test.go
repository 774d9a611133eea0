package target

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshbed/meshbed/scenarios"
)

// TestPodStatus: a component runs when one of its pods is Running with
// every container ready and not being deleted; a restart says why.
func TestPodStatus(t *testing.T) {
	p := scenarios.Process{Component: scenarios.ComponentAgent, Cluster: "c1", Node: "node-1"}
	running := func(ready bool, restarts int32) corev1.Pod {
		return corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{
			Name: "agent", Ready: ready, RestartCount: restarts,
			LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{Reason: "Error", ExitCode: 2}},
		}}}}
	}
	deleting := running(true, 0)
	deleting.DeletionTimestamp = &metav1.Time{}
	for i, tc := range []struct {
		pods    []corev1.Pod
		running bool
		exited  string
	}{
		{nil, false, ""},
		{[]corev1.Pod{running(true, 0)}, true, ""},
		{[]corev1.Pod{running(false, 0)}, false, ""},
		{[]corev1.Pod{deleting}, false, ""},
		{[]corev1.Pod{deleting, running(true, 0)}, true, ""},
		{[]corev1.Pod{running(false, 3)}, false, "container agent restarted 3 times (last: Error, exit code 2)"},
	} {
		s := podStatus(p, tc.pods)
		if s.Running != tc.running || s.Exited != tc.exited || s.Process != p {
			t.Errorf("case %d: %+v, want running %t exited %q", i, s, tc.running, tc.exited)
		}
	}
}
