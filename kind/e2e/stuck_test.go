//go:build e2e

package e2e

import (
	"errors"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestStuckPod: a container in CrashLoopBackOff after crashLoopRestarts
// restarts stops the e2e at once, named; one that is starting does not.
func TestStuckPod(t *testing.T) {
	pod := func(restarts int32, reason string) corev1.Pod {
		return corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "meshbed-system", Name: "meshbed-agent-x"},
			Spec: corev1.PodSpec{NodeName: "c1-worker"},
			Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{
				Name: "agent", RestartCount: restarts,
				State:                corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}},
				LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1, Reason: "Error"}},
			}}}}
	}
	if err := stuckPod([]corev1.Pod{pod(2, "CrashLoopBackOff"), pod(9, "ContainerCreating")}); err != nil {
		t.Errorf("starting pods taken for stuck: %v", err)
	}
	err := stuckPod([]corev1.Pod{pod(crashLoopRestarts, "CrashLoopBackOff")})
	if !errors.Is(err, errStuck) || !strings.Contains(err.Error(), "meshbed-system/meshbed-agent-x on c1-worker: container agent in CrashLoopBackOff after 5 restarts, last exit code 1 (Error)") {
		t.Errorf("stuck pod: %v", err)
	}
}
