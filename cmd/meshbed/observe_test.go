package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/meshbed/meshbed/mesh/clustermesh"
)

func runObserve(t *testing.T, factory clustermesh.ClientFactory, args ...string) (string, error) {
	t.Helper()
	root := newRoot(factory)
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

// Bad input is refused with one line, before anything is contacted.
func TestObserveBadInput(t *testing.T) {
	gone := filepath.Join(t.TempDir(), "agent.sock")
	noAgents := func(_, _ string) (*clustermesh.Clients, error) {
		return &clustermesh.Clients{Kube: fake.NewClientset(), Rest: &rest.Config{Host: "https://127.0.0.1:1"}}, nil
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"observe", "--context", "c", "--verdict", "DENIED"}, `--verdict "DENIED": want FORWARDED or DROPPED`},
		{[]string{"observe", "--context", "c", "--to-service", "rebel-base"}, `--to-service "rebel-base": want namespace/name`},
		{[]string{"observe", "--context", "c", "-o", "yaml"}, `-o "yaml": want compact or json`},
		{[]string{"observe", "--context", "c", "--last", "-3"}, `--last "-3"`},
		{[]string{"observe", "--context", "c", "--namespace", "x"}, `unknown flag: --namespace`},
		{[]string{"observe", "--context", "c", "--socket", gone}, "--context and --socket exclude each other"},
		{[]string{"observe", "--socket", gone}, "no agent answers on " + gone},
		{[]string{"observe", "--context", "c"}, "no running agent pod (app.kubernetes.io/name=meshbed-agent in namespace meshbed-system): is meshbed installed?"},
		{[]string{"sim", "--name", "not-running-" + filepath.Base(t.TempDir()), "observe"}, "is running (start one with"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			_, err := runObserve(t, noAgents, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q, want one line with %q", err, tt.want)
			}
		})
	}
}
