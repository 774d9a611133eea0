// Package cni is the protocol between meshbed's CNI plugin (cmd/meshbed-cni,
// which the container runtime runs on a node for every pod sandbox) and the
// node's agent (cmd/meshbed-agent), which owns endpoint plumbing: JSON over
// HTTP over a unix socket on the node (DefaultSocket).
//
//	POST   /v1/endpoints                    AddRequest → Endpoint
//	GET    /v1/endpoints/{namespace}/{pod}  → Endpoint (404: unknown)
//	DELETE /v1/endpoints/{namespace}/{pod}?containerID=…
//	GET    /v1/healthz                      200 once the agent programs its datapath
//
// Errors are an Error (a CNI error code and a message) with a 4xx or 5xx
// status. The package uses the standard library only, so that the plugin
// binary, which the runtime starts for every sandbox, stays small and starts
// fast.
//
// The Server keeps track of which sandbox (container ID) owns each pod's
// endpoint, so that the runtime's usual retries and races are harmless: a
// repeated ADD of the same sandbox returns the same endpoint, an ADD from a
// new sandbox of the same pod replaces the endpoint (the old interface died
// with the old sandbox's namespace), and a late DEL of a replaced sandbox
// does not remove its successor's endpoint.
package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
)

// DefaultSocket is where the agent listens, on the node.
const DefaultSocket = "/var/run/meshbed/cni.sock"

// Well-known CNI error codes (CNI spec, "Error"), and meshbed's own.
const (
	CodeIncompatibleVersion = 1
	CodeUnsupportedField    = 2
	CodeUnknownContainer    = 3
	CodeInvalidEnvironment  = 4
	CodeIOFailure           = 5
	CodeDecodingFailure     = 6
	CodeInvalidNetConfig    = 7
	CodeTryAgainLater       = 11
	// CodeAgent is an error of the agent while creating or deleting an
	// endpoint (meshbed's first plugin-specific code).
	CodeAgent = 100
)

// AddRequest asks the agent for a pod's endpoint.
type AddRequest struct {
	// ContainerID is the sandbox's ID (CNI_CONTAINERID).
	ContainerID string `json:"containerID"`
	// NetNS is the path of the sandbox's network namespace (CNI_NETNS).
	NetNS string `json:"netns"`
	// IfName is the interface to create in it (CNI_IFNAME).
	IfName    string `json:"ifName"`
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
}

// Validate reports the first missing field.
func (r AddRequest) Validate() error {
	for _, f := range []struct{ name, v string }{
		{"containerID", r.ContainerID}, {"netns", r.NetNS}, {"ifName", r.IfName},
		{"namespace", r.Namespace}, {"pod", r.Pod},
	} {
		if f.v == "" {
			return &Error{Code: CodeInvalidEnvironment, Msg: "missing " + f.name}
		}
	}
	return nil
}

// Endpoint is a pod's endpoint as the agent created it: what the plugin
// reports to the runtime.
type Endpoint struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	// IP is the pod's address; the pod owns it alone (/32).
	IP netip.Addr `json:"ip"`
	// Gateway is the pod's next hop for everything.
	Gateway netip.Addr `json:"gateway"`
	// HostInterface and HostMAC are the node's end of the pod's link.
	HostInterface string `json:"hostInterface"`
	HostMAC       string `json:"hostMAC"`
	// PodInterface and PodMAC are the pod's end, inside its namespace.
	PodInterface string `json:"podInterface"`
	PodMAC       string `json:"podMAC"`
}

// Pod names a pod.
type Pod struct{ Namespace, Name string }

func (p Pod) String() string { return p.Namespace + "/" + p.Name }

// Backend is what the agent provides to the Server.
type Backend interface {
	// Add creates the endpoint of a pod, or returns it if it exists. It
	// returns once the datapath serves the endpoint.
	Add(ctx context.Context, req AddRequest) (Endpoint, error)
	// Delete removes a pod's endpoint; an unknown pod is not an error.
	Delete(ctx context.Context, pod Pod) error
	// Lookup returns a pod's endpoint.
	Lookup(pod Pod) (Endpoint, bool)
	// Ready returns nil once the node's datapath is programmed.
	Ready() error
}

// Error is a CNI error, as the plugin prints it to the runtime.
type Error struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *Error) Error() string {
	if e.Details != "" {
		return fmt.Sprintf("%s: %s", e.Msg, e.Details)
	}
	return e.Msg
}

// Is makes errors.Is match errors by code, so that an error decoded from
// the wire matches the sentinel it was sent for.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// ErrNotFound is returned by Client.Get for a pod without an endpoint.
var ErrNotFound = &Error{Code: CodeUnknownContainer, Msg: "no endpoint for this pod"}

// AsError returns err as an *Error, wrapping anything else with code.
func AsError(err error, code uint) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Code: code, Msg: err.Error()}
}

// decodeStrict decodes exactly one JSON value, rejecting unknown fields: the
// two sides are built from the same source, so an unknown field is a
// version mismatch worth reporting.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}
