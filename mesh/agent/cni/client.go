package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
)

// Client talks to the agent's Server over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client of the agent listening on socket.
func NewClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		// One plugin process makes one request.
		DisableKeepAlives: true,
	}
	return &Client{socket: socket, http: &http.Client{Transport: tr}}
}

// Add asks the agent for the pod's endpoint.
func (c *Client) Add(ctx context.Context, req AddRequest) (Endpoint, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return Endpoint{}, &Error{Code: CodeAgent, Msg: "encode request", Details: err.Error()}
	}
	var ep Endpoint
	err = c.do(ctx, http.MethodPost, "/v1/endpoints", body, &ep)
	return ep, err
}

// Get returns the pod's endpoint if the sandbox owns it; ErrNotFound (code
// CodeUnknownContainer) if there is none.
func (c *Client) Get(ctx context.Context, p Pod, containerID string) (Endpoint, error) {
	var ep Endpoint
	err := c.do(ctx, http.MethodGet, endpointPath(p, containerID), nil, &ep)
	return ep, err
}

// Delete removes the pod's endpoint, unless another sandbox owns it.
func (c *Client) Delete(ctx context.Context, p Pod, containerID string) error {
	return c.do(ctx, http.MethodDelete, endpointPath(p, containerID), nil, nil)
}

// Health returns nil when the agent is ready.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/v1/healthz", nil, nil)
}

func endpointPath(p Pod, containerID string) string {
	path := "/v1/endpoints/" + url.PathEscape(p.Namespace) + "/" + url.PathEscape(p.Name)
	if containerID != "" {
		path += "?containerID=" + url.QueryEscape(containerID)
	}
	return path
}

// do sends one request. Every error is an *Error: the plugin prints it to
// the runtime as it is.
func (c *Client) do(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://meshbed-agent"+path, bytes.NewReader(body))
	if err != nil {
		return &Error{Code: CodeAgent, Msg: "build request", Details: err.Error()}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// The agent is not running yet (or restarting): the runtime
		// retries the sandbox.
		return &Error{Code: CodeTryAgainLater, Msg: fmt.Sprintf("meshbed agent not reachable at %s", c.socket), Details: err.Error()}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxRequest))
	if err != nil {
		return &Error{Code: CodeIOFailure, Msg: "read agent response", Details: err.Error()}
	}
	if resp.StatusCode >= 300 {
		var e Error
		if err := json.Unmarshal(data, &e); err != nil || e.Code == 0 {
			return &Error{Code: CodeAgent, Msg: fmt.Sprintf("agent answered %s", resp.Status), Details: string(data)}
		}
		return &e
	}
	if out == nil {
		return nil
	}
	if err := decodeStrict(data, out); err != nil {
		return &Error{Code: CodeDecodingFailure, Msg: "decode agent response", Details: err.Error()}
	}
	return nil
}
