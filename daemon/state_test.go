package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/internal/testenv"
	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/mesh/flow/relay"
	"github.com/meshbed/meshbed/mesh/remote"
)

type fakeNode struct{ desired *state.State }

func (f fakeNode) State() (*state.State, error, bool) { return f.desired, nil, true }
func (fakeNode) PolicyWarnings() map[string][]string  { return map[string][]string{"default/p": {"w"}} }
func (fakeNode) PolicyErrors() map[string]error {
	return map[string]error{"default/q": errors.New("bad")}
}
func (fakeNode) ReadBack() ([]state.Service, []state.IPCacheEntry, error) {
	return []state.Service{{Name: "default/s"}}, []state.IPCacheEntry{{Prefix: netip.MustParsePrefix("10.1.0.5/32"), Identity: 7}}, nil
}

// TestStateSocket: meshbed-agent state prints what the agent and the BPF
// maps hold, as a state.NodeReport; a missing agent is a clear error.
func TestStateSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	f := fakeNode{desired: &state.State{Nodes: []state.Node{{Name: "n1"}}}}
	remotes := func() []remote.ClusterStatus {
		return []remote.ClusterStatus{
			{Name: "cluster2", Up: true, Reachable: true, ServicesSynced: true, Cached: true},
			{Name: "cluster3", Up: true, LastErr: errors.New("unreachable")},
		}
	}
	stop := serveState(t.Context(), "n1", f, f, remotes, sock, nil, slog.New(slog.DiscardHandler))
	defer stop()
	var out bytes.Buffer
	testenv.Eventually(t, 5e9, func() error { out.Reset(); return CopyState(t.Context(), sock, &out) })
	var r state.NodeReport
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if r.Node != "n1" || r.Desired == nil || len(r.Desired.Nodes) != 1 || len(r.Services) != 1 || len(r.IPCache) != 1 ||
		r.IPCache[0].Identity != 7 || r.PolicyErrors["default/q"] != "bad" || r.PolicyWarnings["default/p"][0] != "w" {
		t.Errorf("report = %+v", r)
	}
	want := []state.RemoteReport{{Name: "cluster2", Connected: true, Synced: true, Cached: true}, {Name: "cluster3", LastError: "unreachable"}}
	if !slices.Equal(r.Remotes, want) {
		t.Errorf("remotes %+v, want %+v", r.Remotes, want)
	}
	stop()
	if err := CopyState(t.Context(), filepath.Join(t.TempDir(), "none.sock"), &out); err == nil || !strings.Contains(err.Error(), "no agent at") {
		t.Errorf("no agent: %v", err)
	}
}

// The state socket serves the flow stream too (what `meshbed observe`
// reads on a node); without an observer it says so in one line.
func TestStateSocketServesFlows(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	f := fakeNode{desired: &state.State{}}
	flows := flow.NodeHandler(t.Context(), func() *flow.Observer { return nil })
	stop := serveState(t.Context(), "n1", f, f, nil, sock, flows, slog.New(slog.DiscardHandler))
	defer stop()
	src := relay.SocketSource(sock)
	testenv.Eventually(t, 5e9, func() error {
		err := src.Get(t.Context(), flow.Request{Last: 1}, func(flow.Record) error { return nil })
		if err == nil || err.Error() != flow.ErrNoObserver.Error() {
			return fmt.Errorf("flows on the state socket: %v, want %q", err, flow.ErrNoObserver)
		}
		return nil
	})
}
