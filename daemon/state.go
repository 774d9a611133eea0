package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/meshbed/meshbed/datapath/state"
	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/mesh/remote"
)

// nodeReader is what the state socket reads: the agent's side and the
// datapath's.
type nodeReader interface {
	State() (s *state.State, applyErr error, servicesSynced bool)
	PolicyWarnings() map[string][]string
	PolicyErrors() map[string]error
}

type backReader interface {
	ReadBack() ([]state.Service, []state.IPCacheEntry, error)
}

// report is the node's state.NodeReport now.
func report(node string, a nodeReader, dp backReader, remotes func() []remote.ClusterStatus) (*state.NodeReport, error) {
	r := &state.NodeReport{Node: node, PolicyWarnings: a.PolicyWarnings(), PolicyErrors: map[string]string{}}
	if remotes != nil {
		for _, s := range remotes() {
			rr := state.RemoteReport{Name: s.Name, Connected: s.Up && s.Reachable, Synced: s.Reachable && s.ServicesSynced, Cached: s.Cached}
			switch {
			case s.ConfigErr != nil:
				rr.LastError = s.ConfigErr.Error()
			case s.LastErr != nil:
				rr.LastError = s.LastErr.Error()
			}
			r.Remotes = append(r.Remotes, rr)
		}
	}
	r.Desired, _, _ = a.State()
	for ref, err := range a.PolicyErrors() {
		r.PolicyErrors[ref] = err.Error()
	}
	var err error
	if r.Services, r.IPCache, err = dp.ReadBack(); err != nil {
		return nil, err
	}
	return r, nil
}

// serveState serves GET /v1/state on the unix socket path until ctx ends or
// the returned function is called; like the CNI server it retries a socket
// it cannot bind and never fails the agent.
func serveState(ctx context.Context, node string, a nodeReader, dp backReader, remotes func() []remote.ClusterStatus, path string, flows http.Handler, log *slog.Logger) (stop func()) {
	if path == "" {
		return func() {}
	}
	mux := http.NewServeMux()
	if flows != nil {
		mux.Handle(flow.Path, flows)
	}
	mux.HandleFunc("GET /v1/state", func(w http.ResponseWriter, _ *http.Request) {
		r, err := report(node, a, dp, remotes)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return serveUnix(ctx, "State socket", path, log, func(ctx context.Context, l net.Listener) error {
		stop := context.AfterFunc(ctx, func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		})
		defer stop()
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
}

// CopyState copies the report of the agent serving socket (its node's
// state.NodeReport as JSON) to out.
func CopyState(ctx context.Context, socket string, out io.Writer) error {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://meshbed-agent/v1/state", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		if _, serr := os.Stat(socket); serr != nil {
			return fmt.Errorf("no agent at %s: %w", socket, serr)
		}
		return fmt.Errorf("agent at %s: %w", socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("agent at %s: %s: %s", socket, resp.Status, b)
	}
	_, err = io.Copy(out, resp.Body)
	return err
}
