// Package plugin is meshbed's CNI plugin (spec 1.0.0), which the binary
// cmd/meshbed-cni runs: the container runtime runs it for every pod sandbox
// with CNI_COMMAND set, and it forwards ADD, DEL and CHECK to the node's
// agent over its unix socket (package cni), then reports the pod's
// interface and address. The agent does the plumbing, so the plugin is a
// thin, stateless client. Command runs the agent DaemonSet's helpers
// (install, health).
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/meshbed/meshbed/mesh/agent/cni"
)

// pluginType is the plugin's name in a conflist: the binary's file name in
// the runtime's CNI_PATH.
const pluginType = "meshbed-cni"

// supportedVersions are the CNI spec versions whose configuration and
// result formats this plugin speaks (0.3.0 to 1.0.0 differ only in the
// "version" field of IP configs, and CHECK, which came with 0.4.0).
var supportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0"}

// Timeouts of one command: an ADD waits until the agent's datapath serves
// the endpoint, normally milliseconds; the runtime retries after a failure.
const (
	addTimeout = 2 * time.Minute
	delTimeout = time.Minute
)

// netConf is the network configuration the runtime writes to stdin: the
// plugin's entry of the conflist plus the list's cniVersion and name.
type netConf struct {
	CNIVersion string `json:"cniVersion"`
	Name       string `json:"name"`
	Type       string `json:"type"`
	// SocketPath is the agent's CNI socket; empty means cni.DefaultSocket.
	SocketPath string          `json:"socketPath,omitempty"`
	PrevResult json.RawMessage `json:"prevResult,omitempty"`
}

// parseConfig decodes and checks the network configuration. Unknown fields
// are allowed: runtimes add runtimeConfig, args and capabilities.
func parseConfig(data []byte) (netConf, error) {
	var c netConf
	if err := json.Unmarshal(data, &c); err != nil {
		return c, &cni.Error{Code: cni.CodeDecodingFailure, Msg: "decode network configuration", Details: err.Error()}
	}
	if !slices.Contains(supportedVersions, c.CNIVersion) {
		return c, &cni.Error{Code: cni.CodeIncompatibleVersion, Msg: fmt.Sprintf("cniVersion %q not supported", c.CNIVersion),
			Details: "supported: " + strings.Join(supportedVersions, ", ")}
	}
	if c.Name == "" {
		return c, &cni.Error{Code: cni.CodeInvalidNetConfig, Msg: "network configuration has no name"}
	}
	if c.SocketPath == "" {
		c.SocketPath = cni.DefaultSocket
	} else if !filepath.IsAbs(c.SocketPath) {
		return c, &cni.Error{Code: cni.CodeInvalidNetConfig, Msg: fmt.Sprintf("socketPath %q is not absolute", c.SocketPath)}
	}
	return c, nil
}

// env is the CNI_* environment of one invocation.
type env struct {
	Command, ContainerID, NetNS, IfName, Args, Path string
}

func envFrom(getenv func(string) string) env {
	return env{
		Command: getenv("CNI_COMMAND"), ContainerID: getenv("CNI_CONTAINERID"), NetNS: getenv("CNI_NETNS"),
		IfName: getenv("CNI_IFNAME"), Args: getenv("CNI_ARGS"), Path: getenv("CNI_PATH"),
	}
}

// parseArgs splits CNI_ARGS ("K8S_POD_NAMESPACE=default;K8S_POD_NAME=x;
// IgnoreUnknown=1"). Keys this plugin does not use are ignored, whatever
// IgnoreUnknown says: the kubelet's runtimes pass several.
func parseArgs(s string) (map[string]string, error) {
	out := map[string]string{}
	if s == "" {
		return out, nil
	}
	for kv := range strings.SplitSeq(s, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, &cni.Error{Code: cni.CodeInvalidEnvironment, Msg: fmt.Sprintf("CNI_ARGS: %q is not KEY=VALUE", kv)}
		}
		out[k] = v
	}
	return out, nil
}

// podOf names the pod of a sandbox from CNI_ARGS.
func podOf(args map[string]string) (cni.Pod, error) {
	p := cni.Pod{Namespace: args["K8S_POD_NAMESPACE"], Name: args["K8S_POD_NAME"]}
	if p.Namespace == "" || p.Name == "" {
		return p, &cni.Error{Code: cni.CodeInvalidEnvironment, Msg: "CNI_ARGS lacks K8S_POD_NAMESPACE or K8S_POD_NAME"}
	}
	return p, nil
}

// result is the ADD result (CNI spec, "Success"), written by hand to keep
// the plugin free of the containernetworking libraries.
type result struct {
	CNIVersion string     `json:"cniVersion"`
	Interfaces []iface    `json:"interfaces"`
	IPs        []ipConfig `json:"ips"`
	Routes     []route    `json:"routes"`
	DNS        struct{}   `json:"dns"`
}

type iface struct {
	Name    string `json:"name"`
	MAC     string `json:"mac,omitempty"`
	Sandbox string `json:"sandbox,omitempty"`
}

type ipConfig struct {
	// Version is "4" or "6" before spec 1.0.0, absent since.
	Version   string `json:"version,omitempty"`
	Address   string `json:"address"`
	Gateway   string `json:"gateway,omitempty"`
	Interface *int   `json:"interface,omitempty"`
}

type route struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

// newResult describes ep to the runtime: the node's end of the link, the
// pod's end in its sandbox, the pod's /32 and its default route.
func newResult(version string, ep cni.Endpoint, netns string) result {
	podIf := 1
	ip := ipConfig{Address: netip.PrefixFrom(ep.IP, ep.IP.BitLen()).String(), Interface: &podIf}
	if ep.Gateway.IsValid() {
		ip.Gateway = ep.Gateway.String()
	}
	if version != "1.0.0" {
		ip.Version = "4"
		if ep.IP.Is6() {
			ip.Version = "6"
		}
	}
	r := result{
		CNIVersion: version,
		Interfaces: []iface{
			{Name: ep.HostInterface, MAC: ep.HostMAC},
			{Name: ep.PodInterface, MAC: ep.PodMAC, Sandbox: netns},
		},
		IPs: []ipConfig{ip},
	}
	if ep.Gateway.IsValid() {
		def := "0.0.0.0/0"
		if ep.IP.Is6() {
			def = "::/0"
		}
		r.Routes = []route{{Dst: def, GW: ep.Gateway.String()}}
	}
	return r
}

// errorResult is the CNI error object.
type errorResult struct {
	CNIVersion string `json:"cniVersion"`
	*cni.Error
}

// Run executes the CNI command of the environment getenv reads
// (CNI_COMMAND, CNI_CONTAINERID, ...) with the network configuration on
// stdin, and returns the process's exit code.
func Run(ctx context.Context, getenv func(string) string, stdin io.Reader, stdout io.Writer) int {
	return run(ctx, envFrom(getenv), stdin, stdout)
}

// run executes one CNI command and returns the process's exit code. The
// result or the error goes to stdout, as the spec wants.
func run(ctx context.Context, e env, stdin io.Reader, stdout io.Writer) int {
	version := "1.0.0"
	out, err := dispatch(ctx, e, stdin, &version)
	if err != nil {
		_ = json.NewEncoder(stdout).Encode(errorResult{CNIVersion: version, Error: cni.AsError(err, cni.CodeAgent)})
		return 1
	}
	if out != nil {
		if err := json.NewEncoder(stdout).Encode(out); err != nil {
			return 1
		}
	}
	return 0
}

// dispatch runs the command; version is set to the configuration's
// cniVersion as soon as it is known, for the error result.
func dispatch(ctx context.Context, e env, stdin io.Reader, version *string) (any, error) {
	data, err := io.ReadAll(io.LimitReader(stdin, 1<<20))
	if err != nil {
		return nil, &cni.Error{Code: cni.CodeIOFailure, Msg: "read network configuration", Details: err.Error()}
	}
	if e.Command == "VERSION" {
		var c struct {
			CNIVersion string `json:"cniVersion"`
		}
		if json.Unmarshal(data, &c) == nil && c.CNIVersion != "" {
			*version = c.CNIVersion
		}
		return map[string]any{"cniVersion": *version, "supportedVersions": supportedVersions}, nil
	}
	conf, err := parseConfig(data)
	if conf.CNIVersion != "" && slices.Contains(supportedVersions, conf.CNIVersion) {
		*version = conf.CNIVersion
	}
	if err != nil {
		return nil, err
	}
	args, err := parseArgs(e.Args)
	if err != nil {
		return nil, err
	}
	client := cni.NewClient(conf.SocketPath)
	switch e.Command {
	case "ADD":
		pod, err := podOf(args)
		if err != nil {
			return nil, err
		}
		req := cni.AddRequest{ContainerID: e.ContainerID, NetNS: e.NetNS, IfName: e.IfName, Namespace: pod.Namespace, Pod: pod.Name}
		if err := req.Validate(); err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, addTimeout)
		defer cancel()
		ep, err := client.Add(ctx, req)
		if err != nil {
			return nil, err
		}
		return newResult(conf.CNIVersion, ep, e.NetNS), nil
	case "DEL":
		pod, err := podOf(args)
		if err != nil {
			// Without a pod there is nothing this plugin created.
			return nil, nil
		}
		ctx, cancel := context.WithTimeout(ctx, delTimeout)
		defer cancel()
		return nil, client.Delete(ctx, pod, e.ContainerID)
	case "CHECK":
		if conf.CNIVersion == "0.3.0" || conf.CNIVersion == "0.3.1" {
			return nil, &cni.Error{Code: cni.CodeIncompatibleVersion, Msg: "CHECK needs cniVersion 0.4.0 or later"}
		}
		pod, err := podOf(args)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, delTimeout)
		defer cancel()
		ep, err := client.Get(ctx, pod, e.ContainerID)
		if err != nil {
			return nil, err
		}
		return nil, checkPrevResult(conf.PrevResult, ep)
	}
	return nil, &cni.Error{Code: cni.CodeInvalidEnvironment, Msg: fmt.Sprintf("CNI_COMMAND %q not supported", e.Command)}
}

// checkPrevResult compares the result the runtime kept from ADD with the
// agent's endpoint.
func checkPrevResult(prev json.RawMessage, ep cni.Endpoint) error {
	if len(prev) == 0 {
		return &cni.Error{Code: cni.CodeInvalidNetConfig, Msg: "CHECK without prevResult"}
	}
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(prev, &r); err != nil {
		return &cni.Error{Code: cni.CodeDecodingFailure, Msg: "decode prevResult", Details: err.Error()}
	}
	for _, ip := range r.IPs {
		if p, err := netip.ParsePrefix(ip.Address); err == nil && p.Addr() == ep.IP {
			return nil
		}
	}
	return &cni.Error{Code: cni.CodeAgent, Msg: fmt.Sprintf("pod address changed: the agent has %s, prevResult does not", ep.IP)}
}

// Command runs one of the agent DaemonSet's helpers (install, health) and
// returns the exit code.
func Command(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: meshbed-cni install|health [flags] (as a CNI plugin, run with CNI_COMMAND set)")
		return 2
	}
	fs := flag.NewFlagSet("meshbed-cni "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", cni.DefaultSocket, "the agent's CNI socket")
	var err error
	switch args[0] {
	case "install":
		binDir := fs.String("bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
		confDir := fs.String("conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
		if err := fs.Parse(args[1:]); err != nil {
			return flagExit(err)
		}
		self, serr := os.Executable()
		if serr != nil {
			err = fmt.Errorf("find own binary: %w", serr)
			break
		}
		err = install(self, *binDir, *confDir, *socket)
		if err == nil {
			fmt.Fprintf(stdout, "installed %s and %s\n", pluginPath(*binDir), conflistPath(*confDir))
		}
	case "health":
		timeout := fs.Duration("timeout", 2*time.Second, "how long to wait for the agent's answer")
		if err := fs.Parse(args[1:]); err != nil {
			return flagExit(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		err = cni.NewClient(*socket).Health(ctx)
	default:
		fmt.Fprintf(stderr, "meshbed-cni: unknown command %q (want install or health)\n", args[0])
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "meshbed-cni %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	return 2
}
