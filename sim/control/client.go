package control

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshbed/meshbed/mesh/flow"
	"github.com/meshbed/meshbed/scenarios"
)

// SocketDir holds the control sockets of running simulated meshes.
const SocketDir = "/run/meshbed"

// SocketPath is the control socket of the simulated mesh called name.
func SocketPath(name string) string { return filepath.Join(SocketDir, "sim-"+name+".sock") }

// Listen creates the control socket of the mesh called name; it refuses
// when a mesh of that name answers on it already.
func Listen(name string) (net.Listener, error) {
	if err := os.MkdirAll(SocketDir, 0o755); err != nil {
		return nil, err
	}
	sock := SocketPath(name)
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		return nil, fmt.Errorf("a simulated mesh named %q is already running (%s); pick another --name", name, sock)
	}
	os.Remove(sock)
	return net.Listen("unix", sock)
}

// NotRunningError is a Client's error when no mesh answers.
type NotRunningError struct {
	Name string
	Err  error
}

func (e *NotRunningError) Error() string {
	return fmt.Sprintf("no simulated mesh %q is running (start one with `meshbed sim up -f FILE --name %s`): %v", e.Name, e.Name, e.Err)
}

func (e *NotRunningError) Unwrap() error { return e.Err }

// RequestError is what the mesh answered to a request it refused (a bad
// step, an unknown cluster).
type RequestError struct{ Msg string }

func (e *RequestError) Error() string { return e.Msg }

// Client drives a running simulated mesh through its control socket.
type Client struct {
	name string
	http *http.Client
}

// NewClient returns a client of the mesh called name.
func NewClient(name string) *Client {
	sock := SocketPath(name)
	return &Client{name: name, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}}
}

// HTTP is the client's HTTP client (every URL reaches the socket), for the
// flow stream.
func (c *Client) HTTP() *http.Client { return c.http }

// BaseURL is the URL prefix of the control socket's paths.
const BaseURL = "http://sim"

// Get reads path with query q and returns the body of the answer.
func (c *Client) Get(ctx context.Context, path string, q url.Values) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, BaseURL+path, nil)
	if err != nil {
		return nil, err
	}
	req.URL.RawQuery = q.Encode()
	return c.do(req)
}

func (c *Client) do(req *http.Request) ([]byte, error) {
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &NotRunningError{Name: c.name, Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &RequestError{Msg: strings.TrimSpace(string(body))}
	}
	return body, nil
}

// Step runs one step, given as it would stand in the scenario file's
// spec.steps, and returns its report.
func (c *Client) Step(ctx context.Context, step map[string]any) (*scenarios.StepReport, error) {
	data, err := json.Marshal(step)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, BaseURL+"/step", bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	body, err := c.do(req)
	if err != nil {
		return nil, err
	}
	var rep scenarios.StepReport
	if err := json.Unmarshal(body, &rep); err != nil {
		return nil, err
	}
	return &rep, nil
}

// LB lists the frontends programmed in the BPF maps of cluster's nodes (of
// node alone, when set).
func (c *Client) LB(ctx context.Context, cluster, node string) ([]LBEntry, error) {
	q := url.Values{"cluster": {cluster}}
	if node != "" {
		q.Set("node", node)
	}
	body, err := c.Get(ctx, "/bpf/lb", q)
	if err != nil {
		return nil, err
	}
	var out []LBEntry
	return out, json.Unmarshal(body, &out)
}

// ClusterMesh returns cluster's view of the mesh and the answer as it came.
func (c *Client) ClusterMesh(ctx context.Context, cluster string) (*ClusterMeshView, []byte, error) {
	body, err := c.Get(ctx, "/clustermesh", url.Values{"cluster": {cluster}})
	if err != nil {
		return nil, nil, err
	}
	var v ClusterMeshView
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, nil, fmt.Errorf("clustermesh status of %s: %w", cluster, err)
	}
	return &v, body, nil
}

// Flows streams the flows req asks for to fn until ctx ends or the stream
// does.
func (c *Client) Flows(ctx context.Context, req flow.Request, fn func(flow.Record) error) error {
	return flow.Get(ctx, c.http, BaseURL, req, fn)
}
