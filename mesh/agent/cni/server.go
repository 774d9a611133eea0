package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// maxRequest bounds a request body; an AddRequest is a few hundred bytes.
const maxRequest = 64 << 10

// Server serves the protocol for a Backend.
type Server struct {
	backend Backend
	log     *slog.Logger

	mu sync.Mutex
	// owners is the container ID of the sandbox that owns each pod's
	// endpoint, as far as this process knows (it starts empty: after an
	// agent restart, ownership is learnt again from the next ADD).
	owners map[Pod]string
	// locks serialise the requests of one pod; pods proceed in parallel.
	locks map[Pod]*podLock
}

type podLock struct {
	mu   sync.Mutex
	refs int
}

// NewServer returns a Server for b. log may be nil.
func NewServer(b Backend, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{backend: b, log: log, owners: map[Pod]string{}, locks: map[Pod]*podLock{}}
}

func (s *Server) lock(p Pod) func() {
	s.mu.Lock()
	l := s.locks[p]
	if l == nil {
		l = &podLock{}
		s.locks[p] = l
	}
	l.refs++
	s.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.locks, p)
		}
		s.mu.Unlock()
	}
}

func (s *Server) owner(p Pod) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	id, ok := s.owners[p]
	return id, ok
}

func (s *Server) setOwner(p Pod, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id == "" {
		delete(s.owners, p)
	} else {
		s.owners[p] = id
	}
}

// Add handles an ADD.
func (s *Server) Add(ctx context.Context, req AddRequest) (Endpoint, error) {
	if err := req.Validate(); err != nil {
		return Endpoint{}, err
	}
	p := Pod{req.Namespace, req.Pod}
	defer s.lock(p)()
	if ep, ok := s.backend.Lookup(p); ok {
		if owner, known := s.owner(p); known && owner == req.ContainerID {
			return ep, nil // the runtime retried
		}
		// A new sandbox of the same pod (or one this process has not seen
		// since it started): the endpoint's interface was in the old
		// sandbox's namespace, so make a new one in this sandbox's.
		s.log.Info("Replacing the endpoint of a pod for a new sandbox", "pod", p, "containerID", req.ContainerID)
		if err := s.backend.Delete(ctx, p); err != nil {
			return Endpoint{}, &Error{Code: CodeAgent, Msg: fmt.Sprintf("replace endpoint of %s", p), Details: err.Error()}
		}
		s.setOwner(p, "")
	}
	ep, err := s.backend.Add(ctx, req)
	if err != nil {
		return Endpoint{}, AsError(fmt.Errorf("add endpoint of %s: %w", p, err), CodeAgent)
	}
	s.setOwner(p, req.ContainerID)
	return ep, nil
}

// Delete handles a DEL. A DEL from a sandbox that no longer owns the pod's
// endpoint is a late one for a replaced sandbox, and is ignored.
func (s *Server) Delete(ctx context.Context, p Pod, containerID string) error {
	defer s.lock(p)()
	if owner, known := s.owner(p); known && containerID != "" && owner != containerID {
		s.log.Info("Ignoring the DEL of a replaced sandbox", "pod", p, "containerID", containerID, "owner", owner)
		return nil
	}
	if err := s.backend.Delete(ctx, p); err != nil {
		return AsError(fmt.Errorf("delete endpoint of %s: %w", p, err), CodeAgent)
	}
	s.setOwner(p, "")
	return nil
}

// Get handles a CHECK: the endpoint of the pod, if the sandbox owns it.
func (s *Server) Get(p Pod, containerID string) (Endpoint, error) {
	ep, ok := s.backend.Lookup(p)
	if !ok {
		return Endpoint{}, ErrNotFound
	}
	if owner, known := s.owner(p); known && containerID != "" && owner != containerID {
		return Endpoint{}, &Error{Code: CodeUnknownContainer, Msg: fmt.Sprintf("endpoint of %s belongs to sandbox %s", p, owner)}
	}
	return ep, nil
}

// Handler is the HTTP side of the Server.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/endpoints", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, maxRequest))
		if err != nil {
			writeError(w, &Error{Code: CodeIOFailure, Msg: "read request", Details: err.Error()})
			return
		}
		var req AddRequest
		if err := decodeStrict(body, &req); err != nil {
			writeError(w, &Error{Code: CodeDecodingFailure, Msg: "decode request", Details: err.Error()})
			return
		}
		ep, err := s.Add(r.Context(), req)
		if err != nil {
			s.log.Warn("CNI ADD failed", "pod", Pod{req.Namespace, req.Pod}, "containerID", req.ContainerID, "err", err)
			writeError(w, AsError(err, CodeAgent))
			return
		}
		s.log.Debug("CNI ADD", "pod", Pod{req.Namespace, req.Pod}, "ip", ep.IP, "if", ep.HostInterface)
		writeJSON(w, http.StatusOK, ep)
	})
	mux.HandleFunc("GET /v1/endpoints/{namespace}/{pod}", func(w http.ResponseWriter, r *http.Request) {
		ep, err := s.Get(Pod{r.PathValue("namespace"), r.PathValue("pod")}, r.URL.Query().Get("containerID"))
		if err != nil {
			writeError(w, AsError(err, CodeAgent))
			return
		}
		writeJSON(w, http.StatusOK, ep)
	})
	mux.HandleFunc("DELETE /v1/endpoints/{namespace}/{pod}", func(w http.ResponseWriter, r *http.Request) {
		p := Pod{r.PathValue("namespace"), r.PathValue("pod")}
		if err := s.Delete(r.Context(), p, r.URL.Query().Get("containerID")); err != nil {
			s.log.Warn("CNI DEL failed", "pod", p, "err", err)
			writeError(w, AsError(err, CodeAgent))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /v1/healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := s.backend.Ready(); err != nil {
			writeError(w, &Error{Code: CodeTryAgainLater, Msg: "agent not ready", Details: err.Error()})
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client sees a truncated body
}

func writeError(w http.ResponseWriter, e *Error) {
	status := http.StatusInternalServerError
	switch e.Code {
	case CodeUnknownContainer:
		status = http.StatusNotFound
	case CodeInvalidEnvironment, CodeDecodingFailure, CodeInvalidNetConfig, CodeUnsupportedField:
		status = http.StatusBadRequest
	case CodeTryAgainLater:
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, e)
}

// Listen creates the unix socket at path: its directory if needed, and in
// place of a socket a previous agent left behind (nobody else creates a
// socket there). The socket is for root only: the runtime runs the plugin
// as root, and ADD plumbs arbitrary namespaces.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("CNI socket %s: %w", path, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("CNI socket %s: exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("CNI socket %s: remove stale socket: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("CNI socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("CNI socket %s: %w", path, err)
	}
	return l, nil
}

// Serve serves s on l until ctx ends, then shuts down, letting requests in
// flight finish for a few seconds. It returns nil after a shutdown.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hs := &http.Server{Handler: s.Handler(), ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownGrace)
		defer cancel()
		if err := hs.Shutdown(sctx); err != nil {
			hs.Close()
		}
	}()
	err := hs.Serve(l)
	cancel()
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("CNI server: %w", err)
}

// shutdownGrace is how long requests in flight may take after the server
// was told to stop: an ADD waits for the datapath, which takes milliseconds.
const shutdownGrace = 5 * time.Second
