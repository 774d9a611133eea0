package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/meshbed/meshbed/mesh/agent/cni"
)

func TestParseArgs(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    map[string]string
		wantErr bool
	}{
		{"", map[string]string{}, false},
		{"K8S_POD_NAMESPACE=default;K8S_POD_NAME=x-wing", map[string]string{"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "x-wing"}, false},
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u",
			map[string]string{"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "kube-system", "K8S_POD_NAME": "coredns-1", "K8S_POD_INFRA_CONTAINER_ID": "abc", "K8S_POD_UID": "u"}, false},
		{"A=b=c", map[string]string{"A": "b=c"}, false},
		{"A=", map[string]string{"A": ""}, false},
		{"K8S_POD_NAME", nil, true},
		{"=x", nil, true},
		{"A=1;;B=2", nil, true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseArgs(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("parseArgs(%q) error %v, want error %v", tc.in, err, tc.wantErr)
			}
			if err != nil {
				if !errors.Is(err, &cni.Error{Code: cni.CodeInvalidEnvironment}) {
					t.Errorf("error %v, want code %d", err, cni.CodeInvalidEnvironment)
				}
				return
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("parseArgs(%q) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name, in   string
		wantSocket string
		wantCode   uint // 0: no error
	}{
		{"plain", `{"cniVersion":"1.0.0","name":"meshbed","type":"meshbed-cni"}`, cni.DefaultSocket, 0},
		{"socket", `{"cniVersion":"1.0.0","name":"meshbed","type":"meshbed-cni","socketPath":"/run/x.sock"}`, "/run/x.sock", 0},
		{"runtime extras", `{"cniVersion":"0.4.0","name":"meshbed","type":"meshbed-cni","runtimeConfig":{"portMappings":[]},"args":{}}`, cni.DefaultSocket, 0},
		{"old version", `{"cniVersion":"0.3.1","name":"n","type":"meshbed-cni"}`, cni.DefaultSocket, 0},
		{"unknown version", `{"cniVersion":"2.0.0","name":"n","type":"meshbed-cni"}`, "", cni.CodeIncompatibleVersion},
		{"no version", `{"name":"n"}`, "", cni.CodeIncompatibleVersion},
		{"no name", `{"cniVersion":"1.0.0","type":"meshbed-cni"}`, "", cni.CodeInvalidNetConfig},
		{"relative socket", `{"cniVersion":"1.0.0","name":"n","socketPath":"cni.sock"}`, "", cni.CodeInvalidNetConfig},
		{"not JSON", `cniVersion: 1.0.0`, "", cni.CodeDecodingFailure},
		{"wrong type", `{"cniVersion":1}`, "", cni.CodeDecodingFailure},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig([]byte(tc.in))
			if tc.wantCode != 0 {
				if !errors.Is(err, &cni.Error{Code: tc.wantCode}) {
					t.Fatalf("error %v, want code %d", err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.SocketPath != tc.wantSocket {
				t.Errorf("socket %q, want %q", c.SocketPath, tc.wantSocket)
			}
		})
	}
}

var testEndpoint = cni.Endpoint{
	Namespace: "default", Pod: "x-wing",
	IP: netip.MustParseAddr("10.10.1.10"), Gateway: netip.MustParseAddr("169.254.1.1"),
	HostInterface: "lxc1a2b3c", HostMAC: "0a:59:0a:0a:01:0a", PodInterface: "eth0", PodMAC: "0a:58:0a:0a:01:0a",
}

func TestResultEncoding(t *testing.T) {
	for _, tc := range []struct {
		version string
		want    string
	}{
		{"1.0.0", `{"cniVersion":"1.0.0","interfaces":[{"name":"lxc1a2b3c","mac":"0a:59:0a:0a:01:0a"},{"name":"eth0","mac":"0a:58:0a:0a:01:0a","sandbox":"/var/run/netns/cni-1"}],` +
			`"ips":[{"address":"10.10.1.10/32","gateway":"169.254.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],"dns":{}}`},
		{"0.4.0", `{"cniVersion":"0.4.0","interfaces":[{"name":"lxc1a2b3c","mac":"0a:59:0a:0a:01:0a"},{"name":"eth0","mac":"0a:58:0a:0a:01:0a","sandbox":"/var/run/netns/cni-1"}],` +
			`"ips":[{"version":"4","address":"10.10.1.10/32","gateway":"169.254.1.1","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}],"dns":{}}`},
	} {
		t.Run(tc.version, func(t *testing.T) {
			got, err := json.Marshal(newResult(tc.version, testEndpoint, "/var/run/netns/cni-1"))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("result\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

// agentStub is the agent side of the end-to-end test: a real cni.Server on
// a real unix socket, over a Backend that records what reaches it.
type agentStub struct {
	mu  sync.Mutex
	eps map[cni.Pod]cni.Endpoint
	got []cni.AddRequest
}

func (a *agentStub) Add(_ context.Context, req cni.AddRequest) (cni.Endpoint, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got = append(a.got, req)
	ep := testEndpoint
	ep.Namespace, ep.Pod = req.Namespace, req.Pod
	a.eps[cni.Pod{Namespace: req.Namespace, Name: req.Pod}] = ep
	return ep, nil
}

func (a *agentStub) Delete(_ context.Context, p cni.Pod) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.eps, p)
	return nil
}

func (a *agentStub) Lookup(p cni.Pod) (cni.Endpoint, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ep, ok := a.eps[p]
	return ep, ok
}

func (a *agentStub) Ready() error { return nil }

func startAgent(t *testing.T) (*agentStub, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "cni.sock")
	l, err := cni.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	a := &agentStub{eps: map[cni.Pod]cni.Endpoint{}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- cni.NewServer(a, slog.New(slog.NewTextHandler(t.Output(), nil))).Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return a, sock
}

// invoke runs the plugin as the runtime would and decodes its stdout.
func invoke(t *testing.T, command, conf string, out any) (code int, stdout string) {
	t.Helper()
	e := env{Command: command, ContainerID: "c0ffee", NetNS: "/var/run/netns/cni-1", IfName: "eth0",
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=x-wing;K8S_POD_INFRA_CONTAINER_ID=c0ffee", Path: "/opt/cni/bin"}
	var buf bytes.Buffer
	code = run(t.Context(), e, strings.NewReader(conf), &buf)
	if out != nil && buf.Len() > 0 {
		if err := json.Unmarshal(buf.Bytes(), out); err != nil {
			t.Fatalf("%s: stdout %q is not JSON: %v", command, buf.String(), err)
		}
	}
	return code, buf.String()
}

// TestPluginAgainstServer runs the plugin's ADD, CHECK, DEL and VERSION
// against the agent's server over a real unix socket.
func TestPluginAgainstServer(t *testing.T) {
	agent, sock := startAgent(t)
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"meshbed","type":"meshbed-cni","socketPath":%q}`, sock)

	var res struct {
		CNIVersion string
		Interfaces []struct{ Name, MAC, Sandbox string }
		IPs        []struct {
			Address   string
			Gateway   string
			Interface *int
		}
	}
	code, out := invoke(t, "ADD", conf, &res)
	if code != 0 {
		t.Fatalf("ADD exit %d: %s", code, out)
	}
	if len(res.IPs) != 1 || res.IPs[0].Address != "10.10.1.10/32" || res.IPs[0].Interface == nil ||
		res.Interfaces[*res.IPs[0].Interface].Name != "eth0" || res.Interfaces[*res.IPs[0].Interface].Sandbox != "/var/run/netns/cni-1" {
		t.Errorf("ADD result %s", out)
	}
	want := cni.AddRequest{ContainerID: "c0ffee", NetNS: "/var/run/netns/cni-1", IfName: "eth0", Namespace: "default", Pod: "x-wing"}
	if len(agent.got) != 1 || agent.got[0] != want {
		t.Errorf("agent got %+v, want %+v", agent.got, want)
	}

	check := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"meshbed","type":"meshbed-cni","socketPath":%q,"prevResult":%s}`, sock, out)
	if code, out := invoke(t, "CHECK", check, nil); code != 0 {
		t.Errorf("CHECK exit %d: %s", code, out)
	}
	if code, out := invoke(t, "DEL", conf, nil); code != 0 || out != "" {
		t.Errorf("DEL exit %d: %q", code, out)
	}
	var cerr struct {
		CNIVersion string
		Code       uint
		Msg        string
	}
	if code, out := invoke(t, "CHECK", check, &cerr); code != 1 || cerr.Code != cni.CodeUnknownContainer || cerr.CNIVersion != "1.0.0" {
		t.Errorf("CHECK after DEL: exit %d, %s; want code %d", code, out, cni.CodeUnknownContainer)
	}
	if code, out := invoke(t, "DEL", conf, nil); code != 0 {
		t.Errorf("second DEL exit %d: %s", code, out)
	}

	var ver struct {
		CNIVersion        string
		SupportedVersions []string
	}
	if code, _ := invoke(t, "VERSION", `{"cniVersion":"0.4.0"}`, &ver); code != 0 || ver.CNIVersion != "0.4.0" || len(ver.SupportedVersions) != len(supportedVersions) {
		t.Errorf("VERSION: %+v", ver)
	}
}

func TestPluginErrors(t *testing.T) {
	_, sock := startAgent(t)
	confFor := func(socket string) string {
		return fmt.Sprintf(`{"cniVersion":"0.4.0","name":"meshbed","type":"meshbed-cni","socketPath":%q}`, socket)
	}
	for _, tc := range []struct {
		name, command, conf string
		wantCode            uint
	}{
		{"agent not running", "ADD", confFor(sock + ".absent"), cni.CodeTryAgainLater},
		{"bad config", "ADD", `{"cniVersion":"0.4.0"}`, cni.CodeInvalidNetConfig},
		{"unknown command", "GC", confFor(sock), cni.CodeInvalidEnvironment},
		{"CHECK of a pod without endpoint", "CHECK", confFor(sock), cni.CodeUnknownContainer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e struct {
				CNIVersion string
				Code       uint
				Msg        string
			}
			code, out := invoke(t, tc.command, tc.conf, &e)
			if code != 1 || e.Code != tc.wantCode || e.Msg == "" || e.CNIVersion != "0.4.0" {
				t.Errorf("exit %d, %s; want exit 1 with code %d and cniVersion 0.4.0", code, out, tc.wantCode)
			}
		})
	}
}

func TestInstall(t *testing.T) {
	dir := t.TempDir()
	self := filepath.Join(dir, "self")
	if err := os.WriteFile(self, []byte("#!binary"), 0o700); err != nil {
		t.Fatal(err)
	}
	bin, conf := filepath.Join(dir, "opt/cni/bin"), filepath.Join(dir, "etc/cni/net.d")
	for range 2 { // installing again replaces both files
		if err := install(self, bin, conf, "/var/run/meshbed/cni.sock"); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(filepath.Join(bin, "meshbed-cni"))
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("plugin binary: %v, %v", fi, err)
	}
	data, err := os.ReadFile(filepath.Join(conf, "05-meshbed.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string
		Name       string
		Plugins    []json.RawMessage
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	if list.CNIVersion != "1.0.0" || list.Name != "meshbed" || len(list.Plugins) != 1 {
		t.Fatalf("conflist %s", data)
	}
	// The runtime hands the plugin its entry plus the list's version and
	// name: that must be a valid configuration for this plugin.
	var entry map[string]any
	if err := json.Unmarshal(list.Plugins[0], &entry); err != nil {
		t.Fatal(err)
	}
	entry["cniVersion"], entry["name"] = list.CNIVersion, list.Name
	b, _ := json.Marshal(entry)
	c, err := parseConfig(b)
	if err != nil || c.Type != "meshbed-cni" || c.SocketPath != "/var/run/meshbed/cni.sock" {
		t.Errorf("conflist entry %s: %+v, %v", b, c, err)
	}
	entries, _ := os.ReadDir(conf)
	if len(entries) != 1 {
		t.Errorf("conf dir holds %d entries (temporary files left?)", len(entries))
	}
	if err := install(self, bin, conf, "relative.sock"); err == nil {
		t.Error("install accepted a relative socket path")
	}
}

func TestHealthCommand(t *testing.T) {
	_, sock := startAgent(t)
	var stderr bytes.Buffer
	if code := Command([]string{"health", "--socket", sock}, &bytes.Buffer{}, &stderr); code != 0 {
		t.Errorf("health exit %d: %s", code, stderr.String())
	}
	if code := Command([]string{"health", "--socket", sock + ".absent"}, &bytes.Buffer{}, &stderr); code != 1 {
		t.Errorf("health without agent exit %d, want 1", code)
	}
	if code := Command([]string{"frobnicate"}, &bytes.Buffer{}, &stderr); code != 2 {
		t.Errorf("unknown command exit %d, want 2", code)
	}
}

// FuzzParseConfig: the runtime's stdin never crashes the plugin, and an
// accepted configuration is complete.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"meshbed","type":"meshbed-cni","socketPath":"/var/run/meshbed/cni.sock"}`))
	f.Add([]byte(`{"cniVersion":"0.4.0","name":"n","prevResult":{"ips":[{"address":"10.0.0.1/32"}]}}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","socketPath":"x"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseConfig(data)
		if err != nil {
			var e *cni.Error
			if !errors.As(err, &e) || e.Code == 0 {
				t.Fatalf("error %v is not a CNI error", err)
			}
			return
		}
		if c.Name == "" || !filepath.IsAbs(c.SocketPath) {
			t.Fatalf("accepted incomplete configuration %+v", c)
		}
		_ = checkPrevResult(c.PrevResult, testEndpoint)
	})
}

// FuzzParseArgs: CNI_ARGS never crashes the plugin; what it accepts
// round-trips.
func FuzzParseArgs(f *testing.F) {
	f.Add("K8S_POD_NAMESPACE=default;K8S_POD_NAME=x")
	f.Add("a=;=b;;")
	f.Fuzz(func(t *testing.T, s string) {
		m, err := parseArgs(s)
		if err != nil {
			return
		}
		for k := range m {
			if k == "" || strings.Contains(k, ";") {
				t.Fatalf("key %q from %q", k, s)
			}
		}
		if s != "" && len(m) > strings.Count(s, ";")+1 {
			t.Fatalf("%d keys from %d elements", len(m), strings.Count(s, ";")+1)
		}
	})
}
