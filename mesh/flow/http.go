package flow

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Path is where a control socket serves the flow stream.
const Path = "/v1/flows"

// DefaultPort is where an agent serves flows on TCP (its loopback) unless
// told otherwise: Hubble's port.
const DefaultPort = 4244

// ErrNoObserver is served when no observer is running (the agent has not
// started one, or the simulator has no node that matches).
var ErrNoObserver = errors.New("no flow observer is running")

// Handler serves GET Path: the records of the observers that pick returns
// for the request, as newline-delimited JSON (one Record a line), flushed
// per record, until the request or ctx ends (so that following streams end
// when the server's owner stops). A bad request is a 400 with a one-line
// reason.
func Handler(ctx context.Context, pick func(Request) ([]*Observer, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		stop := context.AfterFunc(ctx, cancel)
		defer stop()
		if r.Method != http.MethodGet {
			http.Error(w, "flows: GET only", http.StatusMethodNotAllowed)
			return
		}
		req, err := ParseRequest(r.URL.Query())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		obs, err := pick(req)
		if err == nil && len(obs) == 0 {
			err = ErrNoObserver
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		fl, _ := w.(http.Flusher)
		if fl != nil {
			fl.Flush()
		}
		enc := json.NewEncoder(w)
		_ = Stream(rctx, obs, req, func(rec Record) error {
			if err := enc.Encode(rec); err != nil {
				return err
			}
			if fl != nil {
				fl.Flush()
			}
			return nil
		})
	})
}

// Get requests flows from a control socket's flow stream at baseURL (e.g.
// "http://agent") through hc and calls fn for every record until the
// stream ends, ctx ends or fn fails. A refused request is an error with
// the server's one-line reason.
func Get(ctx context.Context, hc *http.Client, baseURL string, req Request, fn func(Record) error) error {
	hreq, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(baseURL, "/")+Path, nil)
	if err != nil {
		return err
	}
	hreq.URL.RawQuery = req.Query().Encode()
	resp, err := hc.Do(hreq)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		msg := strings.TrimSpace(string(body))
		if i := strings.IndexByte(msg, '\n'); i >= 0 {
			msg = msg[:i]
		}
		if msg == "" {
			msg = resp.Status
		}
		return &RequestError{Status: resp.StatusCode, Msg: msg}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("flow stream: %w", err)
		}
		if rec.Flow == nil && rec.Lost == nil {
			continue
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("flow stream: %w", err)
	}
	return nil
}

// RequestError is a flow request the server refused.
type RequestError struct {
	Status int
	Msg    string
}

func (e *RequestError) Error() string { return e.Msg }

// NodeHandler serves the flows of one node's observer, which obs returns
// (nil while there is none).
func NodeHandler(ctx context.Context, obs func() *Observer) http.Handler {
	return Handler(ctx, func(Request) ([]*Observer, error) {
		if o := obs(); o != nil {
			return []*Observer{o}, nil
		}
		return nil, nil
	})
}

// Serve serves h on l until ctx ends. Streams in flight end with ctx.
func Serve(ctx context.Context, l net.Listener, h http.Handler) error {
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stop := context.AfterFunc(ctx, func() { hs.Close() })
	defer stop()
	if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("flow server: %w", err)
	}
	return nil
}
